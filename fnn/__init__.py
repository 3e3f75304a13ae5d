"""fnn: a functional neural-network toolkit for JAX.

Layers are ``(init, apply)`` pairs of pure functions; params and state are plain pytrees.

Example:
    >>> import jax, fnn
    >>> net = fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(10))
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 784))
"""

from fnn import activations, initializers, losses, metrics, optim, regularizers
from fnn.core import Layer, LayerError, layer_type, num_params
from fnn.layers import *  # noqa: F401,F403

__version__ = "0.1.0"
