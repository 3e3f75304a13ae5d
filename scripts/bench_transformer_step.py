"""The Transformer's train step in one process: fnn against the JAX peers, alternated.

Same model, data and Adam step as ``scripts/bench_peers.py --models transformer`` (its builders),
but every runner lives in this one process and they are timed in turn, ``--steps`` steps at a
time, ``--rounds`` times, so that load from other jobs falls on all of them alike. Prints the
median ms per step and the ratio of the fastest JAX peer to each.

    python scripts/bench_transformer_step.py --rounds 15
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peers  # noqa: E402  (the shared model definitions)

import fnn  # noqa: E402
from fnn.train import init_train_state, make_train_step  # noqa: E402

PEERS = {"jax-step": bench_peers.hand_model, "flax": bench_peers.flax_model,
         "equinox": bench_peers.equinox_model}


def peer_runner(name: str, x, y, opt, steps: int):
    init, apply = PEERS[name]("transformer")
    params = init(jax.random.key(0))
    if name == "equinox":
        import equinox as eqx
        params, static = eqx.partition(params, eqx.is_array)
        full = apply
        apply = lambda p, xb: full(eqx.combine(p, static), xb)  # noqa: E731

    def step(p, o, xb, yb):
        grads = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            apply(p, xb), yb).mean())(p)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o
    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [params, opt.init(params)]

    def run():
        for _ in range(steps):
            carry[0], carry[1] = step(carry[0], carry[1], x, y)
        jax.block_until_ready(carry[0])
    return run


def fnn_runner(x, y, opt, steps: int):
    net = bench_peers.fnn_model("transformer")
    _, ts = init_train_state(net, opt, (-1, *x.shape[1:]), jax.random.key(0))
    step = make_train_step(net, fnn.losses.softmax_cross_entropy, opt)
    state, batch = {"ts": ts}, {"x": x, "y": y}

    def run():
        for _ in range(steps):
            state["ts"], _ = step(state["ts"], batch)
        jax.block_until_ready(state["ts"].params)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    args = parser.parse_args()
    xs, ys = bench_peers.jax_data("transformer", bench_peers.BATCH)
    x, y = jnp.asarray(xs), jnp.asarray(ys)
    opt = optax.adam(bench_peers.LR)
    runners = {"fnn-step": fnn_runner(x, y, opt, args.steps)}
    for name in PEERS:
        module = bench_peers.NEEDS.get(name)
        if module is None or importlib.util.find_spec(module) is not None:
            runners[name] = peer_runner(name, x, y, opt, args.steps)
    med = bench_peers.alternated_medians(runners, args.rounds, args.steps)
    best = min((n for n in med if n != "fnn-step"), key=med.get)
    print(f"Transformer step (MNIST rows, 2 pre-LN blocks, width 64), batch {bench_peers.BATCH}, "
          f"Adam; median of {args.rounds} alternated rounds of {args.steps} steps "
          f"(jax {jax.__version__}, {jax.default_backend()})")
    for name, t in med.items():
        print(f"{name:<10} {t * 1e3:7.2f} ms/step   {med[best] / t:.2f}x {best}")


if __name__ == "__main__":
    main()
