"""The input convention of the sequence layers, and :func:`StripMask`, which ends it.

A sequence layer (``RNN``, ``LSTM``, ``Bidirectional``, ...) takes ``x (batch, time, features)``,
or ``(x, mask)``, or ``(x, mask, initial_carry)``; ``mask`` is a ``(batch, time)`` bool array
(True = a real step) or ``(batch,)`` integer lengths, or ``None``. A sequence output keeps the
mask, ``(y, mask)``, so sequence layers stack in ``fnn.serial``; :func:`StripMask` drops it
before a layer that takes one array. The functions here split such inputs (arrays or, in
``init``, shapes) and check and convert masks; they are shared by ``fnn.layers.recurrent``
and ``fnn.layers.bidirectional``.

Example:
    >>> split_input_shape(((-1, 20, 3), (-1,)))
    ((-1, 20, 3), (-1,), None)
    >>> mask_array(jnp.array([2, 0]), 2, 3)
    Array([[ True,  True, False],
           [False, False, False]], dtype=bool)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from fnn.core import Layer, LayerError, check_shape, layer_type

__all__ = ["StripMask"]


def is_shape(s: Any) -> bool:
    """Whether ``s`` is one shape (a tuple or list of ints), not a tuple of shapes."""
    return isinstance(s, (tuple, list)) and all(isinstance(d, int) for d in s)


def split_input_shape(input_shape: Any) -> tuple[Any, Any, Any]:
    """``x``, ``(x, mask)`` or ``(x, mask, carry)`` shapes -> ``(x, mask | None, carry | None)``."""
    if isinstance(input_shape, (tuple, list)) and input_shape and not is_shape(input_shape):
        if len(input_shape) not in (2, 3):
            raise LayerError(f"expects an input shape x, (x, mask) or (x, mask, initial_carry), "
                             f"got {len(input_shape)} shapes: {input_shape!r}")
        return input_shape[0], input_shape[1], (input_shape[2] if len(input_shape) == 3 else None)
    return input_shape, None, None


def split_input(x: Any) -> tuple[Any, Any, Any]:
    """``x``, ``(x, mask)`` or ``(x, mask, carry)`` arrays -> ``(x, mask | None, carry | None)``."""
    if isinstance(x, (tuple, list)):
        if len(x) not in (2, 3):
            raise LayerError(f"expects x, (x, mask) or (x, mask, initial_carry), "
                             f"got a {type(x).__name__} of length {len(x)}")
        return x[0], x[1], (x[2] if len(x) == 3 else None)
    return x, None, None


def dims_fit(a: int, b: int) -> bool:
    """Whether two dimensions can be equal (``-1`` is unknown and fits anything)."""
    return a == b or a == -1 or b == -1


def check_mask_shape(mask_shape: Any, n: int, t: int) -> None:
    """Check an ``init`` mask shape against ``(batch, time) = (n, t)``; ``None`` passes."""
    if mask_shape is None:
        return
    s = check_shape(mask_shape, min_rank=1, what="input mask")
    if not ((len(s) == 1 and dims_fit(s[0], n))
            or (len(s) == 2 and dims_fit(s[0], n) and dims_fit(s[1], t))):
        raise LayerError(f"expects a mask (batch, time) = ({n}, {t}) or lengths (batch,) = ({n},), "
                         f"got shape {s}")


def mask_array(mask: Any, n: int, t: int) -> jax.Array:
    """A ``(batch, time)`` bool mask from a mask or from ``(batch,)`` integer lengths."""
    m = jnp.asarray(mask)
    if m.ndim == 1 and m.shape[0] == n:
        if not jnp.issubdtype(m.dtype, jnp.integer):
            raise LayerError(f"lengths (batch,) must be integers, got dtype {m.dtype}")
        return jnp.arange(t)[None, :] < m[:, None]
    if m.ndim == 2 and m.shape == (n, t):
        return m.astype(bool)
    raise LayerError(f"expects a mask (batch, time) = ({n}, {t}) or lengths (batch,) = ({n},), "
                     f"got shape {tuple(m.shape)}")


@layer_type("StripMask")
def StripMask() -> Layer:
    """Drop the mask from a sequence output: ``(y, mask) -> y``; a plain ``y`` passes through.

    Put it between recurrent layers that return sequences and a layer that takes one array
    (``Dense`` on each step). The recurrent layers already output zeros at masked steps.

    Shapes: ``((batch, time, ...), (batch, time) | (batch,))`` -> ``(batch, time, ...)``.

    Example:
        >>> net = fnn.serial(fnn.Bidirectional(fnn.GRU(8)), StripMask(), fnn.Dense(5))
        >>> net.init(jax.random.key(0), ((-1, 20, 3), (-1,)))[0]
        (-1, 20, 5)
    """

    def init(rng, input_shape):
        if is_shape(input_shape):
            return tuple(input_shape), {}, {}
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 2:
            raise LayerError(f"expects a shape y or (y, mask), got {input_shape!r}")
        y_shape = check_shape(input_shape[0], min_rank=2)
        check_mask_shape(input_shape[1], y_shape[0], y_shape[1])
        return y_shape, {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        if not isinstance(x, (tuple, list)):
            return x, state
        if len(x) != 2:
            raise LayerError(f"expects y or (y, mask), got a {type(x).__name__} of length {len(x)}")
        return x[0], state

    return Layer(init, apply)
