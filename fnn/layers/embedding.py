"""Embedding lookup: integer ids to learned vectors, ``y[..., :] = w[ids[...], :]``.

Example:
    >>> net = fnn.serial(fnn.Embedding(1000, 16), fnn.GlobalAvgPool(), fnn.Dense(2))
    >>> net.init(jax.random.key(0), (-1, 20))[0]
    (-1, 2)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from fnn import initializers
from fnn.arguments import positive_int
from fnn.core import Layer, LayerError, check_shape, layer_type

__all__ = ["Embedding"]


@layer_type("Embedding")
def Embedding(vocab_size: int, features: int, *, w_init: Any = "uniform") -> Layer:
    """A lookup table of ``vocab_size`` learned vectors of size ``features``.

    Shapes: integer ids ``(batch, ...)`` -> ``(batch, ..., features)``.
    Params: ``{"w": (vocab_size, features)}``.

    Ids outside ``[0, vocab_size)``, negative ones included, give rows of NaN (no error can be
    raised inside ``jit``, and NaN shows up in the loss, where clamping would silently read
    another row); their gradient is zero. The gradient of a row used several times is the sum
    of the gradients of its uses.

    Args:
        vocab_size: number of rows (ids ``0 .. vocab_size - 1``).
        features: size of each vector.
        w_init: initializer of the table, by name or as a function; the default ``"uniform"``
            is ``U(-0.05, 0.05)``, as in Keras.

    Example:
        >>> layer = fnn.Embedding(10, 4)
        >>> _, params, _ = layer.init(jax.random.key(0), (-1, 3))
        >>> y, _ = layer.apply(params, {}, jnp.array([[1, 2, 1]]))
        >>> y.shape, bool((y[0, 0] == params["w"][1]).all())
        ((1, 3, 4), True)
    """
    vocab_size = positive_int("Embedding", "vocab_size", vocab_size)
    features = positive_int("Embedding", "features", features)
    w_initializer = initializers.get(w_init)

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        params = {"w": w_initializer(rng, (vocab_size, features), jnp.float32)}
        return shape + (features,), params, {}

    def apply(params, state, x, *, rng=None, train=False):
        ids = jnp.asarray(x)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise LayerError(f"expects integer ids (batch, ...), got dtype {ids.dtype} "
                             f"and shape {tuple(ids.shape)}")
        if ids.ndim < 1:
            raise LayerError(f"expects ids (batch, ...), got shape {tuple(ids.shape)}")
        w = params["w"]
        if jnp.issubdtype(ids.dtype, jnp.signedinteger):
            # Negative ids would wrap around in jnp.take; send them past the end to get NaN
            # too (in a type wide enough to hold vocab_size).
            ids = ids.astype(jnp.promote_types(ids.dtype, jnp.int32))
            ids = jnp.where(ids < 0, w.shape[0], ids)
        y = jnp.take(w, ids, axis=0, mode="fill", fill_value=jnp.nan)
        return y, state

    return Layer(init, apply)
