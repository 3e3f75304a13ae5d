"""Transposed and 3-D convolutions, 3-D pooling, upsampling and the group/instance/RMS norms
against independent float64 references, values and gradients, to 1e-10 under x64.

The reference is PyTorch (float64, CPU) where it has the op, with the weight layouts of the
table in docs/LAYERS.md, and a NumPy formula written here for the short ones (GroupNorm,
RMSNorm). Gradients: the vector-Jacobian product of one random cotangent, from ``jax.vjp``
and from ``torch.autograd``, for the input and every param.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core import LayerError
from fnn.layers.spec import SpecError, from_spec

torch = pytest.importorskip("torch", reason="PyTorch is the reference (pip install 'fnn[test]')")
F = torch.nn.functional

TOL = dict(rtol=1e-10, atol=1e-10)


def normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def channels_first(a: np.ndarray) -> np.ndarray:
    # contiguous: torch 2.13's instance_norm gives a wrong input gradient for a 5-D input
    # whose strides are channels-last (a NumPy view with its axes moved); its values are right
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def channels_last(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, 1, -1)


# --------------------------------------------------------------------------- weight layouts
# docs/LAYERS.md, "PyTorch weights in fnn": exactly these maps (and their inverses for grads)

def from_torch_conv_transpose(weight: np.ndarray) -> np.ndarray:
    """``ConvTranspose{1,2}d.weight`` ``(in, out, *window)`` -> fnn ``w`` ``(*window, in, out)``:
    the axes moved, no spatial flip."""
    nd = weight.ndim - 2
    return np.transpose(weight, (*range(2, 2 + nd), 0, 1))


def from_torch_conv(weight: np.ndarray) -> np.ndarray:
    """``Conv{1,2,3}d.weight`` ``(out, in // groups, *window)`` -> fnn ``w``
    ``(*window, in // groups, out)``."""
    nd = weight.ndim - 2
    return np.transpose(weight, (*range(2, 2 + nd), 1, 0))


def compare(layer, params_np, x_np, torch_fn, torch_params, param_map, seed=0):
    """fnn's outputs and vjp (input and params) equal torch's, channels last vs first.

    ``torch_params``: name -> torch-layout array; ``param_map``: name -> (fnn key, map from
    the torch layout to fnn's).
    """
    with jax.enable_x64(True):
        params = {k: jnp.asarray(v, jnp.float64) for k, v in params_np.items()}
        x = jnp.asarray(x_np, jnp.float64)
        y, vjp = jax.vjp(lambda p, xx: layer.apply(p, {}, xx)[0], params, x)
        cotangent = normal(seed + 99, y.shape)
        g_params, g_x = vjp(jnp.asarray(cotangent))
    xt = torch.tensor(channels_first(x_np), dtype=torch.float64, requires_grad=True)
    pt = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
          for k, v in torch_params.items()}
    yt = torch_fn(xt, **pt)
    yt.backward(torch.tensor(channels_first(cotangent)))
    np.testing.assert_allclose(np.asarray(y), channels_last(yt.detach().numpy()), **TOL)
    np.testing.assert_allclose(np.asarray(g_x), channels_last(xt.grad.numpy()), **TOL)
    for name, (key, to_fnn) in param_map.items():
        np.testing.assert_allclose(np.asarray(g_params[key]), to_fnn(pt[name].grad.numpy()),
                                   **TOL)
    return np.asarray(y)


def identity(a):
    return a


# --------------------------------------------------------------------------- transposed convs

# (spatial, in, out, kernel, stride, padding, output_padding, dilation)
TRANSPOSE_2D = [
    ((5, 4), 3, 2, 3, 1, 0, 0, 1),
    ((5, 4), 3, 2, 3, 2, 1, 1, 1),
    ((4, 6), 2, 3, (3, 2), (2, 3), (1, 0), (0, 2), 1),
    ((4, 5), 2, 2, 3, 2, 2, 1, 2),
    ((3, 3), 1, 2, 4, 3, 0, (2, 1), (1, 2)),
]


@pytest.mark.parametrize("case", TRANSPOSE_2D)
def test_conv_transpose_2d_equals_torch(case):
    spatial, cin, cout, kernel, stride, padding, out_pad, dilation = case
    layer = fnn.ConvTranspose2D(cout, kernel, strides=stride, padding=padding,
                                output_padding=out_pad, dilation=dilation)
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight, bias = normal(1, (cin, cout, *k)), normal(2, (cout,))
    x = normal(3, (2, *spatial, cin))
    out_shape = layer.init(jax.random.key(0), (-1, *spatial, cin))[0]
    y = compare(layer, {"w": from_torch_conv_transpose(weight), "b": bias}, x,
                lambda xt, weight, bias: F.conv_transpose2d(
                    xt, weight, bias, stride=stride, padding=padding, output_padding=out_pad,
                    dilation=dilation),
                {"weight": weight, "bias": bias},
                {"weight": ("w", from_torch_conv_transpose), "bias": ("b", identity)})
    assert out_shape == (-1, *y.shape[1:])


@pytest.mark.parametrize("case", [(7, 2, 3, 3, 2, 1, 1, 1), (6, 3, 2, 4, 3, 2, 0, 2),
                                  (5, 1, 1, 2, 1, 0, 0, 3)])
def test_conv_transpose_1d_equals_torch(case):
    n, cin, cout, kernel, stride, padding, out_pad, dilation = case
    layer = fnn.ConvTranspose1D(cout, kernel, strides=stride, padding=padding,
                                output_padding=out_pad, dilation=dilation, use_bias=False)
    weight = normal(4, (cin, cout, kernel))
    compare(layer, {"w": from_torch_conv_transpose(weight)}, normal(5, (3, n, cin)),
            lambda xt, weight: F.conv_transpose1d(xt, weight, stride=stride, padding=padding,
                                                  output_padding=out_pad, dilation=dilation),
            {"weight": weight}, {"weight": ("w", from_torch_conv_transpose)})


@pytest.mark.parametrize("kernel,stride", [(3, 2), (4, 2), (2, 3), (5, 1), (1, 2)])
def test_conv_transpose_same_is_the_input_gradient_of_a_same_conv(kernel, stride):
    """``ConvTranspose2D(padding="SAME")`` on ``n`` is the transpose of the SAME convolution of
    an ``n * s`` input (XLA's own convolution and its vjp), with ``w`` in/out swapped."""
    n, cin, cout = 4, 3, 2
    w = normal(6, (kernel, kernel, cin, cout))
    x = normal(7, (2, n, n, cin))
    layer = fnn.ConvTranspose2D(cout, kernel, strides=stride, use_bias=False)
    with jax.enable_x64(True):
        y, _ = layer.apply({"w": jnp.asarray(w)}, {}, jnp.asarray(x))

        def conv(z):  # maps (n*s, n*s, cout) -> (n, n, cin)
            return jax.lax.conv_general_dilated(z, jnp.asarray(np.swapaxes(w, -1, -2)),
                                                (stride, stride), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        _, transpose = jax.vjp(conv, jnp.zeros((2, n * stride, n * stride, cout)))
        expected, = transpose(jnp.asarray(x))
        lax_version = jax.lax.conv_transpose(jnp.asarray(x), jnp.asarray(w), (stride, stride),
                                             "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                             transpose_kernel=False)
        # transpose_kernel=True takes the forward convolution's kernel: fnn's w, in/out swapped
        lax_transposed = jax.lax.conv_transpose(
            jnp.asarray(x), jnp.asarray(np.swapaxes(w, -1, -2)), (stride, stride), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(lax_transposed), **TOL)
    assert y.shape == (2, n * stride, n * stride, cout)
    np.testing.assert_allclose(np.asarray(y), np.asarray(expected), **TOL)
    # lax.conv_transpose(transpose_kernel=False) correlates with w as given: fnn's w flipped
    flipped = fnn.ConvTranspose2D(cout, kernel, strides=stride, use_bias=False)
    with jax.enable_x64(True):
        y_flip, _ = flipped.apply({"w": jnp.asarray(w[::-1, ::-1])}, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y_flip), np.asarray(lax_version), **TOL)


def test_conv_transpose_valid_is_torch_padding_zero():
    layer = fnn.ConvTranspose2D(2, 3, strides=2, padding="VALID", use_bias=False)
    weight = normal(8, (3, 2, 3, 3))
    y = compare(layer, {"w": from_torch_conv_transpose(weight)}, normal(9, (1, 4, 5, 3)),
                lambda xt, weight: F.conv_transpose2d(xt, weight, stride=2),
                {"weight": weight}, {"weight": ("w", from_torch_conv_transpose)})
    assert y.shape == (1, 9, 11, 2)


# --------------------------------------------------------------------------- 3-D conv and pools

@pytest.mark.parametrize("kernel,stride,padding,dilation,groups", [
    (3, 1, 1, 1, 1), ((2, 3, 1), (2, 1, 2), (0, 1, 0), 1, 2), (2, 2, 0, (1, 2, 1), 1)])
def test_conv3d_equals_torch(kernel, stride, padding, dilation, groups):
    cin, cout = 4, 6
    k = (kernel,) * 3 if isinstance(kernel, int) else kernel
    layer = fnn.Conv3D(cout, kernel, strides=stride, padding=padding, dilation=dilation,
                       groups=groups)
    weight, bias = normal(10, (cout, cin // groups, *k)), normal(11, (cout,))
    compare(layer, {"w": from_torch_conv(weight), "b": bias}, normal(12, (2, 4, 5, 6, cin)),
            lambda xt, weight, bias: F.conv3d(xt, weight, bias, stride=stride, padding=padding,
                                              dilation=dilation, groups=groups),
            {"weight": weight, "bias": bias},
            {"weight": ("w", from_torch_conv), "bias": ("b", identity)})


@pytest.mark.parametrize("window,stride,padding", [(2, None, 0), ((2, 3, 2), (1, 2, 2), (1, 1, 0)),
                                                   (3, 2, 1)])
def test_max_pool3d_equals_torch(window, stride, padding):
    layer = fnn.MaxPool3D(window, strides=stride, padding=padding)
    compare(layer, {}, normal(13, (2, 5, 6, 7, 3)),
            lambda xt: F.max_pool3d(xt, window, stride=stride, padding=padding), {}, {})


@pytest.mark.parametrize("count_include_pad", [False, True])
@pytest.mark.parametrize("window,stride,padding", [(2, None, 0), ((3, 2, 3), (2, 1, 2), (1, 0, 1))])
def test_avg_pool3d_equals_torch(window, stride, padding, count_include_pad):
    layer = fnn.AvgPool3D(window, strides=stride, padding=padding,
                          count_include_pad=count_include_pad)
    compare(layer, {}, normal(14, (2, 5, 6, 7, 3)),
            lambda xt: F.avg_pool3d(xt, window, stride=stride, padding=padding,
                                    count_include_pad=count_include_pad), {}, {})


# --------------------------------------------------------------------------- upsampling

@pytest.mark.parametrize("method", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [2, (3, 2), (1, 4)])
def test_upsample2d_equals_torch_interpolate(scale, method):
    factors = (scale, scale) if isinstance(scale, int) else scale
    layer = fnn.Upsample2D(scale, method=method)
    y = compare(layer, {}, normal(15, (2, 4, 5, 3)),
                lambda xt: F.interpolate(xt, scale_factor=factors, mode=method,
                                         **({} if method == "nearest"
                                            else {"align_corners": False})), {}, {})
    assert y.shape == (2, 4 * factors[0], 5 * factors[1], 3)


def test_upsample2d_nearest_is_floor_of_out_index_over_scale():
    x = np.arange(3.0).reshape(1, 3, 1, 1)
    y, _ = fnn.Upsample2D((3, 1)).apply({}, {}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y)[0, :, 0, 0], [0, 0, 0, 1, 1, 1, 2, 2, 2])


# --------------------------------------------------------------------------- norms

def np_group_norm(x, groups, scale, offset, eps):
    """Per example and group of consecutive channels, over the spatial axes and the group."""
    n, *spatial, c = x.shape
    g = x.reshape(n, -1, groups, c // groups)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = ((g - mean) ** 2).mean(axis=(1, 3), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + offset


def np_rms_norm(x, scale, eps):
    return x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps) * scale


@pytest.mark.parametrize("shape,groups", [((2, 4, 5, 6), 3), ((3, 8), 2), ((2, 3, 2, 2, 4), 4),
                                          ((2, 7, 6), 1)])
def test_group_norm_equals_torch_and_numpy(shape, groups):
    c = shape[-1]
    scale, offset, x = normal(16, (c,)), normal(17, (c,)), 3.0 + 2.0 * normal(18, shape)
    y = compare(fnn.GroupNorm(groups), {"scale": scale, "offset": offset}, x,
                lambda xt, weight, bias: F.group_norm(xt, groups, weight, bias, eps=1e-5),
                {"weight": scale, "bias": offset},
                {"weight": ("scale", identity), "bias": ("offset", identity)})
    np.testing.assert_allclose(y, np_group_norm(x, groups, scale, offset, 1e-5), **TOL)


@pytest.mark.parametrize("shape", [(2, 7, 3), (2, 4, 5, 3), (1, 3, 2, 4, 2)])
def test_instance_norm_equals_torch(shape):
    c = shape[-1]
    scale, offset, x = normal(19, (c,)), normal(20, (c,)), 1.0 + normal(21, shape)
    y = compare(fnn.InstanceNorm(), {"scale": scale, "offset": offset}, x,
                lambda xt, weight, bias: F.instance_norm(xt, weight=weight, bias=bias, eps=1e-5),
                {"weight": scale, "bias": offset},
                {"weight": ("scale", identity), "bias": ("offset", identity)})
    np.testing.assert_allclose(y, np_group_norm(x, c, scale, offset, 1e-5), **TOL)


@pytest.mark.parametrize("shape", [(3, 6), (2, 4, 5)])
def test_rms_norm_equals_torch_and_numpy(shape):
    scale, x = normal(22, (shape[-1],)), normal(23, shape)
    # last axis normalized: compare in fnn's own layout (no channel move for torch)
    layer = fnn.RMSNorm()
    with jax.enable_x64(True):
        y, vjp = jax.vjp(lambda p, xx: layer.apply(p, {}, xx)[0], {"scale": jnp.asarray(scale)},
                         jnp.asarray(x))
        cotangent = normal(24, shape)
        g_params, g_x = vjp(jnp.asarray(cotangent))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(scale, requires_grad=True)
    yt = F.rms_norm(xt, (shape[-1],), wt, eps=1e-5)
    yt.backward(torch.tensor(cotangent))
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(y), np_rms_norm(x, scale, 1e-5), **TOL)
    np.testing.assert_allclose(np.asarray(g_x), xt.grad.numpy(), **TOL)
    np.testing.assert_allclose(np.asarray(g_params["scale"]), wt.grad.numpy(), **TOL)


def test_norm_params_and_defaults():
    for layer, keys in ((fnn.GroupNorm(2), {"scale", "offset"}), (fnn.InstanceNorm(), {"scale", "offset"}),
                        (fnn.RMSNorm(), {"scale"}), (fnn.RMSNorm(use_scale=False), set()),
                        (fnn.GroupNorm(2, use_offset=False), {"scale"})):
        _, params, state = layer.init(jax.random.key(0), (-1, 3, 4))
        assert set(params) == keys and state == {}
    for make in (fnn.GroupNorm, fnn.InstanceNorm, fnn.RMSNorm, fnn.LayerNorm, fnn.BatchNorm):
        import inspect
        assert inspect.signature(make).parameters["epsilon"].default == 1e-5


# --------------------------------------------------------------------------- one-line errors

def _init_error(spec, shape):
    with pytest.raises((LayerError, SpecError, ValueError)) as info:
        from_spec(spec).init(jax.random.key(0), shape)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("spec,shape,words", [
    ({"GroupNorm": 3}, (-1, 5, 5, 4), ["GroupNorm layer", "groups=3 must divide the 4 channels"]),
    ({"GroupNorm": 0}, (-1, 4), ["groups must be a positive int"]),
    ({"InstanceNorm": None}, (-1, 4), ["rank >= 3"]),
    ({"Conv3D": {"features": 2, "kernel_size": 5, "padding": "VALID"}}, (-1, 4, 8, 8, 1),
     ["Conv3D", "does not fit", "size 4"]),
    ({"MaxPool3D": 3}, (-1, 2, 6, 6, 1), ["MaxPool3D", "does not fit"]),
    ({"Conv3D": {"features": 2, "kernel_size": 3}}, (-1, 8, 8, 1), ["rank 5"]),
    ({"ConvTranspose2D": {"features": 2, "kernel_size": 3, "padding": "FULL"}}, (-1, 4, 4, 1),
     ["model.ConvTranspose2D", "padding must be"]),
    ({"ConvTranspose2D": {"features": 2, "kernel_size": 3, "strides": 2, "padding": 1,
                          "output_padding": 2}}, (-1, 4, 4, 1),
     ["output_padding", "smaller than the stride"]),
    ({"ConvTranspose2D": {"features": 2, "kernel_size": 3, "output_padding": 1}}, (-1, 4, 4, 1),
     ["output_padding applies to explicit padding"]),
    ({"ConvTranspose1D": {"features": 2, "kernel_size": 2, "padding": 3}}, (-1, 2, 1),
     ["crops all of spatial axis 0"]),
    ({"Upsample2D": {"scale": 2, "method": "bicubic"}}, (-1, 4, 4, 1),
     ["method must be one of nearest, bilinear"]),
    ({"Upsample2D": 0}, (-1, 4, 4, 1), ["scale must be a positive int"]),
    ({"Upsample2D": 2}, (-1, 4, 4), ["rank 4"]),
])
def test_mistakes_are_one_line_before_compiling(spec, shape, words):
    message = _init_error(spec, shape)
    for word in words:
        assert word in message, message


def test_a_network_with_a_bad_group_count_names_the_layer_at_init():
    net = from_spec([{"Conv2D": {"features": 6, "kernel_size": 3}}, {"GroupNorm": 4}, "Flatten", {"Dense": 10}])
    with pytest.raises(LayerError) as info:
        net.init(jax.random.key(0), (-1, 28, 28, 1))
    assert "group_norm" in str(info.value) and "groups=4 must divide the 6 channels" in str(info.value)


def test_conv_transpose_lo_hi_pairs_crop_the_full_output():
    """``padding=((lo, hi), ...)`` crops the two ends of the full (PyTorch ``padding=0``)
    output separately; ``output_padding`` gives back elements at the high end."""
    weight, x = normal(25, (2, 3, 3, 2)), normal(26, (1, 4, 5, 2))
    full = F.conv_transpose2d(torch.tensor(channels_first(x)), torch.tensor(weight),
                              stride=(2, 3)).numpy()
    layer = fnn.ConvTranspose2D(3, (3, 2), strides=(2, 3), padding=((1, 0), (0, 2)),
                                output_padding=(0, 1), use_bias=False)
    with jax.enable_x64(True):
        y, _ = layer.apply({"w": jnp.asarray(from_torch_conv_transpose(weight))}, {},
                           jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), channels_last(full)[:, 1:, :-1], **TOL)


# --------------------------------------------------------------------------- in a config

NEW_KINDS_MODEL = [{"Conv2D": {"features": 8, "kernel_size": 3, "strides": 2}},
                   {"GroupNorm": 4}, "Relu",
                   {"ConvTranspose2D": {"features": 4, "kernel_size": 3, "strides": 2,
                                        "padding": 1, "output_padding": 1}},
                   "InstanceNorm", {"MaxPool2D": 2}, {"Upsample2D": {"method": "bilinear"}},
                   {"Reshape": [28, 28, 4, 1]},
                   {"Conv3D": {"features": 2, "kernel_size": [3, 3, 2]}},
                   {"AvgPool3D": [2, 2, 1]}, {"MaxPool3D": [1, 1, 2]}, "Flatten", "RMSNorm",
                   {"Dense": 10}]


def test_a_config_with_the_new_kinds_validates_and_a_mistake_is_one_line(tmp_path, capsys):
    import yaml
    from fnn import cli

    config = tmp_path / "new.yaml"
    config.write_text(yaml.safe_dump({"model": NEW_KINDS_MODEL,
                                      "data": {"name": "mnist", "channels": True}}))
    assert cli.main(["summary", str(config)]) == 0
    assert "conv_transpose2d_0" in capsys.readouterr().out
    assert cli.main(["validate", str(config), "model.1.GroupNorm.groups=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fnn validate: error: ") and "groups=3 must divide the 8 channels" in err
    assert cli.main(["validate", str(config), "model.8.Conv3D.padding=VALID",
                     "model.8.Conv3D.kernel_size=[3, 3, 5]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not fit spatial axis 2 of size 4" in err and "conv3d" in err.lower()
