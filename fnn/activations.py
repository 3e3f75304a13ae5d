"""Activation functions as plain functions of arrays (layers wrapping them: ``fnn.layers``).

All are elementwise except ``softmax``/``log_softmax`` (over ``axis``). Formulas:

* ``sigmoid(x) = 1 / (1 + exp(-x))``; ``tanh``; ``relu(x) = max(x, 0)``
* ``leaky_relu(x, alpha) = x if x >= 0 else alpha * x``
* ``elu(x, alpha) = x if x > 0 else alpha * (exp(x) - 1)``
* ``selu(x) = lambda * elu(x, alpha)`` with the self-normalising constants
* ``gelu(x) = x * Phi(x)`` (``approximate=True``: the tanh form)
* ``swish(x, beta) = x * sigmoid(beta * x)`` (beta = 1: SiLU)
* ``softplus(x) = log(1 + exp(x))``

Example:
    >>> fnn.activations.get("leaky_relu")(jnp.array([-1.0, 2.0]))
    Array([-0.01,  2.  ], dtype=float32)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fnn.core import lookup

__all__ = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "swish", "softplus",
           "softmax", "log_softmax", "get", "names"]

sigmoid = jax.nn.sigmoid
tanh = jnp.tanh
relu = jax.nn.relu
selu = jax.nn.selu
softplus = jax.nn.softplus


def leaky_relu(x: jax.Array, alpha: float = 0.01) -> jax.Array:
    """``x`` where ``x >= 0``, ``alpha * x`` elsewhere."""
    return jnp.where(x >= 0, x, alpha * x)


def elu(x: jax.Array, alpha: float = 1.0) -> jax.Array:
    """``x`` where ``x > 0``, ``alpha * (exp(x) - 1)`` elsewhere."""
    return jax.nn.elu(x, alpha)


def gelu(x: jax.Array, approximate: bool = False) -> jax.Array:
    """``x * Phi(x)``, with Phi the standard normal CDF (or its tanh approximation)."""
    return jax.nn.gelu(x, approximate=approximate)


def swish(x: jax.Array, beta: float | jax.Array = 1.0) -> jax.Array:
    """``x * sigmoid(beta * x)``."""
    return x * jax.nn.sigmoid(beta * x)


def softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``exp(x) / sum(exp(x))`` over ``axis``, computed stably."""
    return jax.nn.softmax(x, axis=axis)


def log_softmax(x: jax.Array, axis: int = -1) -> jax.Array:
    """``x - logsumexp(x)`` over ``axis``."""
    return jax.nn.log_softmax(x, axis=axis)


_BY_NAME: dict[str, Callable[..., jax.Array]] = {
    "sigmoid": sigmoid, "tanh": tanh, "relu": relu, "leaky_relu": leaky_relu, "elu": elu,
    "selu": selu, "gelu": gelu, "swish": swish, "silu": swish, "softplus": softplus,
    "softmax": softmax, "log_softmax": log_softmax, "linear": lambda x: x,
}


def names() -> list[str]:
    """The activation names accepted by :func:`get`."""
    return sorted(_BY_NAME)


def get(name: str | Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """An activation function by name (``"relu"``) or itself when already a function."""
    if callable(name):
        return name
    return lookup(_BY_NAME, name, "activation")
