"""Weight initializers: ``init(rng, shape, dtype) -> array``, by function or by name.

Most come from ``jax.nn.initializers``; fnn adds names so configs can say
``w_init: he_normal``. Fan-in/fan-out follow JAX's convention: for a Dense kernel of shape
``(in, out)`` fan-in is ``in``; for a conv kernel ``(*window, in, out)`` it is ``prod(window) * in``.

=================  ==============================================================
name               distribution
=================  ==============================================================
zeros, ones        constants
normal             N(0, 0.01^2)
uniform            U(-0.05, 0.05)
glorot_uniform     U(-a, a), a = sqrt(6 / (fan_in + fan_out))   (alias xavier_uniform)
glorot_normal      truncated normal, var = 2 / (fan_in + fan_out) (alias xavier_normal)
he_uniform         U(-a, a), a = sqrt(6 / fan_in)                (alias kaiming_uniform)
he_normal          truncated normal, var = 2 / fan_in            (alias kaiming_normal)
lecun_uniform      U(-a, a), a = sqrt(3 / fan_in)
lecun_normal       truncated normal, var = 1 / fan_in
orthogonal         a (semi-)orthogonal matrix (Saxe et al. 2014)
delta_orthogonal   orthogonal at the centre of a conv kernel, zeros elsewhere (Xiao et al. 2018)
=================  ==============================================================

Example:
    >>> w = fnn.initializers.get("he_normal")(jax.random.key(0), (784, 800))
    >>> w.shape
    (784, 800)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

from fnn.core import lookup

Initializer = Callable[..., jax.Array]

__all__ = ["get", "names", "zeros", "ones", "constant", "normal", "uniform", "glorot_uniform",
           "glorot_normal", "xavier_uniform", "xavier_normal", "he_uniform", "he_normal",
           "lecun_uniform", "lecun_normal", "orthogonal", "delta_orthogonal"]

zeros = jinit.zeros
ones = jinit.ones


def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""
    return jinit.constant(value)


def normal(stddev: float = 1e-2) -> Initializer:
    """N(0, stddev^2)."""
    return jinit.normal(stddev)


def uniform(scale: float = 5e-2) -> Initializer:
    """U(-scale, scale) (note: ``jax.nn.initializers.uniform`` draws from [0, scale))."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

    return init


glorot_uniform = jinit.glorot_uniform()
glorot_normal = jinit.glorot_normal()
xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
he_uniform = jinit.he_uniform()
he_normal = jinit.he_normal()
lecun_uniform = jinit.lecun_uniform()
lecun_normal = jinit.lecun_normal()
orthogonal = jinit.orthogonal()
delta_orthogonal = jinit.delta_orthogonal()

_BY_NAME: dict[str, Initializer] = {
    "zeros": zeros, "ones": ones, "normal": normal(), "uniform": uniform(),
    "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "he_uniform": he_uniform, "he_normal": he_normal,
    "kaiming_uniform": he_uniform, "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform, "lecun_normal": lecun_normal,
    "orthogonal": orthogonal, "delta_orthogonal": delta_orthogonal,
}


def names() -> list[str]:
    """All initializer names accepted by :func:`get`."""
    return sorted(_BY_NAME)


def get(init: str | Initializer | float | int) -> Initializer:
    """Resolve an initializer given by name, as a function, or as a constant number.

    Raises:
        ValueError: for an unknown name, with the closest known names.
    """
    if callable(init):
        return init
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return constant(float(init))
    if isinstance(init, str):
        return lookup(_BY_NAME, init, "initializer")
    raise TypeError(f"an initializer is a name, a number or a function, got {init!r}")
