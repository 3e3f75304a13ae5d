"""Tests for fnn.layers.combinators: shapes, values against NumPy, params/state trees,
weight sharing, rng splitting, gradients and errors."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import fnn
from fnn.core import Layer, LayerError, layer_type
from fnn.layers.combinators import (Identity, fan_in_concat, fan_in_sum, fan_out, parallel,
                                    residual, serial, shared)

BATCH = 2


# --------------------------------------------------------------------------- helpers

def _is_shape(shape) -> bool:
    return isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)


def _concrete(shape, batch=BATCH):
    """``-1`` -> ``batch`` in a shape or a tuple of shapes."""
    if _is_shape(shape):
        return tuple(batch if d == -1 else d for d in shape)
    return tuple(_concrete(s, batch) for s in shape)


def _input(shape, seed=0):
    """Random input(s) for a shape or a tuple of shapes."""
    if _is_shape(shape):
        return jnp.asarray(np.random.default_rng(seed).normal(size=_concrete(shape)), jnp.float32)
    return tuple(_input(s, seed + 1 + i) for i, s in enumerate(shape))


def _np(x):
    return np.asarray(x, np.float64)


def _shapes_of(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


@layer_type("CounterForTest")
def _counter() -> Layer:
    """A test layer with state: passes ``x`` through and counts its calls in ``state["n"]``."""

    def init(rng, input_shape):
        return input_shape, {}, {"n": jnp.zeros((), jnp.int32)}

    def apply(params, state, x, *, rng=None, train=False):
        return x, {"n": state["n"] + 1}

    return Layer(init, apply)


def _spy(layer: Layer, log: list) -> Layer:
    """``layer`` that appends ``(input, output)`` of each (eager) apply to ``log``."""

    def apply(params, state, x, *, rng=None, train=False):
        y, s = layer.apply(params, state, x, rng=rng, train=train)
        log.append((_np(x), _np(y)))
        return y, s

    return Layer(layer.init, apply)  # hand-made: keyed "layer_0", "layer_1" in a combinator


# --------------------------------------------------------------------------- protocol

CASES = [
    ("serial", serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(3)), [(-1, 5), (-1, 3, 5)]),
    ("serial_nested", serial(fnn.Dense(4), serial(fnn.Dense(3), fnn.Sigmoid, name="block")),
     [(-1, 5), (-1, 3, 5)]),
    ("parallel", parallel(fnn.Dense(3), fnn.Tanh), [((-1, 5), (-1, 4)), ((-1, 3, 5), (-1, 2))]),
    ("fan_out", fan_out(3), [(-1, 5), (-1, 3, 5)]),
    ("fan_in_concat", fan_in_concat(), [((-1, 3), (-1, 5)), ((-1, 2, 3), (-1, 2, 1))]),
    ("fan_in_concat_axis1", fan_in_concat(axis=1), [((-1, 2, 5), (-1, 3, 5))]),
    ("fan_in_sum", fan_in_sum(), [((-1, 4), (-1, 4), (-1, 4)), ((-1, 3, 5), (-1, 3, 5))]),
    ("residual", residual(fnn.Dense(5), fnn.Tanh), [(-1, 5), (-1, 3, 5)]),
    ("residual_projection", residual(fnn.Dense(4), fnn.Tanh, shortcut=fnn.Dense(4)),
     [(-1, 5), (-1, 3, 5)]),
    ("Identity", Identity(), [(-1, 5), (-1, 3, 5)]),
    ("shared", shared(serial(fnn.Dense(4), fnn.Tanh)), [((-1, 5), (-1, 5)),
                                                        ((-1, 3, 5), (-1, 3, 5))]),
    ("branches", serial(fan_out(2), parallel(fnn.Dense(3), fnn.Dense(2)), fan_in_concat()),
     [(-1, 4), (-1, 3, 4)]),
]
TRAIN_CASES = [  # layers that use rng in training (shared + RRelu: test_shared_branches_...)
    ("serial_rrelu", serial(fnn.Dense(4), fnn.RRelu, fnn.Dense(2)), [(-1, 5), (-1, 3, 5)]),
]
ALL = [pytest.param(layer, shapes, False, id=name) for name, layer, shapes in CASES] + [
    pytest.param(layer, shapes, True, id=name) for name, layer, shapes in TRAIN_CASES]


@pytest.mark.parametrize("layer,input_shapes,train", ALL)
def test_init_shape_is_apply_shape(layer, input_shapes, train):
    rng = jax.random.key(3) if train else None
    for input_shape in input_shapes:
        out_shape, params, state = layer.init(jax.random.key(0), input_shape)
        x = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32),
                         _concrete(input_shape), is_leaf=_is_shape)
        y, new_state = jax.eval_shape(
            lambda p, s, x: layer.apply(p, s, x, rng=rng, train=train), params, state, x)
        assert _shapes_of(y) == _concrete(out_shape), (input_shape, out_shape)
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


@pytest.mark.parametrize("layer,input_shapes,train", ALL)
def test_grads_match_finite_differences_and_jit_matches_eager(layer, input_shapes, train):
    rng = jax.random.key(3) if train else None
    input_shape = input_shapes[0]
    _, params, state = layer.init(jax.random.key(0), input_shape)
    x = _input(input_shape)

    def f(p, x):
        return layer.apply(p, state, x, rng=rng, train=train)[0]

    f_jit = jax.jit(f)
    check_grads(f_jit, (params, x), order=1, modes=["rev"], eps=1e-3, atol=1e-2, rtol=1e-2)
    chex.assert_trees_all_close(f_jit(params, x), f(params, x), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- serial

def test_serial_values_params_keys_and_empty_state():
    net = serial(fnn.Dense(4), fnn.Relu, fnn.Dense(3), fnn.Tanh)
    out_shape, params, state = net.init(jax.random.key(0), (-1, 5))
    assert out_shape == (-1, 3)
    assert sorted(params) == ["dense_0", "dense_1"]  # Relu and Tanh have no params: omitted
    assert state == {}
    x = _input((-1, 5))
    y, new_state = net.apply(params, state, x)
    p = jax.tree.map(_np, params)
    h = np.maximum(_np(x) @ p["dense_0"]["w"] + p["dense_0"]["b"], 0.0)
    expected = np.tanh(h @ p["dense_1"]["w"] + p["dense_1"]["b"])
    np.testing.assert_allclose(_np(y), expected, rtol=1e-5, atol=1e-6)
    assert new_state == {}


def test_serial_of_nothing_is_identity():
    out_shape, params, state = serial().init(jax.random.key(0), (-1, 3))
    assert (out_shape, params, state) == ((-1, 3), {}, {})
    x = _input((-1, 3))
    y, _ = serial().apply({}, {}, x)
    np.testing.assert_array_equal(_np(y), _np(x))


def test_serial_children_get_independent_init_keys():
    _, params, _ = serial(fnn.Dense(4), fnn.Dense(4)).init(jax.random.key(0), (-1, 4))
    assert not np.allclose(_np(params["dense_0"]["w"]), _np(params["dense_1"]["w"]))


def test_serial_rng_differs_per_rrelu_layer():
    log: list = []
    lower, upper = 0.1, 0.9
    net = serial(_spy(fnn.RRelu(lower=lower, upper=upper), log),
                 _spy(fnn.RRelu(lower=lower, upper=upper), log))
    _, params, state = net.init(jax.random.key(0), (-1, 50))
    x = -jnp.abs(_input((-1, 50))) - 0.1  # negative: every element gets a random slope
    y, _ = net.apply(params, state, x, rng=jax.random.key(5), train=True)
    (x0, y0), (x1, y1) = log
    slopes0, slopes1 = y0 / x0, y1 / x1
    for s in (slopes0, slopes1):
        assert s.min() >= lower - 1e-6 and s.max() <= upper + 1e-6
    assert not np.allclose(slopes0, slopes1, atol=1e-3)  # each layer draws its own slopes
    np.testing.assert_allclose(_np(y), _np(x) * slopes0 * slopes1, rtol=1e-5)
    # same rng, same result
    log.clear()
    y_again, _ = net.apply(params, state, x, rng=jax.random.key(5), train=True)
    np.testing.assert_array_equal(_np(y_again), _np(y))


def test_state_is_threaded_and_keyed_by_child():
    net = serial(_counter(), fnn.Dense(2), _counter())
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    assert sorted(state) == ["counter_for_test_0", "counter_for_test_1"] and sorted(params) == ["dense_0"]
    x = _input((-1, 3))
    _, state = net.apply(params, state, x)
    _, state = net.apply(params, state, x)
    chex.assert_trees_all_equal(state, {"counter_for_test_0": {"n": jnp.asarray(2, jnp.int32)},
                                        "counter_for_test_1": {"n": jnp.asarray(2, jnp.int32)}})


def test_state_in_parallel_residual_and_shared():
    one, two = jnp.asarray(1, jnp.int32), jnp.asarray(2, jnp.int32)
    net = parallel(_counter(), fnn.Relu, _counter())
    _, _, state = net.init(jax.random.key(0), ((-1, 2), (-1, 2), (-1, 2)))
    _, state = net.apply({}, state, _input(((-1, 2), (-1, 2), (-1, 2))))
    chex.assert_trees_all_equal(state, {"counter_for_test_0": {"n": one}, "counter_for_test_1": {"n": one}})

    net = residual(_counter(), shortcut=_counter())
    _, _, state = net.init(jax.random.key(0), (-1, 2))
    _, state = net.apply({}, state, _input((-1, 2)))
    chex.assert_trees_all_equal(state, {"body": {"counter_for_test_0": {"n": one}},
                                        "shortcut": {"n": one}})

    net = shared(_counter())  # one state, threaded through both branches in order
    _, _, state = net.init(jax.random.key(0), ((-1, 2), (-1, 2)))
    _, state = net.apply({}, state, _input(((-1, 2), (-1, 2))))
    chex.assert_trees_all_equal(state, {"n": two})


# --------------------------------------------------------------------------- parallel / fan

def test_parallel_applies_each_layer_to_its_input():
    net = parallel(fnn.Dense(3), fnn.Tanh, fnn.Dense(2, name="head"))
    shapes = ((-1, 4), (-1, 5), (-1, 6))
    out_shape, params, _ = net.init(jax.random.key(0), shapes)
    assert out_shape == ((-1, 3), (-1, 5), (-1, 2))
    assert sorted(params) == ["dense_0", "head"]
    xs = _input(shapes)
    ys, _ = net.apply(params, {}, xs)
    assert isinstance(ys, tuple) and len(ys) == 3
    p = jax.tree.map(_np, params)
    np.testing.assert_allclose(_np(ys[0]), _np(xs[0]) @ p["dense_0"]["w"] + p["dense_0"]["b"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(ys[1]), np.tanh(_np(xs[1])), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(ys[2]), _np(xs[2]) @ p["head"]["w"] + p["head"]["b"],
                               rtol=1e-5, atol=1e-6)


def test_parallel_wrong_number_of_inputs():
    net = parallel(fnn.Dense(3), fnn.Dense(3))
    with pytest.raises(LayerError, match=r"parallel layer.*tuple of 2 input shapes.*length 3"):
        net.init(jax.random.key(0), ((-1, 2), (-1, 2), (-1, 2)))
    # a single shape of rank 2 is not a tuple of two shapes
    with pytest.raises(LayerError, match=r"parallel layer.*single input of shape \(-1, 2\)"):
        net.init(jax.random.key(0), (-1, 2))
    _, params, _ = net.init(jax.random.key(0), ((-1, 2), (-1, 2)))
    with pytest.raises(LayerError, match=r"parallel layer.*tuple of 2 inputs.*\(2, 2\)"):
        net.apply(params, {}, jnp.ones((2, 2)))


def test_parallel_error_names_the_branch():
    net = parallel(fnn.Dense(3), fnn.Dense(3))
    _, params, _ = net.init(jax.random.key(0), ((-1, 2), (-1, 4)))
    with pytest.raises(LayerError, match=r"Dense layer 'dense_1'.*\(2, 2\)"):
        net.apply(params, {}, (jnp.ones((2, 2)), jnp.ones((2, 2))))


def test_fan_out_copies():
    out_shape, params, state = fan_out(3).init(jax.random.key(0), (-1, 4))
    assert out_shape == ((-1, 4),) * 3 and params == {} and state == {}
    x = _input((-1, 4))
    ys, _ = fan_out(3).apply({}, {}, x)
    assert len(ys) == 3
    for y in ys:
        np.testing.assert_array_equal(_np(y), _np(x))


@pytest.mark.parametrize("num", [0, -1, 1.5])
def test_fan_out_rejects_bad_num(num):
    with pytest.raises(ValueError, match="fan_out"):
        fan_out(num)


def test_fan_in_concat_values_and_unknown_sizes():
    xs = _input(((-1, 2, 3), (-1, 2, 5)))
    y, _ = fan_in_concat().apply({}, {}, xs)
    np.testing.assert_array_equal(_np(y), np.concatenate([_np(xs[0]), _np(xs[1])], axis=-1))
    y, _ = fan_in_concat(axis=1).apply({}, {}, _input(((-1, 1, 3), (-1, 4, 3))))
    assert y.shape == (BATCH, 5, 3)
    # an unknown size on the concatenated axis gives an unknown output size
    assert fan_in_concat(axis=1).init(None, ((-1, -1, 3), (-1, 4, 3)))[0] == (-1, -1, 3)


def test_fan_in_concat_shape_errors():
    with pytest.raises(LayerError, match=r"fan_in_concat layer.*\(-1, 2, 3\).*\(-1, 3, 4\)"):
        fan_in_concat().init(None, ((-1, 2, 3), (-1, 3, 4)))
    with pytest.raises(LayerError, match=r"fan_in_concat layer.*one rank"):
        fan_in_concat().init(None, ((-1, 3), (-1, 2, 3)))


def test_fan_in_sum_values_and_errors():
    xs = _input(((-1, 3), (-1, 3), (-1, 3)))
    y, _ = fan_in_sum().apply({}, {}, xs)
    np.testing.assert_allclose(_np(y), sum(_np(x) for x in xs), rtol=1e-6)
    with pytest.raises(LayerError, match=r"fan_in_sum layer.*\(-1, 3\).*\(-1, 4\)"):
        fan_in_sum().init(None, ((-1, 3), (-1, 4)))


def test_identity():
    out_shape, params, state = Identity().init(jax.random.key(0), (-1, 3, 2))
    assert (out_shape, params, state) == ((-1, 3, 2), {}, {})
    x = _input((-1, 3, 2))
    y, _ = Identity().apply({}, {}, x)
    np.testing.assert_array_equal(_np(y), _np(x))


# --------------------------------------------------------------------------- residual

def test_residual_identity_shortcut_values_and_params():
    block = residual(fnn.Dense(5), fnn.Relu)
    out_shape, params, state = block.init(jax.random.key(0), (-1, 5))
    assert out_shape == (-1, 5) and state == {}
    assert list(params) == ["body"] and sorted(params["body"]) == ["dense_0"]
    x = _input((-1, 5))
    y, _ = block.apply(params, state, x)
    p = jax.tree.map(_np, params["body"]["dense_0"])
    expected = _np(x) + np.maximum(_np(x) @ p["w"] + p["b"], 0.0)
    np.testing.assert_allclose(_np(y), expected, rtol=1e-5, atol=1e-6)


def test_residual_projection_shortcut_values_and_params():
    block = residual(fnn.Dense(3), fnn.Tanh, shortcut=fnn.Dense(3, use_bias=False))
    out_shape, params, _ = block.init(jax.random.key(0), (-1, 5))
    assert out_shape == (-1, 3)
    assert sorted(params) == ["body", "shortcut"]
    chex.assert_shape(params["shortcut"]["w"], (5, 3))
    assert "b" not in params["shortcut"]
    x = _input((-1, 5))
    y, _ = block.apply(params, {}, x)
    pb = jax.tree.map(_np, params["body"]["dense_0"])
    expected = np.tanh(_np(x) @ pb["w"] + pb["b"]) + _np(x) @ _np(params["shortcut"]["w"])
    np.testing.assert_allclose(_np(y), expected, rtol=1e-5, atol=1e-6)


def test_residual_mismatched_shapes_error():
    with pytest.raises(LayerError) as info:
        residual(fnn.Dense(4)).init(jax.random.key(0), (-1, 5))
    message = str(info.value)
    assert message.startswith("residual layer")
    assert "(-1, 4)" in message and "(-1, 5)" in message and "shortcut" in message


def test_residual_error_in_body_names_the_path():
    with pytest.raises(LayerError, match=r"Dense layer 'body/dense_0'.*\(5,\)"):
        residual(fnn.Dense(4)).init(jax.random.key(0), (5,))


# --------------------------------------------------------------------------- shared

def _twin():
    return shared(serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(2)))


def test_shared_has_one_set_of_params():
    inner = serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(2))
    twin = shared(inner)
    out_shape, params, _ = twin.init(jax.random.key(0), ((-1, 3), (-1, 3)))
    assert out_shape == ((-1, 2), (-1, 2))
    _, inner_params, _ = inner.init(jax.random.key(0), (-1, 3))
    # the same tree as ONE copy of the inner layer: no per-branch params
    assert jax.tree.structure(params) == jax.tree.structure(inner_params)
    assert _shapes_of(params) == _shapes_of(inner_params)


def test_shared_outputs_equal_for_equal_inputs_and_match_inner_layer():
    inner = serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(2))
    twin = shared(inner)
    _, params, state = twin.init(jax.random.key(0), ((-1, 3), (-1, 3)))
    a, b = _input(((-1, 3), (-1, 3)))
    (ya, ya2), _ = twin.apply(params, state, (a, a))
    np.testing.assert_array_equal(_np(ya), _np(ya2))
    (ya, yb), _ = twin.apply(params, state, (a, b))
    np.testing.assert_allclose(_np(ya), _np(inner.apply(params, {}, a)[0]), rtol=1e-6)
    np.testing.assert_allclose(_np(yb), _np(inner.apply(params, {}, b)[0]), rtol=1e-6)
    assert not np.allclose(_np(ya), _np(yb))


def test_shared_gradients_add_up_over_branches():
    inner = serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(2))
    twin = shared(inner)
    _, params, _ = twin.init(jax.random.key(0), ((-1, 3), (-1, 3)))
    a, b = _input(((-1, 3), (-1, 3)), seed=4)
    ca, cb = _input(((-1, 2), (-1, 2)), seed=8)  # different weights per branch

    def loss(p):
        ya, yb = twin.apply(p, {}, (a, b))[0]
        return jnp.sum(ca * ya) + jnp.sum(cb * yb)

    grads = jax.grad(loss)(params)
    ga = jax.grad(lambda p: jnp.sum(ca * inner.apply(p, {}, a)[0]))(params)
    gb = jax.grad(lambda p: jnp.sum(cb * inner.apply(p, {}, b)[0]))(params)
    chex.assert_trees_all_close(grads, jax.tree.map(jnp.add, ga, gb), rtol=1e-5, atol=1e-6)
    # and both branches contribute (neither per-branch gradient is the total)
    assert not np.allclose(_np(ga["dense_0"]["w"]), _np(grads["dense_0"]["w"]))
    assert not np.allclose(_np(gb["dense_0"]["w"]), _np(grads["dense_0"]["w"]))


def test_shared_branches_get_different_rng():
    twin = shared(fnn.RRelu(lower=0.1, upper=0.9), num_inputs=3)
    x = -jnp.ones((2, 20))
    ys, _ = twin.apply({}, {}, (x, x, x), rng=jax.random.key(0), train=True)
    assert not np.allclose(_np(ys[0]), _np(ys[1])) and not np.allclose(_np(ys[1]), _np(ys[2]))


def test_shared_input_errors():
    twin = _twin()
    with pytest.raises(LayerError, match=r"shared layer.*one shape.*\(-1, 3\).*\(-1, 4\)"):
        twin.init(jax.random.key(0), ((-1, 3), (-1, 4)))
    with pytest.raises(LayerError, match=r"shared layer.*tuple of 2 input shapes.*\(-1, 3\)"):
        twin.init(jax.random.key(0), (-1, 3))


def test_shared_errors_name_the_inner_path():
    twin = shared(serial(fnn.Dense(4), name="tower"))
    _, params, _ = twin.init(jax.random.key(0), ((-1, 3), (-1, 3)))
    # shared adds no level to the params, so the path is the params path of the Dense
    with pytest.raises(LayerError, match=r"Dense layer 'dense_0'.*\(2, 5\)"):
        twin.apply(params, {}, (jnp.ones((2, 3)), jnp.ones((2, 5))))


# --------------------------------------------------------------------------- metadata

def test_combinator_kinds_children_and_names():
    a, b = fnn.Dense(3), fnn.Relu
    net = serial(a, b, name="block")
    assert net.kind == "serial" and net.name == "block"
    assert net.children[0] is a and net.children[1].kind == "Relu" and len(net.children) == 2
    assert residual(a, shortcut=fnn.Dense(3)).kind == "residual"
    assert serial(a).name is None
