"""Activation layers. Each is a constructor (``fnn.LeakyRelu(alpha=0.2)``, ``fnn.Softmax(axis=1)``);
combinators take one that needs no arguments bare, as configs do (``fnn.serial(..., fnn.Relu)``).

Example:
    >>> net = fnn.serial(fnn.Dense(8), fnn.PRelu(per_channel=True), fnn.Dense(1), fnn.Sigmoid)
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 3))
    >>> out_shape, params["prelu_0"]["alpha"].shape        # one learned slope per channel
    ((-1, 1), (8,))
    >>> y, _ = net.apply(params, state, jnp.ones((5, 3)))
    >>> y.shape, bool(((y > 0) & (y < 1)).all())
    ((5, 1), True)
    >>> y, _ = fnn.LeakyRelu(alpha=0.2).apply({}, {}, jnp.array([-1.0, 2.0]))
    >>> np.allclose(y, [-0.2, 2.0])
    True
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from fnn import activations as act
from fnn.arguments import ArgumentError, flag, integer, number
from fnn.core import Layer, LayerError, check_shape, draw, layer_type, require_rng

__all__ = ["Sigmoid", "Tanh", "Relu", "LeakyRelu", "PRelu", "RRelu", "Elu", "Selu", "Gelu",
           "Swish", "Softplus", "Softmax", "LogSoftmax", "Activation"]


def _elementwise(fn: Callable[[jax.Array], jax.Array]) -> Layer:
    def init(rng, input_shape):
        return input_shape, {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        return fn(x), state

    return Layer(init, apply)


@layer_type("Sigmoid")
def Sigmoid() -> Layer:
    """Logistic sigmoid, ``1 / (1 + exp(-x))``."""
    return _elementwise(act.sigmoid)


@layer_type("Tanh")
def Tanh() -> Layer:
    """Hyperbolic tangent."""
    return _elementwise(act.tanh)


@layer_type("Relu")
def Relu() -> Layer:
    """Rectified linear unit, ``max(x, 0)``."""
    return _elementwise(act.relu)


@layer_type("LeakyRelu")
def LeakyRelu(alpha: float = 0.01) -> Layer:
    """``x`` for ``x >= 0``, ``alpha * x`` otherwise."""
    alpha = number("LeakyRelu", "alpha", alpha)
    return _elementwise(lambda x: act.leaky_relu(x, alpha))


@layer_type("Elu")
def Elu(alpha: float = 1.0) -> Layer:
    """Exponential linear unit: ``x`` for ``x > 0``, ``alpha * (exp(x) - 1)`` otherwise."""
    alpha = number("Elu", "alpha", alpha)
    return _elementwise(lambda x: act.elu(x, alpha))


@layer_type("Selu")
def Selu() -> Layer:
    """Scaled ELU with the self-normalising constants (Klambauer et al. 2017)."""
    return _elementwise(act.selu)


@layer_type("Gelu")
def Gelu(approximate: bool = False) -> Layer:
    """Gaussian error linear unit, ``x * Phi(x)``."""
    approximate = flag("Gelu", "approximate", approximate)
    return _elementwise(lambda x: act.gelu(x, approximate))


@layer_type("Softplus")
def Softplus() -> Layer:
    """``log(1 + exp(x))``."""
    return _elementwise(act.softplus)


@layer_type("Softmax")
def Softmax(axis: int = -1) -> Layer:
    """Softmax over ``axis``."""
    axis = integer("Softmax", "axis", axis)
    return _elementwise(lambda x: act.softmax(x, axis))


@layer_type("LogSoftmax")
def LogSoftmax(axis: int = -1) -> Layer:
    """Log-softmax over ``axis``."""
    axis = integer("LogSoftmax", "axis", axis)
    return _elementwise(lambda x: act.log_softmax(x, axis))


@layer_type("PRelu")
def PRelu(init_alpha: float = 0.25, per_channel: bool = False) -> Layer:
    """Parametric ReLU (He et al. 2015): ``x`` for ``x >= 0``, ``alpha * x`` otherwise, alpha learned.

    Params: ``{"alpha": ()}`` shared, or ``{"alpha": (channels,)}`` with ``per_channel`` (last axis).
    """
    init_alpha = number("PRelu", "init_alpha", init_alpha)
    per_channel = flag("PRelu", "per_channel", per_channel)

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        alpha_shape = (shape[-1],) if per_channel else ()
        if per_channel and shape[-1] < 1:
            raise LayerError(f"per-channel alpha needs a known last axis, got shape {shape}")
        return shape, {"alpha": jnp.full(alpha_shape, init_alpha, jnp.float32)}, {}

    def apply(params, state, x, *, rng=None, train=False):
        return act.leaky_relu(x, params["alpha"]), state

    return Layer(init, apply)


@layer_type("RRelu")
def RRelu(lower: float = 1.0 / 8.0, upper: float = 1.0 / 3.0) -> Layer:
    """Randomized leaky ReLU (Xu et al. 2015).

    In training each element's negative slope is drawn from ``U(lower, upper)`` (needs ``rng``);
    at test the slope is the mean ``(lower + upper) / 2``.
    """
    lower, upper = number("RRelu", "lower", lower), number("RRelu", "upper", upper)
    if not 0.0 <= lower <= upper:
        raise ArgumentError("RRelu", f"need 0 <= lower <= upper, got lower={lower}, upper={upper}")

    def init(rng, input_shape):
        return input_shape, {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        if train:
            key = require_rng(rng, "its negative slope is random in training")
            slope = draw(key, lambda k, shape: jax.random.uniform(k, shape, x.dtype, lower,
                                                                  upper), x.shape)
        else:
            slope = (lower + upper) / 2.0
        return jnp.where(x >= 0, x, slope * x), state

    return Layer(init, apply)


@layer_type("Swish")
def Swish(beta: float = 1.0, learnable: bool = False) -> Layer:
    """Swish (Ramachandran et al. 2017): ``x * sigmoid(beta * x)``; ``learnable``: beta is a param."""
    beta = number("Swish", "beta", beta)
    learnable = flag("Swish", "learnable", learnable)

    def init(rng, input_shape):
        params = {"beta": jnp.asarray(beta, jnp.float32)} if learnable else {}
        return input_shape, params, {}

    def apply(params, state, x, *, rng=None, train=False):
        b = params["beta"] if learnable else beta
        return act.swish(x, b), state

    return Layer(init, apply)


@layer_type("Activation")
def Activation(activation: str) -> Layer:
    """An elementwise activation by name: ``Activation("relu")``; see ``fnn.activations.names()``."""
    try:
        fn = act.get(activation)
    except ValueError as e:
        raise ArgumentError("Activation", str(e)) from None
    return _elementwise(fn)


