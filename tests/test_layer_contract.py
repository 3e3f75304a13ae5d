"""The layer contract, checked for every registered layer kind.

For each kind: ``init``'s output shape is the shape ``apply`` produces; ``jit`` equals eager;
gradients (params and float inputs) match central finite differences in float64; the spec
round-trips (``from_spec(layer.spec)`` has the same spec and the same outputs); it exports with
``jax.export`` and a symbolic batch (as ``fnn.export`` does); ``repr`` and
``fnn.summary`` work; and the network saved with ``fnn.save`` loads in a fresh process with
identical outputs. A new kind without an entry in ``CASES`` fails ``test_every_kind_has_a_case``.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core import registered_layers

# kind -> (a layer of that kind, its input shape, whether apply runs with train=True and an rng)
CASES = {
    "Activation": (lambda: fnn.Activation("elu"), (-1, 5), False),
    "AvgPool1D": (lambda: fnn.AvgPool1D(2, padding="SAME"), (-1, 5, 2), False),
    "AvgPool2D": (lambda: fnn.AvgPool2D(2), (-1, 4, 4, 2), False),
    "AvgPool3D": (lambda: fnn.AvgPool3D(2, strides=1, padding=1), (-1, 2, 3, 2, 2), False),
    "BatchNorm": (lambda: fnn.BatchNorm(momentum=0.9), (-1, 5), True),
    "Bidirectional": (lambda: fnn.Bidirectional(fnn.LSTM(3)), (-1, 4, 2), False),
    "Conv1D": (lambda: fnn.Conv1D(3, 3, strides=2), (-1, 7, 2), False),
    "Conv2D": (lambda: fnn.Conv2D(3, (2, 3), padding="VALID", dilation=(1, 2)), (-1, 5, 6, 2), False),
    "Conv3D": (lambda: fnn.Conv3D(2, (2, 1, 2), strides=(1, 2, 1)), (-1, 3, 3, 2, 2), False),
    "ConvTranspose1D": (lambda: fnn.ConvTranspose1D(2, 3, strides=2, padding=1, output_padding=1),
                        (-1, 4, 2), False),
    "ConvTranspose2D": (lambda: fnn.ConvTranspose2D(2, (2, 3), strides=(2, 1), dilation=(1, 2)),
                        (-1, 3, 3, 2), False),
    "Dense": (lambda: fnn.Dense(3, w_init="he_normal"), (-1, 5), False),
    "Dropout": (lambda: fnn.Dropout(0.3), (-1, 5), True),
    # no dtypes given: a float64 run stays float64 (tests/test_dtypes.py checks the dtypes)
    "DtypePolicy": (lambda: fnn.DtypePolicy(fnn.serial(fnn.Dense(3), fnn.BatchNorm)), (-1, 5), True),
    "Elu": (lambda: fnn.Elu(alpha=0.5), (-1, 5), False),
    "Embedding": (lambda: fnn.Embedding(7, 3), (-1, 4), False),
    "Flatten": (lambda: fnn.Flatten(), (-1, 2, 3), False),
    # frozen: inference mode even in training (dropout off), no gradient into its own params
    "Frozen": (lambda: fnn.serial(fnn.Frozen(fnn.Dropout(0.3)), fnn.Dense(2)), (-1, 5), True),
    "GRU": (lambda: fnn.GRU(3, return_sequences=False), (-1, 4, 2), False),
    "Gelu": (lambda: fnn.Gelu(approximate=True), (-1, 5), False),
    "GlobalAvgPool": (lambda: fnn.GlobalAvgPool(), (-1, 3, 3, 2), False),
    "GlobalMaxPool": (lambda: fnn.GlobalMaxPool(), (-1, 3, 3, 2), False),
    "GroupNorm": (lambda: fnn.GroupNorm(2), (-1, 3, 4), False),
    "Identity": (lambda: fnn.Identity(), (-1, 5), False),
    "InstanceNorm": (lambda: fnn.InstanceNorm(), (-1, 3, 2, 2), False),
    "LSTM": (lambda: fnn.LSTM(3, forget_bias=0.5), (-1, 4, 2), False),
    "LayerNorm": (lambda: fnn.LayerNorm(), (-1, 5), False),
    "LeakyRelu": (lambda: fnn.LeakyRelu(alpha=0.2), (-1, 5), False),
    "LogSoftmax": (lambda: fnn.LogSoftmax(), (-1, 5), False),
    "MaxPool1D": (lambda: fnn.MaxPool1D(2), (-1, 6, 2), False),
    "MaxPool2D": (lambda: fnn.MaxPool2D(2, strides=1), (-1, 4, 4, 2), False),
    "MaxPool3D": (lambda: fnn.MaxPool3D((1, 2, 2)), (-1, 2, 4, 4, 2), False),
    "PRelu": (lambda: fnn.PRelu(per_channel=True), (-1, 5), False),
    "RMSNorm": (lambda: fnn.RMSNorm(), (-1, 5), False),
    "RNN": (lambda: fnn.RNN({"GRUCell": {"units": 3}}), (-1, 4, 2), False),
    "RRelu": (lambda: fnn.RRelu(), (-1, 5), True),
    "Repeat": (lambda: fnn.repeat(fnn.serial(fnn.Dense(3), fnn.BatchNorm, fnn.Dropout(0.2)), 3),
               (-1, 3), True),
    "Relu": (lambda: fnn.Relu(), (-1, 5), False),
    "Reshape": (lambda: fnn.Reshape((3, 2)), (-1, 6), False),
    "Selu": (lambda: fnn.Selu(), (-1, 5), False),
    "Sigmoid": (lambda: fnn.Sigmoid(), (-1, 5), False),
    "SimpleRNN": (lambda: fnn.SimpleRNN(3), (-1, 4, 2), False),
    "Softmax": (lambda: fnn.Softmax(), (-1, 5), False),
    "Softplus": (lambda: fnn.Softplus(), (-1, 5), False),
    "StripMask": (lambda: fnn.serial(fnn.SimpleRNN(3), fnn.StripMask()), ((-1, 4, 2), (-1,)), False),
    "Swish": (lambda: fnn.Swish(learnable=True), (-1, 5), False),
    "Tanh": (lambda: fnn.Tanh(), (-1, 5), False),
    "Upsample2D": (lambda: fnn.Upsample2D((2, 3), method="bilinear"), (-1, 2, 3, 2), False),
    "fan_in_concat": (lambda: fnn.fan_in_concat(), ((-1, 2), (-1, 3)), False),
    "fan_in_sum": (lambda: fnn.fan_in_sum(), ((-1, 3), (-1, 3)), False),
    "fan_out": (lambda: fnn.serial(fnn.fan_out(2), fnn.fan_in_sum()), (-1, 3), False),
    "parallel": (lambda: fnn.parallel(fnn.Dense(2), fnn.Tanh), ((-1, 3), (-1, 2)), False),
    "residual": (lambda: fnn.residual(fnn.Dense(3), fnn.Tanh, shortcut=fnn.Dense(3)), (-1, 3), False),
    "serial": (lambda: fnn.serial(fnn.Dense(4), fnn.BatchNorm, fnn.Relu, fnn.Dense(2)), (-1, 3), True),
    "shared": (lambda: fnn.shared(fnn.Dense(2, name="tower")), ((-1, 3), (-1, 3)), False),
}

KINDS = sorted(CASES)


def _is_shape(s) -> bool:
    return isinstance(s, tuple) and all(isinstance(d, int) for d in s)


def _inputs(kind: str, shape, seed: int = 0):
    """Concrete inputs for a (possibly nested) input shape, batch 2; ints for Embedding,
    sequence lengths for a masked input."""
    rng = np.random.default_rng(seed)
    if kind == "StripMask":
        return (rng.normal(size=(2,) + shape[0][1:]), np.array([4, 2]))
    if _is_shape(shape):
        concrete = (2,) + shape[1:]
        if kind == "Embedding":
            return rng.integers(0, 7, size=concrete)
        return rng.normal(size=concrete)
    return tuple(_inputs(kind, s, seed + i + 1) for i, s in enumerate(shape))


def _apply_kwargs(train: bool) -> dict:
    return {"rng": jax.random.key(7), "train": True} if train else {}


def _built(kind: str):
    make, shape, train = CASES[kind]
    layer = make()
    _, params, state = layer.init(jax.random.key(1), shape)
    x = jax.tree.map(jnp.asarray, _inputs(kind, shape))
    return layer, shape, train, params, state, x


def test_every_kind_has_a_case():
    package = Path(fnn.__file__).parent  # kinds defined in fnn's files, not by tests or doctests
    fnn_kinds = sorted(kind for kind, constructor in registered_layers().items()
                       if Path(inspect.unwrap(constructor).__code__.co_filename).is_relative_to(package))
    assert fnn_kinds == KINDS, "add each new layer kind to CASES"


@pytest.mark.parametrize("kind", KINDS)
def test_init_shapes_equal_apply_shapes_and_jit_equals_eager(kind):
    layer, shape, train, params, state, x = _built(kind)
    out_shape = layer.init(jax.random.key(1), shape)[0]
    y, _ = layer.apply(params, state, x, **_apply_kwargs(train))
    got = jax.tree.map(lambda a: (-1,) + tuple(a.shape[1:]), y)
    expected = jax.tree.map(tuple, out_shape, is_leaf=_is_shape)
    assert jax.tree.leaves(got, is_leaf=_is_shape) == jax.tree.leaves(expected, is_leaf=_is_shape)
    y_jit, s_jit = jax.jit(lambda p, s, x: layer.apply(p, s, x, **_apply_kwargs(train)))(params, state, x)
    _, s_eager = layer.apply(params, state, x, **_apply_kwargs(train))
    for a, b in zip(jax.tree.leaves((y, s_eager)), jax.tree.leaves((y_jit, s_jit))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_exports_with_a_symbolic_batch(kind):
    """``jax.export`` with one symbolic batch for every input (what ``fnn.export`` does), in
    inference mode, run on a batch of 2, equals ``apply``."""
    layer, shape, train, params, state, x = _built(kind)
    (b,) = jax.export.symbolic_shape("b")
    specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct((b, *a.shape[1:]), a.dtype), x)
    serve = jax.jit(lambda x: layer.apply(params, state, x)[0])
    exported = jax.export.export(serve)(specs)
    for a, c in zip(jax.tree.leaves(exported.call(x)), jax.tree.leaves(layer.apply(params, state, x)[0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_finite_differences(kind):
    with jax.enable_x64(True):
        layer, shape, train, params, state, x = _built(kind)
        to64 = lambda t: jax.tree.map(
            lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
        params, state, x = to64(params), to64(state), to64(x)
        y, _ = layer.apply(params, state, x, **_apply_kwargs(train))
        cotangent = jax.tree.map(lambda a: jnp.asarray(np.random.default_rng(3).normal(size=a.shape)), y)

        def objective(p, xf):
            out, _ = layer.apply(p, state, xf, **_apply_kwargs(train))
            return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out), jax.tree.leaves(cotangent)))

        float_x = x if all(jnp.issubdtype(a.dtype, jnp.floating) for a in jax.tree.leaves(x)) else None
        if kind == "StripMask":
            float_x = None
        wrt = (params, float_x) if float_x is not None else (params,)
        f = objective if float_x is not None else (lambda p: objective(p, x))
        if not jax.tree.leaves(wrt):
            pytest.skip("no params and no float input")
        jax.test_util.check_grads(f, wrt, order=1, modes=["rev"], eps=1e-6, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_spec_round_trip_repr_and_summary(kind):
    layer, shape, train, params, state, x = _built(kind)
    spec = layer.spec
    assert json.loads(json.dumps(spec)) == spec
    rebuilt = fnn.from_spec(spec)
    assert rebuilt.spec == spec and rebuilt.kind == layer.kind
    a, _ = layer.apply(params, state, x, **_apply_kwargs(train))
    b, _ = rebuilt.apply(params, state, x, **_apply_kwargs(train))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert repr(layer).startswith(layer.kind + "(")
    summary = fnn.summary(layer, shape)
    assert summary.trainable_params == fnn.num_params(params)
    assert "Trainable params" in str(summary)


def test_every_kind_saves_and_loads_in_a_fresh_process(tmp_path):
    expected = {}
    for kind in KINDS:
        layer, shape, train, params, state, x = _built(kind)
        fnn.save(tmp_path / f"{kind}.safetensors", layer, params, state)
        y, _ = layer.apply(params, state, x)
        np.savez(tmp_path / f"{kind}.npz", *[np.asarray(leaf) for leaf in jax.tree.leaves(x)],
                 **{f"y{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(y))})
        expected[kind] = jax.tree.structure(x).num_leaves
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, jax, jax.numpy as jnp, fnn
        from pathlib import Path
        folder, counts = Path({str(tmp_path)!r}), json.loads({json.dumps(json.dumps(expected))})
        for kind, n_inputs in counts.items():
            net, params, state = fnn.load(folder / f"{{kind}}.safetensors")
            data = np.load(folder / f"{{kind}}.npz")
            leaves = [jnp.asarray(data[f"arr_{{i}}"]) for i in range(n_inputs)]
            x = leaves[0] if n_inputs == 1 else tuple(leaves)
            y, _ = net.apply(params, state, x)
            for i, leaf in enumerate(jax.tree.leaves(y)):
                assert np.array_equal(np.asarray(leaf), data[f"y{{i}}"]), kind
        print("loaded", len(counts))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"loaded {len(KINDS)}"
