"""Transposed convolutions, channels last: ``ConvTranspose1D`` on ``(N, L, C)``,
``ConvTranspose2D`` on ``(N, H, W, C)``.

A transposed convolution is the transpose (the gradient with respect to the input) of a
convolution: each input element scatters a copy of the kernel, scaled by its value, into the
output, ``stride`` apart. Along one spatial axis of input size ``n``, stride ``s``, dilation
``d``, kernel ``k`` (``k_eff = (k - 1) * d + 1``):

    ``full[i * s + j * d, f] += x[i, c] * w[j, c, f]``,  ``len(full) = (n - 1) * s + k_eff``,

and the output is ``full`` with ``lo`` elements cropped at the start and ``hi`` at the end
(negative crops pad with zeros):

* explicit ``padding`` ``p`` (PyTorch's ``padding``): ``(lo, hi) = (p, p - output_padding)``,
  output ``(n - 1) * s - 2 * p + k_eff + output_padding`` (PyTorch's ``ConvTranspose*d``);
  a ``(lo, hi)`` pair crops the two ends separately;
* ``"VALID"``: nothing cropped, output ``(n - 1) * s + k_eff`` (PyTorch's ``padding=0``);
* ``"SAME"``: output ``n * s``, the exact transpose of ``Conv*D(padding="SAME")`` on an input
  of size ``n * s`` (``t = k_eff - s``; ``(lo, hi) = (t // 2, t - t // 2)`` if ``t >= 0``, else
  ``(0, t)``); equal to ``jax.lax.conv_transpose(padding="SAME")``.

This scatter form is PyTorch's, so ``w`` is PyTorch's ``ConvTranspose*d.weight`` with its axes
moved, **not** spatially flipped (the table in docs/LAYERS.md). It is computed as a stride-1
correlation of the input dilated by the stride with the **flipped** kernel, by
:func:`fnn.layers.conv_ops.conv` (fast gradients on CPU).

Example:
    >>> net = fnn.serial(fnn.Conv2D(8, 3, strides=2), fnn.ConvTranspose2D(1, 3, strides=2))
    >>> net.init(jax.random.key(0), (-1, 28, 28, 1))[0]
    (-1, 28, 28, 1)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from fnn import initializers
from fnn.arguments import ArgumentError
from fnn.core import Layer, LayerError, check_shape, layer_type
from fnn.layers import conv_ops
from fnn.layers.conv import as_tuple, check_gradient, resolve_padding
from fnn.layers.dense import kernel_params

__all__ = ["ConvTranspose1D", "ConvTranspose2D"]

_AXES = {1: "length", 2: "height, width"}


def crops(size: int, window: int, stride: int, dilation: int, padding: Any,
          output_padding: int, axis: int) -> tuple[int, int]:
    """The ``(lo, hi)`` cropped from the full scatter output of one axis (see module docstring).

    Example:
        >>> crops(7, 3, 2, 1, ((1, 1),), 1, 0), crops(7, 3, 2, 1, "SAME", 0, 0)
        ((1, 0), (0, 1))
    """
    effective = (window - 1) * dilation + 1
    if padding == "VALID":
        return (0, 0)
    if padding == "SAME":
        t = effective - stride
        return (t // 2, t - t // 2) if t >= 0 else (0, t)
    lo, hi = padding[axis]
    return (lo, hi - output_padding)


def output_size(size: int, window: int, stride: int, dilation: int, padding: Any,
                output_padding: int, axis: int) -> int:
    """Output size of one axis (``-1`` stays ``-1``); may be ``< 1``, reported by the caller.

    Example:
        >>> output_size(7, 3, 2, 1, ((1, 1),), 1, 0)   # PyTorch: (7-1)*2 - 2*1 + 3 + 1
        14
    """
    if size < 0:
        return -1
    lo, hi = crops(size, window, stride, dilation, padding, output_padding, axis)
    return (size - 1) * stride + (window - 1) * dilation + 1 - lo - hi


def _conv_transpose(ndim: int, kind: str, features: int, kernel_size: Any, strides: Any,
                    padding: Any, output_padding: Any, dilation: Any, use_bias: bool,
                    w_init: Any, b_init: Any, gradient: str) -> Layer:
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ArgumentError(kind, f"features must be a positive int, got {features!r}")
    window = as_tuple(kernel_size, ndim, "kernel_size", kind)
    stride = as_tuple(strides, ndim, "strides", kind)
    dil = as_tuple(dilation, ndim, "dilation", kind)
    pad = resolve_padding(padding, ndim, kind)
    if isinstance(output_padding, int) and not isinstance(output_padding, bool):
        output_padding = (output_padding,) * ndim
    if (not isinstance(output_padding, (tuple, list)) or len(output_padding) != ndim
            or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0
                       for p in output_padding)):
        raise ArgumentError(kind, f"output_padding must be a non-negative int or {ndim} of them, "
                                  f"got {output_padding!r}")
    out_pad = tuple(output_padding)
    if any(out_pad) and isinstance(pad, str):
        raise ArgumentError(kind, f"output_padding applies to explicit padding only, not "
                                  f"{pad!r}; give padding as ints (PyTorch's padding)")
    for p, s, d in zip(out_pad, stride, dil):
        if p >= max(s, d):
            raise ArgumentError(kind, f"output_padding {out_pad} must be smaller than the "
                                      f"stride {stride} or the dilation {dil} on each axis (as "
                                      f"in PyTorch)")
    check_gradient(gradient, kind)
    w_initializer = initializers.get(w_init)
    b_initializer = initializers.get(b_init)
    layout = f"(batch, {_AXES[ndim]}, channels)"

    def spatial_output(shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != ndim + 2:
            raise LayerError(f"expects inputs {layout} of rank {ndim + 2}, got shape {shape}")
        out = []
        for axis, (n, k, s, d, p) in enumerate(zip(shape[1:-1], window, stride, dil, out_pad)):
            size = output_size(n, k, s, d, pad, p, axis)
            if n >= 0 and size < 1:
                raise LayerError(f"padding {pad!r} crops all of spatial axis {axis} (full size "
                                 f"{size + sum(crops(n, k, s, d, pad, p, axis))}), "
                                 f"got shape {shape}")
            out.append(size)
        return tuple(out)

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        spatial = spatial_output(shape)
        channels = shape[-1]
        if channels < 1:
            raise LayerError(f"needs a known channel count on the last axis, got shape {shape}")
        params = kernel_params(rng, w_initializer, b_initializer, (*window, channels, features),
                               use_bias)
        return (shape[0], *spatial, features), params, {}

    def apply(params, state, x, *, rng=None, train=False):
        w = params["w"]
        shape = tuple(x.shape)
        spatial_output(shape)
        if shape[-1] != w.shape[-2]:
            raise LayerError(f"expects {w.shape[-2]} input channels {layout}, got shape {shape}")
        # correlation of the stride-dilated input with the flipped kernel: padded by k_eff - 1
        # on both sides it gives the full output; the crops come off that padding
        explicit, implicit = [(0, 0, 0)], []
        for axis, (n, k, s, d, p) in enumerate(zip(shape[1:-1], window, stride, dil, out_pad)):
            lo, hi = crops(n, k, s, d, pad, p, axis)
            before, after = (k - 1) * d - lo, (k - 1) * d - hi
            explicit.append((min(before, 0), min(after, 0), s - 1))
            implicit.append((max(before, 0), max(after, 0)))
        explicit.append((0, 0, 0))
        dtype = jnp.result_type(x.dtype, w.dtype)
        x = jnp.asarray(x, dtype)
        if any(e != (0, 0, 0) for e in explicit):
            x = lax.pad(x, jnp.zeros((), dtype), explicit)
        kernel = jnp.flip(w.astype(dtype), axis=tuple(range(ndim)))
        y = conv_ops.conv(x, kernel, (1,) * ndim, implicit, dil, method=gradient)
        if use_bias:
            y = y + params["b"]
        return y, state

    return Layer(init, apply)


@layer_type("ConvTranspose1D")
def ConvTranspose1D(features: int, kernel_size: int | Sequence[int], *,
                    strides: int | Sequence[int] = 1, padding: Any = "SAME",
                    output_padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                    use_bias: bool = True, w_init: Any = "glorot_uniform",
                    b_init: Any = "zeros", gradient: str = "auto") -> Layer:
    """A 1-D transposed convolution over length (the input gradient of a ``Conv1D``).

    Shapes: input ``(batch, length, in)``; output ``(batch, out_length, features)`` with
    ``out_length`` as in the module docstring (``"SAME"``: ``length * strides``).
    Params: ``{"w": (kernel_size, in, features), "b": (features,)}``; PyTorch's
    ``ConvTranspose1d.weight`` ``(in, features, k)`` is ``weight.permute(2, 0, 1)``, no flip.

    Args:
        features: output channels.
        kernel_size: window length.
        strides: spacing of the input elements in the output (the upsampling factor).
        padding: ``"SAME"`` (default), ``"VALID"``, an int ``p`` (PyTorch's ``padding``:
            ``p`` cropped from each end), or ``(lo, hi)``.
        output_padding: extra elements kept at the end with explicit padding (PyTorch's
            ``output_padding``; smaller than the stride or the dilation).
        dilation: spacing between kernel taps.
        use_bias: add a learned bias ``b``.
        w_init, b_init: initializers, by name or as functions.
        gradient: ``"auto"``, ``"xla"`` or ``"scan_friendly"``, as for ``Conv2D``.

    Example:
        >>> out_shape, params, _ = fnn.ConvTranspose1D(4, 3, strides=2, padding=1,
        ...                                            output_padding=1).init(jax.random.key(0),
        ...                                                                   (-1, 10, 2))
        >>> out_shape, params["w"].shape
        ((-1, 20, 4), (3, 2, 4))
    """
    return _conv_transpose(1, "ConvTranspose1D", features, kernel_size, strides, padding,
                           output_padding, dilation, use_bias, w_init, b_init, gradient)


@layer_type("ConvTranspose2D")
def ConvTranspose2D(features: int, kernel_size: int | Sequence[int], *,
                    strides: int | Sequence[int] = 1, padding: Any = "SAME",
                    output_padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
                    use_bias: bool = True, w_init: Any = "glorot_uniform",
                    b_init: Any = "zeros", gradient: str = "auto") -> Layer:
    """A 2-D transposed convolution over height and width, channels last (the input gradient
    of a ``Conv2D``; "deconvolution" in decoders and U-Nets).

    Shapes: input ``(batch, H, W, in)``; output ``(batch, out_h, out_w, features)`` with the
    sizes as in the module docstring (``"SAME"``: ``(H * sh, W * sw)``).
    Params: ``{"w": (kh, kw, in, features), "b": (features,)}``; PyTorch's
    ``ConvTranspose2d.weight`` ``(in, features, kh, kw)`` is ``weight.permute(2, 3, 0, 1)``,
    no spatial flip (docs/LAYERS.md).

    Args:
        features: output channels.
        kernel_size: an int or ``(kh, kw)``.
        strides: an int or ``(sh, sw)``, the upsampling factors.
        padding: ``"SAME"`` (default), ``"VALID"``, an int ``p`` or one per axis (PyTorch's
            ``padding``), or one ``(lo, hi)`` per axis.
        output_padding: an int or one per axis, kept at the high end with explicit padding
            (PyTorch's ``output_padding``; smaller than the stride or the dilation).
        dilation: an int or ``(dh, dw)``.
        use_bias: add a learned bias ``b``.
        w_init, b_init: initializers, by name or as functions.
        gradient: ``"auto"``, ``"xla"`` or ``"scan_friendly"``, as for ``Conv2D``.

    Example:
        >>> out_shape, params, _ = fnn.ConvTranspose2D(8, 4, strides=2, padding=1).init(
        ...     jax.random.key(0), (-1, 7, 7, 16))
        >>> out_shape, params["w"].shape
        ((-1, 14, 14, 8), (4, 4, 16, 8))
    """
    return _conv_transpose(2, "ConvTranspose2D", features, kernel_size, strides, padding,
                           output_padding, dilation, use_bias, w_init, b_init, gradient)
