"""Recurrent networks: cells that take one time step, and layers that scan them over a sequence.

* A **cell** (:class:`Cell`) is the maths of one time step, usable alone from Python:
  ``params = cell.init(rng, (-1, features))``, ``carry = cell.initial_carry(batch)``,
  ``carry, y_t = cell.step(params, carry, x_t)``. Cells: :func:`SimpleRNNCell`,
  :func:`LSTMCell`, :func:`GRUCell` (equations in their docstrings and docs/RECURRENT.md).
* :func:`RNN` turns a cell into a layer on ``(batch, time, features)`` inputs with
  ``jax.lax.scan`` (one compiled step whatever the length). :func:`SimpleRNN`, :func:`LSTM` and
  :func:`GRU` are the same layer built from ``units`` and options, for configs
  (``- LSTM: {units: 128, return_sequences: false}``).
* :func:`Bidirectional` runs a recurrent layer forwards and backwards and merges the two.
* Padding: the input may be ``(x, mask)`` with ``mask`` a ``(batch, time)`` bool array or
  ``(batch,)`` integer lengths, and ``(x, mask, initial_carry)``. A masked step leaves the
  carry unchanged and outputs zeros. A sequence output keeps the mask, ``(y, mask)``, so
  recurrent layers stack with ``fnn.serial``; :func:`StripMask` drops it before a
  non-recurrent layer.

Example:
    >>> net = fnn.serial(LSTM(32), LSTM(16, return_sequences=False), fnn.Dense(2))
    >>> net.init(jax.random.key(0), (-1, 20, 8))[0]
    (-1, 2)
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fnn import initializers
# Imported from the module itself: ``fnn.activations`` is shadowed by ``fnn.layers.activations``
# once ``fnn`` star-imports ``fnn.layers``.
from fnn.activations import get as get_activation
from fnn.core import (Layer, LayerError, apply_child, check_shape, init_child, layer_type,
                      non_default_arguments, split_rng)

__all__ = ["Cell", "SimpleRNNCell", "LSTMCell", "GRUCell", "cell_from_spec", "RNN", "SimpleRNN",
           "LSTM", "GRU", "Bidirectional", "StripMask"]

Params = Any
Carry = Any  # an array (h) or a tuple of arrays ((h, c) for the LSTM), each (batch, units)


# --------------------------------------------------------------------------------------- cells

class Cell:
    """A recurrent cell: the pure functions of one time step, plus its metadata.

    A step is split in two so that a layer can do the input half for all time steps at once
    (one large matrix product) and scan only the recurrent half:
    ``step(params, carry, x_t) == recur(params, carry, project(params, x_t))``.

    Attributes:
        kind: the cell type, e.g. ``"LSTMCell"``.
        units: width of the hidden state and of each output ``y_t``.
        spec: ``kind`` or ``{kind: {arg: value}}`` (non-default arguments); see
            :func:`cell_from_spec`.
        init: ``init(rng, input_shape) -> params``; ``input_shape`` is ``(-1, features)``
            (only the last axis is read).
        initial_carry: ``initial_carry(batch_size, dtype=float32) -> carry`` of zeros, each
            array ``(batch_size, units)``.
        project: ``project(params, x) -> xp``: the input half, ``(..., features)`` to
            ``(..., gates * units)``.
        recur: ``recur(params, carry, xp_t) -> (new_carry, y_t)``: the recurrent half.

    Example:
        >>> cell = LSTMCell(4)
        >>> params = cell.init(jax.random.key(0), (-1, 3))
        >>> carry = cell.initial_carry(2)
        >>> carry, y = cell.step(params, carry, jnp.ones((2, 3)))
        >>> y.shape, carry[1].shape
        ((2, 4), (2, 4))
    """

    __slots__ = ("kind", "units", "spec", "init", "initial_carry", "project", "recur")

    def __init__(self, *, kind: str, units: int, init: Callable, initial_carry: Callable,
                 project: Callable, recur: Callable, spec: Any = None) -> None:
        self.kind = kind
        self.units = units
        self.spec = spec if spec is not None else kind
        self.init = init
        self.initial_carry = initial_carry
        self.project = project
        self.recur = recur

    def step(self, params: Params, carry: Carry, x_t: jax.Array) -> tuple[Carry, jax.Array]:
        """One time step: ``x_t (batch, features)`` -> ``(new_carry, y_t (batch, units))``."""
        return self.recur(params, carry, self.project(params, x_t))

    def carry_shape(self, batch_size: int = -1) -> Any:
        """The carry's shapes: ``(batch, units)``; LSTM: ``((batch, units), (batch, units))``."""
        structs = jax.eval_shape(lambda: self.initial_carry(1))
        return jax.tree.map(lambda s: (batch_size, *s.shape[1:]), structs)

    def __repr__(self) -> str:
        return f"Cell({self.spec})"


_CELLS: dict[str, Callable[..., Cell]] = {}


def _cell_type(kind: str) -> Callable[[Callable[..., Cell]], Callable[..., Cell]]:
    """Register a cell constructor under ``kind`` and record its non-default arguments as spec."""

    def decorate(constructor: Callable[..., Cell]) -> Callable[..., Cell]:
        sig = inspect.signature(constructor)

        @functools.wraps(constructor)
        def build(*args: Any, **kwargs: Any) -> Cell:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{kind}: {e}") from None
            made = constructor(*bound.args, **bound.kwargs)
            non_default = non_default_arguments(sig, dict(bound.arguments))
            return Cell(kind=kind, units=made.units, init=made.init,
                        initial_carry=made.initial_carry, project=made.project,
                        recur=made.recur, spec={kind: non_default} if non_default else kind)

        _CELLS[kind] = build
        return build

    return decorate


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
    if kind not in _CELLS:
        raise ValueError(f"unknown cell kind {kind!r}; known: {', '.join(sorted(_CELLS))}")
    return _CELLS[kind](**args)


def _check_units(units: Any, who: str) -> int:
    if not isinstance(units, int) or isinstance(units, bool) or units < 1:
        raise ValueError(f"{who}: units must be a positive int, got {units!r}")
    return units


def _initializer(value: Any, who: str, arg: str) -> Callable:
    try:
        return initializers.get(value)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{who}: {arg}: {e}") from None


def _blocks(init: Callable, rng: jax.Array, shape: tuple[int, ...], n: int) -> jax.Array:
    """``n`` gate blocks of ``shape``, each drawn on its own, concatenated on the last axis."""
    return jnp.concatenate([init(k, shape, jnp.float32) for k in jax.random.split(rng, n)],
                           axis=-1)


def _features(kind: str, input_shape: Any) -> int:
    shape = check_shape(input_shape, min_rank=1)
    if shape[-1] < 1:
        raise LayerError(f"{kind} needs a known feature size on the last axis, got shape {shape}")
    return shape[-1]


def _zeros_carry(units: int, n_arrays: int) -> Callable:
    def initial_carry(batch_size: int, dtype: Any = jnp.float32) -> Carry:
        if not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"initial_carry: batch_size must be an int >= 0, got {batch_size!r}")
        zeros = [jnp.zeros((batch_size, units), dtype) for _ in range(n_arrays)]
        return zeros[0] if n_arrays == 1 else tuple(zeros)

    return initial_carry


def _input_projection(kind: str) -> Callable:
    def project(params: Params, x: jax.Array) -> jax.Array:
        w = params["w_x"]
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise LayerError(f"{kind} expects inputs with {w.shape[0]} features on the last axis, "
                             f"got shape {tuple(x.shape)}")
        return x @ w + params["b"]

    return project


def _simple_rnn_cell(units, activation, w_x_init, w_h_init, b_init, who) -> Cell:
    units = _check_units(units, who)
    try:
        fn = get_activation(activation)
    except ValueError as e:
        raise ValueError(f"{who}: activation: {e}") from None
    wx, wh, bi = (_initializer(w_x_init, who, "w_x_init"), _initializer(w_h_init, who, "w_h_init"),
                  _initializer(b_init, who, "b_init"))

    def init(rng, input_shape):
        features = _features("SimpleRNNCell", input_shape)
        kx, kh, kb = jax.random.split(rng, 3)
        return {"w_x": _blocks(wx, kx, (features, units), 1),
                "w_h": _blocks(wh, kh, (units, units), 1),
                "b": _blocks(bi, kb, (units,), 1)}

    def recur(params, h, xp_t):
        h = fn(xp_t + h @ params["w_h"])
        return h, h

    return Cell(kind="SimpleRNNCell", units=units, init=init, initial_carry=_zeros_carry(units, 1),
                project=_input_projection("SimpleRNNCell"), recur=recur)


def _lstm_cell(units, forget_bias, w_x_init, w_h_init, b_init, who) -> Cell:
    units = _check_units(units, who)
    if not isinstance(forget_bias, (int, float)) or isinstance(forget_bias, bool):
        raise ValueError(f"{who}: forget_bias must be a number, got {forget_bias!r}")
    wx, wh, bi = (_initializer(w_x_init, who, "w_x_init"), _initializer(w_h_init, who, "w_h_init"),
                  _initializer(b_init, who, "b_init"))

    def init(rng, input_shape):
        features = _features("LSTMCell", input_shape)
        kx, kh, kb = jax.random.split(rng, 3)
        b = _blocks(bi, kb, (units,), 4)
        b = b.at[units:2 * units].set(float(forget_bias))  # gate order i, f, g, o
        return {"w_x": _blocks(wx, kx, (features, units), 4),
                "w_h": _blocks(wh, kh, (units, units), 4),
                "b": b}

    def recur(params, carry, xp_t):
        h, c = carry
        z = xp_t + h @ params["w_h"]
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    return Cell(kind="LSTMCell", units=units, init=init, initial_carry=_zeros_carry(units, 2),
                project=_input_projection("LSTMCell"), recur=recur)


def _gru_cell(units, w_x_init, w_h_init, b_init, who, reset_after=True) -> Cell:
    units = _check_units(units, who)
    if not isinstance(reset_after, bool):
        raise ValueError(f"{who}: reset_after must be true or false, got {reset_after!r}")
    wx, wh, bi = (_initializer(w_x_init, who, "w_x_init"), _initializer(w_h_init, who, "w_h_init"),
                  _initializer(b_init, who, "b_init"))

    def init(rng, input_shape):
        features = _features("GRUCell", input_shape)
        kx, kh, kb, kn = jax.random.split(rng, 4)
        params = {"w_x": _blocks(wx, kx, (features, units), 3),
                  "w_h": _blocks(wh, kh, (units, units), 3),
                  "b": _blocks(bi, kb, (units,), 3)}
        if reset_after:
            params["b_hn"] = _blocks(bi, kn, (units,), 1)
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

    return Cell(kind="GRUCell", units=units, init=init, initial_carry=_zeros_carry(units, 1),
                project=_input_projection("GRUCell"), recur=recur)


@_cell_type("SimpleRNNCell")
def SimpleRNNCell(units: int, activation: str | Callable = "tanh", *,
                  w_x_init: Any = "glorot_uniform", w_h_init: Any = "orthogonal",
                  b_init: Any = "zeros") -> Cell:
    """The Elman cell: ``h_t = activation(x_t @ w_x + h_{t-1} @ w_h + b)``, ``y_t = h_t``.

    Params: ``{"w_x": (features, units), "w_h": (units, units), "b": (units,)}``.
    Carry: ``h`` of shape ``(batch, units)``, zeros at the start.

    Args:
        units: width of ``h``.
        activation: by name (``"tanh"``, ``"relu"``) or a function.
        w_x_init, w_h_init, b_init: initializers of the input kernel (glorot uniform), the
            recurrent kernel (orthogonal) and the bias (zeros), by name or as functions.

    Example:
        >>> cell = SimpleRNNCell(4)
        >>> params = cell.init(jax.random.key(0), (-1, 3))
        >>> h, y = cell.step(params, cell.initial_carry(2), jnp.ones((2, 3)))
        >>> y.shape
        (2, 4)
    """
    return _simple_rnn_cell(units, activation, w_x_init, w_h_init, b_init, "SimpleRNNCell")


@_cell_type("LSTMCell")
def LSTMCell(units: int, forget_bias: float = 1.0, *, w_x_init: Any = "glorot_uniform",
             w_h_init: Any = "orthogonal", b_init: Any = "zeros") -> Cell:
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

    Example:
        >>> cell = LSTMCell(4)
        >>> params = cell.init(jax.random.key(0), (-1, 3))
        >>> params["w_h"].shape, float(params["b"][4])
        ((4, 16), 1.0)
    """
    return _lstm_cell(units, forget_bias, w_x_init, w_h_init, b_init, "LSTMCell")


@_cell_type("GRUCell")
def GRUCell(units: int, *, reset_after: bool = True, w_x_init: Any = "glorot_uniform",
            w_h_init: Any = "orthogonal", b_init: Any = "zeros") -> Cell:
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

    Example:
        >>> sorted(GRUCell(4).init(jax.random.key(0), (-1, 3)))
        ['b', 'b_hn', 'w_h', 'w_x']
        >>> sorted(GRUCell(4, reset_after=False).init(jax.random.key(0), (-1, 3)))
        ['b', 'w_h', 'w_x']
    """
    return _gru_cell(units, w_x_init, w_h_init, b_init, "GRUCell", reset_after)


# ------------------------------------------------------------------------------- input handling

def _is_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and all(isinstance(d, int) for d in s)


def _split_input_shape(input_shape: Any) -> tuple[Any, Any, Any]:
    if isinstance(input_shape, (tuple, list)) and input_shape and not _is_shape(input_shape):
        if len(input_shape) not in (2, 3):
            raise LayerError(f"expects an input shape x, (x, mask) or (x, mask, initial_carry), "
                             f"got {len(input_shape)} shapes: {input_shape!r}")
        return input_shape[0], input_shape[1], (input_shape[2] if len(input_shape) == 3 else None)
    return input_shape, None, None


def _split_input(x: Any) -> tuple[Any, Any, Any]:
    if isinstance(x, (tuple, list)):
        if len(x) not in (2, 3):
            raise LayerError(f"expects x, (x, mask) or (x, mask, initial_carry), "
                             f"got a {type(x).__name__} of length {len(x)}")
        return x[0], x[1], (x[2] if len(x) == 3 else None)
    return x, None, None


def _sequence_shape(x_shape: Any) -> tuple[int, int, int]:
    shape = check_shape(x_shape, min_rank=1)
    if len(shape) != 3:
        raise LayerError(f"expects inputs (batch, time, features), got shape {shape}")
    if shape[2] < 1:
        raise LayerError(f"needs a known feature size on the last axis, got shape {shape}")
    return shape


def _fits(a: int, b: int) -> bool:
    return a == b or a == -1 or b == -1


def _check_mask_shape(mask_shape: Any, n: int, t: int) -> None:
    if mask_shape is None:
        return
    s = check_shape(mask_shape, min_rank=1, what="input mask")
    if not ((len(s) == 1 and _fits(s[0], n))
            or (len(s) == 2 and _fits(s[0], n) and _fits(s[1], t))):
        raise LayerError(f"expects a mask (batch, time) = ({n}, {t}) or lengths (batch,) = ({n},), "
                         f"got shape {s}")


def _mask_array(mask: Any, n: int, t: int) -> jax.Array:
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


def _shape_leaves(tree: Any) -> tuple[list, Any]:
    return jax.tree.flatten(tree, is_leaf=_is_shape)


def _check_carry_shape(cell: Cell, carry_shape: Any, n: int) -> None:
    if carry_shape is None:
        return
    want, want_def = _shape_leaves(cell.carry_shape(n))
    got, _ = _shape_leaves(carry_shape)
    if len(got) != len(want) or not all(
            _is_shape(g) and len(g) == len(w) and all(map(_fits, g, w)) for g, w in zip(got, want)):
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


def _check_options(who: str, return_sequences: Any, reverse: Any, return_carry: Any,
                   unroll: Any) -> None:
    for arg, value in (("return_sequences", return_sequences), ("reverse", reverse),
                       ("return_carry", return_carry)):
        if not isinstance(value, bool):
            raise ValueError(f"{who}: {arg} must be True or False, got {value!r}")
    if isinstance(unroll, bool) or not isinstance(unroll, int) or unroll < 1:
        raise ValueError(f"{who}: unroll must be a positive int, got {unroll!r}")


def _recurrent_layer(cell: Cell, return_sequences: bool, reverse: bool, return_carry: bool,
                     unroll: int) -> Layer:
    def init(rng, input_shape):
        x_shape, mask_shape, carry_shape = _split_input_shape(input_shape)
        n, t, features = _sequence_shape(x_shape)
        _check_mask_shape(mask_shape, n, t)
        _check_carry_shape(cell, carry_shape, n)
        params = cell.init(rng, (-1, features))
        out: Any = (n, t, cell.units) if return_sequences else (n, cell.units)
        if return_sequences and mask_shape is not None:
            out = (out, tuple(mask_shape))
        if return_carry:
            out = (out, cell.carry_shape(n))
        return out, params, {}

    def apply(params, state, x, *, rng=None, train=False):
        seq, mask, carry = _split_input(x)
        seq = jnp.asarray(seq)
        if seq.ndim != 3:
            raise LayerError(f"expects inputs (batch, time, features), "
                             f"got shape {tuple(seq.shape)}")
        n, t = seq.shape[:2]
        m = None if mask is None else _mask_array(mask, n, t)
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
        raise ValueError(f"RNN: {e}") from None
    _check_options("RNN", return_sequences, reverse, return_carry, unroll)
    return _recurrent_layer(cell, return_sequences, reverse, return_carry, unroll)


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
    _check_options("SimpleRNN", return_sequences, reverse, return_carry, unroll)
    cell = _simple_rnn_cell(units, activation, w_x_init, w_h_init, b_init, "SimpleRNN")
    return _recurrent_layer(cell, return_sequences, reverse, return_carry, unroll)


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
    _check_options("LSTM", return_sequences, reverse, return_carry, unroll)
    cell = _lstm_cell(units, forget_bias, w_x_init, w_h_init, b_init, "LSTM")
    return _recurrent_layer(cell, return_sequences, reverse, return_carry, unroll)


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
    _check_options("GRU", return_sequences, reverse, return_carry, unroll)
    cell = _gru_cell(units, w_x_init, w_h_init, b_init, "GRU", reset_after)
    return _recurrent_layer(cell, return_sequences, reverse, return_carry, unroll)


for _fn in (RNN, SimpleRNN, LSTM, GRU):
    _fn.__doc__ = _fn.__doc__.format(doc=_RNN_DOC)


# --------------------------------------------------------------------------------- bidirectional

def _split_output(out: Any, is_shape: bool) -> tuple[Any, Any, bool]:
    """``y`` or ``(y, mask)`` -> ``(y, mask, has_mask)`` for arrays or for shapes."""
    if is_shape:
        return (out[0], out[1], True) if not _is_shape(out) else (out, None, False)
    return (out[0], out[1], True) if isinstance(out, (tuple, list)) else (out, None, False)


@layer_type("Bidirectional", sublayers="layer")
def Bidirectional(layer: Layer, *, merge: str = "concat") -> Layer:
    """Run a recurrent layer forwards and a copy of it backwards, and merge the two outputs.

    The backward copy is ``layer(reverse=True)`` with its own params: it reads each sequence
    from its last real step to its first (a mask or lengths are respected: padding is skipped,
    not read first), and its outputs are put back in input order, so step ``t`` of the output
    holds the forward summary of ``x[:t+1]`` and the backward summary of ``x[t:]``.

    Input: as for :func:`RNN`; an initial carry is a pair ``(forward_carry, backward_carry)``.
    Output: ``merge="concat"``: ``(..., 2 * units)``; ``merge="sum"``: ``(..., units)``; with
    ``return_sequences=False`` the backward half is its output after reading the whole
    sequence (i.e. at step 0). A mask given with the input travels along as in :func:`RNN`.
    Params: ``{"forward": ..., "backward": ...}``.

    Args:
        layer: the forward layer: ``RNN``, ``SimpleRNN``, ``LSTM`` or ``GRU`` (not reversed,
            without ``return_carry``).
        merge: ``"concat"`` (features of the forward pass first) or ``"sum"``.

    Example:
        >>> bi = Bidirectional(LSTM(8))
        >>> bi.init(jax.random.key(0), (-1, 20, 3))[0]
        (-1, 20, 16)
    """
    if merge not in ("concat", "sum"):
        raise ValueError(f"Bidirectional: merge must be 'concat' or 'sum', got {merge!r}")
    args = layer.record.args if layer.record else {}
    if args.get("reverse"):
        raise ValueError("Bidirectional: give the forward layer (reverse=False); "
                         "the backward copy is made here")
    if args.get("return_carry"):
        raise ValueError("Bidirectional: the wrapped layer must not use return_carry")
    try:
        backward = layer.replace(reverse=True)
    except TypeError:
        raise ValueError(f"Bidirectional: needs a recurrent layer with a reverse option (RNN, "
                         f"SimpleRNN, LSTM, GRU), got {layer.kind}") from None

    def _inputs(x, mask, carry, what):
        if carry is None:
            return (x if mask is None else (x, mask)), (x if mask is None else (x, mask))
        if not isinstance(carry, (tuple, list)) or len(carry) != 2:
            raise LayerError(f"expects an initial carry {what} (forward_carry, backward_carry), "
                             f"got {carry!r}")
        return (x, mask, carry[0]), (x, mask, carry[1])

    def _merge(a, b, is_shape):
        if merge == "sum":
            return a if is_shape else a + b
        if is_shape:
            return (*a[:-1], -1 if -1 in (a[-1], b[-1]) else a[-1] + b[-1])
        return jnp.concatenate([a, b], axis=-1)

    def init(rng, input_shape):
        x, mask, carry = _split_input_shape(input_shape)
        in_f, in_b = _inputs(x, mask, carry, "shape")
        r_f, r_b = split_rng(rng, 2)
        out_f, p_f, s_f = init_child("forward", layer, r_f, in_f)
        out_b, p_b, s_b = init_child("backward", backward, r_b, in_b)
        y_f, m, has_mask = _split_output(out_f, True)
        y_b, _, _ = _split_output(out_b, True)
        out = _merge(tuple(y_f), tuple(y_b), True)
        params = {k: v for k, v in (("forward", p_f), ("backward", p_b)) if v}
        state = {k: v for k, v in (("forward", s_f), ("backward", s_b)) if v}
        return ((out, m) if has_mask else out), params, state

    def apply(params, state, x, *, rng=None, train=False):
        seq, mask, carry = _split_input(x)
        in_f, in_b = _inputs(seq, mask, carry, "")
        r_f, r_b = split_rng(rng, 2)
        out_f, s_f = apply_child("forward", layer, params.get("forward", {}),
                                 state.get("forward", {}), in_f, rng=r_f, train=train)
        out_b, s_b = apply_child("backward", backward, params.get("backward", {}),
                                 state.get("backward", {}), in_b, rng=r_b, train=train)
        y_f, m, has_mask = _split_output(out_f, False)
        y_b, _, _ = _split_output(out_b, False)
        out = _merge(y_f, y_b, False)
        new_state = {k: v for k, v in (("forward", s_f), ("backward", s_b)) if v}
        return ((out, m) if has_mask else out), new_state

    return Layer(init, apply)


# ------------------------------------------------------------------------------------ StripMask

@layer_type("StripMask")
def StripMask() -> Layer:
    """Drop the mask from a sequence output: ``(y, mask) -> y``; a plain ``y`` passes through.

    Put it between recurrent layers that return sequences and a layer that takes one array
    (``Dense`` on each step). The recurrent layers already output zeros at masked steps.

    Shapes: ``((batch, time, ...), (batch, time) | (batch,))`` -> ``(batch, time, ...)``.

    Example:
        >>> net = fnn.serial(Bidirectional(GRU(8)), StripMask(), fnn.Dense(5))
        >>> net.init(jax.random.key(0), ((-1, 20, 3), (-1,)))[0]
        (-1, 20, 5)
    """

    def init(rng, input_shape):
        if _is_shape(input_shape):
            return tuple(input_shape), {}, {}
        if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 2:
            raise LayerError(f"expects a shape y or (y, mask), got {input_shape!r}")
        y_shape = check_shape(input_shape[0], min_rank=2)
        _check_mask_shape(input_shape[1], y_shape[0], y_shape[1])
        return y_shape, {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        if not isinstance(x, (tuple, list)):
            return x, state
        if len(x) != 2:
            raise LayerError(f"expects y or (y, mask), got a {type(x).__name__} of length {len(x)}")
        return x[0], state

    return Layer(init, apply)
