"""Gradient time of a deep stack of convolutions: scanned (``lax.scan``) vs unrolled.

The stack: ``layers`` x (3x3 SAME convolution, ``channels`` -> ``channels``, then tanh) on a
``(batch, size, size, channels)`` input; the timed function is the jitted gradient of
``sum(out ** 2)`` with respect to all kernels and the input. Each of four variants is compiled
once and then timed alternately with the others, ``rounds`` times (median):

* gradient ``xla``: ``lax.conv_general_dilated`` and XLA's own gradient;
* gradient ``scan_friendly``: ``fnn.layers.conv_ops.conv`` with its custom VJP (what fnn's
  ``Conv1D``/``Conv2D`` use on CPU);

each scanned and unrolled. The last line is the scanned/unrolled ratio of fnn's convolution
against the faster unrolled variant.

    python scripts/bench_conv_scan.py                  # 200 layers, 16 channels, 7x7, batch 64
    python scripts/bench_conv_scan.py --layers 50 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.layers.conv_ops import conv


def make(method: str, scanned: bool, layers: int):
    def layer(h, w):
        return jnp.tanh(conv(h, w, (1, 1), ((1, 1), (1, 1)), method=method))

    def loss(ws, x):
        if scanned:
            h, _ = lax.scan(lambda h, w: (layer(h, w), None), x, ws)
        else:
            h = x
            for i in range(layers):
                h = layer(h, ws[i])
        return jnp.sum(h ** 2)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=7)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    c = args.channels
    ws = jnp.asarray(rng.standard_normal((args.layers, 3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
    x = jnp.asarray(rng.standard_normal((args.batch, args.size, args.size, c)), jnp.float32)
    variants = {(m, s): make(m, s, args.layers)
                for m in ("xla", "scan_friendly") for s in (True, False)}
    compile_s = {}
    for key, fn in variants.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(ws, x))
        compile_s[key] = time.perf_counter() - start
    times: dict = {key: [] for key in variants}
    for _ in range(args.rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(ws, x))
            times[key].append(time.perf_counter() - start)
    med = {key: statistics.median(t) for key, t in times.items()}
    print(f"{args.layers} layers of 3x3 conv, {c} channels, {args.size}x{args.size}, batch "
          f"{args.batch}; gradient step, median of {args.rounds} alternated rounds "
          f"(jax {jax.__version__}, {jax.default_backend()})")
    print(f"| gradient      | scanned ms | unrolled ms | scanned / unrolled | compile s (scan / unrolled) |")
    print("|---|---|---|---|---|")
    for m in ("xla", "scan_friendly"):
        s, u = med[(m, True)] * 1e3, med[(m, False)] * 1e3
        print(f"| {m:<13} | {s:10.1f} | {u:11.1f} | {s / u:18.2f} | "
              f"{compile_s[(m, True)]:.1f} / {compile_s[(m, False)]:.1f} |")
    best_unrolled = min(med[("xla", False)], med[("scan_friendly", False)])
    print(f"ratio {med[('scan_friendly', True)] / best_unrolled:.2f}  "
          f"(fnn scanned / fastest unrolled)")


if __name__ == "__main__":
    main()
