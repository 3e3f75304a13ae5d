"""The MNIST CNN train step in one process: fnn's step against hand-written ones, alternated.

Runners (same CNN as scripts/bench_peers.py, Adam, batch 128, one fixed batch):

* ``fnn-step``: ``fnn.train.make_train_step`` (XLA's convolution gradient: the step is compiled
  on its own, so ``make_train_step`` runs the net through
  ``fnn.layers.conv.straight_line_gradients``);
* ``fnn-step scan_friendly``: the same with ``Conv2D(..., gradient="scan_friendly")``, what
  ``fnn-step`` was before that change (the gradient fnn's scanned epoch uses);
* ``hand xla``: a hand-written ``jax.jit`` + optax step (donated) with XLA's convolution gradient;
* ``hand scan_friendly``: the same step with ``fnn.layers.conv_ops.conv``'s custom gradient.

Each is compiled, then timed ``--steps`` steps at a time, alternately, ``--rounds`` times; the
medians are printed in ms per step, with the ratio of the hand-written XLA step to each.

    python scripts/bench_cnn_step.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peers  # noqa: E402  (the shared model definitions)

import fnn  # noqa: E402
from fnn.layers.conv_ops import conv  # noqa: E402
from fnn.train import init_train_state, make_train_step  # noqa: E402


def hand_step(method: str, opt):
    glorot = jax.nn.initializers.glorot_uniform()
    ks = jax.random.split(jax.random.key(0), 4)
    params = {"c1": glorot(ks[0], (3, 3, 1, 32)), "c2": glorot(ks[1], (3, 3, 32, 64)),
              "d1": glorot(ks[2], (7 * 7 * 64, 128)), "d2": glorot(ks[3], (128, 10)),
              "b1": jnp.zeros(32), "b2": jnp.zeros(64), "b3": jnp.zeros(128), "b4": jnp.zeros(10)}

    def pool(h):
        n, a, b, c = h.shape
        return h.reshape(n, a // 2, 2, b // 2, 2, c).max(axis=(2, 4))

    def loss(p, x, y):
        pads = ((1, 1), (1, 1))
        h = pool(jax.nn.relu(conv(x, p["c1"], (1, 1), pads, method=method) + p["b1"]))
        h = pool(jax.nn.relu(conv(h, p["c2"], (1, 1), pads, method=method) + p["b2"]))
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ p["d1"] + p["b3"])
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["d2"] + p["b4"], y).mean()

    def step(p, o, x, y):
        grads = jax.grad(loss)(p, x, y)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o
    return jax.jit(step, donate_argnums=(0, 1)), [params, opt.init(params)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((128, 28, 28, 1), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, 128).astype(np.int32))
    opt = optax.adam(1e-3)

    batch = {"x": x, "y": y}

    def run_fnn(gradient):
        net = bench_peers.fnn_model("cnn")
        if gradient != "auto":
            net = fnn.map_layers(lambda l: l.replace(gradient=gradient) if l.kind == "Conv2D"
                                 else l, net)
        _, ts = init_train_state(net, opt, (-1, 28, 28, 1), jax.random.key(0))
        fnn_step = make_train_step(net, fnn.losses.softmax_cross_entropy, opt)
        state = {"ts": ts}

        def run():
            for _ in range(args.steps):
                state["ts"], _ = fnn_step(state["ts"], batch)
            jax.block_until_ready(state["ts"].params)
        return run

    def run_hand(method):
        step, carry = hand_step(method, opt)

        def run():
            for _ in range(args.steps):
                carry[0], carry[1] = step(carry[0], carry[1], x, y)
            jax.block_until_ready(carry[0])
        return run

    runners = {"fnn-step": run_fnn("auto"), "fnn-step scan_friendly": run_fnn("scan_friendly"),
               "hand xla": run_hand("xla"),
               "hand scan_friendly": run_hand("scan_friendly")}
    med = bench_peers.alternated_medians(runners, args.rounds, args.steps)
    print(f"MNIST CNN step, batch 128, Adam; median of {args.rounds} alternated rounds of "
          f"{args.steps} steps (jax {jax.__version__}, {jax.default_backend()})")
    for name, t in med.items():
        print(f"{name:<24} {t * 1e3:7.1f} ms/step   {med['hand xla'] / t:.2f}x hand xla")


if __name__ == "__main__":
    main()
