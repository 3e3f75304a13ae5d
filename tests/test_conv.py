"""Conv1D / Conv2D against a NumPy direct-loop convolution written from the definition."""

from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from fnn.core import LayerError, registered_layers
from fnn.layers.combinators import serial
from fnn.layers.conv import Conv1D, Conv2D

KEY = jax.random.key(0)


def np_normal(key, shape, dtype=jnp.float32):
    """A NumPy-drawn N(0, 1) initializer: keeps the tests free of a compile per param shape."""
    return jnp.asarray(np.random.default_rng(list(shape)).standard_normal(shape), dtype)


def randn(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --------------------------------------------------------------------------- NumPy reference

def same_pads(n: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TensorFlow's SAME rule: ceil(n / s) outputs, the odd padding element after."""
    out = math.ceil(n / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def np_conv(x, w, b, strides, pads, dilation, groups):
    """Direct convolution: y[n, o, f] = sum_{k, c} xpad[n, o*s + k*d, c] w[k, c, f] + b[f]."""
    x = np.pad(np.asarray(x, np.float64), [(0, 0), *pads, (0, 0)])
    w = np.asarray(w, np.float64)
    n, *spatial, _ = x.shape
    *window, cg, f = w.shape
    fg = f // groups
    out = [(size - (k - 1) * d - 1) // s + 1
           for size, k, d, s in zip(spatial, window, dilation, strides)]
    y = np.zeros((n, *out, f))
    for o in np.ndindex(*out):
        for k in np.ndindex(*window):
            pos = tuple(oi * s + ki * d for oi, ki, s, d in zip(o, k, strides, dilation))
            patch = x[(slice(None), *pos)]  # (N, C)
            for g in range(groups):
                outs = slice(g * fg, (g + 1) * fg)
                ins = slice(g * cg, (g + 1) * cg)
                y[(slice(None), *o, outs)] += patch[:, ins] @ w[(*k, slice(None), outs)]
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y


def explicit_pads(padding, spatial, window, strides, dilation):
    if padding == "VALID":
        return [(0, 0)] * len(spatial)
    if padding == "SAME":
        return [same_pads(n, k, s, d) for n, k, s, d in zip(spatial, window, strides, dilation)]
    if isinstance(padding, int):
        return [(padding, padding)] * len(spatial)
    if len(spatial) == 1 and isinstance(padding[0], int) and len(padding) == 2:
        return [tuple(padding)]
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _pair(v, n):
    return (v,) * n if isinstance(v, int) else tuple(v)


# (spatial, C_in, features, kernel, strides, padding, dilation, groups)
CASES_1D = [
    ((7,), 2, 3, 3, 1, "SAME", 1, 1),
    ((9,), 4, 6, 3, 2, "VALID", 2, 2),
    ((6,), 3, 3, 2, 3, (2, 1), 1, 3),  # depthwise, bare (lo, hi)
    ((5,), 2, 2, 4, 2, "SAME", 1, 1),  # even kernel: padding split (1, 2)
    ((8,), 2, 4, 3, 1, 2, 3, 1),  # int padding, dilation 3
]
CASES_2D = [
    ((6, 5), 2, 4, (3, 2), (2, 1), "SAME", 1, 1),
    ((7, 7), 4, 4, 3, 1, "VALID", (2, 1), 2),
    ((5, 6), 3, 6, (2, 3), (1, 2), ((1, 0), (2, 1)), 1, 3),
    ((4, 5), 2, 3, 3, 2, 1, 1, 1),
    ((6, 6), 2, 2, 2, (3, 2), "same", (1, 2), 1),
]


def _make(case, **kwargs):
    spatial, c, f, k, s, p, d, g = case
    ctor = Conv1D if len(spatial) == 1 else Conv2D
    return ctor(f, k, strides=s, padding=p, dilation=d, groups=g, **kwargs)


def _reference(case, x, params):
    spatial, c, f, k, s, p, d, g = case
    n = len(spatial)
    k, s, d = _pair(k, n), _pair(s, n), _pair(d, n)
    pads = explicit_pads(p.upper() if isinstance(p, str) else p, spatial, k, s, d)
    return np_conv(x, params["w"], params.get("b"), s, pads, d, g)


@pytest.mark.parametrize("case", CASES_1D + CASES_2D, ids=str)
def test_matches_numpy_loop(case):
    spatial, c, f, k, *_ = case
    layer = _make(case, w_init=np_normal, b_init=np_normal)
    out_shape, params, state = layer.init(KEY, (-1, *spatial, c))
    chex.assert_shape(params["w"], (*_pair(k, len(spatial)), c // case[-1], f))
    chex.assert_shape(params["b"], (f,))
    assert state == {}
    x = randn(1, (2, *spatial, c))
    y, new_state = layer.apply(params, state, x)
    assert new_state == {}
    assert y.shape == (2, *out_shape[1:])
    np.testing.assert_allclose(np.asarray(y), _reference(case, x, params), rtol=1e-5, atol=1e-5)


def test_no_bias():
    layer = Conv2D(3, 2, use_bias=False, w_init=np_normal)
    _, params, _ = layer.init(KEY, (-1, 4, 4, 2))
    assert set(params) == {"w"}
    x = randn(1, (1, 4, 4, 2))
    y, _ = layer.apply(params, {}, x)
    ref = np_conv(x, params["w"], None, (1, 1), [same_pads(4, 2, 1, 1)] * 2, (1, 1), 1)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_init_shapes_equal_apply_shapes():
    x_cache = {}
    count = 0
    for n, k, s, d, p in itertools.product([5, 8], [1, 2, 3], [1, 2, 3], [1, 2],
                                           ["SAME", "VALID", (1, 2)]):
        if p == "VALID" and (k - 1) * d + 1 > n:
            continue
        layer = Conv2D(2, (k, 1), strides=(s, 1), padding=p if isinstance(p, str) else (p, 0),
                       dilation=(d, 1), w_init=np_normal)
        out_shape, params, _ = layer.init(KEY, (-1, n, 3, 1))
        x = x_cache.setdefault(n, jnp.ones((1, n, 3, 1)))
        y = jax.eval_shape(lambda params, x: layer.apply(params, {}, x)[0], params, x)
        assert y.shape == (1, *out_shape[1:]), (n, k, s, d, p)
        if p == "SAME":
            assert out_shape[1] == math.ceil(n / s)
        count += 1
    assert count > 50


def test_batch_and_unknown_spatial_sizes_kept():
    layer = Conv2D(4, 3, strides=2, w_init=np_normal)
    assert layer.init(KEY, (-1, 9, 9, 2))[0] == (-1, 5, 5, 4)
    assert layer.init(KEY, (8, 9, 9, 2))[0] == (8, 5, 5, 4)
    assert layer.init(KEY, (-1, -1, 9, 2))[0] == (-1, -1, 5, 4)
    assert Conv1D(4, 3, padding="VALID", w_init=np_normal).init(KEY, (-1, -1, 2))[0] == (-1, -1, 4)


def test_kernel_fans_follow_jax_convention():
    # glorot_uniform draws from U(-a, a), a = sqrt(6 / (fan_in + fan_out)) with
    # fan_in = kh * kw * in / groups and fan_out = kh * kw * features.
    _, params, _ = Conv2D(64, 3, groups=2).init(KEY, (-1, 8, 8, 32))
    w = np.asarray(params["w"])
    bound = math.sqrt(6 / (3 * 3 * 16 + 3 * 3 * 64))
    assert w.shape == (3, 3, 16, 64)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.02)


@pytest.mark.parametrize("case", [CASES_1D[1], CASES_2D[2]], ids=str)
def test_gradients_by_linearity(case):
    """L = sum(g * conv(x, w, b)) is linear in w, x and b separately, so <dL/dw, v> must equal
    sum(g * conv_ref(x, v)) for any direction v (likewise for x), and dL/db = sum of g."""
    spatial, c, f, *_ = case
    layer = _make(case, w_init=np_normal, b_init=np_normal)
    out_shape, params, _ = layer.init(KEY, (-1, *spatial, c))
    x = randn(2, (2, *spatial, c))
    g = randn(3, (2, *out_shape[1:]))

    def loss(params, x):
        return jnp.sum(g * layer.apply(params, {}, x)[0])

    grads, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    no_bias = {"w": params["w"]}
    for i in range(3):
        v = np.asarray(randn(10 + i, params["w"].shape))
        u = np.asarray(randn(20 + i, x.shape))
        dw = np.sum(np.asarray(g) * _reference(case, x, {"w": v}))
        dx = np.sum(np.asarray(g) * _reference(case, u, no_bias))
        np.testing.assert_allclose(np.vdot(np.asarray(grads["w"]), v), dw, rtol=1e-4)
        np.testing.assert_allclose(np.vdot(np.asarray(grad_x), u), dx, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(grads["b"]),
                               np.asarray(g).reshape(-1, f).sum(0), rtol=1e-5, atol=1e-5)


def test_gradients_finite_differences():
    layer = Conv2D(2, 2, strides=(2, 1), padding="SAME", dilation=(1, 2), w_init=np_normal,
                   b_init=np_normal)
    _, params, _ = layer.init(KEY, (-1, 4, 5, 2))
    x = randn(4, (1, 4, 5, 2))

    @jax.jit
    def f(params, x):
        return jnp.sum(jnp.tanh(layer.apply(params, {}, x)[0]))

    check_grads(f, (params, x), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_jit_matches_eager():
    layer = _make(CASES_2D[0], w_init=np_normal, b_init=np_normal)
    _, params, _ = layer.init(KEY, (-1, 6, 5, 2))
    x = randn(5, (3, 6, 5, 2))
    y_eager, _ = layer.apply(params, {}, x)
    y_jit, _ = jax.jit(layer.apply)(params, {}, x)
    np.testing.assert_allclose(np.asarray(y_jit), np.asarray(y_eager), rtol=1e-6, atol=1e-6)


def test_spec_rebuilds_layer():
    layer = Conv2D(8, (3, 3), strides=2, padding="VALID", name="c1", w_init="zeros")
    assert layer.kind == "Conv2D" and layer.name == "c1"
    (kind, args), = layer.spec.items()
    args = dict(args)
    rebuilt = registered_layers()[kind](**args)
    assert rebuilt.init(KEY, (-1, 9, 9, 3))[0] == layer.init(KEY, (-1, 9, 9, 3))[0] == (-1, 4, 4, 8)
    assert Conv1D(4, 3).kind == "Conv1D"


@pytest.mark.parametrize("kwargs, match", [
    (dict(features=0, kernel_size=3), "features"),
    (dict(features=4, kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(features=4, kernel_size=3, strides=0), "strides"),
    (dict(features=4, kernel_size=3, dilation=(1,)), "dilation"),
    (dict(features=4, kernel_size=3, padding="FULL"), "padding"),
    (dict(features=4, kernel_size=3, padding=-1), "padding"),
    (dict(features=4, kernel_size=3, padding=((1, 1), (1, 1), (0, 0))), "padding"),
    (dict(features=4, kernel_size=3, groups=3), "groups"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"Conv2D: {match}"):
        Conv2D(**kwargs)


def test_bad_input_shapes():
    with pytest.raises(LayerError, match=r"Conv2D layer: expects inputs \(batch, height, width, "
                                         r"channels\) of rank 4, got shape \(-1, 5, 3\)"):
        Conv2D(4, 3).init(KEY, (-1, 5, 3))
    with pytest.raises(LayerError, match=r"Conv1D layer: .* rank 3, got shape \(-1, 5, 5, 3\)"):
        Conv1D(4, 3).init(KEY, (-1, 5, 5, 3))
    with pytest.raises(LayerError, match=r"Conv2D layer: groups=2 must divide the 3 input "
                                         r"channels, got shape \(-1, 5, 5, 3\)"):
        Conv2D(4, 3, groups=2).init(KEY, (-1, 5, 5, 3))
    with pytest.raises(LayerError, match=r"does not fit spatial axis 1 of size 2.*\(-1, 5, 2, 1\)"):
        Conv2D(4, 3, padding="VALID").init(KEY, (-1, 5, 2, 1))
    with pytest.raises(LayerError, match=r"known channel count"):
        Conv1D(4, 3).init(KEY, (-1, 5, -1))


def test_bad_apply_inputs_and_path():
    layer = Conv2D(4, 3, name="c", w_init=np_normal)
    _, params, _ = layer.init(KEY, (-1, 5, 5, 3))
    with pytest.raises(LayerError, match=r"Conv2D layer: expects 3 input channels .*"
                                         r"got shape \(1, 5, 5, 2\)"):
        layer.apply(params, {}, jnp.ones((1, 5, 5, 2)))
    with pytest.raises(LayerError, match=r"rank 4, got shape \(5, 5, 3\)"):
        layer.apply(params, {}, jnp.ones((5, 5, 3)))
    net = serial(Conv2D(4, 3, w_init=np_normal), Conv2D(6, 3, groups=3, name="c"))
    with pytest.raises(LayerError, match=r"Conv2D layer 'c': groups=3 .*got shape \(-1, 5, 5, 4\)"):
        net.init(KEY, (-1, 5, 5, 3))


# --------------------------------------------------------------------------- gradient choice

def _conv_count(fn, *args) -> int:
    return str(jax.make_jaxpr(fn)(*args)).count("conv_general_dilated")


def test_gradient_argument_picks_the_gradient_and_both_agree():
    """XLA's rule differentiates the first layer's kernel only (2 convolutions with the forward);
    the scan-friendly rule computes the input gradient too (3), which XLA drops later."""
    x = randn(1, (2, 6, 5, 3))
    grads = {}
    for gradient, convs in (("xla", 2), ("scan_friendly", 3)):
        layer = Conv2D(4, 3, strides=(2, 1), gradient=gradient, w_init=np_normal)
        _, params, _ = layer.init(KEY, (-1, 6, 5, 3))

        def loss(params):
            return jnp.sum(jnp.sin(layer.apply(params, {}, x)[0]))
        assert _conv_count(jax.grad(loss), params) == convs, gradient
        grads[gradient] = jax.jit(jax.grad(loss))(params)
    chex.assert_trees_all_close(grads["xla"], grads["scan_friendly"], rtol=1e-5, atol=1e-5)
    assert Conv2D(4, 3, gradient="xla").spec == {"Conv2D": {"features": 4, "kernel_size": 3,
                                                            "gradient": "xla"}}
    with pytest.raises(ValueError, match=r"^Conv2D: gradient must be one of 'auto', 'xla', "
                                         r"'scan_friendly', got 'fast'$"):
        Conv2D(4, 3, gradient="fast")


def test_straight_line_gradients_leaves_loops_and_given_choices_alone():
    from fnn.core import layer_paths
    from fnn.layers.conv import straight_line_gradients
    from fnn.layers.repeated import repeat
    from fnn.layers.conv_transpose import ConvTranspose2D
    net = serial(Conv2D(4, 3), Conv1D(2, 3, gradient="scan_friendly"), ConvTranspose2D(4, 3),
                 repeat(serial(Conv2D(4, 3)), 2))
    chosen = {"/".join(p): layer.record.args.get("gradient", "auto")
              for p, layer in layer_paths(straight_line_gradients(net))
              if layer.kind.startswith("Conv")}
    assert chosen == {"conv2d_0": "xla", "conv1d_0": "scan_friendly",
                      "conv_transpose2d_0": "xla", "repeat_0/conv2d_0": "auto"}


def test_the_per_step_train_step_uses_xla_gradient_and_the_scanned_one_not():
    import optax
    import fnn
    from fnn.train import init_train_state, make_train_step, train_step_fn
    net = serial(Conv2D(2, 3), fnn.Flatten(), fnn.Dense(2))
    opt = optax.sgd(0.1)
    _, ts = init_train_state(net, opt, (-1, 5, 5, 1), KEY)
    batch = {"x": jnp.ones((4, 5, 5, 1)), "y": jnp.zeros(4, jnp.int32)}
    loss = fnn.losses.softmax_cross_entropy
    assert _conv_count(make_train_step(net, loss, opt, donate=False), ts, batch) == 2
    assert _conv_count(train_step_fn(net, loss, opt), ts, batch) == (
        3 if jax.default_backend() == "cpu" else 2)


@pytest.mark.parametrize("mode, straight", [("step", True), ("epoch", False)])
def test_fit_differentiates_straight_line_only_in_step_mode(monkeypatch, mode, straight):
    import optax
    import fnn
    import fnn.train.loop as loop
    seen = []
    monkeypatch.setattr(loop, "straight_line_gradients",
                        lambda net: seen.append(net) or net)
    net = serial(Conv2D(2, 3), fnn.Flatten(), fnn.Dense(2))
    data = {"x": np.ones((8, 5, 5, 1), np.float32), "y": np.zeros(8, np.int32)}
    fnn.train.fit(net, fnn.losses.softmax_cross_entropy, optax.sgd(0.1), data, epochs=1,
                  batch_size=4, mode=mode, log=None)
    assert bool(seen) == straight
