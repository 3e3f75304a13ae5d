"""Tests for fnn.layers.normalization: BatchNorm and LayerNorm against NumPy formulas."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.core import default_key
from fnn.layers.combinators import serial
from fnn.layers.dense import Dense
from fnn.layers.normalization import BatchNorm, LayerNorm

EPS = 1e-5


# ----------------------------------------------------------------------------- NumPy references

def np_batch_norm(x, mean, var, scale, offset, eps=EPS, feature_axes=(-1,)):
    """Reference ``scale * (x - mean) / sqrt(var + eps) + offset`` in float64, per feature."""
    x = np.asarray(x, np.float64)
    feats = [a % x.ndim for a in feature_axes]
    bshape = [d if i in feats else 1 for i, d in enumerate(x.shape)]
    fshape = [x.shape[a] for a in sorted(feats)]
    r = lambda v: np.broadcast_to(np.asarray(v, np.float64), fshape).reshape(bshape)  # noqa: E731
    return (x - r(mean)) / np.sqrt(r(var) + eps) * r(scale) + r(offset)


def np_moments(x, feature_axes=(-1,)):
    """Batch mean and biased variance per feature, float64, two-pass."""
    x = np.asarray(x, np.float64)
    feats = [a % x.ndim for a in feature_axes]
    axes = tuple(i for i in range(x.ndim) if i not in feats)
    mean = x.mean(axis=axes)
    centred = x - mean.reshape([d if i in feats else 1 for i, d in enumerate(x.shape)])
    return mean, (centred ** 2).mean(axis=axes)


def _random_params_state(c, seed=0):
    r = np.random.default_rng(seed)
    params = {"scale": jnp.asarray(r.uniform(0.5, 2.0, c), jnp.float32),
              "offset": jnp.asarray(r.normal(size=c), jnp.float32)}
    state = {"mean": jnp.asarray(r.normal(size=c), jnp.float32),
             "var": jnp.asarray(r.uniform(0.5, 3.0, c), jnp.float32)}
    return params, state


def _data(shape, seed=1, loc=2.0, scale=3.0):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, shape), jnp.float32)


# ----------------------------------------------------------------------------- BatchNorm

def test_batchnorm_init_params_and_state():
    out_shape, params, state = BatchNorm().init(jax.random.key(0), (-1, 5))
    assert out_shape == (-1, 5)
    chex.assert_trees_all_equal(params, {"scale": jnp.ones(5), "offset": jnp.zeros(5)})
    chex.assert_trees_all_equal(state, {"mean": jnp.zeros(5), "var": jnp.ones(5)})
    _, params, state = BatchNorm(use_scale=False).init(jax.random.key(0), (-1, 5))
    assert set(params) == {"offset"} and set(state) == {"mean", "var"}
    _, params, _ = BatchNorm(use_scale=False, use_offset=False).init(jax.random.key(0), (-1, 5))
    assert params == {}
    _, params, _ = BatchNorm(scale_init=0.5, offset_init="ones").init(jax.random.key(0), (-1, 2))
    chex.assert_trees_all_equal(params, {"scale": jnp.full(2, 0.5), "offset": jnp.ones(2)})


def test_batchnorm_training_output_is_standardized():
    x = _data((64, 5))
    bn = BatchNorm()
    _, params, state = bn.init(jax.random.key(0), (-1, 5))
    y, _ = bn.apply(params, state, x, train=True)
    y = np.asarray(y, np.float64)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(0), 1.0, atol=1e-5)
    mean, var = np_moments(x)
    np.testing.assert_allclose(y, np_batch_norm(x, mean, var, 1.0, 0.0), atol=1e-5)


def test_batchnorm_training_with_scale_offset_matches_numpy():
    x = _data((32, 4))
    params, state = _random_params_state(4)
    y, _ = BatchNorm().apply(params, state, x, train=True)
    mean, var = np_moments(x)
    expected = np_batch_norm(x, mean, var, params["scale"], params["offset"])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


def test_batchnorm_running_stats_follow_momentum():
    momentum = 0.9
    bn = BatchNorm(momentum=momentum)
    params, state = _random_params_state(3)
    run_mean, run_var = np.asarray(state["mean"], np.float64), np.asarray(state["var"], np.float64)
    for step in range(2):
        x = _data((16, 3), seed=10 + step, loc=-1.0 + step)
        _, state = bn.apply(params, state, x, train=True)
        mean, var = np_moments(x)
        run_mean = momentum * run_mean + (1 - momentum) * mean
        run_var = momentum * run_var + (1 - momentum) * var
        np.testing.assert_allclose(np.asarray(state["mean"]), run_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(state["var"]), run_var, rtol=1e-5, atol=1e-6)
        chex.assert_type(state["mean"], jnp.float32)


def test_batchnorm_test_mode_uses_running_stats_and_keeps_state():
    x = _data((8, 6))
    params, state = _random_params_state(6)
    y, new_state = BatchNorm().apply(params, state, x, train=False)
    expected = np_batch_norm(x, state["mean"], state["var"], params["scale"], params["offset"])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_equal(new_state, state)


def test_batchnorm_conv_input_normalizes_over_batch_and_space():
    x = _data((4, 5, 6, 3))
    bn = BatchNorm(momentum=0.5)
    out_shape, params, state = bn.init(jax.random.key(0), (-1, 5, 6, 3))
    assert out_shape == (-1, 5, 6, 3)
    chex.assert_shape([params["scale"], state["mean"], state["var"]], (3,))
    y, new_state = bn.apply(params, state, x, train=True)
    mean, var = np_moments(x)
    np.testing.assert_allclose(np.asarray(y), np_batch_norm(x, mean, var, 1.0, 0.0), atol=1e-5)
    yy = np.asarray(y, np.float64)
    np.testing.assert_allclose(yy.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(yy.var((0, 1, 2)), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_state["mean"]), 0.5 * mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new_state["var"]), 0.5 + 0.5 * var, rtol=1e-5)


@pytest.mark.parametrize("axis,shape", [(1, (4, 3, 5, 5)), ((-2, -1), (6, 3, 4))])
def test_batchnorm_other_feature_axes(axis, shape):
    feats = (axis,) if isinstance(axis, int) else axis
    bn = BatchNorm(axis)
    _, params, state = bn.init(jax.random.key(0), (-1,) + shape[1:])
    fshape = tuple(shape[a] for a in feats)
    chex.assert_shape([params["scale"], params["offset"], state["mean"], state["var"]], fshape)
    x = _data(shape)
    y, new_state = bn.apply(params, state, x, train=True)
    mean, var = np_moments(x, feats)
    np.testing.assert_allclose(np.asarray(y), np_batch_norm(x, mean, var, 1.0, 0.0,
                                                            feature_axes=feats), atol=1e-5)
    np.testing.assert_allclose(np.asarray(new_state["mean"]), 0.01 * mean, rtol=1e-5)


def test_batchnorm_variance_is_accurate_for_large_mean():
    # E[x^2] - E[x]^2 in float32 loses everything here (x^2 ~ 1e8, float32 spacing ~ 8);
    # the centred form keeps the variance to float32 precision of the deviations.
    x = _data((256, 4), loc=1e4, scale=1.0)
    bn = BatchNorm(momentum=0.0, use_scale=False, use_offset=False)
    _, state = bn.apply({}, {"mean": jnp.zeros(4), "var": jnp.ones(4)}, x, train=True)
    mean, var = np_moments(x)
    np.testing.assert_allclose(np.asarray(state["var"]), var, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(state["mean"]), mean, rtol=1e-6)


def test_batchnorm_bfloat16_input_float32_statistics():
    x = _data((32, 4)).astype(jnp.bfloat16)
    bn = BatchNorm(momentum=0.0)
    _, params, state = bn.init(jax.random.key(0), (-1, 4))
    y, new_state = bn.apply(params, state, x, train=True)
    chex.assert_type(y, jnp.bfloat16)
    chex.assert_type([new_state["mean"], new_state["var"]], jnp.float32)
    x32 = np.asarray(x.astype(jnp.float32))
    mean, var = np_moments(x32)
    np.testing.assert_allclose(np.asarray(new_state["mean"]), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new_state["var"]), var, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float32), np_batch_norm(x32, mean, var, 1, 0),
                               atol=2e-2)


@pytest.mark.parametrize("shape", [(32, 3), (8, 2, 2, 3)])
def test_batchnorm_axis_name_under_vmap_equals_whole_batch(shape):
    chunks = 4
    bn_sync = BatchNorm(axis_name="batch", momentum=0.8)
    params, state = _random_params_state(3)
    x = _data(shape)
    whole_y, whole_state = BatchNorm(momentum=0.8).apply(params, state, x, train=True)

    def per_chunk(xc):
        return bn_sync.apply(params, state, xc, train=True)

    xs = x.reshape((chunks, shape[0] // chunks) + shape[1:])
    ys, states = jax.jit(jax.vmap(per_chunk, axis_name="batch"))(xs)
    np.testing.assert_allclose(np.asarray(ys).reshape(shape), np.asarray(whole_y),
                               rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        for i in range(chunks):
            np.testing.assert_allclose(np.asarray(states[k][i]), np.asarray(whole_state[k]),
                                       rtol=1e-5, atol=1e-6)
    # without axis_name each chunk uses its own statistics: the test above is not vacuous
    ys_local, _ = jax.vmap(lambda xc: BatchNorm(momentum=0.8).apply(params, state, xc,
                                                                   train=True))(xs)
    assert not np.allclose(np.asarray(ys_local).reshape(shape), np.asarray(whole_y), atol=1e-3)


@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradients_match_finite_differences(train):
    bn = BatchNorm()
    _, state = _random_params_state(3)
    x0 = np.random.default_rng(3).normal(1.0, 2.0, (6, 3))
    r = np.random.default_rng(4)
    scale0, offset0 = r.uniform(0.5, 2.0, 3), r.normal(size=3)
    with jax.enable_x64(True):
        state64 = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), state)

        def f(x, scale, offset):
            y, _ = bn.apply({"scale": scale, "offset": offset}, state64, x, train=train)
            # weight the outputs so the sum is not trivially constant
            return jnp.sum(y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

        args = tuple(jnp.asarray(a, jnp.float64) for a in (x0, scale0, offset0))
        assert f(*args).dtype == jnp.float64
        check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"), eps=1e-6,
                    atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape", [(-1, 5), (-1, 4, 4, 3)])
@pytest.mark.parametrize("layer", [BatchNorm, LayerNorm], ids=["BatchNorm", "LayerNorm"])
def test_init_shapes_equal_apply_shapes(layer, shape):
    net = layer()
    out_shape, params, state = net.init(jax.random.key(0), shape)
    x = jax.ShapeDtypeStruct((2,) + shape[1:], jnp.float32)
    for train in (True, False):
        y, new_state = jax.eval_shape(functools.partial(net.apply, train=train), params, state, x)
        assert y.shape == (2,) + tuple(out_shape[1:])
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


@pytest.mark.parametrize("layer", [BatchNorm, LayerNorm], ids=["BatchNorm", "LayerNorm"])
def test_jit_matches_eager(layer):
    net = layer()
    _, params, state = net.init(jax.random.key(0), (-1, 4, 3))
    x = _data((5, 4, 3))
    for train in (True, False):
        eager = net.apply(params, state, x, train=train)
        jitted = jax.jit(functools.partial(net.apply, train=train))(params, state, x)
        chex.assert_trees_all_close(jitted, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", [BatchNorm, LayerNorm], ids=["BatchNorm", "LayerNorm"])
def test_wrong_channel_count_is_a_layer_error(layer):
    net = layer()
    _, params, state = net.init(jax.random.key(0), (-1, 5))
    kind = net.kind
    with pytest.raises(fnn.LayerError, match=rf"{kind}.*got shape \(2, 4\)"):
        net.apply(params, state, jnp.ones((2, 4)), train=True)
    with pytest.raises(fnn.LayerError, match=rf"{kind}.*got shape \(2, 3, 4\)"):
        net.apply(params, state, jnp.ones((2, 3, 4)), train=False)
    model = serial(Dense(5), layer(name="norm"), Dense(2))
    _, params, state = model.init(jax.random.key(0), (-1, 3))
    params["norm"] = {k: v[:4] for k, v in params["norm"].items()}
    state = {k: {kk: vv[:4] for kk, vv in v.items()} for k, v in state.items()}
    with pytest.raises(fnn.LayerError, match=rf"{kind} layer 'norm'.*got shape \(2, 5\)"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)


def test_batchnorm_bad_shapes_at_init():
    with pytest.raises(fnn.LayerError, match=r"BatchNorm.*known sizes.*\(-1, -1\)"):
        BatchNorm().init(jax.random.key(0), (-1, -1))
    with pytest.raises(fnn.LayerError, match=r"BatchNorm.*batch axis"):
        BatchNorm(0).init(jax.random.key(0), (-1, 3))
    with pytest.raises(fnn.LayerError, match=r"BatchNorm.*out of range"):
        BatchNorm(3).init(jax.random.key(0), (-1, 3))
    with pytest.raises(fnn.LayerError, match=r"BatchNorm.*repeat"):
        BatchNorm((1, -1)).init(jax.random.key(0), (-1, 3))
    with pytest.raises(fnn.LayerError, match=r"BatchNorm.*rank"):
        BatchNorm().init(jax.random.key(0), (3,))


@pytest.mark.parametrize("kwargs", [dict(axis="x"), dict(axis=()), dict(axis=True),
                                    dict(momentum=1.5), dict(momentum=-0.1),
                                    dict(epsilon=0.0), dict(scale_init="nope")])
def test_batchnorm_bad_arguments_are_value_errors(kwargs):
    with pytest.raises(ValueError, match="BatchNorm|initializer"):
        BatchNorm(**kwargs)


def test_layer_kinds_and_names():
    assert BatchNorm().kind == "BatchNorm" and default_key(BatchNorm()) == "batch_norm"
    assert LayerNorm().kind == "LayerNorm" and default_key(LayerNorm()) == "layer_norm"
    assert BatchNorm(momentum=0.9).spec == {"BatchNorm": {"momentum": 0.9}}


# ----------------------------------------------------------------------------- LayerNorm

def np_layer_norm(x, scale, offset, eps=EPS):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(offset)


@pytest.mark.parametrize("shape", [(4, 7), (2, 3, 5)])
def test_layernorm_matches_numpy(shape):
    ln = LayerNorm()
    out_shape, params, state = ln.init(jax.random.key(0), (-1,) + shape[1:])
    assert out_shape == (-1,) + shape[1:] and state == {}
    chex.assert_trees_all_equal(params, {"scale": jnp.ones(shape[-1]),
                                         "offset": jnp.zeros(shape[-1])})
    r = np.random.default_rng(5)
    params = {"scale": jnp.asarray(r.uniform(0.5, 2.0, shape[-1]), jnp.float32),
              "offset": jnp.asarray(r.normal(size=shape[-1]), jnp.float32)}
    x = _data(shape, loc=5.0)
    expected = np_layer_norm(x, params["scale"], params["offset"])
    for train in (True, False):
        y, new_state = ln.apply(params, state, x, train=train)
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
        assert new_state == {}


def test_layernorm_without_params_and_bfloat16():
    ln = LayerNorm(use_scale=False, use_offset=False)
    _, params, state = ln.init(jax.random.key(0), (-1, 6))
    assert params == {}
    x = _data((3, 6)).astype(jnp.bfloat16)
    y, _ = ln.apply(params, state, x)
    chex.assert_type(y, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(y, np.float32),
                               np_layer_norm(np.asarray(x.astype(jnp.float32)), 1.0, 0.0),
                               atol=2e-2)


def test_layernorm_gradients_match_finite_differences():
    ln = LayerNorm()
    x0 = np.random.default_rng(6).normal(0.5, 2.0, (3, 4))
    r = np.random.default_rng(7)
    scale0, offset0 = r.uniform(0.5, 2.0, 4), r.normal(size=4)
    with jax.enable_x64(True):
        def f(x, scale, offset):
            y, _ = ln.apply({"scale": scale, "offset": offset}, {}, x)
            return jnp.sum(y * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)

        args = tuple(jnp.asarray(a, jnp.float64) for a in (x0, scale0, offset0))
        check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"), eps=1e-6,
                    atol=1e-6, rtol=1e-6)


def test_layernorm_bad_arguments():
    with pytest.raises(ValueError, match="LayerNorm"):
        LayerNorm(epsilon=-1.0)
    with pytest.raises(fnn.LayerError, match=r"LayerNorm.*\(-1, -1\)"):
        LayerNorm().init(jax.random.key(0), (-1, -1))


@pytest.mark.parametrize("make, shape", [(lambda: fnn.LayerNorm(), (3, 4, 6)),
                                         (lambda: fnn.GroupNorm(2), (2, 3, 3, 4)),
                                         (lambda: fnn.InstanceNorm(), (2, 5, 3))])
def test_per_example_norm_derivatives_to_second_order_match_finite_differences(make, shape):
    """The norms standardize with a closed-form derivative rule (a custom JVP): forward and
    reverse mode, and second derivatives (Hessian-vector products), against finite
    differences in float64, with a large mean (where the closed form must stay centred)."""
    norm = make()
    r = np.random.default_rng(5)
    x0 = r.normal(3.0, 2.0, shape)
    scale0, offset0 = r.uniform(0.5, 2.0, shape[-1]), r.normal(size=shape[-1])
    with jax.enable_x64(True):
        weights = jnp.asarray(r.normal(size=shape))

        def f(x, scale, offset):
            y, _ = norm.apply({"scale": scale, "offset": offset}, {}, x)
            return jnp.sum(jnp.sin(y) * weights)   # not linear in y: second derivatives matter

        args = tuple(jnp.asarray(a, jnp.float64) for a in (x0, scale0, offset0))
        check_grads(f, args, order=2, modes=("fwd", "rev"), eps=1e-5, atol=1e-5, rtol=1e-5)
