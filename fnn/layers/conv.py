"""Channels-last convolutions: ``Conv1D`` on ``(N, L, C)``, ``Conv2D`` on ``(N, H, W, C)``,
``Conv3D`` on ``(N, D, H, W, C)``.

For each spatial axis of input size ``n``, window ``k``, stride ``s``, dilation ``d`` the
effective window is ``k_eff = (k - 1) * d + 1`` and the output size is

* ``"VALID"``: ``floor((n - k_eff) / s) + 1`` (no padding);
* ``"SAME"``: ``ceil(n / s)``, padding ``p = max((ceil(n / s) - 1) * s + k_eff - n, 0)`` split
  as ``(p // 2, p - p // 2)`` (the extra element goes after, as in TensorFlow and ``jax.lax``);
* explicit ``(lo, hi)``: ``floor((n + lo + hi - k_eff) / s) + 1``.

The convolution itself is :func:`fnn.layers.conv_ops.conv` (``lax.conv_general_dilated``, with
a gradient that XLA:CPU runs fast inside ``lax.scan``). That gradient pays inside loops (a
scanned epoch, ``repeat``, gradient accumulation); in straight-line code XLA's own is as fast or
faster, so the per-step train steps (``make_train_step``, ``fit(mode="step")``) run the network
through :func:`straight_line_gradients` first.

The helpers :func:`as_tuple`, :func:`resolve_padding`, :func:`axis_pads` and
:func:`output_size` implement these rules once; ``fnn.layers.pooling`` uses them too.

Example:
    >>> net = fnn.serial(fnn.Conv2D(8, 3), fnn.Relu, fnn.Conv2D(16, 3, strides=2))
    >>> net.init(jax.random.key(0), (-1, 28, 28, 1))[0]
    (-1, 14, 14, 16)
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.core import Layer, LayerError, check_shape, layer_paths, layer_type, map_layers
from fnn.arguments import ArgumentError
from fnn.layers import conv_ops
from fnn.layers.dense import kernel_params

__all__ = ["Conv1D", "Conv2D", "Conv3D"]  # straight_line_gradients is for the train steps

GRADIENTS = ("auto", "xla", "scan_friendly")  # the ``gradient=`` of the convolutions
CONV_KINDS = ("Conv1D", "Conv2D", "Conv3D", "ConvTranspose1D", "ConvTranspose2D")

Padding = str | tuple[tuple[int, int], ...]

_AXES = {1: "length", 2: "height, width", 3: "depth, height, width"}


# --------------------------------------------------------------------------- shape helpers

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def as_tuple(value: int | Sequence[int], n: int, what: str, kind: str) -> tuple[int, ...]:
    """``value`` (an int, or ``n`` ints) as a tuple of ``n`` positive ints.

    Raises ``ValueError("<kind>: <what> ...")`` otherwise.

    Example:
        >>> as_tuple(3, 2, "kernel_size", "Conv2D"), as_tuple((3, 5), 2, "kernel_size", "Conv2D")
        ((3, 3), (3, 5))
    """
    if _is_int(value):
        value = (value,) * n
    if (not isinstance(value, (tuple, list)) or len(value) != n
            or not all(_is_int(v) and v >= 1 for v in value)):
        raise ArgumentError(kind, f"{what} must be a positive int or {n} positive ints, "
                                  f"got {value!r}")
    return tuple(value)


def resolve_padding(padding: Any, n: int, kind: str) -> Padding:
    """Normalise a padding argument for ``n`` spatial axes.

    Accepted: ``"SAME"`` / ``"VALID"`` (any case); an int ``p`` (``(p, p)`` on every axis);
    ``n`` entries, each an int or a ``(lo, hi)`` pair; for one axis also a bare ``(lo, hi)``
    pair. Returns ``"SAME"``, ``"VALID"`` or ``n`` ``(lo, hi)`` pairs of non-negative ints.

    Example:
        >>> resolve_padding(1, 2, "Conv2D"), resolve_padding((2, 0), 1, "Conv1D")
        (((1, 1), (1, 1)), ((2, 0),))
    """
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise ArgumentError(kind, f"padding must be 'SAME', 'VALID' or explicit ints, "
                                  f"got {padding!r}")

    def pair(p: Any) -> tuple[int, int] | None:
        if _is_int(p):
            return (p, p)
        if isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p):
            return (p[0], p[1])
        return None

    pads: list[tuple[int, int] | None] | None = None
    if _is_int(padding):
        pads = [(padding, padding)] * n
    elif isinstance(padding, (tuple, list)):
        if len(padding) == n:
            pads = [pair(p) for p in padding]
        if n == 1 and len(padding) == 2 and all(_is_int(v) for v in padding):
            pads = [(padding[0], padding[1])]  # Conv1D(padding=(lo, hi))
    if pads is None or any(p is None or min(p) < 0 for p in pads):
        raise ArgumentError(kind, f"padding must be 'SAME', 'VALID', a non-negative int or "
                                  f"{n} entries of ints / (lo, hi) pairs, got {padding!r}")
    return tuple(pads)  # type: ignore[arg-type]


def axis_pads(size: int, window: int, stride: int, dilation: int,
              padding: Padding, axis: int) -> tuple[int, int]:
    """The ``(lo, hi)`` padding of spatial axis ``axis`` of input size ``size`` (``size >= 1``).

    Example:
        >>> axis_pads(6, 3, 2, 1, "SAME", 0)  # 3 outputs need 2 * 2 + 3 = 7 inputs: one extra
        (0, 1)
    """
    if padding == "VALID":
        return (0, 0)
    if padding == "SAME":
        effective = (window - 1) * dilation + 1
        total = max((-(-size // stride) - 1) * stride + effective - size, 0)
        return (total // 2, total - total // 2)
    return padding[axis]  # type: ignore[return-value]


def output_size(size: int, window: int, stride: int, dilation: int, padding: Padding,
                axis: int) -> int:
    """Output size of one spatial axis (``-1`` stays ``-1``); may be ``< 1`` if the window
    does not fit, which callers report as an error.

    Example:
        >>> output_size(28, 3, 2, 1, "SAME", 0), output_size(28, 3, 2, 1, "VALID", 0)
        (14, 13)
    """
    if size < 0:
        return -1
    lo, hi = axis_pads(size, window, stride, dilation, padding, axis)
    effective = (window - 1) * dilation + 1
    return (size + lo + hi - effective) // stride + 1


def spatial_output(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int],
                   dilation: Sequence[int], padding: Padding, shape: Sequence[int]
                   ) -> tuple[int, ...]:
    """Output sizes of all spatial axes; a ``LayerError`` naming ``shape`` if a window does not fit.

    Example:
        >>> spatial_output((5, 5), (3, 3), (1, 1), (1, 1), "VALID", (-1, 5, 5, 2))
        (3, 3)
    """
    out = []
    for axis, (n, k, s, d) in enumerate(zip(spatial, window, strides, dilation)):
        size = output_size(n, k, s, d, padding, axis)
        if n >= 0 and size < 1:
            raise LayerError(f"window {tuple(window)} (dilation {tuple(dilation)}) does not fit "
                             f"spatial axis {axis} of size {n} with padding {padding!r}, "
                             f"got shape {tuple(shape)}")
        out.append(size)
    return tuple(out)


def check_gradient(gradient: Any, kind: str) -> str:
    """``gradient`` if it names a convolution gradient (``GRADIENTS``), else an ``ArgumentError``.

    Example:
        >>> check_gradient("xla", "Conv2D")
        'xla'
    """
    if gradient not in GRADIENTS:
        raise ArgumentError(kind, f"gradient must be one of {', '.join(map(repr, GRADIENTS))}, "
                                  f"got {gradient!r}")
    return gradient


# --------------------------------------------------------------------------- the layers

def _conv(ndim: int, kind: str, features: int, kernel_size: Any, strides: Any, padding: Any,
          dilation: Any, groups: int, use_bias: bool, w_init: Any, b_init: Any,
          gradient: str) -> Layer:
    if not _is_int(features) or features < 1:
        raise ArgumentError(kind, f"features must be a positive int, got {features!r}")
    if not _is_int(groups) or groups < 1:
        raise ArgumentError(kind, f"groups must be a positive int, got {groups!r}")
    if features % groups:
        raise ArgumentError(kind, f"groups={groups} must divide features={features}")
    window = as_tuple(kernel_size, ndim, "kernel_size", kind)
    stride = as_tuple(strides, ndim, "strides", kind)
    dil = as_tuple(dilation, ndim, "dilation", kind)
    pad = resolve_padding(padding, ndim, kind)
    check_gradient(gradient, kind)
    w_initializer = initializers.get(w_init)
    b_initializer = initializers.get(b_init)
    layout = f"(batch, {_AXES[ndim]}, channels)"

    def check_input(shape: tuple[int, ...]) -> int:
        if len(shape) != ndim + 2:
            raise LayerError(f"expects inputs {layout} of rank {ndim + 2}, got shape {shape}")
        channels = shape[-1]
        if channels < 1:
            raise LayerError(f"needs a known channel count on the last axis, got shape {shape}")
        if channels % groups:
            raise LayerError(f"groups={groups} must divide the {channels} input channels, "
                             f"got shape {shape}")
        return channels

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        channels = check_input(shape)
        spatial = spatial_output(shape[1:-1], window, stride, dil, pad, shape)
        params = kernel_params(rng, w_initializer, b_initializer,
                               (*window, channels // groups, features), use_bias)
        return (shape[0], *spatial, features), params, {}

    def apply(params, state, x, *, rng=None, train=False):
        w = params["w"]
        shape = tuple(x.shape)
        channels = check_input(shape)
        if channels != w.shape[-2] * groups:
            raise LayerError(f"expects {w.shape[-2] * groups} input channels {layout}, "
                             f"got shape {shape}")
        spatial_output(shape[1:-1], window, stride, dil, pad, shape)
        pads = [axis_pads(n, k, s, d, pad, a)
                for a, (n, k, s, d) in enumerate(zip(shape[1:-1], window, stride, dil))]
        dtype = jnp.result_type(x.dtype, w.dtype)
        y = conv_ops.conv(jnp.asarray(x, dtype), w.astype(dtype), stride, pads, dil, groups,
                          method=gradient)
        if use_bias:
            y = y + params["b"]
        return y, state

    return Layer(init, apply)


@layer_type("Conv1D")
def Conv1D(features: int, kernel_size: int | Sequence[int], *, strides: int | Sequence[int] = 1,
           padding: Any = "SAME", dilation: int | Sequence[int] = 1, groups: int = 1,
           use_bias: bool = True, w_init: Any = "glorot_uniform", b_init: Any = "zeros",
           gradient: str = "auto") -> Layer:
    """A 1-D convolution (cross-correlation, as in every deep-learning library) over length.

    Shapes: input ``(batch, length, in)``; output ``(batch, out_length, features)`` with
    ``out_length`` as in the module docstring.
    Params: ``{"w": (kernel_size, in // groups, features), "b": (features,)}``.

    Args:
        features: output channels.
        kernel_size: window length.
        strides: step between windows.
        padding: ``"SAME"`` (default), ``"VALID"``, an int, or ``(lo, hi)``.
        dilation: spacing between kernel taps (atrous convolution).
        groups: split input and output channels into ``groups`` independent convolutions
            (``groups == in`` with ``features == in`` is a depthwise convolution).
        use_bias: add a learned bias ``b``.
        w_init, b_init: initializers, by name or as functions (fan-in of ``w`` is
            ``kernel_size * in // groups``).
        gradient: how the gradient is computed (the values are the same to float rounding):
            ``"auto"`` (the scan-friendly one on CPU, XLA's elsewhere), ``"xla"`` or
            ``"scan_friendly"``; see :func:`fnn.layers.conv_ops.conv` and
            :func:`straight_line_gradients`.

    Example:
        >>> out_shape, params, _ = fnn.Conv1D(8, 5, strides=2).init(jax.random.key(0), (-1, 100, 3))
        >>> out_shape, params["w"].shape
        ((-1, 50, 8), (5, 3, 8))
    """
    return _conv(1, "Conv1D", features, kernel_size, strides, padding, dilation, groups,
                 use_bias, w_init, b_init, gradient)


@layer_type("Conv2D")
def Conv2D(features: int, kernel_size: int | Sequence[int], *, strides: int | Sequence[int] = 1,
           padding: Any = "SAME", dilation: int | Sequence[int] = 1, groups: int = 1,
           use_bias: bool = True, w_init: Any = "glorot_uniform", b_init: Any = "zeros",
           gradient: str = "auto") -> Layer:
    """A 2-D convolution (cross-correlation) over height and width, channels last.

    Shapes: input ``(batch, height, width, in)``; output ``(batch, out_h, out_w, features)``
    with the output sizes as in the module docstring.
    Params: ``{"w": (kh, kw, in // groups, features), "b": (features,)}`` (HWIO layout).

    Args:
        features: output channels.
        kernel_size: window, an int or ``(kh, kw)``.
        strides: an int or ``(sh, sw)``.
        padding: ``"SAME"`` (default), ``"VALID"``, an int, or one int / ``(lo, hi)`` per axis,
            e.g. ``((1, 2), (0, 0))``.
        dilation: an int or ``(dh, dw)``, spacing between kernel taps.
        groups: grouped convolution; must divide input channels and ``features``.
        use_bias: add a learned bias ``b``.
        w_init, b_init: initializers, by name or as functions (fan-in of ``w`` is
            ``kh * kw * in // groups``).
        gradient: how the gradient is computed (the values are the same to float rounding):
            ``"auto"`` (the scan-friendly one on CPU, XLA's elsewhere), ``"xla"`` or
            ``"scan_friendly"``; see :func:`fnn.layers.conv_ops.conv` and
            :func:`straight_line_gradients`.

    Example:
        >>> out_shape, params, _ = fnn.Conv2D(32, 3).init(jax.random.key(0), (-1, 28, 28, 1))
        >>> out_shape, params["w"].shape
        ((-1, 28, 28, 32), (3, 3, 1, 32))
    """
    return _conv(2, "Conv2D", features, kernel_size, strides, padding, dilation, groups,
                 use_bias, w_init, b_init, gradient)


@layer_type("Conv3D")
def Conv3D(features: int, kernel_size: int | Sequence[int], *, strides: int | Sequence[int] = 1,
           padding: Any = "SAME", dilation: int | Sequence[int] = 1, groups: int = 1,
           use_bias: bool = True, w_init: Any = "glorot_uniform", b_init: Any = "zeros",
           gradient: str = "auto") -> Layer:
    """A 3-D convolution (cross-correlation) over depth, height and width, channels last.

    Shapes: input ``(batch, depth, height, width, in)``; output
    ``(batch, out_d, out_h, out_w, features)`` with the output sizes as in the module docstring.
    Params: ``{"w": (kd, kh, kw, in // groups, features), "b": (features,)}`` (DHWIO layout;
    PyTorch's ``Conv3d.weight`` ``(out, in // groups, kd, kh, kw)`` is
    ``weight.permute(2, 3, 4, 1, 0)``, see docs/LAYERS.md).

    Args:
        features: output channels.
        kernel_size: window, an int or ``(kd, kh, kw)``.
        strides: an int or ``(sd, sh, sw)``.
        padding: ``"SAME"`` (default), ``"VALID"``, an int, or one int / ``(lo, hi)`` per axis.
        dilation: an int or ``(dd, dh, dw)``, spacing between kernel taps.
        groups: grouped convolution; must divide input channels and ``features``.
        use_bias: add a learned bias ``b``.
        w_init, b_init: initializers, by name or as functions (fan-in of ``w`` is
            ``kd * kh * kw * in // groups``).
        gradient: how the gradient is computed (the values are the same to float rounding):
            ``"auto"`` (the scan-friendly one on CPU, XLA's elsewhere), ``"xla"`` or
            ``"scan_friendly"``; see :func:`fnn.layers.conv_ops.conv` and
            :func:`straight_line_gradients`.

    Example:
        >>> out_shape, params, _ = fnn.Conv3D(4, 3, strides=2).init(jax.random.key(0),
        ...                                                         (-1, 8, 16, 16, 2))
        >>> out_shape, params["w"].shape
        ((-1, 4, 8, 8, 4), (3, 3, 3, 2, 4))
    """
    return _conv(3, "Conv3D", features, kernel_size, strides, padding, dilation, groups,
                 use_bias, w_init, b_init, gradient)


def straight_line_gradients(net: Layer) -> Layer:
    """``net`` with XLA's own gradient (``gradient="xla"``) in each convolution that runs outside
    a loop: what a train step compiled on its own (not scanned) should differentiate.

    Convolutions left as they are: those inside a ``repeat`` (a ``lax.scan`` over layers), those
    given a ``gradient`` other than ``"auto"``, and those inside hand-made layers (no build
    record to change). Params and state keep their keys and values: only how the gradient is
    computed changes, to float rounding. A kind of your own that runs its sub-layers in a loop
    should give its convolutions ``gradient="scan_friendly"``.

    Example:
        >>> net = fnn.serial(fnn.Conv2D(4, 3), fnn.repeat(fnn.Conv2D(4, 3), 2))
        >>> [(l.kind, l.record.args.get("gradient")) for _, l in
        ...  fnn.core.layer_paths(straight_line_gradients(net)) if l.kind == "Conv2D"]
        [('Conv2D', 'xla'), ('Conv2D', None)]
    """
    loops = [path for path, layer in layer_paths(net) if layer.kind == "Repeat"]

    def pick(layer: Layer, path: tuple[str, ...]) -> Layer:
        if (layer.kind in CONV_KINDS and layer.record.args.get("gradient", "auto") == "auto"
                and not any(path[:len(loop)] == loop for loop in loops)):
            return layer.replace(gradient="xla")
        return layer

    return map_layers(pick, net, with_path=True)
