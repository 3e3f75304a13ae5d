"""The train state: everything a training step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fnn.core import Layer

__all__ = ["TrainState", "init_train_state"]


class TrainState(NamedTuple):
    """A pytree of the whole training state.

    Attributes:
        params: the network's trainable params (nested dicts).
        model_state: the network's non-trainable state (batch-norm statistics).
        opt_state: the optax optimizer state.
        step: int32 scalar, the number of updates applied so far.
        rng: a PRNG key; each step splits it for dropout and other training noise.
    """

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def init_train_state(net: Layer, optimizer: optax.GradientTransformation, input_shape: Any,
                     rng: jax.Array) -> tuple[Any, TrainState]:
    """Initialise a network and its optimizer for inputs of ``input_shape`` (``-1`` batch).

    Returns:
        ``(output_shape, train_state)``.

    Example:
        >>> out_shape, ts = init_train_state(fnn.Dense(2), optax.sgd(0.1), (-1, 3), jax.random.key(0))
        >>> int(ts.step)
        0
    """
    init_rng, train_rng = jax.random.split(rng)
    out_shape, params, model_state = net.init(init_rng, input_shape)
    opt_state = optimizer.init(params)
    return out_shape, TrainState(params, model_state, opt_state, jnp.zeros((), jnp.int32), train_rng)
