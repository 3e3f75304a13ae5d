"""Tests for fnn.layers.dense: shapes, values against NumPy, initialisers, errors, gradients."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.core import LayerError
from fnn.layers.dense import Dense, matmul_last

BATCH = 2


def _concrete(shape, batch=BATCH):
    return tuple(batch if d == -1 else d for d in shape)


def _input(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=_concrete(shape)), jnp.float32)


CASES = [  # (layer, its features)
    pytest.param(Dense(3), 3, id="bias"),
    pytest.param(Dense(3, use_bias=False), 3, id="no_bias"),
    pytest.param(Dense(1, w_init="he_normal", b_init=0.1), 1, id="he_normal_1"),
]
SHAPES = [(-1, 5), (-1, 3, 5), (-1, 2, 2, 5)]


@pytest.mark.parametrize("layer,features", CASES)
@pytest.mark.parametrize("input_shape", SHAPES, ids=["2d", "3d", "4d"])
def test_init_shape_is_apply_shape_and_matches_numpy(layer, features, input_shape):
    out_shape, params, state = layer.init(jax.random.key(0), input_shape)
    assert out_shape == input_shape[:-1] + (features,)
    assert state == {}
    x = _input(input_shape)
    y, new_state = layer.apply(params, state, x)
    assert y.shape == _concrete(out_shape) and y.dtype == jnp.float32
    assert new_state == {}
    expected = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64)
    if "b" in params:
        expected = expected + np.asarray(params["b"], np.float64)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer,features", CASES)
def test_grads_match_finite_differences_and_jit_matches_eager(layer, features):
    _, params, state = layer.init(jax.random.key(0), (-1, 3, 5))
    x = _input((-1, 3, 5), seed=1)

    def f(p, x):
        return layer.apply(p, state, x)[0]

    f_jit = jax.jit(f)
    check_grads(f_jit, (params, x), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(f_jit(params, x)), np.asarray(f(params, x)),
                               rtol=1e-5, atol=1e-6)


def test_gradients_closed_form():
    # L = sum(x @ w + b) -> dL/dw[i, j] = sum_n x[n, i], dL/db[j] = batch, dL/dx = sum_j w[:, j]
    layer = Dense(4)
    _, params, _ = layer.init(jax.random.key(2), (-1, 3))
    x = _input((-1, 3), seed=2)
    gp, gx = jax.grad(lambda p, x: jnp.sum(layer.apply(p, {}, x)[0]), argnums=(0, 1))(params, x)
    x64, w64 = np.asarray(x, np.float64), np.asarray(params["w"], np.float64)
    np.testing.assert_allclose(np.asarray(gp["w"]), np.repeat(x64.sum(0)[:, None], 4, 1),
                               rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gp["b"]), np.full(4, BATCH), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(gx), np.tile(w64.sum(1), (BATCH, 1)), rtol=1e-5)


def test_params_tree_shapes_and_dtypes():
    _, params, state = Dense(7).init(jax.random.key(0), (-1, 5))
    assert sorted(params) == ["b", "w"]
    chex.assert_shape(params["w"], (5, 7))
    chex.assert_shape(params["b"], (7,))
    chex.assert_type(params["w"], jnp.float32)
    chex.assert_type(params["b"], jnp.float32)
    np.testing.assert_array_equal(np.asarray(params["b"]), np.zeros(7))
    _, params, _ = Dense(7, use_bias=False).init(jax.random.key(0), (-1, 5))
    assert list(params) == ["w"]


def test_default_init_is_glorot_uniform_and_deterministic():
    fan_in, fan_out = 64, 32
    _, p1, _ = Dense(fan_out).init(jax.random.key(0), (-1, fan_in))
    _, p2, _ = Dense(fan_out).init(jax.random.key(0), (-1, fan_in))
    _, p3, _ = Dense(fan_out).init(jax.random.key(1), (-1, fan_in))
    chex.assert_trees_all_equal(p1, p2)
    assert np.any(np.asarray(p1["w"]) != np.asarray(p3["w"]))
    w = np.asarray(p1["w"], np.float64)
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound
    # U(-a, a) has variance a^2 / 3; 2048 draws put the sample variance within 10%
    np.testing.assert_allclose(w.var(), bound ** 2 / 3.0, rtol=0.1)


def test_initializers_by_name_number_and_function():
    layer = Dense(3, w_init="ones", b_init=0.5)
    _, params, _ = layer.init(jax.random.key(0), (-1, 2))
    np.testing.assert_array_equal(np.asarray(params["w"]), np.ones((2, 3)))
    np.testing.assert_array_equal(np.asarray(params["b"]), np.full(3, 0.5))
    custom = lambda key, shape, dtype: jnp.full(shape, 2.0, dtype)  # noqa: E731
    _, params, _ = Dense(3, w_init=custom).init(jax.random.key(0), (-1, 2))
    np.testing.assert_array_equal(np.asarray(params["w"]), np.full((2, 3), 2.0))


def test_spec_records_non_default_arguments():
    assert Dense(3).spec == {"Dense": {"features": 3}}
    assert Dense(3, use_bias=False, name="head").spec == {
        "Dense": {"features": 3, "use_bias": False, "name": "head"}}
    assert Dense(3, name="head").name == "head" and Dense(3).name is None
    assert Dense(3).kind == "Dense"


@pytest.mark.parametrize("features", [0, -2, 2.5, True, "8"])
def test_bad_features_raise_naming_dense(features):
    with pytest.raises(ValueError, match=r"Dense: features must be a positive int"):
        Dense(features)


def test_unknown_initializer_suggests_close_name():
    with pytest.raises(ValueError, match=r"unknown initializer 'he_normel'.*he_normal"):
        Dense(3, w_init="he_normel")


def test_rank_one_input_shape_at_init_names_dense_and_shape():
    with pytest.raises(LayerError) as info:
        Dense(3).init(jax.random.key(0), (5,))
    message = str(info.value)
    assert message.startswith("Dense layer") and "(5,)" in message


def test_unknown_feature_size_at_init_is_an_error():
    with pytest.raises(LayerError, match=r"Dense layer.*\(-1, -1\)"):
        Dense(3).init(jax.random.key(0), (-1, -1))


def test_non_tuple_input_shape_at_init_is_an_error():
    with pytest.raises(LayerError, match=r"Dense layer.*tuple of ints"):
        Dense(3).init(jax.random.key(0), 5)


def test_feature_mismatch_at_apply_names_the_shapes():
    _, params, _ = Dense(3).init(jax.random.key(0), (-1, 5))
    with pytest.raises(LayerError) as info:
        Dense(3).apply(params, {}, jnp.ones((2, 4)))
    message = str(info.value)
    assert message.startswith("Dense layer") and "(2, 4)" in message and "5" in message
    with pytest.raises(LayerError, match=r"Dense layer.*\(5,\)"):
        Dense(3).apply(params, {}, jnp.ones((5,)))


def test_is_exported_from_fnn():
    assert fnn.Dense is Dense


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (2, 3, 2, 4), (0, 3, 4)],
                         ids=["2d", "3d", "4d", "no_rows"])
def test_matmul_last_is_the_product_over_the_last_axis(shape):
    """``matmul_last`` flattens the rows for speed; its values and gradients are ``x @ w``'s,
    checked against NumPy's einsum and finite differences in float64."""
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=shape), rng.normal(size=(4, 5))
    with jax.enable_x64(True):
        got = matmul_last(jnp.asarray(x), jnp.asarray(w))
        assert got.shape == shape[:-1] + (5,)
        np.testing.assert_allclose(np.asarray(got), np.einsum("...i,io->...o", x, w), rtol=1e-12)
        if x.size:
            check_grads(matmul_last, (jnp.asarray(x), jnp.asarray(w)), order=1, modes=("rev",))
