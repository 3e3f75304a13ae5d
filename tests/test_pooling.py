"""Pooling layers against NumPy loops over windows written from the definition."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn.core import LayerError
from fnn.layers.pooling import (AvgPool1D, AvgPool2D, GlobalAvgPool, GlobalMaxPool, MaxPool1D,
                                MaxPool2D)

KEY = jax.random.key(0)


def randn(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def np_pads(padding, spatial, window, strides):
    if padding == "VALID":
        return [(0, 0)] * len(spatial)
    if padding == "SAME":  # TensorFlow's rule: ceil(n / s) outputs, odd element after
        pads = []
        for n, k, s in zip(spatial, window, strides):
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * len(spatial)
    if len(spatial) == 1 and len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return [tuple(padding)]  # 1-D bare (lo, hi)
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def np_pool(x, window, strides, padding, reduce):
    """Pool by looping over windows of a NaN-padded copy; NaN = padding, ignored by nan-reductions.

    Returns the output and, for each output element, the flat index (into x) of the argmax.
    """
    x = np.asarray(x, np.float64)
    n, *spatial, c = x.shape
    pads = np_pads(padding, spatial, window, strides)
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=np.nan)
    index = np.pad(np.arange(x.size).reshape(x.shape).astype(np.float64),
                   [(0, 0), *pads, (0, 0)], constant_values=np.nan)
    out = [(size + lo + hi - k) // s + 1
           for size, (lo, hi), k, s in zip(spatial, pads, window, strides)]
    y = np.zeros((n, *out, c))
    argmax = np.zeros((n, *out, c), np.int64)
    for o in np.ndindex(*out):
        sl = tuple(slice(oi * s, oi * s + k) for oi, s, k in zip(o, strides, window))
        patch = xp[(slice(None), *sl, slice(None))].reshape(n, -1, c)
        idx = index[(slice(None), *sl, slice(None))].reshape(n, -1, c)
        if reduce == "max":
            y[(slice(None), *o)] = np.nanmax(patch, axis=1)
            best = np.nanargmax(patch, axis=1)
            argmax[(slice(None), *o)] = np.take_along_axis(idx, best[:, None], 1)[:, 0]
        else:
            y[(slice(None), *o)] = np.nanmean(patch, axis=1)
    return y, argmax


# (ctor, spatial, window, strides, padding)
CASES = [
    ("1D", (9,), 2, None, "VALID"),
    ("1D", (9,), 3, 2, "SAME"),
    ("1D", (8,), 4, 1, "SAME"),  # even window: padding split (1, 2)
    ("1D", (7,), 3, 2, (2, 1)),
    ("2D", (6, 7), 2, None, "VALID"),
    ("2D", (6, 7), 3, (2, 1), "SAME"),
    ("2D", (5, 5), (2, 3), (1, 2), "same"),
    ("2D", (5, 6), 3, 2, ((1, 2), 0)),
    ("2D", (4, 4), 2, 1, 1),
]
CTORS = {("1D", "max"): MaxPool1D, ("2D", "max"): MaxPool2D,
         ("1D", "avg"): AvgPool1D, ("2D", "avg"): AvgPool2D}


def _as_tuple(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_numpy_loop_with_gradient(case, reduce):
    dim, spatial, window, strides, padding = case
    layer = CTORS[dim, reduce](window, strides, padding)
    out_shape, params, state = layer.init(KEY, (-1, *spatial, 3))
    assert params == {} and state == {}
    x = randn(0, (2, *spatial, 3))
    win = _as_tuple(window, len(spatial))
    stride = win if strides is None else _as_tuple(strides, len(spatial))
    pad = padding.upper() if isinstance(padding, str) else padding
    ref, argmax = np_pool(x, win, stride, pad, reduce)

    g = randn(1, ref.shape)

    def loss(x):
        y, _ = layer.apply(params, state, x)
        return jnp.sum(g * y), y

    grad, y = jax.jit(jax.grad(loss, has_aux=True))(x)
    assert y.shape == (2, *out_shape[1:]) == ref.shape
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-6, atol=1e-6)
    if reduce == "max":  # the gradient goes to the argmax of each window, summed
        expected = np.zeros(x.size)
        np.add.at(expected, argmax.ravel(), np.asarray(g).ravel())
        np.testing.assert_allclose(np.asarray(grad).ravel(), expected, rtol=1e-6, atol=1e-6)
    else:  # linear: <grad, u> = sum(g * pool(u)) for any direction u
        for i in range(2):
            u = np.asarray(randn(10 + i, x.shape))
            pooled_u, _ = np_pool(u, win, stride, pad, "avg")
            np.testing.assert_allclose(np.vdot(np.asarray(grad), u),
                                       np.sum(np.asarray(g) * pooled_u), rtol=1e-5)


def test_avg_pool_same_divides_by_valid_count():
    x = jnp.ones((1, 4, 4, 1))
    y, _ = AvgPool2D(3, 1, "SAME").apply({}, {}, x)
    np.testing.assert_allclose(np.asarray(y), 1.0)  # border windows are not diluted by padding
    x = jnp.arange(4.0).reshape(1, 4, 1)
    y, _ = AvgPool1D(3, 1, "SAME").apply({}, {}, x)
    np.testing.assert_allclose(np.asarray(y)[0, :, 0], [0.5, 1.0, 2.0, 2.5])


def test_integer_inputs():
    x = jnp.asarray(np.array([[-5, -3, -9, -1, -7]], np.int32)[..., None])
    y, _ = MaxPool1D(2, padding="SAME").apply({}, {}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(y)[0, :, 0], [-3, -1, -7])
    y, _ = AvgPool1D(2).apply({}, {}, x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y)[0, :, 0], [-4.0, -5.0])


def test_shapes_init_equal_apply():
    x = jnp.zeros((1, 7, 6, 2))
    for window in (1, 2, 3):
        for strides in (None, 1, 2, 3):
            for padding in ("VALID", "SAME"):
                layer = MaxPool2D(window, strides, padding)
                out_shape = layer.init(KEY, (-1, 7, 6, 2))[0]
                y = jax.eval_shape(lambda x: layer.apply({}, {}, x)[0], x)
                assert y.shape == (1, *out_shape[1:])
    assert MaxPool2D(2).init(KEY, (-1, -1, 6, 2))[0] == (-1, -1, 3, 2)
    assert AvgPool1D(2).init(KEY, (8, 9, 4))[0] == (8, 4, 4)


def test_global_pooling():
    for shape in [(2, 5, 3), (2, 4, 5, 3), (2, 2, 3, 4, 3)]:
        x = randn(2, shape)
        axes = tuple(range(1, len(shape) - 1))
        for layer, ref in [(GlobalAvgPool(), np.mean), (GlobalMaxPool(), np.max)]:
            out_shape, params, state = layer.init(KEY, (-1, *shape[1:]))
            assert out_shape == (-1, 3) and params == {} and state == {}
            y, _ = layer.apply(params, state, x)
            chex.assert_shape(y, (2, 3))
            np.testing.assert_allclose(np.asarray(y), ref(np.asarray(x, np.float64), axis=axes),
                                       rtol=1e-6, atol=1e-6)
    assert GlobalAvgPool().kind == "GlobalAvgPool" and GlobalMaxPool().kind == "GlobalMaxPool"


def test_jit_matches_eager():
    layer = AvgPool2D(3, 2, "SAME")
    x = randn(3, (2, 7, 6, 3))
    np.testing.assert_allclose(np.asarray(jax.jit(layer.apply)({}, {}, x)[0]),
                               np.asarray(layer.apply({}, {}, x)[0]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("ctor, args, match", [
    (MaxPool2D, (0,), "window"),
    (MaxPool2D, ((2, 2, 2),), "window"),
    (AvgPool1D, (2, (1, 1)), "strides"),
    (AvgPool2D, (2, None, "FULL"), "padding"),
    (MaxPool1D, (2, None, 2), "padding .* smaller than the window"),
])
def test_bad_arguments(ctor, args, match):
    with pytest.raises(ValueError, match=match):
        ctor(*args)


def test_bad_inputs():
    with pytest.raises(LayerError, match=r"MaxPool2D layer: expects inputs \(batch, height, width, "
                                         r"channels\) of rank 4, got shape \(-1, 8, 3\)"):
        MaxPool2D(2).init(KEY, (-1, 8, 3))
    with pytest.raises(LayerError, match=r"AvgPool1D layer: .*does not fit.*size 2.*\(-1, 2, 3\)"):
        AvgPool1D(3).init(KEY, (-1, 2, 3))
    with pytest.raises(LayerError, match=r"MaxPool1D layer: .* rank 3, got shape \(4, 3\)"):
        MaxPool1D(2).apply({}, {}, jnp.ones((4, 3)))
    with pytest.raises(LayerError, match=r"GlobalAvgPool layer: .* rank >= 3, got shape \(-1, 3\)"):
        GlobalAvgPool().init(KEY, (-1, 3))
    with pytest.raises(LayerError, match=r"GlobalMaxPool layer: .*got shape \(4, 3\)"):
        GlobalMaxPool().apply({}, {}, jnp.ones((4, 3)))


def test_tiled_max_pool_gradient_goes_to_the_first_maximum_of_each_window():
    # ties (a constant background, as in MNIST) and distinct values; the reference is a NumPy
    # loop: each window's gradient goes whole to its first maximum in row-major order
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 4, 3)).astype(np.float32)
    x[0, :4, :4, 0] = 1.5                      # four windows of four tied values
    x[1, 2, 2, 1] = x[1, 3, 3, 1] = 9.0        # two tied, not the first position of the window
    cot = rng.normal(size=(2, 3, 2, 3)).astype(np.float32)
    got = jax.grad(lambda v: jnp.sum(MaxPool2D(2).apply({}, {}, v)[0] * cot))(jnp.asarray(x))
    want = np.zeros_like(x)
    for n, i, j, c in np.ndindex(*cot.shape):
        window = x[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
        a, b = np.unravel_index(np.argmax(window), (2, 2))   # np.argmax: the first maximum
        want[n, 2 * i + a, 2 * j + b, c] = cot[n, i, j, c]
    np.testing.assert_array_equal(np.asarray(got), want)



def test_max_pool_gradient_does_not_jump_with_last_bit_changes_of_the_inputs():
    # An MNIST-shaped CNN in float64: moving the inputs by 1e-14 (relative) moves the gradient
    # by about as much. When max-pooling's gradient found each window's maximum by comparing
    # values with their max, XLA computed those values in two differently rounded fusions and
    # some windows lost their gradient -- a different set for each rounding: the gradient moved
    # by 10% and float64 runs on different device counts parted after one step.
    from fnn.layers.combinators import serial
    from fnn.layers.conv import Conv2D
    from fnn.layers.normalization import BatchNorm
    from fnn.layers.activations import Relu
    from fnn.layers.reshape import Flatten
    from fnn.layers.dense import Dense
    from fnn.layers.precision import DtypePolicy
    from fnn.losses import softmax_cross_entropy

    rng = np.random.default_rng(0)
    x = np.zeros((32, 28, 28, 1))
    x[:, 6:22, 8:20] = rng.random((32, 16, 12, 1)) * (rng.random((32, 16, 12, 1)) > 0.5)
    y = rng.integers(0, 10, size=32)
    with jax.enable_x64(True):
        net = DtypePolicy(serial(Conv2D(32, 3), BatchNorm(), Relu, MaxPool2D(2),
                                 Conv2D(64, 3), BatchNorm(), Relu, MaxPool2D(2),
                                 Flatten(), Dense(10)), params="float64")
        _, params, state = net.init(jax.random.key(0), (-1, 28, 28, 1))
        grad = jax.jit(jax.grad(lambda p, x: softmax_cross_entropy(
            net.apply(p, state, x, train=True)[0], y).mean()))
        moved = x * (1 + 1e-14 * rng.normal(size=x.shape))
        for a, b in zip(jax.tree_util.tree_leaves(grad(params, x)),
                        jax.tree_util.tree_leaves(grad(params, moved))):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-10)
