"""Tests for fnn.activations (plain functions) and fnn.layers.activations (layers).

Functions are checked against NumPy/``math`` formulas written here; layers against the layer
protocol (init shape == apply shape, gradients vs finite differences, jit == eager) and their
own rules (PRelu alpha learned, RRelu slopes in range, Swish learnable beta).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.activations import (elu, gelu, get, leaky_relu, log_softmax, names, relu, selu,
                             sigmoid, softmax, softplus, swish, tanh)
from fnn.core import LayerError

BATCH = 2


# --------------------------------------------------------------------------- helpers

def _concrete(shape, batch=BATCH):
    return tuple(batch if d == -1 else d for d in shape)


def _input(shape, seed=0):
    """Normal entries pushed away from 0 (so finite differences never straddle a kink)."""
    x = np.random.default_rng(seed).normal(size=_concrete(shape))
    return jnp.asarray(np.sign(x) * (0.1 + np.abs(x)), jnp.float32)


def _np(x):
    return np.asarray(x, np.float64)


def _check_shapes(layer, input_shapes, *, rng=None, train=False):
    """For each input shape, init's output shape is the shape apply produces (traced abstractly)."""
    for input_shape in input_shapes:
        out_shape, params, state = layer.init(jax.random.key(0), input_shape)
        x = jax.ShapeDtypeStruct(_concrete(input_shape), jnp.float32)
        y, new_state = jax.eval_shape(
            lambda p, s, x: layer.apply(p, s, x, rng=rng, train=train), params, state, x)
        assert y.shape == _concrete(out_shape), (input_shape, out_shape, y.shape)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


def _check_values_grads_and_jit(layer, input_shape, reference, *, rng=None, train=False):
    """Eager output matches ``reference`` (NumPy); gradients (params and input) match finite
    differences; jit agrees with eager."""
    _, params, state = layer.init(jax.random.key(0), input_shape)
    x = _input(input_shape)

    def f(p, x):
        return layer.apply(p, state, x, rng=rng, train=train)[0]

    y = f(params, x)
    if reference is not None:
        np.testing.assert_allclose(_np(y), reference(_np(x)), rtol=2e-6, atol=2e-6)
    f_jit = jax.jit(f)
    check_grads(f_jit, (params, x), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
    np.testing.assert_allclose(np.asarray(f_jit(params, x)), np.asarray(y), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- functions

X = np.linspace(-4.0, 4.0, 33).astype(np.float32)
SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_elu(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(x))


def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _gelu_exact(x):
    flat = [v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in np.ravel(x)]
    return np.reshape(flat, np.shape(x))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


FUNCTION_CASES = [
    ("sigmoid", lambda x: sigmoid(x), _np_sigmoid),
    ("tanh", lambda x: tanh(x), np.tanh),
    ("relu", lambda x: relu(x), lambda x: np.maximum(x, 0.0)),
    ("leaky_relu_default", lambda x: leaky_relu(x), lambda x: np.where(x >= 0, x, 0.01 * x)),
    ("leaky_relu_0.3", lambda x: leaky_relu(x, 0.3), lambda x: np.where(x >= 0, x, 0.3 * x)),
    ("elu_default", lambda x: elu(x), lambda x: _np_elu(x, 1.0)),
    ("elu_0.5", lambda x: elu(x, 0.5), lambda x: _np_elu(x, 0.5)),
    ("selu", lambda x: selu(x), lambda x: SELU_LAMBDA * _np_elu(x, SELU_ALPHA)),
    ("gelu_exact", lambda x: gelu(x), _gelu_exact),
    ("gelu_tanh", lambda x: gelu(x, approximate=True), _gelu_tanh),
    ("swish", lambda x: swish(x), lambda x: x * _np_sigmoid(x)),
    ("swish_beta", lambda x: swish(x, 1.7), lambda x: x * _np_sigmoid(1.7 * x)),
    ("softplus", lambda x: softplus(x), lambda x: np.log1p(np.exp(x))),
]


@pytest.mark.parametrize("name,fn,reference", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_function_matches_formula(name, fn, reference):
    got = fn(jnp.asarray(X))
    assert got.shape == X.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(_np(got), reference(_np(X)), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax_match_formula(axis):
    x = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32) * 3.0
    expected = _np_softmax(_np(x), axis)
    np.testing.assert_allclose(_np(softmax(jnp.asarray(x), axis)), expected,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_np(log_softmax(jnp.asarray(x), axis)), np.log(expected),
                               rtol=1e-5, atol=1e-5)


def test_softmax_is_stable_for_large_inputs():
    x = jnp.asarray([[1000.0, 1001.0, 1002.0]])
    expected = _np_softmax(np.array([[0.0, 1.0, 2.0]]), -1)
    np.testing.assert_allclose(_np(softmax(x)), expected, rtol=1e-6)
    np.testing.assert_allclose(_np(log_softmax(x)), np.log(expected), rtol=1e-6)


def test_get_by_name_and_passthrough():
    x = jnp.asarray(X)
    for name in ("relu", "ReLU", "sigmoid", "gelu", "silu", "swish"):
        fn = get(name)
        assert fn is get(name.lower())
    np.testing.assert_allclose(_np(get("linear")(x)), _np(X))
    custom = lambda v: v * 2.0  # noqa: E731
    assert get(custom) is custom
    assert "relu" in names() and names() == sorted(names())


def test_fnn_activations_is_the_functions_module():
    # ``fnn.activations.get("relu")`` is the documented way to reach these functions.
    assert fnn.activations.get is get
    assert fnn.activations.gelu is gelu


def test_get_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"unknown activation 'rleu'.*did you mean relu"):
        get("rleu")


# --------------------------------------------------------------------------- layers: protocol

def _np_leaky(alpha):
    return lambda x: np.where(x >= 0, x, alpha * x)


LAYERS = [  # (id, layer, NumPy reference at default params or None, needs rng in training)
    ("Sigmoid", fnn.Sigmoid(), _np_sigmoid, False),
    ("Tanh", fnn.Tanh(), np.tanh, False),
    ("Relu", fnn.Relu(), lambda x: np.maximum(x, 0.0), False),
    ("LeakyRelu", fnn.LeakyRelu(), _np_leaky(0.01), False),
    ("LeakyRelu_0.2", fnn.LeakyRelu(alpha=0.2), _np_leaky(0.2), False),
    ("Elu_0.5", fnn.Elu(alpha=0.5), lambda x: _np_elu(x, 0.5), False),
    ("Selu", fnn.Selu(), lambda x: SELU_LAMBDA * _np_elu(x, SELU_ALPHA), False),
    ("Gelu", fnn.Gelu(), _gelu_exact, False),
    ("Gelu_tanh", fnn.Gelu(approximate=True), _gelu_tanh, False),
    ("Softplus", fnn.Softplus(), lambda x: np.log1p(np.exp(x)), False),
    ("Softmax", fnn.Softmax(), lambda x: _np_softmax(x, -1), False),
    ("Softmax_axis1", fnn.Softmax(axis=1), lambda x: _np_softmax(x, 1), False),
    ("LogSoftmax", fnn.LogSoftmax(), lambda x: np.log(_np_softmax(x, -1)), False),
    ("LogSoftmax_axis1", fnn.LogSoftmax(axis=1), lambda x: np.log(_np_softmax(x, 1)), False),
    ("PRelu", fnn.PRelu(), _np_leaky(0.25), False),
    ("PRelu_per_channel", fnn.PRelu(init_alpha=0.3, per_channel=True), _np_leaky(0.3), False),
    ("RRelu_test", fnn.RRelu(lower=0.1, upper=0.5), _np_leaky(0.3), False),
    ("RRelu_train", fnn.RRelu(lower=0.1, upper=0.5), None, True),
    ("Swish", fnn.Swish(), lambda x: x * _np_sigmoid(x), False),
    ("Swish_2", fnn.Swish(beta=2.0), lambda x: x * _np_sigmoid(2.0 * x), False),
    ("Swish_learnable", fnn.Swish(beta=1.5, learnable=True),
     lambda x: x * _np_sigmoid(1.5 * x), False),
    ("Activation_elu", fnn.Activation("elu"), lambda x: _np_elu(x, 1.0), False),
    ("Activation_Sigmoid", fnn.Activation("Sigmoid"), _np_sigmoid, False),
    ("Activation_softmax", fnn.Activation("softmax"), lambda x: _np_softmax(x, -1), False),
]


@pytest.mark.parametrize("name,layer,reference,train", LAYERS, ids=[c[0] for c in LAYERS])
def test_init_shape_is_apply_shape(name, layer, reference, train):
    _check_shapes(layer, [(-1, 5), (-1, 3, 5), (-1, 2, 3, 4)],
                  rng=jax.random.key(3) if train else None, train=train)


@pytest.mark.parametrize("name,layer,reference,train", LAYERS, ids=[c[0] for c in LAYERS])
def test_values_grads_and_jit(name, layer, reference, train):
    # (-1, 3, 5): a softmax over axis 1 and a per-channel PRelu differ from the 2-d case
    _check_values_grads_and_jit(layer, (-1, 3, 5), reference,
                                rng=jax.random.key(3) if train else None, train=train)


def test_ready_made_layers_have_kinds_and_default_specs():
    assert fnn.Relu().kind == "Relu" and fnn.Relu().spec == "Relu" and fnn.Relu().name is None
    assert fnn.Softmax(axis=1).spec == {"Softmax": {"axis": 1}}
    assert fnn.Activation("relu").spec == {"Activation": {"activation": "relu"}}
    assert fnn.PRelu().init(jax.random.key(0), (-1, 4))[1]["alpha"].shape == ()


def test_activation_layer_unknown_name_names_the_kind():
    with pytest.raises(ValueError) as info:
        fnn.Activation("rleu")
    message = str(info.value)
    assert "Activation" in message and "did you mean relu" in message


# --------------------------------------------------------------------------- PRelu

def test_prelu_alpha_is_learned():
    layer = fnn.PRelu(init_alpha=0.25)
    _, params, state = layer.init(jax.random.key(0), (-1, 6))
    chex.assert_trees_all_equal(params, {"alpha": jnp.asarray(0.25, jnp.float32)})
    x = _input((-1, 6), seed=5)
    grad = jax.grad(lambda p: jnp.sum(layer.apply(p, state, x)[0]))(params)
    # d/d alpha sum(where(x >= 0, x, alpha x)) = sum of the negative entries
    x64 = _np(x)
    np.testing.assert_allclose(float(grad["alpha"]), x64[x64 < 0].sum(), rtol=1e-6)
    assert float(grad["alpha"]) != 0.0


def test_prelu_per_channel_alpha_shape_values_and_grad():
    layer = fnn.PRelu(init_alpha=0.1, per_channel=True)
    out_shape, params, _ = layer.init(jax.random.key(0), (-1, 3, 4))
    assert out_shape == (-1, 3, 4)
    chex.assert_shape(params["alpha"], (4,))
    alpha = jnp.asarray([0.1, 0.2, 0.3, 0.4], jnp.float32)
    x = _input((-1, 3, 4), seed=6)
    y, _ = layer.apply({"alpha": alpha}, {}, x)
    x64, a64 = _np(x), _np(alpha)
    np.testing.assert_allclose(_np(y), np.where(x64 >= 0, x64, a64 * x64), rtol=1e-6)
    grad = jax.grad(lambda p: jnp.sum(layer.apply(p, {}, x)[0]))({"alpha": alpha})["alpha"]
    np.testing.assert_allclose(_np(grad), np.where(x64 < 0, x64, 0.0).sum(axis=(0, 1)),
                               rtol=1e-5)


def test_prelu_per_channel_needs_known_channels():
    with pytest.raises(LayerError, match=r"PRelu.*\(-1, -1\)"):
        fnn.PRelu(per_channel=True).init(jax.random.key(0), (-1, -1))


# --------------------------------------------------------------------------- RRelu

def test_rrelu_training_slopes_in_range_and_random():
    lower, upper = 0.1, 0.4
    layer = fnn.RRelu(lower=lower, upper=upper)
    x = _input((-1, 50, 40), seed=7)
    y1, _ = layer.apply({}, {}, x, rng=jax.random.key(1), train=True)
    y2, _ = layer.apply({}, {}, x, rng=jax.random.key(2), train=True)
    y1_again, _ = layer.apply({}, {}, x, rng=jax.random.key(1), train=True)
    x64, y64 = _np(x), _np(y1)
    negative = x64 < 0
    np.testing.assert_array_equal(y64[~negative], x64[~negative])  # x >= 0 passes through
    slopes = y64[negative] / x64[negative]
    assert slopes.size > 1500
    assert slopes.min() >= lower - 1e-6 and slopes.max() <= upper + 1e-6
    # the slopes spread over the interval (U(0.1, 0.4): mean 0.25, sd 0.087)
    assert slopes.min() < lower + 0.01 and slopes.max() > upper - 0.01
    assert abs(slopes.mean() - (lower + upper) / 2) < 0.01
    assert np.any(_np(y1) != _np(y2))
    np.testing.assert_array_equal(_np(y1), _np(y1_again))


def test_rrelu_test_mode_slope_is_exact_mean():
    lower, upper = 0.125, 0.375
    x = _input((-1, 8), seed=9)
    y, _ = fnn.RRelu(lower=lower, upper=upper).apply({}, {}, x, train=False)
    x32 = np.asarray(x)
    expected = np.where(x32 >= 0, x32, np.float32((lower + upper) / 2) * x32)
    np.testing.assert_array_equal(np.asarray(y), expected)


def test_rrelu_training_without_rng_names_the_layer():
    with pytest.raises(LayerError, match=r"RRelu layer.*needs an rng"):
        fnn.RRelu().apply({}, {}, jnp.ones((2, 3)), train=True)
    net = fnn.serial(fnn.Dense(3), fnn.RRelu)
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    with pytest.raises(LayerError, match=r"RRelu layer 'rrelu_0'.*needs an rng"):
        net.apply(params, state, jnp.ones((2, 3)), train=True)


def test_rrelu_rejects_bad_bounds():
    with pytest.raises(ValueError, match="RRelu"):
        fnn.RRelu(lower=0.5, upper=0.1)
    with pytest.raises(ValueError, match="RRelu"):
        fnn.RRelu(lower=-0.1, upper=0.1)


# --------------------------------------------------------------------------- Swish

def test_swish_fixed_beta_has_no_params():
    _, params, state = fnn.Swish(beta=1.5).init(jax.random.key(0), (-1, 4))
    assert params == {} and state == {}


def test_swish_learnable_beta_gradient_matches_formula():
    layer = fnn.Swish(beta=0.8, learnable=True)
    _, params, _ = layer.init(jax.random.key(0), (-1, 7))
    chex.assert_trees_all_equal(params, {"beta": jnp.asarray(0.8, jnp.float32)})
    x = _input((-1, 7), seed=10)
    grad = jax.grad(lambda p: jnp.sum(layer.apply(p, {}, x)[0]))(params)["beta"]
    # d/d beta sum x sigmoid(beta x) = sum x^2 s (1 - s), s = sigmoid(beta x)
    x64 = _np(x)
    s = _np_sigmoid(0.8 * x64)
    expected = np.sum(x64 ** 2 * s * (1.0 - s))
    np.testing.assert_allclose(float(grad), expected, rtol=1e-5)
    assert float(grad) != 0.0


@pytest.mark.parametrize("spec", [{"LeakyRelu": "abc"}, {"Elu": {"alpha": None}},
                                  {"Softmax": {"axis": 1.5}}, {"Swish": {"beta": "x"}},
                                  {"PRelu": {"per_channel": "yes"}}, {"Gelu": {"approximate": 1}},
                                  {"Dense": {"features": 3, "use_bias": "no"}}])
def test_bad_constructor_arguments_fail_when_built(spec):
    from fnn.layers.spec import SpecError, from_spec
    with pytest.raises(SpecError, match=next(iter(spec))):
        from_spec(spec)
