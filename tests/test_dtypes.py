"""The dtype policy (fnn.DtypePolicy, config ``model_dtype``): param, compute and output dtypes.

* float64 params under x64: every registered layer kind's params, state and outputs are float64,
  and a Dense layer agrees with a float64 NumPy formula to 1e-12 (so it computes in float64);
* bfloat16 compute: the lowered program's matmuls and convolutions (forward and backward) take
  bfloat16 operands, params and gradients stay float32, batch-norm statistics are float32,
  integer inputs are not cast, and an optax step updates float32 master params;
* checkpoints keep the param dtype (float64 and bfloat16 round-trip bit for bit);
* the config key ``model_dtype`` wraps the network and is validated with the key path.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.config import ConfigError, parse_config
from fnn.layers.precision import with_model_dtype
from fnn.run import build
from test_layer_contract import CASES, KINDS

FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _floating_dtypes(tree) -> set:
    return {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(tree)
            if jnp.issubdtype(leaf.dtype, jnp.floating)}


def _inputs(kind: str, shape, seed: int = 0):
    """float32 inputs (batch 2) for a possibly nested input shape; ids for Embedding,
    lengths for StripMask."""
    rng = np.random.default_rng(seed)
    if kind == "StripMask":
        return (jnp.asarray(rng.normal(size=(2,) + shape[0][1:]), jnp.float32), jnp.array([4, 2]))
    if kind == "MultiHeadAttention":  # (queries, context, context lengths)
        return (jnp.asarray(rng.normal(size=(2,) + shape[0][1:]), jnp.float32),
                jnp.asarray(rng.normal(size=(2,) + shape[1][1:]), jnp.float32), jnp.array([5, 2]))
    if isinstance(shape, tuple) and all(isinstance(d, int) for d in shape):
        concrete = (2,) + shape[1:]
        if kind == "Embedding":
            return jnp.asarray(rng.integers(0, 7, size=concrete), jnp.int32)
        return jnp.asarray(rng.normal(size=concrete), jnp.float32)
    return tuple(_inputs(kind, s, seed + i + 1) for i, s in enumerate(shape))


def _float64_policy(layer: fnn.Layer) -> fnn.Layer:
    if layer.kind == "DtypePolicy":
        return layer.replace(params="float64")
    return fnn.DtypePolicy(layer, params="float64")


@pytest.mark.parametrize("kind", KINDS)
def test_float64_params_state_and_outputs_for_every_kind(kind):
    make, shape, train = CASES[kind]
    with jax.enable_x64(True):
        net = _float64_policy(make())
        _, params, state = net.init(jax.random.key(1), shape)
        assert _floating_dtypes(params) <= {jnp.dtype(jnp.float64)}
        assert _floating_dtypes(state) <= {jnp.dtype(jnp.float64)}
        kwargs = {"rng": jax.random.key(2), "train": True} if train else {}
        y, new_state = net.apply(params, state, _inputs(kind, shape), **kwargs)  # float32 in
        assert _floating_dtypes(y) == {jnp.dtype(jnp.float64)}
        assert _floating_dtypes(new_state) <= {jnp.dtype(jnp.float64)}


def test_float64_dense_matches_a_float64_numpy_formula():
    with jax.enable_x64(True):
        net = fnn.DtypePolicy(fnn.Dense(3), params="float64")
        _, params, state = net.init(jax.random.key(0), (-1, 4))
        x = np.random.default_rng(0).normal(size=(5, 4))  # float64 data
        y, _ = net.apply(params, state, jnp.asarray(x))
        w, b = np.asarray(params["w"]), np.asarray(params["b"])
        np.testing.assert_allclose(np.asarray(y), x @ w + b, rtol=1e-12, atol=1e-12)


def test_float64_needs_x64_with_a_clear_error():
    with pytest.raises(fnn.LayerError, match="params='float64' needs JAX's 64-bit mode"):
        fnn.DtypePolicy(fnn.Dense(3), params="float64").init(jax.random.key(0), (-1, 4))


CNN = lambda: fnn.serial(fnn.Conv2D(4, 3), fnn.BatchNorm, fnn.Relu, fnn.Flatten, fnn.Dense(10))


def _ops(text: str, op: str) -> list[str]:
    return [line for line in text.splitlines() if f"stablehlo.{op}" in line]


def _operand_types(line: str) -> list[str]:
    """The element types of an op's operands: ``(tensor<2x4xbf16>, tensor<4x8xbf16>) -> ...``."""
    operands = line.split(" : (", 1)[1].split(") ->", 1)[0]
    return re.findall(r"tensor<(?:[0-9?]+x)*(\w+)>", operands)


def test_bfloat16_compute_runs_matmuls_and_convolutions_in_bfloat16():
    net = fnn.DtypePolicy(CNN(), compute="bfloat16")
    _, params, state = net.init(jax.random.key(0), (-1, 6, 6, 1))
    assert _floating_dtypes(params) == {jnp.dtype(jnp.float32)}
    assert _floating_dtypes(state) == {jnp.dtype(jnp.float32)}
    x = jnp.ones((2, 6, 6, 1), jnp.float32)
    y_labels = jnp.array([1, 3])

    def loss(p, x):
        out, _ = net.apply(p, state, x, train=True)
        return fnn.losses.softmax_cross_entropy(out, y_labels)

    forward = jax.jit(lambda p, x: net.apply(p, state, x)[0]).lower(params, x).as_text()
    backward = jax.jit(jax.grad(loss)).lower(params, x).as_text()
    for text, n_dots, n_convs in ((forward, 1, 1), (backward, 3, 2)):
        dots, convs = _ops(text, "dot_general"), _ops(text, "convolution")
        assert len(dots) >= n_dots and len(convs) >= n_convs
        for line in dots + convs:
            assert _operand_types(line) == ["bf16", "bf16"], line
    y, new_state = net.apply(params, state, x, train=True)
    assert y.dtype == jnp.float32  # the loss that follows runs in float32
    assert loss(params, x).dtype == jnp.float32
    assert _floating_dtypes(new_state) == {jnp.dtype(jnp.float32)}


def test_bfloat16_gradients_reach_float32_master_params():
    plain = fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.Dense(3))
    net = fnn.DtypePolicy(plain, compute="bfloat16")
    _, params, state = net.init(jax.random.key(0), (-1, 8))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=32))

    def loss(p, layer):
        return fnn.losses.softmax_cross_entropy(layer.apply(p, state, x)[0], labels)

    grads = jax.grad(loss)(params, net)
    assert _floating_dtypes(grads) == {jnp.dtype(jnp.float32)}
    reference = jax.grad(loss)(params, plain)  # the same net in float32
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference)):
        assert np.linalg.norm(g - r) <= 0.05 * np.linalg.norm(r)  # bfloat16 has 8 bits
    opt = optax.adam(1e-2)
    new = optax.apply_updates(params, opt.update(grads, opt.init(params), params)[0])
    assert _floating_dtypes(new) == {jnp.dtype(jnp.float32)}
    assert all(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(params)))
    assert float(loss(new, net)) < float(loss(params, net))


def test_batch_norm_statistics_are_float32_under_bfloat16_compute():
    net = fnn.DtypePolicy(fnn.BatchNorm(momentum=0.0), compute="bfloat16")
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    x = np.random.default_rng(0).normal(3.0, 0.1, size=(64, 3)).astype(np.float32)
    _, new_state = net.apply(params, state, jnp.asarray(x), train=True)
    xb = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)  # what the layer is given
    assert new_state["mean"].dtype == jnp.float32
    # a bfloat16 mean would be off by ~1e-2 at 3.0; a float32 one by ~1e-7
    np.testing.assert_allclose(np.asarray(new_state["mean"]), xb.mean(0), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new_state["var"]), xb.var(0), rtol=1e-4)


def test_integer_inputs_are_not_cast():
    net = fnn.DtypePolicy(fnn.serial(fnn.Embedding(300, 2), fnn.Flatten), compute="bfloat16")
    _, params, state = net.init(jax.random.key(0), (-1, 2))
    ids = jnp.array([[257, 299]])  # not representable in bfloat16 (8-bit mantissa)
    y, _ = net.apply(params, state, ids)
    w = np.asarray(jnp.asarray(params["embedding_0"]["w"], jnp.bfloat16), np.float32)
    np.testing.assert_array_equal(np.asarray(y), w[[257, 299]].reshape(1, 4))


def test_output_dtype_can_be_kept_narrow():
    net = fnn.DtypePolicy(fnn.Dense(3), compute="bfloat16", output="bfloat16")
    _, params, state = net.init(jax.random.key(0), (-1, 4))
    assert net.apply(params, state, jnp.ones((2, 4)))[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("params_dtype", ["float64", "bfloat16"])
def test_checkpoints_keep_the_param_dtype(tmp_path, params_dtype):
    with jax.enable_x64(params_dtype == "float64"):
        net = fnn.DtypePolicy(fnn.serial(fnn.Dense(4), fnn.BatchNorm, fnn.Dense(2)),
                              params=params_dtype)
        _, params, state = net.init(jax.random.key(0), (-1, 3))
        fnn.save(tmp_path / "net.safetensors", net, params, state, input_shape=(-1, 3))
        loaded, params2, state2 = fnn.load(tmp_path / "net.safetensors")
        assert loaded.spec == net.spec
        for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((params2, state2))):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
        assert params2["dense_0"]["w"].dtype == jnp.dtype(params_dtype)


def test_float64_checkpoint_without_x64_is_refused(tmp_path):
    with jax.enable_x64(True):
        net = fnn.DtypePolicy(fnn.Dense(2), params="float64")
        _, params, state = net.init(jax.random.key(0), (-1, 3))
        fnn.save(tmp_path / "net.safetensors", net, params, state)
    with pytest.raises(fnn.CheckpointError, match="'params/b' is float64 but JAX's 64-bit mode"):
        fnn.load(tmp_path / "net.safetensors")


def test_bad_policies_are_refused_with_one_clear_line():
    with pytest.raises(ValueError, match="compute must be one of bfloat16, float16, float32"):
        fnn.DtypePolicy(fnn.Dense(3), compute="bf16")
    with pytest.raises(ValueError, match="give it by name, e.g. params='bfloat16'"):
        fnn.DtypePolicy(fnn.Dense(3), params=jnp.float32)
    with pytest.raises(ValueError, match="contains another DtypePolicy"):
        fnn.DtypePolicy(fnn.serial(fnn.DtypePolicy(fnn.Dense(3)), fnn.Relu), compute="bfloat16")


def test_the_policy_keeps_the_networks_param_keys():
    net = fnn.serial(fnn.Dense(3), fnn.Relu, fnn.Dense(2))
    _, plain, _ = net.init(jax.random.key(0), (-1, 4))
    _, wrapped, _ = fnn.DtypePolicy(net, compute="bfloat16").init(jax.random.key(0), (-1, 4))
    assert jax.tree.structure(plain) == jax.tree.structure(wrapped)


BASE = {"model": [{"Dense": 8}, "Relu", {"Dense": 2}], "data": {"name": "xor", "validation": 0}}


def test_config_model_dtype_wraps_the_network():
    cfg = parse_config({**BASE, "model_dtype": {"params": "float32", "compute": "bfloat16"}})
    net = build(cfg).net
    assert net.kind == "DtypePolicy"
    assert net.spec["DtypePolicy"]["compute"] == "bfloat16"
    assert build(parse_config(BASE)).net.kind == "serial"  # no model_dtype: no policy
    assert with_model_dtype(net.children[0], {"params": None, "compute": None}) is net.children[0]


@pytest.mark.parametrize("section, path, hint", [
    ({"compute": "bf16"}, "model_dtype.compute", "must be one of"),
    ({"param": "float32"}, "model_dtype.param", "did you mean 'params'"),
    ({"params": "float64"}, "model_dtype", "JAX_ENABLE_X64=1"),
])
def test_config_model_dtype_errors_name_the_key(section, path, hint):
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "model_dtype": section})
    assert str(err.value).startswith(path), str(err.value)
    assert hint in str(err.value)


def test_a_config_run_trains_float32_params_under_bfloat16_compute(tmp_path):
    from fnn.run import train

    cfg = parse_config({**BASE, "model_dtype": {"compute": "bfloat16"},
                        "training": {"epochs": 2, "batch_size": 4},
                        "output": {"plots": False, "progress": False}})
    run_dir = train(cfg, tmp_path / "run", log=None)
    net, params, _ = fnn.load(run_dir / "checkpoints" / "latest.safetensors")
    assert net.spec == build(cfg).net.spec  # the policy is saved with the network
    assert _floating_dtypes(params) == {jnp.dtype(jnp.float32)}
    _, initial, _ = build(cfg).net.init(jax.random.key(0), (-1, 2))
    assert jax.tree.structure(params) == jax.tree.structure(initial)
