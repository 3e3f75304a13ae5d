"""Decoding speed per token: fnn.generate with key/value caches vs re-running the whole sequence.

Both greedy, on the same decoder-only network (random weights) and the same prompt; the
uncached baseline runs the network over a fixed buffer of ``prompt + steps`` tokens at every
step (one compilation; causal attention makes it the same tokens). Reports ms per token after
a warm-up call of each, and their ratio, measured in one process.

    python scripts/bench_decode.py --steps 128 --blocks 4 --features 128
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--prompt", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--vocab", type=int, default=128)
    args = p.parse_args()
    total = args.prompt + args.steps
    net = fnn.serial(fnn.Embedding(args.vocab, args.features), fnn.LearnedPositions(total),
                     *[fnn.TransformerBlock(4, 4 * args.features, causal=True)
                       for _ in range(args.blocks)],
                     fnn.LayerNorm(), fnn.Dense(args.vocab))
    _, params, state = net.init(jax.random.key(0), (-1, total))
    prompt = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.prompt))

    full = jax.jit(lambda seq: net.apply(params, state, seq)[0])

    def uncached() -> np.ndarray:
        seq = np.zeros((args.batch, total), np.int32)
        seq[:, :args.prompt] = prompt
        for t in range(args.prompt, total):
            seq[:, t] = np.asarray(jnp.argmax(full(jnp.asarray(seq))[:, t - 1], -1))
        return seq

    def cached() -> np.ndarray:
        return np.asarray(fnn.generate(net, params, state, prompt, args.steps, temperature=0.0))

    times = {}
    for name, fn in (("cached", cached), ("uncached", uncached)):
        out = fn()  # warm-up: compilation
        start = time.perf_counter()
        out = fn()
        times[name] = (time.perf_counter() - start) / args.steps * 1e3
        results = out if name == "cached" else results
    same = bool((results == out).all())
    print(f"{args.blocks} blocks x {args.features} features, batch {args.batch}, prompt "
          f"{args.prompt}, {args.steps} new tokens; the same tokens: {same}")
    print(f"cached {times['cached']:.2f} ms/token, uncached {times['uncached']:.2f} ms/token, "
          f"{times['uncached'] / times['cached']:.1f}x")


if __name__ == "__main__":
    main()
