"""One convolution operator, channels last, whose gradient XLA:CPU runs fast inside ``lax.scan``.

:func:`conv` computes the same function as ``lax.conv_general_dilated`` with channels-last
dimension numbers (``NWC``/``WIO`` for 1-D, ``NHWC``/``HWIO`` for 2-D) and explicit ``(lo, hi)``
padding. Only its gradient differs in *how* it is computed, and only on CPU:

XLA:CPU runs the two backward convolutions of ``lax.conv_general_dilated`` (input gradient, kernel
gradient) an order of magnitude slower inside a loop body (``lax.scan``: a scanned epoch, a
scanned stack of layers) than in straight-line code. :func:`conv` therefore carries a custom VJP
that uses only operations XLA:CPU runs equally well in loops:

* **input gradient**: an ordinary forward convolution (stride 1, ``VALID``) of the output
  cotangent, dilated by the stride and padded with ``lax.pad`` (one op, which also crops), with the
  spatially flipped kernel whose in/out channels are swapped within each group;
* **kernel gradient**: also an ordinary forward convolution, of the padded input laid out with
  its channels as batch and its examples as features, with the output cotangent as kernel (a
  transpose before and after). Measured alternative: the ``prod(window)`` strided slices of the
  input stacked and contracted with the cotangent in one matmul; correct too, but 1.4-2x
  slower on the MNIST CNN's scanned epoch on this CPU.

With the notation ``y[n, o, f] = sum_{k, c} xpad[n, o*s + k*d, c] w[k, c, f]`` (per group),
``dw[k, c, f] = sum_{n, o} xpad[n, o*s + k*d, c] dy[n, o, f]`` and
``dxpad[n, i, c] = sum_{o, k: o*s + k*d = i} dy[n, o, f] w[k, c, f]``.

On other backends (GPU, TPU) :func:`conv` is ``lax.conv_general_dilated`` itself, with XLA's own
gradient, which is what those backends are tuned for; the choice is made when the function is
traced (``jax.default_backend()``) and can be forced with ``method=``.

Example:
    >>> x = jnp.ones((2, 5, 5, 3)); w = jnp.ones((3, 3, 3, 4))
    >>> conv(x, w, strides=(1, 1), padding=((1, 1), (1, 1))).shape
    (2, 5, 5, 4)
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["conv", "conv_reference"]

Method = Literal["auto", "scan_friendly", "xla"]

_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
                      3: ("NDHWC", "DHWIO", "NDHWC")}


def conv_reference(x: jax.Array, w: jax.Array, strides: Sequence[int],
                   padding: Sequence[tuple[int, int]], dilation: Sequence[int] | None = None,
                   groups: int = 1) -> jax.Array:
    """``lax.conv_general_dilated`` with channels-last dimension numbers (XLA's own gradient).

    Shapes: ``x`` ``(N, *spatial, C)``, ``w`` ``(*window, C // groups, F)``, output
    ``(N, *out_spatial, F)``.
    """
    ndim = x.ndim - 2
    return lax.conv_general_dilated(
        x, w, window_strides=tuple(strides), padding=[tuple(p) for p in padding],
        rhs_dilation=tuple(dilation or (1,) * ndim),
        dimension_numbers=_DIMENSION_NUMBERS[ndim], feature_group_count=groups)


def conv(x: jax.Array, w: jax.Array, strides: Sequence[int],
         padding: Sequence[tuple[int, int]], dilation: Sequence[int] | None = None,
         groups: int = 1, *, method: Method = "auto") -> jax.Array:
    """Channels-last convolution (cross-correlation) with a loop-friendly gradient on CPU.

    Args:
        x: input ``(N, *spatial, C)``, one to three spatial axes.
        w: kernel ``(*window, C // groups, F)``; ``F`` divisible by ``groups``.
        strides: one positive int per spatial axis.
        padding: one ``(lo, hi)`` pair of non-negative ints per spatial axis.
        dilation: kernel dilation per spatial axis (default 1).
        groups: feature groups (``groups == C == F`` is depthwise).
        method: ``"auto"`` (the scan-friendly gradient on CPU, XLA's gradient elsewhere),
            ``"scan_friendly"`` or ``"xla"`` to force one.

    Returns:
        ``(N, *out_spatial, F)``, ``out = (n + lo + hi - (k - 1) * d - 1) // s + 1`` per axis;
        equal to :func:`conv_reference` (the forward pass is the same XLA convolution).

    Example:
        >>> x = jnp.ones((1, 6, 2)); w = jnp.ones((3, 2, 4))
        >>> conv(x, w, strides=(2,), padding=((1, 1),))[0, :, 0]
        Array([4., 6., 6.], dtype=float32)
    """
    ndim = x.ndim - 2
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    dilation = tuple(int(d) for d in (dilation or (1,) * ndim))
    if method == "auto":
        method = "scan_friendly" if jax.default_backend() == "cpu" else "xla"
    if method == "xla":
        return conv_reference(x, w, strides, padding, dilation, groups)
    if method != "scan_friendly":
        raise ValueError(f"conv: method must be 'auto', 'scan_friendly' or 'xla', got {method!r}")
    return _scan_friendly(strides, padding, dilation, int(groups), x, w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _scan_friendly(strides, padding, dilation, groups, x, w):
    return conv_reference(x, w, strides, padding, dilation, groups)


def _forward(strides, padding, dilation, groups, x, w):
    return conv_reference(x, w, strides, padding, dilation, groups), (x, w)


def _backward(strides, padding, dilation, groups, residuals, dy):
    x, w = residuals
    dx = _input_gradient(dy, w, x.shape, strides, padding, dilation, groups)
    dw = _kernel_gradient(dy, x, w.shape, strides, padding, dilation, groups)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_scan_friendly.defvjp(_forward, _backward)


def _input_gradient(dy, w, x_shape, strides, padding, dilation, groups):
    """``dx`` as a stride-1 forward convolution of the dilated, padded ``dy``.

    ``dxpad[i] = sum_k dyd[i - k*d] w[k]`` (``dyd``: ``dy`` with ``s - 1`` zeros between
    elements) is a correlation of ``dyd`` padded by ``keff - 1`` low with the flipped kernel;
    cropping to ``x`` (drop ``lo`` first, ``hi`` last) folds into that padding. Its positive part
    is the convolution's own padding; ``lax.pad`` does the rest (the stride's interior zeros,
    and cropping where the padding is negative), and only where needed.
    """
    ndim = len(strides)
    window = w.shape[:ndim]
    cg, f = w.shape[ndim], w.shape[ndim + 1]
    fg = f // groups
    explicit, implicit = [(0, 0, 0)], []  # lax.pad (interior, cropping); the conv's own padding
    for axis in range(ndim):
        n, k, s, d = x_shape[1 + axis], window[axis], strides[axis], dilation[axis]
        lo, hi = padding[axis]
        keff = (k - 1) * d + 1
        out = dy.shape[1 + axis]
        padded = n + lo + hi
        before, after = keff - 1 - lo, padded - (out - 1) * s - 1 - hi
        explicit.append((min(before, 0), min(after, 0), s - 1))
        implicit.append((max(before, 0), max(after, 0)))
    explicit.append((0, 0, 0))
    if any(p != (0, 0, 0) for p in explicit):
        dy = lax.pad(dy, jnp.zeros((), dy.dtype), explicit)
    # w[k, c, g*fg + j] -> w_t[flip(k), j, g*cg + c]
    w_t = w.reshape((*window, cg, groups, fg))
    w_t = jnp.moveaxis(w_t, ndim, ndim + 2)  # (*window, groups, fg, cg)
    w_t = jnp.swapaxes(w_t, ndim, ndim + 1).reshape((*window, fg, groups * cg))
    w_t = jnp.flip(w_t, axis=tuple(range(ndim)))
    return conv_reference(dy, w_t, (1,) * ndim, implicit, dilation, groups)


def _kernel_gradient(dy, x, w_shape, strides, padding, dilation, groups):
    """``dw`` as a forward convolution in which the input channels play the batch.

    ``dw[k, c, f] = sum_{n, o} xpad[n, o*s + k*d, c] dy[n, o, f]`` is a ``VALID`` convolution of
    ``xpad`` laid out ``(C // groups, *spatial, groups * N)`` (batch: channels in a group;
    features: examples) with ``dy`` laid out ``(*out, N, F)`` as kernel, window stride ``d``,
    kernel dilation ``s``, ``groups`` feature groups; its output ``(C // groups, *window, F)``
    is ``dw`` up to a transpose.
    """
    ndim = len(strides)
    window = w_shape[:ndim]
    out = dy.shape[1:-1]
    batch, c = x.shape[0], x.shape[-1]
    cg = c // groups
    used = [(k - 1) * d + (o - 1) * s + 1 for k, d, o, s in zip(window, dilation, out, strides)]
    # xpad = x padded by (lo, used - n - lo) per axis: positive parts are the convolution's own
    # padding, a negative high part (inputs no output reads) a slice of x
    highs = [u - n - lo for u, n, (lo, _) in zip(used, x.shape[1:-1], padding)]
    x = x[(slice(None), *(slice(None, h if h < 0 else None) for h in highs))]
    kept = x.shape[1:-1]
    lhs = x.reshape((batch, *kept, groups, cg))
    lhs = jnp.transpose(lhs, (ndim + 2, *range(1, ndim + 1), ndim + 1, 0))
    lhs = lhs.reshape((cg, *kept, groups * batch))
    rhs = jnp.transpose(dy, (*range(1, ndim + 1), 0, ndim + 1))  # (*out, N, F)
    dw = lax.conv_general_dilated(
        lhs, rhs, window_strides=dilation,
        padding=[(lo, max(h, 0)) for (lo, _), h in zip(padding, highs)], rhs_dilation=strides,
        dimension_numbers=_DIMENSION_NUMBERS[ndim], feature_group_count=groups,
        preferred_element_type=jnp.result_type(x.dtype, dy.dtype))
    return jnp.moveaxis(dw, 0, ndim)  # (*window, cg, F)
