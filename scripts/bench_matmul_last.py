"""A sequence's matmul, ``(batch, time, in) @ (in, out)``, as written against flattened first.

XLA:CPU compiles the 3-D product's gradient into a plain (Eigen) dot behind transposing copies,
and the same product on the flattened ``(batch * time, in)`` rows into its fast (YNNPACK) fused
dots; ``fnn.layers.dense.matmul_last`` is the flattened form, used by ``Dense``, the attention
projections, ``PatchEmbed`` and the recurrent layers' input projection. This script times the
forward and backward of ``sum(tanh(x @ w) * r)`` both ways, alternated in one process, and prints
the medians and the ratio.

    python scripts/bench_matmul_last.py --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from fnn.layers.dense import matmul_last


def timed_grad(product, x, w, r, calls: int):
    def loss(x, w):
        return jnp.sum(jnp.tanh(product(x, w)) * r)
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    jax.block_until_ready(grad(x, w))

    def run() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            out = grad(x, w)
        jax.block_until_ready(out)
        return (time.perf_counter() - start) / calls * 1e6
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50, help="calls per timing")
    parser.add_argument("--shape", default="128,28,64", help="batch,time,in")
    parser.add_argument("--out", default="64,128", help="output widths, one row each")
    args = parser.parse_args()
    b, t, f = (int(v) for v in args.shape.split(","))
    print(f"forward+backward of sum(tanh(x @ w) * r), x ({b}, {t}, {f}); median of {args.rounds} "
          f"alternated rounds of {args.calls} calls (jax {jax.__version__}, "
          f"{jax.devices()[0].platform})")
    for n in (int(v) for v in args.out.split(",")):
        keys = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(keys[0], (b, t, f))
        w = 0.1 * jax.random.normal(keys[1], (f, n))
        r = jax.random.normal(keys[2], (b, t, n))
        runs = {"x @ w (3-D)": timed_grad(lambda x, w: x @ w, x, w, r, args.calls),
                "matmul_last": timed_grad(matmul_last, x, w, r, args.calls)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                times[name].append(run())
        base = statistics.median(times["x @ w (3-D)"])
        for name, values in times.items():
            med = statistics.median(values)
            print(f"  out {n:4d}  {name:12s} {med:8.1f} us   {base / med:.2f}x the 3-D product")


if __name__ == "__main__":
    main()
