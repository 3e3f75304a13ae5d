"""Steps per second of fnn's train step against a hand-written ``jax.jit`` step.

Same model (the MNIST MLP: dropout 0.2, 784-800-800-10 ReLU), same optax Adam, same batch
size, random MNIST-shaped data; the two steps are timed alternately in this process, several
rounds, and the median is compared. Then whole epochs: fnn's scanned epoch and a hand-written
scanned epoch against the hand-written per-step loop, and the fraction of the machine's matmul
peak each reaches.

    python scripts/bench_step.py                  # batch 128
    python scripts/bench_step.py --batch 512 --rounds 7

The last line is ``ratio <fnn steps/s / hand-written steps/s>``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fnn
from fnn.train import correct, init_train_state, make_train_epoch, make_train_step, train_step_fn

SIZES = (784, 800, 800, 10)
RATE = 0.2


def fnn_net():
    layers = []
    for width in SIZES[1:-1]:
        layers += [fnn.Dropout(RATE), fnn.Dense(width), fnn.Relu]
    return fnn.serial(*layers, fnn.Dropout(RATE), fnn.Dense(SIZES[-1]))


def hand_params(key):
    params = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        k = jax.random.fold_in(key, i)
        params.append({"w": jax.nn.initializers.glorot_uniform()(k, (a, b)), "b": jnp.zeros(b)})
    return params


def hand_loss(params, x, y, key):
    h = x
    for i, layer in enumerate(params):
        keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - RATE, h.shape)
        h = jnp.where(keep, h / (1 - RATE), 0.0)
        h = h @ layer["w"] + layer["b"]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


def hand_step_fn(opt):
    def step(params, opt_state, key, x, y):
        key, sub = jax.random.split(key)
        loss, grads = jax.value_and_grad(hand_loss)(params, x, y, sub)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss
    return step


def time_it(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start


def matmul_peak(n=2048, repeats=10):
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = min(time_it(lambda: f(a), repeats) / repeats for _ in range(3))
    return 2 * n ** 3 / best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="steps per timing round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--examples", type=int, default=60000, help="examples per epoch")
    args = parser.parse_args()
    B, S = args.batch, args.steps
    rng = np.random.default_rng(0)
    x = rng.random((args.examples, 784), dtype=np.float32)
    y = rng.integers(0, 10, args.examples).astype(np.int32)
    xb, yb = jnp.asarray(x[:B]), jnp.asarray(y[:B])
    opt = optax.adam(1e-3)

    # fnn
    net = fnn_net()
    _, ts = init_train_state(net, opt, (-1, 784), jax.random.key(0))
    fnn_step = make_train_step(net, fnn.losses.softmax_cross_entropy, opt,
                               metrics={"accuracy": correct})
    batch = {"x": xb, "y": yb}
    # hand-written
    params = hand_params(jax.random.key(0))
    state = [params, opt.init(params), jax.random.key(1)]
    hand = jax.jit(hand_step_fn(opt), donate_argnums=(0, 1, 2))

    def run_fnn():
        nonlocal ts
        for _ in range(S):
            ts, m = fnn_step(ts, batch)
        return ts.params

    def run_hand():
        for _ in range(S):
            state[0], state[1], state[2], loss = hand(state[0], state[1], state[2], xb, yb)
        return state[0]

    run_fnn(), run_hand()  # compile and warm up
    fnn_t, hand_t = [], []
    for _ in range(args.rounds):
        fnn_t.append(time_it(run_fnn, 1))
        hand_t.append(time_it(run_hand, 1))
    fnn_sps, hand_sps = S / statistics.median(fnn_t), S / statistics.median(hand_t)

    # whole epochs: scanned (fnn, hand-written) vs the hand-written per-step loop
    n = args.examples
    steps = n // B
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    fnn_epoch = make_train_epoch(train_step_fn(net, fnn.losses.softmax_cross_entropy, opt,
                                               metrics={"accuracy": correct}), n, B)
    hand_fn = hand_step_fn(opt)

    def hand_epoch_fn(carry, xs, ys, key):
        order = jax.random.permutation(key, n)

        def body(carry, i):
            idx = jax.lax.dynamic_slice_in_dim(order, i * B, B)
            p, o, k, _ = hand_fn(*carry, jnp.take(xs, idx, 0), jnp.take(ys, idx, 0))
            return (p, o, k), None
        carry, _ = jax.lax.scan(body, carry, jnp.arange(steps))
        return carry
    hand_epoch = jax.jit(hand_epoch_fn, donate_argnums=(0,))
    carry = (state[0], state[1], state[2])
    host_order = np.arange(n)

    def run_fnn_epoch():
        nonlocal ts
        ts, m = fnn_epoch(ts, data, jax.random.key(2))
        return ts.params

    def run_hand_epoch():
        nonlocal carry
        carry = hand_epoch(carry, data["x"], data["y"], jax.random.key(2))
        return carry[0]

    def run_hand_loop():
        for i in range(steps):
            idx = host_order[i * B:(i + 1) * B]
            state[0], state[1], state[2], _ = hand(state[0], state[1], state[2], x[idx], y[idx])
        return state[0]

    state[0], state[1], state[2] = jax.tree_util.tree_map(jnp.copy, carry)
    run_fnn_epoch(), run_hand_epoch(), run_hand_loop()
    loop_t, fnn_e, hand_e = [], [], []
    for _ in range(max(2, args.rounds // 2)):
        loop_t.append(time_it(run_hand_loop, 1))
        fnn_e.append(time_it(run_fnn_epoch, 1))
        hand_e.append(time_it(run_hand_epoch, 1))
    loop_s, fnn_s, hand_s = map(statistics.median, (loop_t, fnn_e, hand_e))
    flops_per_step = 6 * B * sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))
    peak = matmul_peak()

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}   jax {jax.__version__}")
    print(f"batch {B}, {S} steps x {args.rounds} rounds (median), MNIST MLP, Adam")
    print(f"hand-written step      {hand_sps:9.1f} steps/s")
    print(f"fnn make_train_step    {fnn_sps:9.1f} steps/s")
    print(f"epoch of {steps} steps ({n} examples):")
    print(f"  hand-written per-step loop   {n / loop_s:10.0f} ex/s   1.00x")
    print(f"  hand-written scanned epoch   {n / hand_s:10.0f} ex/s   {loop_s / hand_s:.2f}x   "
          f"{flops_per_step * steps / hand_s / peak:.0%} of matmul peak")
    print(f"  fnn scanned epoch            {n / fnn_s:10.0f} ex/s   {loop_s / fnn_s:.2f}x   "
          f"{flops_per_step * steps / fnn_s / peak:.0%} of matmul peak")
    print(f"matmul peak (2048^2 f32): {peak / 1e9:.1f} GFLOP/s")
    print(f"ratio {fnn_sps / hand_sps:.3f}")


if __name__ == "__main__":
    main()
