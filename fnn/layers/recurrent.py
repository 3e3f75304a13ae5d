"""Recurrent layers: a cell (``fnn.layers.cells``) scanned over the time axis.

* :func:`RNN` turns a cell into a layer on ``(batch, time, features)`` inputs with
  ``jax.lax.scan`` (one compiled step whatever the length). :func:`SimpleRNN`, :func:`LSTM` and
  :func:`GRU` are the same layer built from ``units`` and options, for configs
  (``- LSTM: {units: 128, return_sequences: false}``).
* Padding: the input may be ``(x, mask)`` with ``mask`` a ``(batch, time)`` bool array or
  ``(batch,)`` integer lengths, and ``(x, mask, initial_carry)`` (``fnn.layers.sequences``).
  A masked step leaves the carry unchanged and outputs zeros. A sequence output keeps the mask,
  ``(y, mask)``, so recurrent layers stack with ``fnn.serial``.

The cells (``Cell``, ``SimpleRNNCell``, ``LSTMCell``, ``GRUCell``, ``cell_from_spec``),
``Bidirectional`` and ``StripMask`` live in ``fnn.layers.cells``, ``fnn.layers.bidirectional``
and ``fnn.layers.sequences``; they are importable from here too, as in fnn 0.1.

Example:
    >>> net = fnn.serial(LSTM(32), LSTM(16, return_sequences=False), fnn.Dense(2))
    >>> net.init(jax.random.key(0), (-1, 20, 8))[0]
    (-1, 2)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from fnn.arguments import ArgumentError, positive_int
from fnn.core import Layer, LayerError, check_shape, layer_type
from fnn.layers.cells import Cell, GRUCell, LSTMCell, SimpleRNNCell, cell_from_spec
from fnn.layers.sequences import (check_mask_shape, dims_fit, is_shape, mask_array, split_input,
                                  split_input_shape)
# Also importable from here, as in fnn 0.1 (``from fnn.layers.recurrent import Bidirectional``);
# ``fnn`` exports them from their own modules.
from fnn.layers.bidirectional import Bidirectional  # noqa: F401
from fnn.layers.sequences import StripMask  # noqa: F401

__all__ = ["RNN", "SimpleRNN", "LSTM", "GRU"]

Params = Any
Carry = Any  # an array (h) or a tuple of arrays ((h, c) for the LSTM), each (batch, units)


# ------------------------------------------------------------------------------------ carries

def _shape_leaves(tree: Any) -> tuple[list, Any]:
    return jax.tree.flatten(tree, is_leaf=is_shape)


def _check_carry_shape(cell: Cell, carry_shape: Any, n: int) -> None:
    if carry_shape is None:
        return
    want, want_def = _shape_leaves(cell.carry_shape(n))
    got, _ = _shape_leaves(carry_shape)
    if len(got) != len(want) or not all(
            is_shape(g) and len(g) == len(w) and all(map(dims_fit, g, w)) for g, w in zip(got, want)):
        raise LayerError(f"expects an initial carry of shapes {jax.tree.unflatten(want_def, want)} "
                         f"for {cell.kind}, got {carry_shape!r}")


def _as_carry(cell: Cell, carry: Any, n: int, dtype: Any) -> Carry:
    want, want_def = _shape_leaves(cell.carry_shape(n))
    got = jax.tree.leaves(carry)
    if len(got) != len(want) or any(tuple(jnp.shape(g)) != tuple(w) for g, w in zip(got, want)):
        raise LayerError(f"expects an initial carry of shapes {jax.tree.unflatten(want_def, want)} "
                         f"for {cell.kind}, got shapes "
                         f"{jax.tree.map(lambda a: tuple(jnp.shape(a)), carry)}")
    return jax.tree.unflatten(want_def, [jnp.asarray(g, dtype) for g in got])


# ------------------------------------------------------------------------------- recurrent layer

def _sequence_shape(x_shape: Any) -> tuple[int, int, int]:
    shape = check_shape(x_shape, min_rank=1)
    if len(shape) != 3:
        raise LayerError(f"expects inputs (batch, time, features), got shape {shape}")
    if shape[2] < 1:
        raise LayerError(f"needs a known feature size on the last axis, got shape {shape}")
    return shape


def _scan(cell: Cell, params: Params, x: jax.Array, mask: jax.Array | None, carry: Any, *,
          reverse: bool, return_sequences: bool, unroll: int | bool):
    """Run ``cell`` over ``x (N, T, F)``: returns ``(final_carry, y_last, ys (N, T, U) | None)``."""
    n = x.shape[0]
    xp = jnp.swapaxes(cell.project(params, x), 0, 1)  # (T, N, G): time-major for the scan
    dtype = xp.dtype
    carry = cell.initial_carry(n, dtype) if carry is None else _as_carry(cell, carry, n, dtype)
    y0 = jnp.zeros((n, cell.units), dtype)

    def body(c, inputs):
        old_carry, y_prev = c
        xp_t, m_t = inputs if mask is not None else (inputs, None)
        new_carry, y = cell.recur(params, old_carry, xp_t)
        if m_t is None:
            return (new_carry, y), (y if return_sequences else None)
        # A masked step changes nothing: the carry and the last output stay; its output is 0.
        new_carry = jax.tree.map(lambda a, b: jnp.where(m_t, a, b), new_carry, old_carry)
        y_last = jnp.where(m_t, y, y_prev)
        return (new_carry, y_last), (jnp.where(m_t, y, 0) if return_sequences else None)

    xs = xp if mask is None else (xp, jnp.swapaxes(mask, 0, 1)[..., None])
    (carry, y_last), ys = jax.lax.scan(body, (carry, y0), xs, reverse=reverse, unroll=unroll)
    return carry, y_last, (jnp.swapaxes(ys, 0, 1) if return_sequences else None)


def _recurrent_layer(who: str, cell: Cell, return_sequences: bool, reverse: bool,
                     return_carry: bool, unroll: int) -> Layer:
    """The layer that scans ``cell``: what ``RNN``, ``SimpleRNN``, ``LSTM`` and ``GRU`` return
    (their options are checked here, errors naming ``who``)."""
    for arg, value in (("return_sequences", return_sequences), ("reverse", reverse),
                       ("return_carry", return_carry)):
        if not isinstance(value, bool):
            raise ArgumentError(who, f"{arg} must be True or False, got {value!r}")
    positive_int(who, "unroll", unroll)

    def init(rng, input_shape):
        x_shape, mask_shape, carry_shape = split_input_shape(input_shape)
        n, t, features = _sequence_shape(x_shape)
        check_mask_shape(mask_shape, n, t)
        _check_carry_shape(cell, carry_shape, n)
        params = cell.init(rng, (-1, features))
        out: Any = (n, t, cell.units) if return_sequences else (n, cell.units)
        if return_sequences and mask_shape is not None:
            out = (out, tuple(mask_shape))
        if return_carry:
            out = (out, cell.carry_shape(n))
        return out, params, {}

    def apply(params, state, x, *, rng=None, train=False):
        seq, mask, carry = split_input(x)
        seq = jnp.asarray(seq)
        if seq.ndim != 3:
            raise LayerError(f"expects inputs (batch, time, features), "
                             f"got shape {tuple(seq.shape)}")
        n, t = seq.shape[:2]
        m = None if mask is None else mask_array(mask, n, t)
        final, y_last, ys = _scan(cell, params, seq, m, carry, reverse=reverse,
                                  return_sequences=return_sequences, unroll=unroll)
        out: Any = ys if return_sequences else y_last
        if return_sequences and mask is not None:
            out = (out, mask)
        if return_carry:
            out = (out, final)
        return out, state

    return Layer(init, apply)


_RNN_DOC = """
    Input ``x (batch, time, features)``, or ``(x, mask)``, or ``(x, mask, initial_carry)``:

    * ``mask``: ``(batch, time)`` bool (True = a real step) or ``(batch,)`` integer lengths
      (steps ``t < length`` are real), or ``None``. A masked step is skipped: the carry stays
      as it was and the step's output is zeros.
    * ``initial_carry``: the cell's carry (``h``, or ``(h, c)`` for the LSTM), each
      ``(batch, units)``; zeros when absent.

    Output: ``(batch, time, units)`` with ``return_sequences`` (the mask, when one was given,
    travels along: ``(y, mask)``, so layers stack in ``fnn.serial``), else ``(batch, units)``,
    the output of each sequence's last real step (zeros if it has none). ``reverse=True`` runs
    from the last step to the first (outputs stay in input order; the "last" real step is then
    the first one). With ``return_carry`` the output is ``(output, final_carry)``.
"""


@layer_type("RNN")
def RNN(cell: Cell | dict | str, *, return_sequences: bool = True, reverse: bool = False,
        return_carry: bool = False, unroll: int = 1) -> Layer:
    """A recurrent layer: ``cell`` scanned over the time axis with ``jax.lax.scan``.
    {doc}
    Params: the cell's (``{{"w_x", "w_h", "b", ...}}``); no state.

    Args:
        cell: a :class:`Cell` (``LSTMCell(32)``) or its spec (``{{"LSTMCell": {{"units": 32}}}}``;
            a spec keeps the layer's own spec serialisable).
        return_sequences: output every step, or only the last.
        reverse: run backwards in time.
        return_carry: also output the final carry (e.g. an encoder's state for a decoder).
        unroll: time steps per scan iteration (``jax.lax.scan``'s ``unroll``).

    Example:
        >>> layer = RNN(GRUCell(8), return_sequences=False)
        >>> layer.init(jax.random.key(0), (-1, 20, 3))[0]
        (-1, 8)
    """
    try:
        cell = cell_from_spec(cell)
    except (ValueError, TypeError) as e:
        raise ArgumentError("RNN", str(e)) from None
    return _recurrent_layer("RNN", cell, return_sequences, reverse, return_carry, unroll)


@layer_type("SimpleRNN")
def SimpleRNN(units: int, *, activation: str | Callable = "tanh", return_sequences: bool = True,
              reverse: bool = False, return_carry: bool = False, unroll: int = 1,
              w_x_init: Any = "glorot_uniform", w_h_init: Any = "orthogonal",
              b_init: Any = "zeros") -> Layer:
    """``RNN(SimpleRNNCell(units, activation))``: ``h_t = act(x_t @ w_x + h_{{t-1}} @ w_h + b)``.
    {doc}
    Example:
        >>> SimpleRNN(8).init(jax.random.key(0), (-1, 20, 3))[0]
        (-1, 20, 8)
    """
    cell = SimpleRNNCell(units, activation, w_x_init=w_x_init, w_h_init=w_h_init, b_init=b_init,
                         who="SimpleRNN")
    return _recurrent_layer("SimpleRNN", cell, return_sequences, reverse, return_carry, unroll)


@layer_type("LSTM")
def LSTM(units: int, *, forget_bias: float = 1.0, return_sequences: bool = True,
         reverse: bool = False, return_carry: bool = False, unroll: int = 1,
         w_x_init: Any = "glorot_uniform", w_h_init: Any = "orthogonal", b_init: Any = "zeros") -> Layer:
    """``RNN(LSTMCell(units, forget_bias))``; the equations are in :func:`LSTMCell`.
    {doc}
    Example:
        >>> LSTM(8, return_sequences=False).init(jax.random.key(0), (-1, 20, 3))[0]
        (-1, 8)
    """
    cell = LSTMCell(units, forget_bias, w_x_init=w_x_init, w_h_init=w_h_init, b_init=b_init,
                    who="LSTM")
    return _recurrent_layer("LSTM", cell, return_sequences, reverse, return_carry, unroll)


@layer_type("GRU")
def GRU(units: int, *, reset_after: bool = True, return_sequences: bool = True,
        reverse: bool = False, return_carry: bool = False, unroll: int = 1,
        w_x_init: Any = "glorot_uniform",
        w_h_init: Any = "orthogonal", b_init: Any = "zeros") -> Layer:
    """``RNN(GRUCell(units, reset_after=...))``: the cuDNN / PyTorch GRU by default, Cho et al.
    2014's with ``reset_after=False``; the equations are in :func:`GRUCell`.
    {doc}
    Example:
        >>> GRU(8).init(jax.random.key(0), ((-1, 20, 3), (-1,)))[0]
        ((-1, 20, 8), (-1,))
    """
    cell = GRUCell(units, reset_after=reset_after, w_x_init=w_x_init, w_h_init=w_h_init,
                   b_init=b_init, who="GRU")
    return _recurrent_layer("GRU", cell, return_sequences, reverse, return_carry, unroll)


for _fn in (RNN, SimpleRNN, LSTM, GRU):
    _fn.__doc__ = _fn.__doc__.format(doc=_RNN_DOC)
