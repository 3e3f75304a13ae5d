"""Combinators: layers built from layers. A network is just a layer.

* ``serial(a, b, c)``: ``c(b(a(x)))``.
* ``parallel(a, b)``: ``(a(x0), b(x1))`` for a tuple input ``(x0, x1)``.
* ``fan_out(n)``: ``x -> (x, ..., x)``; ``fan_in_concat(axis)`` and ``fan_in_sum`` merge a tuple.
* ``residual(*layers)``: ``x + serial(*layers)(x)``.
* ``shared(layer)``: one set of params applied to every input of a tuple (siamese networks).

Params and state of a combinator are dicts keyed by child name (``"dense_0"``, ``"relu_0"``,
or the ``name=`` given); children without params or state do not appear, so
``serial(Dense(8), Relu, Dense(2))`` has params ``{"dense_0": {...}, "dense_1": {...}}``.

Example:
    >>> import jax, fnn
    >>> net = fnn.serial(fnn.Dense(16), fnn.Relu, fnn.Dense(2))
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 4))
    >>> sorted(params)
    ['dense_0', 'dense_1']
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp

from fnn.arguments import positive_int
from fnn.core import (Layer, LayerError, apply_child, check_shape, child_keys, init_child,
                      layer_type, numbered, split_rng, transparent)

__all__ = ["serial", "parallel", "fan_out", "fan_in_concat", "fan_in_sum", "residual",
           "shared", "Identity"]


def _init_children(keys: Sequence[str], layers: Sequence[Layer], rngs, shapes):
    out_shapes, params, state = [], {}, {}
    for key, layer, rng, shape in zip(keys, layers, rngs, shapes):
        out_shape, p, s = init_child(key, layer, rng, shape)
        out_shapes.append(out_shape)
        if p:
            params[key] = p
        if s:
            state[key] = s
    return out_shapes, params, state


def _store(new_state: dict, key: str, s: Any) -> None:
    if s:
        new_state[key] = s


@layer_type("serial", sublayers="layers", layout=numbered("layers"))
def serial(*layers: Layer) -> Layer:
    """Compose layers in sequence: ``serial(a, b)(x) == b(a(x))``.

    Args:
        *layers: the layers, applied first to last.

    Example:
        >>> net = fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(10))
        >>> net.init(jax.random.key(0), (-1, 784))[0]
        (-1, 10)
    """
    keys = child_keys(layers)

    def init(rng, input_shape):
        shape, params, state = input_shape, {}, {}
        for key, layer, r in zip(keys, layers, split_rng(rng, len(layers))):
            shape, p, s = init_child(key, layer, r, shape)
            if p:
                params[key] = p
            if s:
                state[key] = s
        return shape, params, state

    def apply(params, state, x, *, rng=None, train=False):
        new_state = {}
        for key, layer, r in zip(keys, layers, split_rng(rng, len(layers))):
            x, s = apply_child(key, layer, params.get(key, {}), state.get(key, {}), x,
                               rng=r, train=train)
            _store(new_state, key, s)
        return x, new_state

    return Layer(init, apply)


def _as_tuple(x: Any, n: int, what: str) -> tuple:
    # a tuple of ints is one shape, not a tuple of shapes
    single = not isinstance(x, (tuple, list)) or (
        what == "input shapes" and not all(isinstance(s, (tuple, list)) for s in x))
    if single or len(x) != n:
        got = (f"a single input of shape {getattr(x, 'shape', x)}" if single
               else f"{type(x).__name__} of length {len(x)}")
        raise LayerError(f"expects a tuple of {n} {what}, got {got}")
    return tuple(x)


@layer_type("parallel", sublayers="layers", layout=numbered("layers"))
def parallel(*layers: Layer) -> Layer:
    """Apply the i-th layer to the i-th element of a tuple input.

    Input: a tuple of ``len(layers)`` arrays; output: the tuple of their outputs.

    Example:
        >>> net = fnn.serial(fnn.fan_out(2), fnn.parallel(fnn.Dense(3), fnn.Dense(5)),
        ...                  fnn.fan_in_concat())
        >>> net.init(jax.random.key(0), (-1, 4))[0]
        (-1, 8)
    """
    keys = child_keys(layers)
    n = len(layers)

    def init(rng, input_shape):
        shapes = _as_tuple(input_shape, n, "input shapes")
        out_shapes, params, state = _init_children(keys, layers, split_rng(rng, n), shapes)
        return tuple(out_shapes), params, state

    def apply(params, state, x, *, rng=None, train=False):
        xs = _as_tuple(x, n, "inputs")
        outs, new_state = [], {}
        for key, layer, r, xi in zip(keys, layers, split_rng(rng, n), xs):
            y, s = apply_child(key, layer, params.get(key, {}), state.get(key, {}), xi,
                               rng=r, train=train)
            outs.append(y)
            _store(new_state, key, s)
        return tuple(outs), new_state

    return Layer(init, apply)


@layer_type("fan_out")
def fan_out(num: int) -> Layer:
    """Copy the input ``num`` times: ``x -> (x, ..., x)``.

    Example:
        >>> fnn.fan_out(2).init(jax.random.key(0), (-1, 4))[0]
        ((-1, 4), (-1, 4))
    """
    num = positive_int("fan_out", "num", num)

    def init(rng, input_shape):
        return tuple(input_shape for _ in range(num)), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        return tuple(x for _ in range(num)), state

    return Layer(init, apply)


@layer_type("fan_in_concat")
def fan_in_concat(axis: int = -1) -> Layer:
    """Concatenate a tuple of inputs along ``axis`` (default: features).

    Example:
        >>> fnn.fan_in_concat().init(jax.random.key(0), ((-1, 3), (-1, 5)))[0]
        (-1, 8)
    """

    def init(rng, input_shape):
        shapes = [check_shape(s, what="each input") for s in input_shape]
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise LayerError(f"inputs must have one rank, got shapes {shapes}")
        rank = ranks.pop()
        ax = axis % rank
        for s in shapes[1:]:
            if any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != ax):
                raise LayerError(f"inputs must agree except on axis {axis}, got shapes {shapes}")
        out = list(shapes[0])
        out[ax] = -1 if any(s[ax] == -1 for s in shapes) else sum(s[ax] for s in shapes)
        return tuple(out), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        return jnp.concatenate(x, axis=axis), state

    return Layer(init, apply)


@layer_type("fan_in_sum")
def fan_in_sum() -> Layer:
    """Sum a tuple of inputs of one shape.

    Example:
        >>> fnn.fan_in_sum().init(jax.random.key(0), ((-1, 3), (-1, 3)))[0]
        (-1, 3)
    """

    def init(rng, input_shape):
        shapes = [check_shape(s, what="each input") for s in input_shape]
        if any(s != shapes[0] for s in shapes):
            raise LayerError(f"inputs must have one shape, got shapes {shapes}")
        return shapes[0], {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        total = x[0]
        for xi in x[1:]:
            total = total + xi
        return total, state

    return Layer(init, apply)


@layer_type("Identity")
def Identity() -> Layer:
    """The identity layer: ``x -> x``."""
    return Layer(lambda rng, shape: (shape, {}, {}),
                 lambda params, state, x, *, rng=None, train=False: (x, state))


def _residual_layout(args):
    """The body's layers under ``body`` (keyed as in ``serial``), the shortcut under ``shortcut``."""
    layers = args.get("layers", ())
    children = [(("body", key), layer) for key, layer in zip(child_keys(layers), layers)]
    if args.get("shortcut") is not None:
        children.append((("shortcut",), args["shortcut"]))
    return children


@layer_type("residual", sublayers=("layers", "shortcut"), layout=_residual_layout)
def residual(*layers: Layer, shortcut: Layer | None = None) -> Layer:
    """A residual block: ``shortcut(x) + serial(*layers)(x)`` (``shortcut`` defaults to identity).

    Params: ``{"body": ..., "shortcut": ...}`` (absent where empty). The body's output shape
    must equal the shortcut's; pass a projection (e.g. ``Dense(n)``) as ``shortcut`` otherwise.

    Example:
        >>> block = fnn.residual(fnn.Dense(4), fnn.Relu)
        >>> block.init(jax.random.key(0), (-1, 4))[0]
        (-1, 4)
    """
    body = serial(*layers, name="body")
    skip = shortcut if shortcut is not None else Identity()

    def init(rng, input_shape):
        (body_shape, skip_shape), params, state = _init_children(
            ["body", "shortcut"], [body, skip], split_rng(rng, 2), [input_shape, input_shape])
        if tuple(body_shape) != tuple(skip_shape):
            raise LayerError(f"body output {tuple(body_shape)} differs from shortcut output "
                             f"{tuple(skip_shape)}; give a projection as shortcut=")
        return body_shape, params, state

    def apply(params, state, x, *, rng=None, train=False):
        r_body, r_skip = split_rng(rng, 2)
        y, s_body = apply_child("body", body, params.get("body", {}), state.get("body", {}), x,
                                rng=r_body, train=train)
        z, s_skip = apply_child("shortcut", skip, params.get("shortcut", {}),
                                state.get("shortcut", {}), x, rng=r_skip, train=train)
        new_state = {}
        _store(new_state, "body", s_body)
        _store(new_state, "shortcut", s_skip)
        return y + z, new_state

    return Layer(init, apply)


@layer_type("shared", sublayers="layer", layout=transparent("layer"))
def shared(layer: Layer, num_inputs: int = 2) -> Layer:
    """Weight sharing: apply one ``layer``, with one set of params, to each input of a tuple.

    The input is a tuple of ``num_inputs`` arrays of one shape; the output is the tuple of
    results. Gradients from every branch add up in the single set of params (siamese nets).
    State (e.g. batch-norm statistics) is threaded through the branches in order.

    Example:
        >>> twin = fnn.shared(fnn.serial(fnn.Dense(8), fnn.Relu))
        >>> twin.init(jax.random.key(0), ((-1, 4), (-1, 4)))[0]
        ((-1, 8), (-1, 8))
    """
    key = ""  # the params are the layer's own: no level of their own

    def init(rng, input_shape):
        shapes = _as_tuple(input_shape, num_inputs, "input shapes")
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise LayerError(f"all inputs of a shared layer must have one shape, got {shapes}")
        out_shape, params, state = init_child(key, layer, rng, shapes[0])
        return tuple(out_shape for _ in shapes), params, state

    def apply(params, state, x, *, rng=None, train=False):
        xs = _as_tuple(x, num_inputs, "inputs")
        outs = []
        for xi, r in zip(xs, split_rng(rng, num_inputs)):
            y, state = apply_child(key, layer, params, state, xi, rng=r, train=train)
            outs.append(y)
        return tuple(outs), state

    return Layer(init, apply)
