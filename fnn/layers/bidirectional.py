"""``Bidirectional``: a sequence layer run forwards and, as a reversed copy, backwards, merged.

Example:
    >>> net = fnn.serial(Bidirectional(fnn.GRU(8), merge="sum"), fnn.Dense(2))
    >>> net.init(jax.random.key(0), (-1, 20, 3))[0]
    (-1, 20, 2)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from fnn.core import Layer, LayerError, apply_child, init_child, layer_type, split_rng
from fnn.layers.sequences import is_shape, split_input, split_input_shape

__all__ = ["Bidirectional"]


def _split_output(out: Any, shapes: bool) -> tuple[Any, Any, bool]:
    """``y`` or ``(y, mask)`` -> ``(y, mask, has_mask)`` for arrays or (``shapes``) for shapes."""
    if shapes:
        return (out[0], out[1], True) if not is_shape(out) else (out, None, False)
    return (out[0], out[1], True) if isinstance(out, (tuple, list)) else (out, None, False)


@layer_type("Bidirectional", sublayers="layer",
            layout=lambda args: [(("forward",), args["layer"])])  # "backward" is made inside
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
        >>> bi = Bidirectional(fnn.LSTM(8))
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

    def _merge(a, b, shapes):
        if merge == "sum":
            return a if shapes else a + b
        if shapes:
            return (*a[:-1], -1 if -1 in (a[-1], b[-1]) else a[-1] + b[-1])
        return jnp.concatenate([a, b], axis=-1)

    def init(rng, input_shape):
        x, mask, carry = split_input_shape(input_shape)
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
        seq, mask, carry = split_input(x)
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
