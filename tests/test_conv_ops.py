"""fnn.layers.conv_ops.conv: its custom gradient against XLA's gradient of lax.conv_general_dilated.

Every padding kind (SAME, VALID, explicit and asymmetric), stride, dilation and group count the
layers accept, in 1-D and 2-D; through the layer (input, kernel and bias gradients) and inside
``lax.scan`` (where the custom gradient is meant to be used).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fnn.layers.conv import Conv1D, Conv2D, axis_pads, resolve_padding
from fnn.layers.conv_ops import conv, conv_reference

KEY = jax.random.key(0)
TOL = dict(rtol=2e-5, atol=2e-5)


def randn(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def np_normal(key, shape, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(list(shape)).standard_normal(shape), dtype)


# (spatial, kernel, strides, padding, dilation, groups): every stride 1-3, dilation 1-2,
# groups 1 / 2 / depthwise (4), and SAME / VALID / explicit padding in each dimensionality.
CASES = (
    [((11,), (k,), (s,), p, (d,), g)
     for (s, d, g), (k, p) in zip(itertools.product((1, 2, 3), (1, 2), (1, 2, 4)),
                                  itertools.cycle([(3, "SAME"), (4, "VALID"), (2, (2, 1)),
                                                   (3, (0, 3)), (1, "SAME")]))]
    + [((7, 6), k, s, p, d, g)
       for (s, d, g), (k, p) in zip(itertools.product(((1, 1), (2, 3), (3, 1)),
                                                      ((1, 1), (2, 1)), (1, 2, 4)),
                                    itertools.cycle([((3, 3), "SAME"), ((2, 3), "VALID"),
                                                     ((3, 2), ((1, 2), (0, 1))),
                                                     ((1, 3), ((3, 0), (2, 2)))]))]
)


def _layer(case, **kwargs):
    spatial, k, s, p, d, g = case
    ctor = Conv1D if len(spatial) == 1 else Conv2D
    return ctor(4, k, strides=s, padding=p, dilation=d, groups=g, w_init=np_normal,
                b_init=np_normal, **kwargs)


def _explicit_pads(case):
    spatial, k, s, p, d, _ = case
    pad = resolve_padding(p, len(spatial), "test")
    return [axis_pads(n, kk, ss, dd, pad, a)
            for a, (n, kk, ss, dd) in enumerate(zip(spatial, k, s, d))]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_layer_gradients_equal_xla_gradients(case):
    """Input, kernel and bias gradients of the layer (custom VJP on CPU) equal those of the same
    function written with lax.conv_general_dilated and differentiated by XLA."""
    spatial, _, s, _, d, g = case
    layer = _layer(case)
    out_shape, params, _ = layer.init(KEY, (-1, *spatial, 4))
    x = randn(1, (2, *spatial, 4))
    cotangent = randn(2, (2, *out_shape[1:]))
    dimension_numbers = ("NWC", "WIO", "NWC") if len(spatial) == 1 else ("NHWC", "HWIO", "NHWC")

    def xla_fn(params, x):
        y = lax.conv_general_dilated(x, params["w"], s, _explicit_pads(case), rhs_dilation=d,
                                     dimension_numbers=dimension_numbers,
                                     feature_group_count=g)
        return y + params["b"]

    y, vjp = jax.vjp(lambda params, x: layer.apply(params, {}, x)[0], params, x)
    y_ref, vjp_ref = jax.vjp(xla_fn, params, x)
    np.testing.assert_allclose(y, y_ref, **TOL)
    (grads, dx), (grads_ref, dx_ref) = vjp(cotangent), vjp_ref(cotangent)
    np.testing.assert_allclose(dx, dx_ref, **TOL)
    np.testing.assert_allclose(grads["w"], grads_ref["w"], **TOL)
    np.testing.assert_allclose(grads["b"], grads_ref["b"], **TOL)


@pytest.mark.parametrize("case", [CASES[4], CASES[13], CASES[20], CASES[33]], ids=str)
def test_forced_scan_friendly_gradient_on_any_backend(case):
    """method="scan_friendly" forces the custom VJP (what "auto" picks on CPU only)."""
    spatial, k, s, _, d, g = case
    x = randn(3, (2, *spatial, 4))
    w = randn(4, (*k, 4 // g, 4))
    pads = _explicit_pads(case)
    y, vjp = jax.vjp(lambda x, w: conv(x, w, s, pads, d, g, method="scan_friendly"), x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: conv(x, w, s, pads, d, g, method="xla"), x, w)
    cotangent = randn(5, y.shape)
    for a, b in zip(vjp(cotangent), vjp_ref(cotangent)):
        np.testing.assert_allclose(a, b, **TOL)


def test_gradient_inside_scan_equals_xla_gradient():
    """A scanned stack of strided, dilated, grouped convolutions: the use it is built for."""
    ws = randn(6, (3, 3, 3, 2, 4)) * 0.3
    x = randn(7, (2, 8, 8, 4))
    pads = [(2, 2), (2, 2)]

    def stack(method):
        def f(ws, x):
            def body(h, w):
                return jnp.tanh(conv(h, w, (1, 1), pads, (2, 2), 2, method=method)), None
            return jnp.sum(lax.scan(body, x, ws)[0] ** 2)
        return jax.jit(jax.grad(f, argnums=(0, 1)))

    for a, b in zip(stack("scan_friendly")(ws, x), stack("xla")(ws, x)):
        np.testing.assert_allclose(a, b, **TOL)


def test_auto_uses_custom_gradient_on_cpu_only():
    x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 2))
    jaxpr = str(jax.make_jaxpr(lambda x, w: conv(x, w, (1, 1), [(1, 1), (1, 1)]))(x, w))
    assert ("custom_vjp_call" in jaxpr) == (jax.default_backend() == "cpu")
    forced = str(jax.make_jaxpr(lambda x, w: conv(x, w, (1, 1), [(1, 1), (1, 1)],
                                                  method="xla"))(x, w))
    assert "custom_vjp_call" not in forced


def test_bad_method():
    with pytest.raises(ValueError, match="conv: method must be 'auto', 'scan_friendly' or "
                                         "'xla', got 'fast'"):
        conv(jnp.ones((1, 5, 2)), jnp.ones((3, 2, 2)), (1,), [(1, 1)], method="fast")
