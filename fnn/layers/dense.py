"""The fully connected layer: ``y = x @ w + b`` over the last axis."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.arguments import flag, positive_int
from fnn.core import Layer, LayerError, check_shape, layer_type

__all__ = ["Dense"]  # kernel_params and matmul_last are for layer modules, not the fnn namespace


def kernel_params(rng: jax.Array, w_initializer: Any, b_initializer: Any,
                  kernel_shape: tuple[int, ...], use_bias: bool) -> dict[str, jax.Array]:
    """``{"w": kernel_shape, "b": (kernel_shape[-1],)}`` (``b`` only with ``use_bias``) drawn
    in float32, ``w`` and ``b`` from two keys split off ``rng``: the params of ``Dense``, the
    convolutions and ``PatchEmbed``, whose last kernel axis is the output width.

    Example:
        >>> init = fnn.initializers.get("zeros")
        >>> {k: v.shape for k, v in kernel_params(jax.random.key(0), init, init, (3, 3, 2, 8),
        ...                                       True).items()}
        {'w': (3, 3, 2, 8), 'b': (8,)}
    """
    w_rng, b_rng = jax.random.split(rng)
    params = {"w": w_initializer(w_rng, tuple(kernel_shape), jnp.float32)}
    if use_bias:
        params["b"] = b_initializer(b_rng, (kernel_shape[-1],), jnp.float32)
    return params


def matmul_last(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` over ``x``'s last axis, computed as one 2-D matmul of the flattened rows:
    ``(..., in) @ (in, out) -> (..., out)``.

    The same product as ``x @ w``, but XLA:CPU runs a (batch, time, in) product and its
    gradient up to 2x slower than the (batch * time, in) one (docs/PERFORMANCE.md, "Sequence
    matmuls flattened");
    ``Dense``, the attention projections, ``PatchEmbed`` and the recurrent layers' input
    projection use it.

    Example:
        >>> x, w = jnp.ones((2, 3, 4)), jnp.ones((4, 5))
        >>> matmul_last(x, w).shape
        (2, 3, 5)
    """
    if x.ndim <= 2:
        return x @ w
    rows = math.prod(x.shape[:-1])
    return (x.reshape(rows, x.shape[-1]) @ w).reshape(x.shape[:-1] + (w.shape[-1],))


@layer_type("Dense")
def Dense(features: int, *, use_bias: bool = True, w_init: Any = "glorot_uniform",
          b_init: Any = "zeros") -> Layer:
    """A fully connected layer on the last axis: ``y = x @ w + b``.

    Shapes: input ``(batch, ..., in)``; output ``(batch, ..., features)``.
    Params: ``{"w": (in, features), "b": (features,)}`` (``b`` only with ``use_bias``).

    Args:
        features: output width.
        use_bias: add a learned bias ``b``.
        w_init, b_init: initializers, by name (``"he_normal"``) or as functions.

    Example:
        >>> out_shape, params, _ = fnn.Dense(10).init(jax.random.key(0), (-1, 784))
        >>> out_shape, params["w"].shape
        ((-1, 10), (784, 10))
    """
    features = positive_int("Dense", "features", features)
    use_bias = flag("Dense", "use_bias", use_bias)
    w_initializer = initializers.get(w_init)
    b_initializer = initializers.get(b_init)

    def init(rng, input_shape):
        shape = check_shape(input_shape, min_rank=2)
        fan_in = shape[-1]
        if fan_in < 1:
            raise LayerError(f"needs a known feature size on the last axis, got shape {shape}")
        params = kernel_params(rng, w_initializer, b_initializer, (fan_in, features), use_bias)
        return shape[:-1] + (features,), params, {}

    def apply(params, state, x, *, rng=None, train=False):
        w = params["w"]
        if x.ndim < 2 or x.shape[-1] != w.shape[0]:
            raise LayerError(f"expects inputs (batch, ..., {w.shape[0]}), got shape {x.shape}")
        y = matmul_last(x, w)
        if use_bias:
            y = y + params["b"]
        return y, state

    return Layer(init, apply)
