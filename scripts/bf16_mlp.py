"""Test accuracy of the MNIST MLP trained with float32 compute and with bfloat16 compute.

Both runs use float32 params (bfloat16 compute keeps float32 master weights through
``fnn.DtypePolicy``), the same seed, init, batch order and optimizer (Adam 1e-3, batch 128);
the loss is computed in float32 in both. Each epoch is one jitted ``lax.scan`` over the
shuffled batches.

    python scripts/bf16_mlp.py                         # 784-800-800-10, 2 epochs
    python scripts/bf16_mlp.py --hidden 256 --epochs 1 # quicker

The last line is ``difference <float32 accuracy - bfloat16 accuracy> points``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn


def mlp(hidden: int) -> fnn.Layer:
    return fnn.serial(fnn.Dense(hidden), fnn.Relu, fnn.Dense(hidden), fnn.Relu, fnn.Dense(10))


def train_and_test(net: fnn.Layer, data: dict, epochs: int, batch: int, seed: int) -> float:
    """Train ``net`` on MNIST and return its test accuracy in percent."""
    x, y = data["train"]
    _, params, state = net.init(jax.random.key(seed), (-1, 784))
    opt = optax.adam(1e-3)
    opt_state = opt.init(params)

    def loss(p, xb, yb):
        out, _ = net.apply(p, state, xb)
        return fnn.losses.softmax_cross_entropy(out, yb)

    def step(carry, batch_xy):
        p, s = carry
        grads = jax.grad(loss)(p, *batch_xy)
        updates, s = opt.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), None

    @jax.jit
    def epoch(p, s, xs, ys):
        return jax.lax.scan(step, (p, s), (xs, ys))[0]

    order_rng = np.random.default_rng(seed)
    n = (len(x) // batch) * batch
    for _ in range(epochs):
        order = order_rng.permutation(len(x))[:n]
        xs = jnp.asarray(x[order].reshape(-1, batch, 784))
        ys = jnp.asarray(y[order].reshape(-1, batch))
        params, opt_state = epoch(params, opt_state, xs, ys)
    xt, yt = data["test"]
    logits = jax.jit(lambda p, xb: net.apply(p, state, xb)[0])(params, jnp.asarray(xt))
    return 100.0 * float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(yt)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raw = fnn.data.load_mnist(download=False, progress=False)
    data = {k: (v[0].reshape(-1, 784).astype(np.float32) / 255.0, v[1].astype(np.int32))
            for k, v in raw.items()}
    print(f"MLP 784-{args.hidden}-{args.hidden}-10, {args.epochs} epoch(s), batch {args.batch}, "
          f"Adam 1e-3, seed {args.seed}, {jax.devices()[0].platform}")
    results = {}
    for name, compute in (("float32", None), ("bfloat16", "bfloat16")):
        net = mlp(args.hidden)
        if compute:
            net = fnn.DtypePolicy(net, compute=compute)
        start = time.perf_counter()
        results[name] = train_and_test(net, data, args.epochs, args.batch, args.seed)
        print(f"{name:>8} compute: test accuracy {results[name]:.2f}% "
              f"({time.perf_counter() - start:.0f} s)")
    print(f"difference {results['float32'] - results['bfloat16']:+.2f} points")


if __name__ == "__main__":
    main()
