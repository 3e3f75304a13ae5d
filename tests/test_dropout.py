"""Tests for fnn.layers.dropout: statistics of the mask, modes, rng handling, noise_shape, jit."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.layers.combinators import serial
from fnn.layers.dense import Dense
from fnn.layers.dropout import Dropout


def _apply(layer, x, *, rng=None, train=True):
    _, params, state = layer.init(jax.random.key(0), (-1,) + tuple(x.shape[1:]))
    return layer.apply(params, state, x, rng=rng, train=train)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_fraction_dropped_and_scale_of_kept_units(rate):
    x = jnp.ones((400, 500), jnp.float32)
    y, _ = _apply(Dropout(rate), x, rng=jax.random.key(7))
    y = np.asarray(y)
    n = y.size
    frac_zero = np.mean(y == 0.0)
    sigma = np.sqrt(rate * (1.0 - rate) / n)
    assert abs(frac_zero - rate) < 3 * sigma, (frac_zero, rate, sigma)
    kept = y[y != 0.0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=1e-6)


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_mean_is_preserved(rate):
    # y_i = x_i * m_i / (1 - p): E[y_i] = x_i, Var[y_i] = x_i^2 * p / (1 - p).
    x = jax.random.uniform(jax.random.key(1), (300, 400), jnp.float32, 0.5, 2.0)
    y, _ = _apply(Dropout(rate), x, rng=jax.random.key(2))
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x64.size
    sd_of_mean = np.sqrt(np.sum(x64 ** 2) * rate / (1.0 - rate)) / n
    assert abs(y64.mean() - x64.mean()) < 4 * sd_of_mean, (y64.mean(), x64.mean(), sd_of_mean)


def test_test_mode_is_identity_with_or_without_rng():
    x = jax.random.normal(jax.random.key(3), (8, 6))
    layer = Dropout(0.5)
    for rng in (None, jax.random.key(4)):
        y, state = _apply(layer, x, rng=rng, train=False)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
        assert state == {}


def test_rate_zero_is_identity_in_training_without_rng():
    x = jax.random.normal(jax.random.key(3), (8, 6))
    y, _ = _apply(Dropout(0.0), x, rng=None, train=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))


def test_same_rng_same_mask_different_rng_different_mask():
    x = jnp.ones((16, 32))
    layer = Dropout(0.5)
    y1, _ = _apply(layer, x, rng=jax.random.key(10))
    y2, _ = _apply(layer, x, rng=jax.random.key(10))
    y3, _ = _apply(layer, x, rng=jax.random.key(11))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert np.any(np.asarray(y1) != np.asarray(y3))


@pytest.mark.parametrize("noise_shape", [(-1, 1, 1, 6), (None, 1, 1, None)])
def test_noise_shape_shares_mask_over_spatial_axes(noise_shape):
    x = jnp.ones((10, 5, 7, 6))
    y, _ = _apply(Dropout(0.5, noise_shape=noise_shape), x, rng=jax.random.key(5))
    keep = np.asarray(y) != 0.0
    # constant along H and W ...
    assert np.all(keep == keep[:, :1, :1, :])
    # ... but drawn independently per example and channel
    per_nc = keep[:, 0, 0, :]
    assert 0 < per_nc.sum() < per_nc.size
    assert np.any(per_nc != per_nc[:1]) and np.any(per_nc != per_nc[:, :1])


def test_noise_shape_shared_over_batch():
    x = jnp.ones((12, 20))
    y, _ = _apply(Dropout(0.5, noise_shape=(1, 20)), x, rng=jax.random.key(6))
    keep = np.asarray(y) != 0.0
    assert np.all(keep == keep[:1])
    assert 0 < keep[0].sum() < 20


def test_noise_shape_that_does_not_fit_raises_layer_error():
    with pytest.raises(fnn.LayerError, match=r"Dropout.*got shape \(-1, 4\)"):
        Dropout(0.5, noise_shape=(-1, 3)).init(jax.random.key(0), (-1, 4))
    with pytest.raises(fnn.LayerError, match=r"Dropout.*rank"):
        Dropout(0.5, noise_shape=(-1, 1, 4)).init(jax.random.key(0), (-1, 4))
    layer = Dropout(0.5, noise_shape=(-1, 1, 4))
    with pytest.raises(fnn.LayerError, match=r"Dropout.*got shape \(2, 4\)"):
        layer.apply({}, {}, jnp.ones((2, 4)), rng=jax.random.key(0), train=True)


def test_missing_rng_in_training_names_the_layer():
    with pytest.raises(fnn.LayerError, match="Dropout.*rng"):
        _apply(Dropout(0.3), jnp.ones((2, 3)), rng=None, train=True)
    net = serial(Dense(4), Dropout(0.3, name="drop"))
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    with pytest.raises(fnn.LayerError, match="Dropout layer 'drop'"):
        net.apply(params, state, jnp.ones((2, 3)), train=True)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, True, "0.5", None])
def test_bad_rate_is_a_value_error(bad):
    with pytest.raises(ValueError, match="Dropout"):
        Dropout(bad)


@pytest.mark.parametrize("bad", [(0, 3), (-2, 3), (1.0, 3), (), "abc"])
def test_bad_noise_shape_is_a_value_error(bad):
    with pytest.raises(ValueError, match="Dropout.*noise_shape"):
        Dropout(0.5, noise_shape=bad)


@pytest.mark.parametrize("shape", [(-1, 5), (-1, 4, 4, 3)])
def test_init_shape_matches_apply_and_no_params(shape):
    layer = Dropout(0.25)
    out_shape, params, state = layer.init(jax.random.key(0), shape)
    assert out_shape == shape
    assert params == {} and state == {}
    x = jnp.ones((2,) + shape[1:], jnp.bfloat16)
    y, _ = layer.apply(params, state, x, rng=jax.random.key(1), train=True)
    chex.assert_shape(y, (2,) + shape[1:])
    chex.assert_type(y, jnp.bfloat16)


def test_jit_matches_eager():
    layer = Dropout(0.4, noise_shape=(-1, 1, 3))
    _, params, state = layer.init(jax.random.key(0), (-1, 5, 3))
    x = jax.random.normal(jax.random.key(1), (4, 5, 3))
    rng = jax.random.key(2)
    eager, _ = layer.apply(params, state, x, rng=rng, train=True)
    jitted, _ = jax.jit(functools.partial(layer.apply, train=True))(params, state, x, rng=rng)
    np.testing.assert_array_equal(np.asarray(eager) == 0, np.asarray(jitted) == 0)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6)
