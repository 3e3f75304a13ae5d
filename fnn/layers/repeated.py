"""``repeat(layer, n)``: ``n`` copies of a layer, params stacked on a leading axis, run by ``lax.scan``.

``serial(*[block] * 1000)`` traces and compiles 1000 copies of the block: compile time and
program size grow with depth. ``repeat(block, 1000)`` traces the block once: its params and
state are the block's, each leaf with a leading axis of length ``n`` (copy ``i`` is
``leaf[i]``), and ``apply`` is one ``lax.scan`` over that axis, so compiling a 10-layer and a
10,000-layer stack costs about the same.

Semantics, copy by copy, are exactly those of the unrolled ``serial`` of the same ``n``
layers with the same params:

* copy ``i`` is initialised with ``jax.random.split(rng, n)[i]`` (``vmap`` of the child's init);
* copy ``i`` is applied with ``jax.random.split(rng, n)[i]`` (dropout draws a distinct mask per
  copy), the same key ``serial`` gives its ``i``-th child;
* state (batch-norm statistics) is stacked like params and updated copy by copy.

The child must map its input shape to itself (the scan carries one shape); its output may
only change the floating dtype (the carry is promoted to it before the first copy).

Example:
    >>> block = fnn.serial(fnn.Conv2D(16, 3), fnn.Tanh)
    >>> net = fnn.repeat(block, 1000)
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 7, 7, 16))
    >>> params["conv2d_0"]["w"].shape
    (1000, 3, 3, 16, 16)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from fnn.core import Layer, LayerError, apply_child, init_child, layer_type, transparent

__all__ = ["repeat"]


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Repeat: {what} must be an int >= {minimum}, got {value!r}")
    return value


@layer_type("Repeat", sublayers="layer", layout=transparent("layer"))
def repeat(layer: Layer, times: int, *, unroll: int = 1, remat: bool = False) -> Layer:
    """``times`` copies of ``layer`` applied in sequence, params stacked, applied with ``lax.scan``.

    Equivalent to ``serial(layer, layer, ..., layer)`` (``times`` copies, each with its own
    params) but traced and compiled once whatever ``times`` is.

    Shapes: output shape = input shape (the child must preserve it).
    Params / state: the child's, every leaf with a leading axis of size ``times``; e.g.
    ``repeat(Conv2D(16, 3), 50)`` has params ``{"w": (50, 3, 3, 16, 16), "b": (50, 16)}``.
    Leaf names are the child's, so weights-only regularizers and freezing masks by layer
    name apply to the stacked kernels as they would to one.

    Args:
        layer: the layer (or ``serial`` block) to repeat; in configs a list means ``serial``.
        times: the number of copies, ``>= 1``.
        unroll: copies per scan iteration (``lax.scan(unroll=)``): larger compiles a longer
            loop body, sometimes faster on small layers; the result is the same.
        remat: rematerialise each copy in the backward pass (``jax.checkpoint``): activation
            memory of the stack is then one carry per copy instead of every intermediate.

    Example:
        >>> net = fnn.serial(fnn.Dense(32), fnn.repeat(fnn.serial(fnn.Dense(32), fnn.Tanh), 100),
        ...                  fnn.Dense(10))
        >>> net.init(jax.random.key(0), (-1, 784))[1]["repeat_0"]["dense_0"]["w"].shape
        (100, 32, 32)

    Config form::

        model:
          - Repeat: {times: 1000, layer: [{Conv2D: {features: 16, kernel_size: 3}}, Tanh]}
    """
    if not isinstance(layer, Layer):
        raise TypeError(f"Repeat: layer must be a fnn Layer, got {type(layer).__name__}: {layer!r}")
    times = _check_int(times, "times", 1)
    unroll = _check_int(unroll, "unroll", 1)
    if not isinstance(remat, bool):
        raise ValueError(f"Repeat: remat must be true or false, got {remat!r}")
    key = ""  # the stacked params are the repeat's own: no level of their own

    def init(rng, input_shape):
        found: dict[str, Any] = {}

        def one(r):
            out_shape, params, state = init_child(key, layer, r, input_shape)
            found["out_shape"] = out_shape
            return params, state

        params, state = jax.vmap(one)(jax.random.split(rng, times))
        if _shape_key(found["out_shape"]) != _shape_key(input_shape):
            raise LayerError(f"the repeated layer maps shape {input_shape} to "
                             f"{found['out_shape']}; it must keep the shape to be repeated")
        return found["out_shape"], params, state

    def apply(params, state, x, *, rng=None, train=False):
        rngs = None if rng is None else jax.random.split(rng, times)

        def body(carry, per_copy):
            p, s, r = per_copy
            y, new_s = apply_child(key, layer, p, s, carry, rng=r, train=train)
            return y, new_s

        if remat:
            body = jax.checkpoint(body)
        first = jax.tree_util.tree_map(lambda a: a[0], (params, state, rngs))
        out = jax.eval_shape(body, x, first)[0]
        x = _match_carry(x, out)
        return lax.scan(body, x, (params, state, rngs), length=times, unroll=unroll)

    return Layer(init, apply)




def _shape_key(shape: Any) -> Any:
    """Shapes as nested tuples, so ``[-1, 4]`` and ``(-1, 4)`` compare equal."""
    if isinstance(shape, (tuple, list)):
        return tuple(_shape_key(s) for s in shape)
    return shape


def _match_carry(x: Any, out: Any) -> Any:
    """``x`` cast to the dtypes of one copy's output ``out``; a ``LayerError`` if shapes differ."""
    xs, tree = jax.tree_util.tree_flatten(x)
    outs, out_tree = jax.tree_util.tree_flatten(out)
    if tree != out_tree or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(xs, outs)):
        shapes = [tuple(a.shape) for a in xs]
        out_shapes = [tuple(b.shape) for b in outs]
        raise LayerError(f"the repeated layer maps inputs of shape {shapes} to {out_shapes}; "
                         f"it must keep the shape to be repeated")
    return jax.tree_util.tree_unflatten(
        tree, [a if a.dtype == b.dtype else jnp.asarray(a, b.dtype) for a, b in zip(xs, outs)])
