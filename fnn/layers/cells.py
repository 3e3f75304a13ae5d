"""Recurrent cells: the maths of one time step, usable alone from Python and scanned by ``RNN``.

``params = cell.init(rng, (-1, features))``, ``carry = cell.initial_carry(batch)``,
``carry, y_t = cell.step(params, carry, x_t)``. Cells: :func:`SimpleRNNCell`, :func:`LSTMCell`,
:func:`GRUCell` (equations in their docstrings and docs/RECURRENT.md). A cell carries one
:class:`fnn.core.BuildRecord` of how it was built; its plain ``spec``
(``{"LSTMCell": {"units": 8}}``) is derived from that record with :func:`fnn.core.record_spec`,
exactly as a layer's, and :func:`cell_from_spec` rebuilds the cell from it.

The layers that scan a cell over a sequence are in ``fnn.layers.recurrent``.

Example:
    >>> cell = GRUCell(4)
    >>> cell.spec, cell_from_spec(cell.spec).units
    ({'GRUCell': {'units': 4}}, 4)
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fnn import initializers
# Imported from the module itself: ``fnn.activations`` is shadowed by ``fnn.layers.activations``
# once ``fnn`` star-imports ``fnn.layers``.
from fnn.activations import get as get_activation
from fnn.arguments import ArgumentError, flag, number, positive_int
from fnn.core import (BuildRecord, LayerError, SpecError, check_shape, non_default_arguments,
                      record_spec)
from fnn.layers.dense import matmul_last

__all__ = ["Cell", "SimpleRNNCell", "LSTMCell", "GRUCell", "cell_from_spec"]

Params = Any
Carry = Any  # an array (h) or a tuple of arrays ((h, c) for the LSTM), each (batch, units)


class Cell:
    """A recurrent cell: the pure functions of one time step, plus the record of how it was built.

    A step is split in two so that a layer can do the input half for all time steps at once
    (one large matrix product) and scan only the recurrent half:
    ``step(params, carry, x_t) == recur(params, carry, project(params, x_t))``.

    Attributes:
        units: width of the hidden state and of each output ``y_t``.
        init: ``init(rng, input_shape) -> params``; ``input_shape`` is ``(-1, features)``
            (only the last axis is read).
        initial_carry: ``initial_carry(batch_size, dtype=float32) -> carry`` of zeros, each
            array ``(batch_size, units)``; ``batch_size`` is an int or a symbolic dimension
            (``jax.export`` with a dynamic batch).
        project: ``project(params, x) -> xp``: the input half, ``(..., features)`` to
            ``(..., gates * units)``.
        recur: ``recur(params, carry, xp_t) -> (new_carry, y_t)``: the recurrent half.
        record: the :class:`fnn.core.BuildRecord` ``(kind, args)`` of a built-in cell (all
            its constructor's arguments), ``None`` for a hand-made cell.

    ``kind`` (``"LSTMCell"``; ``"Cell"`` for a hand-made one) and ``spec`` are derived from
    ``record``. A cell is immutable.

    Example:
        >>> cell = LSTMCell(4)
        >>> params = cell.init(jax.random.key(0), (-1, 3))
        >>> carry = cell.initial_carry(2)
        >>> carry, y = cell.step(params, carry, jnp.ones((2, 3)))
        >>> y.shape, carry[1].shape
        ((2, 4), (2, 4))
    """

    __slots__ = ("units", "init", "initial_carry", "project", "recur", "record")

    def __init__(self, *, units: int, init: Callable, initial_carry: Callable, project: Callable,
                 recur: Callable, record: BuildRecord | None = None) -> None:
        for key, value in (("units", units), ("init", init), ("initial_carry", initial_carry),
                           ("project", project), ("recur", recur), ("record", record)):
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("cells are immutable; build a new one")

    @property
    def kind(self) -> str:
        """The cell type, e.g. ``"LSTMCell"``; ``"Cell"`` for a hand-made cell."""
        return self.record.kind if self.record else "Cell"

    @property
    def spec(self) -> Any:
        """``{kind: {arg: value}}`` (non-default arguments, plain data) for :func:`cell_from_spec`.

        Raises:
            SpecError: for a hand-made cell, which has no record to rebuild it from, or an
                argument that is not plain data (an activation given as a function).
        """
        if self.record is None or self.record.kind not in CELL_KINDS:
            raise SpecError("cell", f"a hand-made {self.kind} cannot be saved as plain data; "
                                    f"use one of {', '.join(CELL_KINDS)} or fnn.save_weights")
        return record_spec(self.record, inspect.signature(CELL_KINDS[self.kind]), path="cell")

    def step(self, params: Params, carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
        """One time step: ``x_t (batch, features)`` -> ``(new_carry, y_t (batch, units))``."""
        return self.recur(params, carry, self.project(params, x_t))

    def carry_shape(self, batch_size: int = -1) -> Any:
        """The carry's shapes: ``(batch, units)``; LSTM: ``((batch, units), (batch, units))``."""
        structs = jax.eval_shape(lambda: self.initial_carry(1))
        return jax.tree.map(lambda s: (batch_size, *s.shape[1:]), structs)

    def __repr__(self) -> str:
        if self.record is None or self.record.kind not in CELL_KINDS:
            return f"{self.kind}(<hand-made>)"
        args = non_default_arguments(inspect.signature(CELL_KINDS[self.kind]), self.record.args)
        return f"{self.kind}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


# ----------------------------------------------------------------------------- shared pieces

def _record(kind: str, **args: Any) -> BuildRecord:
    return BuildRecord(kind, types.MappingProxyType(args))


def _initializers(who: str, w_x_init: Any, w_h_init: Any, b_init: Any) -> tuple[Callable, ...]:
    """The three initializers of a cell (input kernel, recurrent kernel, bias), by name or function."""
    out = []
    for arg, value in (("w_x_init", w_x_init), ("w_h_init", w_h_init), ("b_init", b_init)):
        try:
            out.append(initializers.get(value))
        except (ValueError, TypeError) as e:
            raise ArgumentError(who, f"{arg}: {e}") from None
    return tuple(out)


def _blocks(init: Callable, rng: jax.Array, shape: tuple[int, ...], n: int) -> jax.Array:
    """``n`` gate blocks of ``shape``, each drawn on its own, concatenated on the last axis."""
    return jnp.concatenate([init(k, shape, jnp.float32) for k in jax.random.split(rng, n)],
                           axis=-1)


def _gate_params(inits: tuple[Callable, ...], keys: Any, kind: str, input_shape: Any, units: int,
                 gates: int) -> dict[str, jax.Array]:
    """``{"w_x": (features, gates*units), "w_h": (units, gates*units), "b": (gates*units,)}``."""
    shape = check_shape(input_shape, min_rank=1)
    if shape[-1] < 1:
        raise LayerError(f"{kind} needs a known feature size on the last axis, got shape {shape}")
    (wx, wh, bi), (kx, kh, kb) = inits, keys
    return {"w_x": _blocks(wx, kx, (shape[-1], units), gates),
            "w_h": _blocks(wh, kh, (units, units), gates),
            "b": _blocks(bi, kb, (units,), gates)}


def _zeros_carry(units: int, n_arrays: int) -> Callable:
    def initial_carry(batch_size: Any, dtype: Any = jnp.float32) -> Carry:
        # A symbolic batch (``jax.export`` with a dynamic batch) is a dimension, not an int.
        if not (jax.export.is_symbolic_dim(batch_size)
                or (isinstance(batch_size, int) and batch_size >= 0)):
            raise ValueError(f"initial_carry: batch_size must be an int >= 0 or a symbolic "
                             f"dimension, got {batch_size!r}")
        zeros = [jnp.zeros((batch_size, units), dtype) for _ in range(n_arrays)]
        return zeros[0] if n_arrays == 1 else tuple(zeros)

    return initial_carry


def _input_projection(kind: str) -> Callable:
    def project(params: Params, x: jax.Array) -> jax.Array:
        w = params["w_x"]
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise LayerError(f"{kind} expects inputs with {w.shape[0]} features on the last axis, "
                             f"got shape {tuple(x.shape)}")
        return matmul_last(x, w) + params["b"]

    return project


# -------------------------------------------------------------------------------- the cells
# ``who`` names the constructor in argument errors: the cell's own, or the layer's that builds
# the cell (``LSTM: units must be a positive int``).

def SimpleRNNCell(units: int, activation: str | Callable = "tanh", *,
                  w_x_init: Any = "glorot_uniform", w_h_init: Any = "orthogonal",
                  b_init: Any = "zeros", who: str = "SimpleRNNCell") -> Cell:
    """The Elman cell: ``h_t = activation(x_t @ w_x + h_{t-1} @ w_h + b)``, ``y_t = h_t``.

    Params: ``{"w_x": (features, units), "w_h": (units, units), "b": (units,)}``.
    Carry: ``h`` of shape ``(batch, units)``, zeros at the start.

    Args:
        units: width of ``h``.
        activation: by name (``"tanh"``, ``"relu"``) or a function.
        w_x_init, w_h_init, b_init: initializers of the input kernel (glorot uniform), the
            recurrent kernel (orthogonal) and the bias (zeros), by name or as functions.
        who: the constructor named in argument errors (a layer building its cell, e.g.
            ``LSTM``, passes its own kind); not part of the spec.

    Example:
        >>> cell = SimpleRNNCell(4)
        >>> params = cell.init(jax.random.key(0), (-1, 3))
        >>> h, y = cell.step(params, cell.initial_carry(2), jnp.ones((2, 3)))
        >>> y.shape
        (2, 4)
    """
    units = positive_int(who, "units", units)
    try:
        fn = get_activation(activation)
    except ValueError as e:
        raise ArgumentError(who, f"activation: {e}") from None
    inits = _initializers(who, w_x_init, w_h_init, b_init)

    def init(rng, input_shape):
        return _gate_params(inits, jax.random.split(rng, 3), "SimpleRNNCell", input_shape, units, 1)

    def recur(params, h, xp_t):
        h = fn(xp_t + h @ params["w_h"])
        return h, h

    return Cell(units=units, init=init, initial_carry=_zeros_carry(units, 1),
                project=_input_projection("SimpleRNNCell"), recur=recur,
                record=_record("SimpleRNNCell", units=units, activation=activation,
                               w_x_init=w_x_init, w_h_init=w_h_init, b_init=b_init))


def LSTMCell(units: int, forget_bias: float = 1.0, *, w_x_init: Any = "glorot_uniform",
             w_h_init: Any = "orthogonal", b_init: Any = "zeros", who: str = "LSTMCell") -> Cell:
    """Long short-term memory (Hochreiter & Schmidhuber 1997, with a forget gate, Gers et al. 2000).

    With ``z = x_t @ w_x + h_{t-1} @ w_h + b`` split into four blocks ``[i, f, g, o]``::

        i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t),  y_t = h_t

    Params: ``{"w_x": (features, 4u), "w_h": (u, 4u), "b": (4u,)}``, gate blocks in the order
    input, forget, candidate, output (PyTorch's order; ``w_x`` is ``weight_ih.T``).
    Carry: ``(h, c)``, each ``(batch, units)``, zeros at the start.

    Args:
        units: width of ``h`` and ``c``.
        forget_bias: initial value of the forget-gate bias ``b_f`` (a starting value only; it
            is not added again at each step).
        w_x_init, w_h_init, b_init: initializers, applied to each gate block on its own
            (the recurrent kernel is orthogonal per block by default).
        who: the constructor named in argument errors (a layer building its cell, e.g.
            ``LSTM``, passes its own kind); not part of the spec.

    Example:
        >>> cell = LSTMCell(4)
        >>> params = cell.init(jax.random.key(0), (-1, 3))
        >>> params["w_h"].shape, float(params["b"][4])
        ((4, 16), 1.0)
    """
    units = positive_int(who, "units", units)
    number(who, "forget_bias", forget_bias)
    inits = _initializers(who, w_x_init, w_h_init, b_init)

    def init(rng, input_shape):
        params = _gate_params(inits, jax.random.split(rng, 3), "LSTMCell", input_shape, units, 4)
        params["b"] = params["b"].at[units:2 * units].set(float(forget_bias))  # order i, f, g, o
        return params

    def recur(params, carry, xp_t):
        h, c = carry
        z = xp_t + h @ params["w_h"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    return Cell(units=units, init=init, initial_carry=_zeros_carry(units, 2),
                project=_input_projection("LSTMCell"), recur=recur,
                record=_record("LSTMCell", units=units, forget_bias=forget_bias,
                               w_x_init=w_x_init, w_h_init=w_h_init, b_init=b_init))


def GRUCell(units: int, *, reset_after: bool = True, w_x_init: Any = "glorot_uniform",
            w_h_init: Any = "orthogonal", b_init: Any = "zeros", who: str = "GRUCell") -> Cell:
    """Gated recurrent unit: the cuDNN / PyTorch variant by default, Cho et al. 2014's with
    ``reset_after=False``.

    With ``a = x_t @ w_x + b`` and ``u = h_{t-1} @ w_h`` split into blocks ``[r, z, n]``::

        r = sigmoid(a_r + u_r)                  reset gate
        z = sigmoid(a_z + u_z)                  update gate
        n = tanh(a_n + r * (u_n + b_hn))        reset_after=True: reset applied after w_h
        n = tanh(a_n + (r * h_{t-1}) @ w_hn)    reset_after=False: before it (Cho et al. 2014)
        h_t = (1 - z) * n + z * h_{t-1},  y_t = h_t

    ``reset_after=True`` (default) is PyTorch's ``nn.GRU``, cuDNN's and Keras'
    ``reset_after=True``; it needs one recurrent product per step and loads PyTorch weights:
    ``w_x = weight_ih.T``, ``w_h = weight_hh.T``, ``b = bias_ih + [bias_hh_r, bias_hh_z, 0]``,
    ``b_hn = bias_hh_n``. ``reset_after=False`` is the GRU of Cho et al. 2014 (eq. 5-8,
    "Learning Phrase Representations using RNN Encoder-Decoder") and Keras'
    ``GRU(reset_after=False)`` (Keras ``kernel`` = ``w_x``, ``recurrent_kernel`` = ``w_h``,
    ``bias`` = ``b``, gate order ``z, r, h`` there): a second recurrent product for the
    candidate, and no ``b_hn``.

    Params: ``{"w_x": (features, 3u), "w_h": (u, 3u), "b": (3u,), "b_hn": (u,)}``
    (no ``b_hn`` with ``reset_after=False``). ``w_hn`` is ``w_h[:, 2u:]``.
    Carry: ``h`` of shape ``(batch, units)``, zeros at the start.

    Args:
        units: width of ``h``.
        reset_after: apply the reset gate after the recurrent product (PyTorch, cuDNN) or
            before it (Cho et al. 2014).
        w_x_init, w_h_init, b_init: initializers, applied to each gate block on its own.
        who: the constructor named in argument errors (a layer building its cell, e.g.
            ``LSTM``, passes its own kind); not part of the spec.

    Example:
        >>> sorted(GRUCell(4).init(jax.random.key(0), (-1, 3)))
        ['b', 'b_hn', 'w_h', 'w_x']
        >>> sorted(GRUCell(4, reset_after=False).init(jax.random.key(0), (-1, 3)))
        ['b', 'w_h', 'w_x']
    """
    units = positive_int(who, "units", units)
    flag(who, "reset_after", reset_after)
    inits = _initializers(who, w_x_init, w_h_init, b_init)

    def init(rng, input_shape):
        kx, kh, kb, kn = jax.random.split(rng, 4)
        params = _gate_params(inits, (kx, kh, kb), "GRUCell", input_shape, units, 3)
        if reset_after:
            params["b_hn"] = _blocks(inits[2], kn, (units,), 1)
        return params

    def recur(params, h, xp_t):
        a_r, a_z, a_n = jnp.split(xp_t, 3, axis=-1)
        if reset_after:
            u_r, u_z, u_n = jnp.split(h @ params["w_h"], 3, axis=-1)
        else:
            u_r, u_z = jnp.split(h @ params["w_h"][:, :2 * units], 2, axis=-1)
        r = jax.nn.sigmoid(a_r + u_r)
        z = jax.nn.sigmoid(a_z + u_z)
        if reset_after:
            n = jnp.tanh(a_n + r * (u_n + params["b_hn"]))
        else:
            n = jnp.tanh(a_n + (r * h) @ params["w_h"][:, 2 * units:])
        h = (1.0 - z) * n + z * h
        return h, h

    return Cell(units=units, init=init, initial_carry=_zeros_carry(units, 1),
                project=_input_projection("GRUCell"), recur=recur,
                record=_record("GRUCell", units=units, reset_after=reset_after,
                               w_x_init=w_x_init, w_h_init=w_h_init, b_init=b_init))


# The built-in cell kinds by name: what :func:`cell_from_spec` builds and ``Cell.spec`` reads
# the default arguments from.
CELL_KINDS: dict[str, Callable[..., Cell]] = {
    "SimpleRNNCell": SimpleRNNCell, "LSTMCell": LSTMCell, "GRUCell": GRUCell}


def cell_from_spec(spec: Any) -> Cell:
    """A cell from its spec: ``"LSTMCell"`` is not enough (units are needed), so
    ``{"LSTMCell": {"units": 8}}``; a :class:`Cell` is returned as is.

    Example:
        >>> cell_from_spec({"GRUCell": {"units": 8}}).units
        8
    """
    if isinstance(spec, Cell):
        return spec
    if isinstance(spec, str):
        kind, args = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        args = dict(args or {})
    else:
        raise ValueError(f"a cell is a Cell or a spec {{kind: {{arg: value}}}}, got {spec!r}")
    if kind not in CELL_KINDS:
        raise ValueError(f"unknown cell kind {kind!r}; known: {', '.join(sorted(CELL_KINDS))}")
    try:
        inspect.signature(CELL_KINDS[kind]).bind(**args)
    except TypeError as e:
        raise ArgumentError(kind, str(e)) from None
    return CELL_KINDS[kind](**args)
