"""Shape-only layers: ``Flatten`` and ``Reshape``. The batch axis is never touched.

Example:
    >>> net = fnn.serial(fnn.Reshape((28, 28, 1)), fnn.Conv2D(8, 3), fnn.Flatten(), fnn.Dense(10))
    >>> net.init(jax.random.key(0), (-1, 784))[0]
    (-1, 10)
"""

from __future__ import annotations

import math
from typing import Sequence

from fnn.arguments import ArgumentError
from fnn.core import Layer, LayerError, check_shape, layer_type

__all__ = ["Flatten", "Reshape"]


@layer_type("Flatten")
def Flatten() -> Layer:
    """Flatten all axes but the batch: ``(batch, d1, ..., dk) -> (batch, d1 * ... * dk)``.

    The order is row-major (C order), as ``numpy.reshape``. If a non-batch size is unknown
    (``-1``) at init, the output size is ``-1``. No params.

    Example:
        >>> fnn.Flatten().init(jax.random.key(0), (-1, 7, 7, 64))[0]
        (-1, 3136)
    """

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        if len(shape) < 2:
            raise LayerError(f"expects inputs (batch, ...) with at least one axis to flatten, "
                             f"got shape {shape}")
        rest = shape[1:]
        return (shape[0], -1 if any(d < 0 for d in rest) else math.prod(rest)), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        if x.ndim < 2:
            raise LayerError(f"expects inputs (batch, ...) with at least one axis to flatten, "
                             f"got shape {tuple(x.shape)}")
        return x.reshape((x.shape[0], math.prod(x.shape[1:]))), state

    return Layer(init, apply)


def _resolve(target: tuple[int, ...], rest: tuple[int, ...], shape: tuple[int, ...]
             ) -> tuple[int, ...]:
    """``target`` with its ``-1`` filled in for inputs whose non-batch axes are ``rest``."""
    if any(d < 0 for d in rest):  # unknown input size: nothing to check or infer
        return target
    size = math.prod(rest)
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if size % known:
            raise LayerError(f"cannot reshape {size} elements per example into {target}, "
                             f"got shape {shape}")
        return tuple(size // known if d == -1 else d for d in target)
    if size != known:
        raise LayerError(f"cannot reshape {size} elements per example into {target} "
                         f"({known} elements), got shape {shape}")
    return target


@layer_type("Reshape")
def Reshape(shape: int | Sequence[int]) -> Layer:
    """Reshape each example to ``shape`` (batch excluded): ``(batch, ...) -> (batch, *shape)``.

    One entry of ``shape`` may be ``-1``, inferred from the input size. Row-major order,
    as ``numpy.reshape``. No params.

    Args:
        shape: the new shape of one example, e.g. ``(28, 28, 1)``; an int means ``(int,)``.

    Raises:
        ValueError: at construction, for a shape that is not positive ints with at most one -1.
        LayerError: at init/apply, when the input's size per example does not fit ``shape``.

    Example:
        >>> fnn.Reshape((28, 28, -1)).init(jax.random.key(0), (-1, 784))[0]
        (-1, 28, 28, 1)
    """
    target = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else shape
    if (not isinstance(target, (tuple, list))
            or not all(isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1)
                       for d in target)
            or list(target).count(-1) > 1):
        raise ArgumentError("Reshape", f"shape must be positive ints with at most one -1 "
                                       f"(batch excluded), got {shape!r}")
    target = tuple(target)

    def init(rng, input_shape):
        in_shape = check_shape(input_shape)
        return (in_shape[0], *_resolve(target, in_shape[1:], in_shape)), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        in_shape = tuple(x.shape)
        if not in_shape:
            raise LayerError(f"expects inputs (batch, ...), got shape {in_shape}")
        return x.reshape((in_shape[0], *_resolve(target, in_shape[1:], in_shape))), state

    return Layer(init, apply)
