"""Train the same MLP, CNN and Transformer with fnn and its peers; print examples/s, compile time, peak memory.

Models (MNIST-shaped synthetic data, batch 128, Adam 1e-3, softmax cross-entropy):

* MLP 784-800-800-10 (ReLU);
* CNN conv32(3x3, SAME)-ReLU-maxpool2-conv64(3x3, SAME)-ReLU-maxpool2-dense128-ReLU-dense10;
* Transformer on MNIST rows (28 tokens of 28 features): Dense 64, learned positions, 2 pre-LN
  blocks (4 heads, MLP 128 with exact GELU, LayerNorm epsilon 1e-5, no dropout), mean over
  tokens, Dense 10: 71,242 params in every runner (checked).

Runners (each run in its own subprocess, runners interleaved within a repeat, medians over
repeats):

* ``fnn-step`` (``fnn.train.make_train_step``), ``fnn-epoch`` (``make_train_epoch``: one
  ``lax.scan`` per epoch, shuffling inside);
* ``jax-step``: a hand-written ``jax.jit`` + optax step with donated buffers (the baseline of the
  ratio column), ``jax-epoch``: the same step scanned over an epoch;
* ``stax``, ``flax`` (linen; NNX for the Transformer, split into a graph and its params),
  ``haiku``, ``equinox``: each library's idiomatic model, with the same jitted, donated optax
  step (stax and haiku have no Transformer here);
* ``torch``: PyTorch eager (channels-last for the CNN), ``torch.optim.Adam``.

Frameworks that are not installed are skipped with a note (``pip install -e .[bench]``).
Columns: ex/s (median), ratio to ``jax-step``, first-call overhead (compile + first step, minus
a steady step; seconds), peak RSS of the subprocess (MiB, includes the framework's import), and
the machine's matmul peak (2048^2 float32 in JAX).

    python scripts/bench_peers.py                           # all runners, both models, 3 repeats
    python scripts/bench_peers.py --models cnn --runners fnn-step,fnn-epoch,torch --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

RUNNERS = ("fnn-step", "fnn-epoch", "jax-step", "jax-epoch", "stax", "flax", "haiku", "equinox",
           "torch")
MODELS = ("mlp", "cnn", "transformer")
JAX_PEERS = ("jax-step", "stax", "flax", "haiku", "equinox")  # jitted per-step peers
NO_TRANSFORMER = ("stax", "haiku")
D_MODEL, HEADS, MLP_HIDDEN, TOKENS = 64, 4, 128, 28  # the Transformer
TRANSFORMER_PARAMS = 71242
NEEDS = {"flax": "flax", "haiku": "haiku", "equinox": "equinox", "torch": "torch"}
BATCH = 128
LR = 1e-3


def compute_cast(tree, dtype: str):
    """Cast the floating leaves of ``tree`` to ``dtype`` (mixed precision: float32 master
    params, ``dtype`` compute; the cast's gradient brings the updates back to float32)."""
    import jax
    import jax.numpy as jnp
    if dtype == "float32":
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                        else a, tree)


# --------------------------------------------------------------------------- JAX models

def jax_data(model: str, n: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    shape = {"mlp": (n, 784), "cnn": (n, 28, 28, 1), "transformer": (n, TOKENS, 28)}[model]
    return rng.random(shape, dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def hand_model(model: str):
    """(init(key) -> params, apply(params, x) -> logits) written with jax.numpy and lax only."""
    import jax
    import jax.numpy as jnp
    from jax import lax
    glorot = jax.nn.initializers.glorot_uniform()

    def dense(key, a, b):
        return {"w": glorot(key, (a, b)), "b": jnp.zeros(b)}

    def conv(key, cin, cout):
        return {"w": glorot(key, (3, 3, cin, cout)), "b": jnp.zeros(cout)}

    def pool(h):  # 2x2 max pool, stride 2, as a reshape (its gradient is elementwise)
        n, hh, ww, c = h.shape
        return h.reshape(n, hh // 2, 2, ww // 2, 2, c).max(axis=(2, 4))

    if model == "transformer":
        return hand_transformer()
    if model == "mlp":
        def init(key):
            ks = jax.random.split(key, 3)
            return [dense(ks[0], 784, 800), dense(ks[1], 800, 800), dense(ks[2], 800, 10)]

        def apply(params, x):
            h = x
            for i, p in enumerate(params):
                h = h @ p["w"] + p["b"]
                if i < 2:
                    h = jax.nn.relu(h)
            return h
        return init, apply

    def init(key):
        ks = jax.random.split(key, 4)
        return {"c1": conv(ks[0], 1, 32), "c2": conv(ks[1], 32, 64),
                "d1": dense(ks[2], 7 * 7 * 64, 128), "d2": dense(ks[3], 128, 10)}

    def apply(params, x):
        h = x
        for name in ("c1", "c2"):
            h = lax.conv_general_dilated(h, params[name]["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = pool(jax.nn.relu(h + params[name]["b"]))
        h = h.reshape(h.shape[0], -1)
        h = jax.nn.relu(h @ params["d1"]["w"] + params["d1"]["b"])
        return h @ params["d2"]["w"] + params["d2"]["b"]
    return init, apply


def hand_transformer():
    """The Transformer in jax.numpy: attention as two einsums and a softmax."""
    import jax
    import jax.numpy as jnp
    glorot = jax.nn.initializers.glorot_uniform()
    d, h, m = D_MODEL, HEADS, MLP_HIDDEN

    def dense(key, a, b):
        return {"w": glorot(key, (a, b)), "b": jnp.zeros(b)}

    def init(key):
        ks = iter(jax.random.split(key, 16))
        blocks = [{"ln1": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
                   "q": dense(next(ks), d, d), "k": dense(next(ks), d, d),
                   "v": dense(next(ks), d, d), "o": dense(next(ks), d, d),
                   "ln2": {"scale": jnp.ones(d), "bias": jnp.zeros(d)},
                   "mlp_in": dense(next(ks), d, m), "mlp_out": dense(next(ks), m, d)}
                  for _ in range(2)]
        return {"embed": dense(next(ks), 28, d),
                "pos": 0.01 * jax.random.normal(next(ks), (TOKENS, d)),
                "blocks": blocks, "head": dense(next(ks), d, 10)}

    def lin(p, x):
        return x @ p["w"] + p["b"]

    def norm(p, x):
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]

    def attend(p, x):
        b, t, _ = x.shape
        q, k, v = (lin(p[n], x).reshape(b, t, h, d // h) for n in ("q", "k", "v"))
        w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // h), axis=-1)
        return lin(p["o"], jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d))

    def apply(params, x):
        y = lin(params["embed"], x) + params["pos"]
        for p in params["blocks"]:
            y = y + attend(p, norm(p["ln1"], y))
            y = y + lin(p["mlp_out"], jax.nn.gelu(lin(p["mlp_in"], norm(p["ln2"], y)),
                                                  approximate=False))
        return lin(params["head"], y.mean(axis=1))
    return init, apply


def stax_model(model: str):
    import jax
    from jax.example_libraries import stax
    if model == "mlp":
        init, apply = stax.serial(stax.Dense(800), stax.Relu, stax.Dense(800), stax.Relu,
                                  stax.Dense(10))
        shape = (-1, 784)
    else:
        init, apply = stax.serial(
            stax.GeneralConv(("NHWC", "HWIO", "NHWC"), 32, (3, 3), padding="SAME"),
            stax.Relu, stax.MaxPool((2, 2), (2, 2), spec="NHWC"),
            stax.GeneralConv(("NHWC", "HWIO", "NHWC"), 64, (3, 3), padding="SAME"),
            stax.Relu, stax.MaxPool((2, 2), (2, 2), spec="NHWC"),
            stax.Flatten, stax.Dense(128), stax.Relu, stax.Dense(10))
        shape = (-1, 28, 28, 1)
    return (lambda key: init(key, shape)[1]), apply


def flax_nnx_transformer():
    """The Transformer in Flax NNX, split into its graph and params (a pytree for optax)."""
    import jax
    from flax import nnx
    d = D_MODEL

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(HEADS, d, decode=False, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
            self.mlp_in = nnx.Linear(d, MLP_HIDDEN, rngs=rngs)
            self.mlp_out = nnx.Linear(MLP_HIDDEN, d, rngs=rngs)

        def __call__(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln2(x)), approximate=False))

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Linear(28, d, rngs=rngs)
            self.pos = nnx.Param(0.01 * jax.random.normal(rngs.params(), (TOKENS, d)))
            self.block1, self.block2 = Block(rngs), Block(rngs)
            self.head = nnx.Linear(d, 10, rngs=rngs)

        def __call__(self, x):
            x = self.embed(x) + self.pos[...]
            x = self.block2(self.block1(x))
            return self.head(x.mean(axis=1))

    graph = {}

    def init(key):
        graph["def"], params = nnx.split(Net(nnx.Rngs(key)))
        return params

    return init, lambda params, x: nnx.merge(graph["def"], params)(x)


def flax_model(model: str):
    import flax.linen as nn
    import jax.numpy as jnp
    if model == "transformer":
        return flax_nnx_transformer()

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Dense(800)(x))
            x = nn.relu(nn.Dense(800)(x))
            return nn.Dense(10)(x)

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
            x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), (2, 2))
            x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
            return nn.Dense(10)(x)

    net = MLP() if model == "mlp" else CNN()
    shape = (1, 784) if model == "mlp" else (1, 28, 28, 1)
    return (lambda key: net.init(key, jnp.zeros(shape))), net.apply


def haiku_model(model: str):
    import haiku as hk
    import jax
    import jax.numpy as jnp

    def forward(x):
        if model == "mlp":
            return hk.nets.MLP([800, 800, 10])(x)
        x = hk.max_pool(jax.nn.relu(hk.Conv2D(32, 3)(x)), 2, 2, "VALID")
        x = hk.max_pool(jax.nn.relu(hk.Conv2D(64, 3)(x)), 2, 2, "VALID")
        x = jax.nn.relu(hk.Linear(128)(hk.Flatten()(x)))
        return hk.Linear(10)(x)

    net = hk.without_apply_rng(hk.transform(forward))
    shape = (1, 784) if model == "mlp" else (1, 28, 28, 1)
    return (lambda key: net.init(key, jnp.zeros(shape))), net.apply


def equinox_transformer():
    """The Transformer in Equinox: per-example modules, vmapped over the batch (and tokens)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    d = D_MODEL

    class Block(eqx.Module):
        ln1: eqx.nn.LayerNorm
        attn: eqx.nn.MultiheadAttention
        ln2: eqx.nn.LayerNorm
        mlp_in: eqx.nn.Linear
        mlp_out: eqx.nn.Linear

        def __init__(self, key):
            k1, k2, k3 = jax.random.split(key, 3)
            self.ln1, self.ln2 = eqx.nn.LayerNorm(d, eps=1e-5), eqx.nn.LayerNorm(d, eps=1e-5)
            self.attn = eqx.nn.MultiheadAttention(HEADS, d, use_query_bias=True,
                                                  use_key_bias=True, use_value_bias=True,
                                                  use_output_bias=True, key=k1)
            self.mlp_in = eqx.nn.Linear(d, MLP_HIDDEN, key=k2)
            self.mlp_out = eqx.nn.Linear(MLP_HIDDEN, d, key=k3)

        def __call__(self, x):  # x (tokens, d)
            h = jax.vmap(self.ln1)(x)
            x = x + self.attn(h, h, h)
            h = jax.nn.gelu(jax.vmap(self.mlp_in)(jax.vmap(self.ln2)(x)), approximate=False)
            return x + jax.vmap(self.mlp_out)(h)

    class Net(eqx.Module):
        embed: eqx.nn.Linear
        pos: jax.Array
        blocks: tuple
        head: eqx.nn.Linear

        def __init__(self, key):
            ks = jax.random.split(key, 5)
            self.embed = eqx.nn.Linear(28, d, key=ks[0])
            self.pos = 0.01 * jax.random.normal(ks[1], (TOKENS, d))
            self.blocks = (Block(ks[2]), Block(ks[3]))
            self.head = eqx.nn.Linear(d, 10, key=ks[4])

        def __call__(self, x):  # one example (tokens, 28)
            h = jax.vmap(self.embed)(x) + self.pos
            for block in self.blocks:
                h = block(h)
            return self.head(jnp.mean(h, axis=0))

    return Net, lambda net, x: jax.vmap(lambda e: net(e))(x)


def equinox_model(model: str):
    import equinox as eqx
    import jax
    if model == "transformer":
        return equinox_transformer()

    def init(key):
        ks = jax.random.split(key, 4)
        if model == "mlp":
            return eqx.nn.MLP(784, 10, 800, 2, activation=jax.nn.relu, key=ks[0])
        return [eqx.nn.Conv2d(1, 32, 3, padding=1, key=ks[0]),
                eqx.nn.Conv2d(32, 64, 3, padding=1, key=ks[1]),
                eqx.nn.Linear(7 * 7 * 64, 128, key=ks[2]), eqx.nn.Linear(128, 10, key=ks[3])]

    pool = eqx.nn.MaxPool2d(2, 2)

    def one(net, x):  # one example; equinox layers are per-example (channels first)
        if model == "mlp":
            return net(x)
        c1, c2, d1, d2 = net
        h = pool(jax.nn.relu(c1(x.transpose(2, 0, 1))))
        h = pool(jax.nn.relu(c2(h)))
        return d2(jax.nn.relu(d1(h.reshape(-1))))

    return init, lambda net, x: jax.vmap(one, in_axes=(None, 0))(net, x)


def fnn_model(model: str, dtype: str = "float32"):
    import fnn
    net = fnn_layers(model)
    if dtype == "float32":
        return net

    def apply(params, state, x, **kwargs):
        y, state = net.apply(compute_cast(params, dtype), state, x.astype(dtype), **kwargs)
        return y.astype("float32"), state
    return fnn.Layer(net.init, apply)


def fnn_layers(model: str):
    import fnn
    if model == "mlp":
        return fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(800), fnn.Relu, fnn.Dense(10))
    if model == "transformer":
        return fnn.serial(fnn.Dense(D_MODEL), fnn.LearnedPositions(TOKENS),
                          fnn.TransformerBlock(HEADS, MLP_HIDDEN),
                          fnn.TransformerBlock(HEADS, MLP_HIDDEN),
                          fnn.GlobalAvgPool(), fnn.Dense(10))
    return fnn.serial(fnn.Conv2D(32, 3), fnn.Relu, fnn.MaxPool2D(2),
                      fnn.Conv2D(64, 3), fnn.Relu, fnn.MaxPool2D(2),
                      fnn.Flatten(), fnn.Dense(128), fnn.Relu, fnn.Dense(10))


# --------------------------------------------------------------------------- one run

def run_jax(runner: str, model: str, steps: int, dtype: str = "float32") -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    opt = optax.adam(LR)
    n = steps * BATCH
    x, y = jax_data(model, n)
    shape = (-1, *x.shape[1:])

    if runner.startswith("fnn"):
        import fnn
        from fnn.train import init_train_state, make_train_epoch, make_train_step, train_step_fn
        net = fnn_model(model, dtype)
        _, ts = init_train_state(net, opt, shape, jax.random.key(0))
        count = fnn.core.num_params(ts.params)
        loss = fnn.losses.softmax_cross_entropy
        if runner == "fnn-epoch":
            epoch = make_train_epoch(train_step_fn(net, loss, opt), n, BATCH)
            data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
            state = {"ts": ts}

            def run_epoch(i):
                state["ts"], _ = epoch(state["ts"], data, jax.random.key(i))
                return state["ts"].params
            return {**time_epochs(run_epoch, n), "params": count}
        step = make_train_step(net, loss, opt)
        batches = [{"x": jnp.asarray(x[i * BATCH:(i + 1) * BATCH]),
                    "y": jnp.asarray(y[i * BATCH:(i + 1) * BATCH])} for i in range(steps)]
        state = {"ts": ts}

        def run_step(i):
            state["ts"], _ = step(state["ts"], batches[i % steps])
            return state["ts"].params
        return {**time_steps(run_step, steps), "params": count}

    builders = {"jax-step": hand_model, "jax-epoch": hand_model, "stax": stax_model,
                "flax": flax_model, "haiku": haiku_model, "equinox": equinox_model}
    init, apply = builders[runner](model)
    params = init(jax.random.key(0))
    if runner == "equinox":
        import equinox as eqx
        params, static = eqx.partition(params, eqx.is_array)
        apply_full = apply
        apply = lambda p, xb: apply_full(eqx.combine(p, static), xb)  # noqa: E731
    count = sum(int(a.size) for a in jax.tree_util.tree_leaves(params))

    def loss_fn(p, xb, yb):
        logits = apply(compute_cast(p, dtype), xb.astype(dtype)).astype("float32")
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step_fn(p, o, xb, yb):
        loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, o = opt.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    carry = {"p": params, "o": opt.init(params)}
    if runner == "jax-epoch":
        def epoch_fn(p, o, xs, ys, key):
            order = jax.random.permutation(key, n)

            def body(c, i):
                idx = jax.lax.dynamic_slice_in_dim(order, i * BATCH, BATCH)
                p, o, _ = step_fn(*c, jnp.take(xs, idx, 0), jnp.take(ys, idx, 0))
                return (p, o), None
            (p, o), _ = jax.lax.scan(body, (p, o), jnp.arange(steps))
            return p, o
        epoch = jax.jit(epoch_fn, donate_argnums=(0, 1))
        xs, ys = jnp.asarray(x), jnp.asarray(y)

        def run_epoch(i):
            carry["p"], carry["o"] = epoch(carry["p"], carry["o"], xs, ys, jax.random.key(i))
            return carry["p"]
        return {**time_epochs(run_epoch, n), "params": count}

    step = jax.jit(step_fn, donate_argnums=(0, 1))
    batches = [(jnp.asarray(x[i * BATCH:(i + 1) * BATCH]), jnp.asarray(y[i * BATCH:(i + 1) * BATCH]))
               for i in range(steps)]

    def run_step(i):
        carry["p"], carry["o"], _ = step(carry["p"], carry["o"], *batches[i % steps])
        return carry["p"]
    return {**time_steps(run_step, steps), "params": count}


def run_torch(model: str, steps: int) -> dict:
    import numpy as np
    import torch
    from torch import nn
    torch.manual_seed(0)
    n = steps * BATCH
    x, y = jax_data(model, n)
    if model == "mlp":
        net = nn.Sequential(nn.Linear(784, 800), nn.ReLU(), nn.Linear(800, 800), nn.ReLU(),
                            nn.Linear(800, 10))
        xt = torch.from_numpy(x)
    elif model == "transformer":
        net = TorchTransformer(torch, nn)
        xt = torch.from_numpy(x)
    else:
        net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(7 * 7 * 64, 128), nn.ReLU(), nn.Linear(128, 10))
        net = net.to(memory_format=torch.channels_last)
        xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).contiguous(
            memory_format=torch.channels_last)
    yt = torch.from_numpy(y.astype(np.int64))
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    batches = [(xt[i * BATCH:(i + 1) * BATCH], yt[i * BATCH:(i + 1) * BATCH])
               for i in range(steps)]

    def run_step(i):
        xb, yb = batches[i % steps]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(xb), yb)
        loss.backward()
        opt.step()
        return loss
    count = sum(p.numel() for p in net.parameters())
    return {**time_steps(run_step, steps, block=lambda out: out.item()), "params": count}


def TorchTransformer(torch, nn):
    """The Transformer in PyTorch: ``nn.TransformerEncoderLayer`` (pre-LN, exact GELU)."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(28, D_MODEL)
            self.pos = nn.Parameter(0.01 * torch.randn(TOKENS, D_MODEL))
            self.blocks = nn.Sequential(*(nn.TransformerEncoderLayer(
                D_MODEL, HEADS, MLP_HIDDEN, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True) for _ in range(2)))
            self.head = nn.Linear(D_MODEL, 10)

        def forward(self, x):
            return self.head(self.blocks(self.embed(x) + self.pos).mean(dim=1))
    return Net()


def time_steps(run_step, steps: int, block=None) -> dict:
    import jax
    block = block or jax.block_until_ready
    start = time.perf_counter()
    block(run_step(0))
    first = time.perf_counter() - start
    block(run_step(1))  # one more warm-up step (a donated-buffer layout may change once)
    start = time.perf_counter()
    for i in range(steps):
        out = run_step(i)
    block(out)
    per_step = (time.perf_counter() - start) / steps
    return {"ex_s": BATCH / per_step, "compile_s": max(first - per_step, 0.0)}


def time_epochs(run_epoch, n: int) -> dict:
    import jax
    start = time.perf_counter()
    jax.block_until_ready(run_epoch(0))
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(run_epoch(1))
    per_epoch = time.perf_counter() - start
    return {"ex_s": n / per_epoch, "compile_s": max(first - per_epoch, 0.0)}


def alternated_medians(runners: dict, rounds: int, steps: int) -> dict[str, float]:
    """Seconds per step of each ``runners[name]()`` (which runs ``steps`` steps and blocks), the
    median of ``rounds`` rounds that time every runner in turn (after one warm-up call each), so
    that load from other jobs falls on all of them alike."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            out = f(a)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * n ** 3 / best


def worker(runner: str, model: str, steps: int, dtype: str) -> dict:
    if runner == "peak":
        return {"flops": matmul_peak()}
    if runner == "torch":
        if dtype != "float32":
            raise SystemExit(f"torch runner: only float32 here, not {dtype}")
        result = run_torch(model, steps)
    else:
        result = run_jax(runner, model, steps, dtype)
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# --------------------------------------------------------------------------- driver

def available(runner: str) -> bool:
    module = NEEDS.get(runner)
    if module is None:
        return True
    import importlib.util
    return importlib.util.find_spec(module) is not None


def spawn(runner: str, model: str, steps: int, timeout: float, dtype: str = "float32"
          ) -> dict | str:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", runner, model, str(steps),
           dtype]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"failed (exit {proc.returncode}): {tail}"
    return json.loads(lines[-1])


def headline(rows: dict) -> list[str]:
    """The issue's two ratios: fnn's step against the fastest jitted JAX peer, fnn's epoch mode
    against PyTorch eager."""
    speed = {r: v["ex_s"] for r, v in rows.items() if isinstance(v, dict)}
    lines = []
    peers = {r: speed[r] for r in JAX_PEERS if r in speed}
    if "fnn-step" in speed and peers:
        best = max(peers, key=peers.get)
        lines.append(f"fnn-step / fastest JAX peer ({best}): {speed['fnn-step'] / peers[best]:.2f}")
    if "fnn-epoch" in speed and "torch" in speed:
        lines.append(f"fnn-epoch / torch: {speed['fnn-epoch'] / speed['torch']:.2f}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=str, default="mlp=100,cnn=40,transformer=50",
                        help="timed steps per run (an epoch-mode run scans this many steps)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="compute dtype of the JAX runners (float32 master params)")
    parser.add_argument("--json", help="also write the medians to this JSON file")
    parser.add_argument("--worker", nargs=4, metavar=("RUNNER", "MODEL", "STEPS", "DTYPE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        runner, model, steps, dtype = args.worker
        print(json.dumps(worker(runner, model, int(steps), dtype)), flush=True)
        return

    models = [m for m in args.models.split(",") if m]
    runners = [r for r in args.runners.split(",") if r]
    for name, allowed in (("model", MODELS), ("runner", RUNNERS)):
        bad = [v for v in (models if name == "model" else runners) if v not in allowed]
        if bad:
            parser.error(f"unknown {name} {bad[0]!r}; choose from {', '.join(allowed)}")
    steps = dict(item.split("=") for item in args.steps.split(","))
    skipped = [r for r in runners if not available(r)]
    runners = [r for r in runners if r not in skipped]

    import jax
    print(f"jax {jax.__version__}, {jax.devices()[0].platform} x{jax.device_count()}, "
          f"{os.cpu_count()} CPUs; batch {BATCH}, Adam, {args.dtype} compute; medians of {args.repeats} interleaved "
          f"repeats, one subprocess per run", flush=True)
    for r in skipped:
        print(f"note: {r} skipped ({NEEDS[r]} is not installed; pip install -e .[bench])")
    results: dict[tuple[str, str], list[dict]] = {}
    errors: dict[tuple[str, str], str] = {}
    peaks = []
    for rep in range(args.repeats):
        peak = spawn("peak", "-", 0, args.timeout)
        if isinstance(peak, dict):
            peaks.append(peak["flops"])
        for model in models:
            for runner in runners:
                if model == "transformer" and runner in NO_TRANSFORMER:
                    continue
                out = spawn(runner, model, int(steps[model]), args.timeout, args.dtype)
                if isinstance(out, str):
                    errors[(model, runner)] = out
                else:
                    results.setdefault((model, runner), []).append(out)
                print(f"  repeat {rep + 1}: {model} {runner}: "
                      f"{out if isinstance(out, str) else round(out['ex_s'])}", flush=True)

    summary: dict = {"dtype": args.dtype, "jax": jax.__version__, "models": {}}
    for model in models:
        print(f"\n{model.upper()} ({steps[model]} steps per run)")
        print(f"| {'runner':<10} | {'ex/s':>8} | {'vs jax-step':>11} | {'compile s':>9} | "
              f"{'peak RSS MiB':>12} |")
        print(f"|{'-' * 12}|{'-' * 10}|{'-' * 13}|{'-' * 11}|{'-' * 14}|")
        base = results.get((model, "jax-step"))
        base_ex = statistics.median(r["ex_s"] for r in base) if base else None
        rows = summary["models"][model] = {}
        for runner in runners:
            if model == "transformer" and runner in NO_TRANSFORMER:
                continue
            runs = results.get((model, runner))
            if not runs:
                rows[runner] = errors.get((model, runner), "no result")
                print(f"| {runner:<10} | {rows[runner]} |")
                continue
            ex = statistics.median(r["ex_s"] for r in runs)
            ratio = ex / base_ex if base_ex else None
            comp = statistics.median(r["compile_s"] for r in runs)
            rss = statistics.median(r["rss_mib"] for r in runs)
            rows[runner] = {"ex_s": ex, "vs_jax_step": ratio, "compile_s": comp, "rss_mib": rss}
            ratio_text = f"{ratio:.2f}" if ratio else "-"
            print(f"| {runner:<10} | {ex:8.0f} | {ratio_text:>11} | {comp:9.2f} | {rss:12.0f} |")
        counts = {r: runs[0]["params"] for (m, r), runs in results.items() if m == model}
        if len(set(counts.values())) > 1:
            raise SystemExit(f"{model}: the runners' models differ in size: {counts}")
        if model == "transformer" and counts and set(counts.values()) != {TRANSFORMER_PARAMS}:
            raise SystemExit(f"transformer: expected {TRANSFORMER_PARAMS} params, got {counts}")
        for line in headline(rows):
            print(line)
    if peaks:
        summary["matmul_gflops"] = statistics.median(peaks) / 1e9
        print(f"\nmatmul peak (JAX, 2048^2 float32): {summary['matmul_gflops']:.1f} GFLOP/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
