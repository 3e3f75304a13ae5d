"""Flatten, Reshape and Embedding against NumPy reshapes, indexing and ``np.add.at``."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn.core import LayerError
from fnn.layers.embedding import Embedding
from fnn.layers.reshape import Flatten, Reshape

KEY = jax.random.key(0)


# --------------------------------------------------------------------------- Flatten

def test_flatten_matches_numpy():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    layer = Flatten()
    out_shape, params, state = layer.init(KEY, (-1, 3, 4, 5))
    assert out_shape == (-1, 60) and params == {} and state == {}
    y, new_state = layer.apply(params, state, jnp.asarray(x))
    assert new_state == {}
    np.testing.assert_array_equal(np.asarray(y), x.reshape(2, 60))
    assert layer.init(KEY, (-1, 7))[0] == (-1, 7)
    assert layer.init(KEY, (8, 2, -1))[0] == (8, -1)  # unknown size stays unknown
    assert Flatten().apply({}, {}, jnp.zeros((0, 3, 2)))[0].shape == (0, 6)


def test_flatten_errors():
    with pytest.raises(LayerError, match=r"Flatten layer: .*got shape \(-1,\)"):
        Flatten().init(KEY, (-1,))
    with pytest.raises(LayerError, match=r"Flatten layer: .*got shape \(5,\)"):
        Flatten().apply({}, {}, jnp.ones((5,)))


# --------------------------------------------------------------------------- Reshape

@pytest.mark.parametrize("target, expected", [
    ((28, 28, 1), (28, 28, 1)),
    ((28, -1), (28, 28)),
    ((-1, 2, 2), (196, 2, 2)),
    (784, (784,)),
    ([4, 196], (4, 196)),
])
def test_reshape_matches_numpy(target, expected):
    x = np.arange(3 * 784, dtype=np.float32).reshape(3, 784)
    layer = Reshape(target)
    out_shape, params, state = layer.init(KEY, (-1, 784))
    assert out_shape == (-1, *expected) and params == {} and state == {}
    y, _ = layer.apply(params, state, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), x.reshape(3, *expected))
    y_jit, _ = jax.jit(layer.apply)(params, state, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y_jit), np.asarray(y))


def test_reshape_from_higher_rank_and_unknown_sizes():
    x = np.arange(2 * 4 * 6, dtype=np.float32).reshape(2, 4, 6)
    y, _ = Reshape((3, 8)).apply({}, {}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), x.reshape(2, 3, 8))
    assert Reshape((3, 8)).init(KEY, (5, 4, 6))[0] == (5, 3, 8)
    assert Reshape((3, -1)).init(KEY, (-1, -1, 6))[0] == (-1, 3, -1)
    assert Reshape((3, 8)).init(KEY, (-1, -1, 6))[0] == (-1, 3, 8)
    assert Reshape((2, 3)).spec == {"Reshape": {"shape": [2, 3]}}


def test_reshape_size_mismatch():
    with pytest.raises(LayerError, match=r"Reshape layer: cannot reshape 12 elements per example "
                                         r"into \(5, 3\) \(15 elements\), got shape \(-1, 12\)"):
        Reshape((5, 3)).init(KEY, (-1, 12))
    with pytest.raises(LayerError, match=r"cannot reshape 12 elements per example into \(5, -1\), "
                                         r"got shape \(-1, 3, 4\)"):
        Reshape((5, -1)).init(KEY, (-1, 3, 4))
    with pytest.raises(LayerError, match=r"Reshape layer: .*got shape \(2, 12\)"):
        Reshape((5, 3)).apply({}, {}, jnp.ones((2, 12)))


@pytest.mark.parametrize("shape", [(-1, -1), (0, 3), (2.0, 3), "28x28", (True, 2)])
def test_reshape_bad_arguments(shape):
    with pytest.raises(ValueError, match="Reshape: shape"):
        Reshape(shape)


# --------------------------------------------------------------------------- Embedding

def test_embedding_gathers_rows():
    layer = Embedding(11, 4, name="emb")
    assert layer.kind == "Embedding" and layer.name == "emb"
    out_shape, params, state = layer.init(KEY, (-1, 2, 3))
    assert out_shape == (-1, 2, 3, 4) and state == {}
    chex.assert_shape(params["w"], (11, 4))
    assert set(params) == {"w"}
    ids = np.random.default_rng(0).integers(0, 11, size=(5, 2, 3))
    y, new_state = layer.apply(params, state, jnp.asarray(ids))
    assert new_state == {}
    assert y.shape == (5, *out_shape[1:])
    np.testing.assert_array_equal(np.asarray(y), np.asarray(params["w"])[ids])
    y_jit, _ = jax.jit(layer.apply)(params, state, jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(y_jit), np.asarray(y))
    y8, _ = layer.apply(params, state, jnp.asarray(ids, jnp.uint8))
    np.testing.assert_array_equal(np.asarray(y8), np.asarray(y))


def test_embedding_default_init_is_uniform_005():
    w = np.asarray(Embedding(1000, 16).init(KEY, (-1, 1))[1]["w"])
    assert np.abs(w).max() <= 0.05
    np.testing.assert_allclose(w.std(), 0.05 / np.sqrt(3), rtol=0.05)
    w_ones = Embedding(3, 2, w_init="ones").init(KEY, (-1,))[1]["w"]
    np.testing.assert_array_equal(np.asarray(w_ones), np.ones((3, 2)))


def test_embedding_gradient_accumulates_repeated_ids():
    layer = Embedding(6, 3)
    _, params, _ = layer.init(KEY, (-1, 4))
    ids = jnp.asarray([[1, 1, 4, 1], [0, 4, 1, 5]])
    g = np.random.default_rng(1).standard_normal((2, 4, 3)).astype(np.float32)

    grads = jax.grad(lambda p: jnp.sum(g * layer.apply(p, {}, ids)[0]))(params)
    expected = np.zeros((6, 3), np.float32)
    np.add.at(expected, np.asarray(ids), g)
    np.testing.assert_allclose(np.asarray(grads["w"]), expected, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(grads["w"])[[2, 3]] == 0)


def test_embedding_out_of_range_ids_give_nan_and_no_gradient():
    layer = Embedding(4, 2)
    _, params, _ = layer.init(KEY, (-1, 4))
    ids = jnp.asarray([[0, -1, 4, 3]], jnp.int8)
    y, _ = layer.apply(params, {}, ids)
    y = np.asarray(y)
    assert np.isnan(y[0, 1:3]).all()
    np.testing.assert_array_equal(y[0, [0, 3]], np.asarray(params["w"])[[0, 3]])
    grads = jax.grad(lambda p: jnp.nansum(layer.apply(p, {}, ids)[0]))(params)
    np.testing.assert_array_equal(np.asarray(grads["w"]), [[1, 1], [0, 0], [0, 0], [1, 1]])


def test_embedding_errors():
    for args in [(0, 4), (4, 0), (4.0, 2), (4, True)]:
        with pytest.raises(ValueError, match="Embedding: (vocab_size|features)"):
            Embedding(*args)
    layer = Embedding(4, 2)
    _, params, _ = layer.init(KEY, (-1, 3))
    with pytest.raises(LayerError,
                       match=r"Embedding layer: expects integer ids .*float32.*\(2, 3\)"):
        layer.apply(params, {}, jnp.ones((2, 3)))
    with pytest.raises(LayerError, match=r"Embedding layer: .*got shape \(\)"):
        layer.apply(params, {}, jnp.asarray(1))
