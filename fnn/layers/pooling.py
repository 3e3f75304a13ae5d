"""Pooling over channels-last inputs: windowed max / average, and global pooling.

* ``MaxPool1D`` / ``AvgPool1D`` on ``(N, L, C)``, ``MaxPool2D`` / ``AvgPool2D`` on
  ``(N, H, W, C)``, ``MaxPool3D`` / ``AvgPool3D`` on ``(N, D, H, W, C)``: a window slides over the spatial axes of each channel separately.
  Output sizes follow the same rules as the convolutions (see ``fnn.layers.conv``); strides
  default to the window (non-overlapping windows).
* ``GlobalAvgPool`` / ``GlobalMaxPool``: reduce every spatial axis, ``(N, ..., C) -> (N, C)``.

Padding: max pooling pads with ``-inf`` (never chosen); **average pooling divides by the
number of valid, non-padded elements in each window** by default, so a border window under
``"SAME"`` is the mean of the real inputs it covers (Keras / TensorFlow behaviour; PyTorch's
``count_include_pad=False``). ``count_include_pad=True`` divides every window by its full size,
the padded zeros counting as inputs (PyTorch's default, ``torch.nn.AvgPool2d``).

Example:
    >>> net = fnn.serial(fnn.Conv2D(8, 3), fnn.MaxPool2D(2), fnn.GlobalAvgPool())
    >>> net.init(jax.random.key(0), (-1, 28, 28, 1))[0]
    (-1, 8)
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.arguments import ArgumentError, flag
from fnn.core import Layer, LayerError, check_shape, layer_type
from fnn.layers.conv import as_tuple, axis_pads, resolve_padding, spatial_output

__all__ = ["MaxPool1D", "MaxPool2D", "MaxPool3D", "AvgPool1D", "AvgPool2D", "AvgPool3D",
           "GlobalAvgPool", "GlobalMaxPool"]

_AXES = {1: "length", 2: "height, width", 3: "depth, height, width"}


def _max_identity(dtype: Any) -> np.ndarray:
    """The identity of ``max`` in ``dtype`` (``-inf``, the smallest int, or ``False``)."""
    dtype = np.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating):
        return np.array(-np.inf, dtype)
    if jnp.issubdtype(dtype, jnp.integer):
        return np.array(np.iinfo(dtype).min, dtype)
    return np.array(False, dtype)


def _valid_counts(spatial: Sequence[int], window: Sequence[int], strides: Sequence[int],
                  pads: Sequence[tuple[int, int]], out: Sequence[int]) -> np.ndarray:
    """Number of non-padded inputs under each output window, shaped ``(1, *out, 1)``."""
    per_axis = []
    for n, k, s, (lo, _), m in zip(spatial, window, strides, pads, out):
        start = np.arange(m) * s - lo
        per_axis.append(np.minimum(start + k, n) - np.maximum(start, 0))
    counts = functools.reduce(np.multiply.outer, per_axis)
    return counts.reshape((1, *out, 1)).astype(np.float32)


def _tiled_max(x: jax.Array, win: tuple[int, ...]) -> jax.Array:
    """Max over non-overlapping windows that tile the input exactly, as a reshape and a reduce.

    Same values as ``reduce_window``; its gradient is an elementwise mask instead of XLA's
    ``select_and_scatter``, which is several times slower on CPU. As ``select_and_scatter`` (and
    PyTorch), a window with tied maxima gives the whole gradient to the first of them (in
    row-major window order, :func:`_first_max`): sharing it among the ties would make the
    gradient jump when a last-bit rounding difference breaks a tie, and split runs apart on
    different device counts even in float64 (docs/DISTRIBUTED.md).
    """
    n, *spatial, c = x.shape
    split = [n]
    for size, k in zip(spatial, win):
        split += [size // k, k]
    y = x.reshape(*split, c)
    d = len(win)
    # (n, *out, c, window): the window's axes last, flattened
    order = (0, *(1 + 2 * i for i in range(d)), 2 * d + 1, *(2 + 2 * i for i in range(d)))
    z = y.transpose(order).reshape(n, *(size // k for size, k in zip(spatial, win)), c, -1)
    return _first_max(z)


@jax.custom_jvp
def _first_max(z: jax.Array) -> jax.Array:
    """``max(z, axis=-1)``, whose tangent is that of the first maximum along the last axis."""
    return jnp.max(z, axis=-1)


@_first_max.defjvp
def _first_max_jvp(primals: tuple, tangents: tuple) -> tuple:
    (z,), (t,) = primals, tangents
    # the position comes from one argmax, not from comparing z with its max: XLA may compute z
    # twice in two fusions that round differently, and ``z == max(z)`` then finds no position
    # in some windows, whose gradient was lost (the CNN's float64 runs parted after one step)
    first = jnp.argmax(z, axis=-1)
    pick = jnp.arange(z.shape[-1]) == first[..., None]
    return jnp.max(z, axis=-1), jnp.sum(jnp.where(pick, t, jnp.zeros_like(t)), axis=-1)


def _pool(ndim: int, kind: str, reduce: str, window: Any, strides: Any, padding: Any,
          count_include_pad: bool = False) -> Layer:
    flag(kind, "count_include_pad", count_include_pad)
    win = as_tuple(window, ndim, "window", kind)
    stride = win if strides is None else as_tuple(strides, ndim, "strides", kind)
    pad = resolve_padding(padding, ndim, kind)
    if not isinstance(pad, str) and any(max(p) >= k for p, k in zip(pad, win)):
        raise ArgumentError(kind, f"explicit padding {pad} must be smaller than the window {win} "
                                  "(a window of padding only has nothing to pool)")
    ones = (1,) * ndim
    layout = f"(batch, {_AXES[ndim]}, channels)"

    def check_input(shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) != ndim + 2:
            raise LayerError(f"expects inputs {layout} of rank {ndim + 2}, got shape {shape}")
        return spatial_output(shape[1:-1], win, stride, ones, pad, shape)

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        out = check_input(shape)
        return (shape[0], *out, shape[-1]), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        shape = tuple(x.shape)
        out = check_input(shape)
        spatial = shape[1:-1]
        pads = [axis_pads(n, k, s, 1, pad, a)
                for a, (n, k, s) in enumerate(zip(spatial, win, stride))]
        dims, steps, full_pads = (1, *win, 1), (1, *stride, 1), [(0, 0), *pads, (0, 0)]
        if reduce == "max":
            if stride == win and all(p == (0, 0) for p in pads) and all(
                    n % k == 0 for n, k in zip(spatial, win)):
                return _tiled_max(x, win), state
            y = lax.reduce_window(x, _max_identity(x.dtype), lax.max, dims, steps, full_pads)
            return y, state
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = jnp.asarray(x, jnp.float32)
        total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, steps, full_pads)
        if count_include_pad:
            return total / np.array(np.prod(win), x.dtype), state
        counts = _valid_counts(spatial, win, stride, pads, out)
        return total / jnp.asarray(counts, x.dtype), state

    return Layer(init, apply)


@layer_type("MaxPool1D")
def MaxPool1D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Any = "VALID") -> Layer:
    """Max over sliding windows of the length axis, per channel.

    Shapes: ``(batch, length, C) -> (batch, out_length, C)``. No params.

    Args:
        window: window length.
        strides: step between windows; ``None`` (default) uses ``window``.
        padding: ``"VALID"`` (default), ``"SAME"``, an int or ``(lo, hi)``; padded positions
            are ``-inf`` and never win. Explicit pads must be smaller than the window.

    Example:
        >>> fnn.MaxPool1D(2).init(jax.random.key(0), (-1, 9, 4))[0]
        (-1, 4, 4)
    """
    return _pool(1, "MaxPool1D", "max", window, strides, padding)


@layer_type("MaxPool2D")
def MaxPool2D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Any = "VALID") -> Layer:
    """Max over sliding windows of height and width, per channel.

    Shapes: ``(batch, H, W, C) -> (batch, out_h, out_w, C)``. No params.

    Args:
        window: an int or ``(wh, ww)``.
        strides: an int or ``(sh, sw)``; ``None`` (default) uses ``window``.
        padding: ``"VALID"`` (default), ``"SAME"``, an int, or one int / ``(lo, hi)`` per axis;
            padded positions are ``-inf``. Explicit pads must be smaller than the window.

    Example:
        >>> fnn.MaxPool2D(2).init(jax.random.key(0), (-1, 28, 28, 8))[0]
        (-1, 14, 14, 8)
    """
    return _pool(2, "MaxPool2D", "max", window, strides, padding)


@layer_type("AvgPool1D")
def AvgPool1D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Any = "VALID", *, count_include_pad: bool = False) -> Layer:
    """Mean over sliding windows of the length axis, per channel.

    Shapes: ``(batch, length, C) -> (batch, out_length, C)``; integer inputs give float32.
    A window that overlaps padding is divided by its count of real inputs (Keras, TensorFlow,
    PyTorch's ``count_include_pad=False``), or by the full window size with
    ``count_include_pad=True`` (the padded zeros count: PyTorch's default,
    ``torch.nn.AvgPool1d``).

    Args:
        window: window length.
        strides: step between windows; ``None`` (default) uses ``window``.
        padding: ``"VALID"`` (default), ``"SAME"``, an int or ``(lo, hi)``.
        count_include_pad: divide by the window size, padding included (PyTorch's default).

    Example:
        >>> fnn.AvgPool1D(3, strides=1, padding="SAME").init(jax.random.key(0), (-1, 9, 4))[0]
        (-1, 9, 4)
    """
    return _pool(1, "AvgPool1D", "avg", window, strides, padding, count_include_pad)


@layer_type("AvgPool2D")
def AvgPool2D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Any = "VALID", *, count_include_pad: bool = False) -> Layer:
    """Mean over sliding windows of height and width, per channel.

    Shapes: ``(batch, H, W, C) -> (batch, out_h, out_w, C)``; integer inputs give float32.
    A window that overlaps padding is divided by its count of real inputs (Keras, TensorFlow,
    PyTorch's ``count_include_pad=False``), or by the full window size with
    ``count_include_pad=True`` (the padded zeros count: PyTorch's default,
    ``torch.nn.AvgPool2d``).

    Args:
        window: an int or ``(wh, ww)``.
        strides: an int or ``(sh, sw)``; ``None`` (default) uses ``window``.
        padding: ``"VALID"`` (default), ``"SAME"``, an int, or one int / ``(lo, hi)`` per axis.
        count_include_pad: divide by the window size, padding included (PyTorch's default).

    Example:
        >>> fnn.AvgPool2D((2, 3)).init(jax.random.key(0), (-1, 8, 9, 3))[0]
        (-1, 4, 3, 3)
    """
    return _pool(2, "AvgPool2D", "avg", window, strides, padding, count_include_pad)


@layer_type("MaxPool3D")
def MaxPool3D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Any = "VALID") -> Layer:
    """Max over sliding windows of depth, height and width, per channel.

    Shapes: ``(batch, D, H, W, C) -> (batch, out_d, out_h, out_w, C)``. No params.

    Args:
        window: an int or ``(wd, wh, ww)``.
        strides: an int or ``(sd, sh, sw)``; ``None`` (default) uses ``window``.
        padding: ``"VALID"`` (default), ``"SAME"``, an int, or one int / ``(lo, hi)`` per axis;
            padded positions are ``-inf``. Explicit pads must be smaller than the window.

    Example:
        >>> fnn.MaxPool3D(2).init(jax.random.key(0), (-1, 8, 28, 28, 4))[0]
        (-1, 4, 14, 14, 4)
    """
    return _pool(3, "MaxPool3D", "max", window, strides, padding)


@layer_type("AvgPool3D")
def AvgPool3D(window: int | Sequence[int], strides: int | Sequence[int] | None = None,
              padding: Any = "VALID", *, count_include_pad: bool = False) -> Layer:
    """Mean over sliding windows of depth, height and width, per channel.

    Shapes: ``(batch, D, H, W, C) -> (batch, out_d, out_h, out_w, C)``; integer inputs give
    float32. A window that overlaps padding is divided by its count of real inputs (PyTorch's
    ``count_include_pad=False``), or by the full window size with ``count_include_pad=True``
    (PyTorch's default, ``torch.nn.AvgPool3d``).

    Args:
        window: an int or ``(wd, wh, ww)``.
        strides: an int or ``(sd, sh, sw)``; ``None`` (default) uses ``window``.
        padding: ``"VALID"`` (default), ``"SAME"``, an int, or one int / ``(lo, hi)`` per axis.
        count_include_pad: divide by the window size, padding included (PyTorch's default).

    Example:
        >>> fnn.AvgPool3D((1, 2, 2)).init(jax.random.key(0), (-1, 5, 8, 8, 3))[0]
        (-1, 5, 4, 4, 3)
    """
    return _pool(3, "AvgPool3D", "avg", window, strides, padding, count_include_pad)


def _global(reduce: str) -> Layer:
    def init(rng, input_shape):
        shape = check_shape(input_shape)
        if len(shape) < 3:
            raise LayerError(f"expects inputs (batch, *spatial, channels) of rank >= 3, "
                             f"got shape {shape}")
        return (shape[0], shape[-1]), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        if x.ndim < 3:
            raise LayerError(f"expects inputs (batch, *spatial, channels) of rank >= 3, "
                             f"got shape {tuple(x.shape)}")
        axes = tuple(range(1, x.ndim - 1))
        y = jnp.max(x, axis=axes) if reduce == "max" else jnp.mean(x, axis=axes)
        return y, state

    return Layer(init, apply)


@layer_type("GlobalAvgPool")
def GlobalAvgPool() -> Layer:
    """Mean over all spatial axes: ``(batch, *spatial, C) -> (batch, C)``.

    Works for any number of spatial axes (1-D, 2-D, 3-D inputs). No params.

    Example:
        >>> fnn.GlobalAvgPool().init(jax.random.key(0), (-1, 7, 7, 64))[0]
        (-1, 64)
    """
    return _global("avg")


@layer_type("GlobalMaxPool")
def GlobalMaxPool() -> Layer:
    """Max over all spatial axes: ``(batch, *spatial, C) -> (batch, C)``. No params.

    Example:
        >>> fnn.GlobalMaxPool().init(jax.random.key(0), (-1, 50, 16))[0]
        (-1, 16)
    """
    return _global("max")
