"""Train the vanilla tanh CNN of configs/deep_tanh_*.yaml on MNIST for a fixed number of steps.

The same network as the configs (strided convs to 7x7, ``depth`` repeated 3x3 conv + tanh,
global average pooling, dense; Adam 3e-4, batch 64), initialised ``critical``
(delta-orthogonal, gain sqrt(sigma_w^2*) at sigma_b^2 = 1e-4) or ``glorot``, trained for
``--steps`` steps; prints train loss and test accuracy (all 10,000 test images) every
``--eval-every`` steps, and the wall time.

``--unrolled`` builds the stack with ``serial`` instead of ``fnn.repeat``: the same function
with the same params layout per copy (tests/test_repeat.py), and on XLA:CPU ~10x faster per
step until convolutions inside ``lax.scan`` are fast there (docs/DEEP.md).

Usage:
    FNN_DATA_DIR=/path/to/mnist python scripts/train_deep.py --depth 50 --steps 1000 --unrolled
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fnn  # noqa: E402
from bench_deep import unrolled_tanh_cnn  # noqa: E402
from signal_propagation import vanilla_tanh_cnn  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--init", choices=("critical", "glorot"), default="critical")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--unrolled", action="store_true")
    parser.add_argument("--stem", choices=("orthogonal", "same"), default="orthogonal",
                        help="init of the two strided convs (same: as the repeated ones)")
    args = parser.parse_args()

    data = fnn.data.load_mnist(download=False)
    scale = lambda x: (x.astype(np.float32) / 255.0)[..., None]
    x_train, y_train = scale(data["train"][0]), data["train"][1].astype(np.int32)
    x_test, y_test = scale(data["test"][0]), data["test"][1].astype(np.int32)

    gain = round(fnn.meanfield.critical_point("tanh", 1e-4).gain, 4)
    w = (fnn.initializers.delta_orthogonal(gain=gain) if args.init == "critical"
         else fnn.initializers.glorot_uniform)
    stem = fnn.initializers.orthogonal(gain=gain) if args.stem == "orthogonal" else None
    net = (unrolled_tanh_cnn if args.unrolled else vanilla_tanh_cnn)(args.depth, w, stem_init=stem)
    loss = fnn.losses.softmax_cross_entropy
    opt = optax.adam(args.lr)
    _, ts = fnn.train.init_train_state(net, opt, (-1, 28, 28, 1), jax.random.key(0))
    step = fnn.train.make_train_step(net, loss, opt)
    evaluate = fnn.train.make_eval_step(net, loss, metrics={"accuracy": fnn.train.correct})

    def test_accuracy(ts):
        sums = None
        for i in range(0, len(x_test), 1000):
            s = evaluate(ts.params, ts.model_state, {"x": x_test[i:i + 1000], "y": y_test[i:i + 1000]})
            sums = s if sums is None else jax.tree_util.tree_map(jnp.add, sums, s)
        return float(sums["accuracy"] / sums["count"])

    print(f"depth {args.depth}, init {args.init} ({w!r}), {'serial' if args.unrolled else 'repeat'}"
          f", Adam {args.lr}, batch {args.batch}", flush=True)
    order = np.random.default_rng(0).permutation(len(x_train))
    start, losses = time.perf_counter(), []
    for i in range(1, args.steps + 1):
        idx = order[(i - 1) * args.batch % len(order):][:args.batch]
        if len(idx) < args.batch:
            idx = order[:args.batch]
        ts, m = step(ts, {"x": x_train[idx], "y": y_train[idx]})
        losses.append(m["loss"])
        if i % args.eval_every == 0 or i == args.steps:
            train_loss = float(np.mean(jax.device_get(losses)))
            losses = []
            print(f"step {i:6d}  train_loss {train_loss:.4f}  test_accuracy "
                  f"{test_accuracy(ts):.4f}  {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
