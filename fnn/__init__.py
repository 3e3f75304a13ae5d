"""fnn: a functional neural-network toolkit for JAX.

Layers are ``(init, apply)`` pairs of pure functions; params and state are plain pytrees.

Example:
    >>> import jax, fnn
    >>> net = fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(10))
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 784))
"""

from fnn.core import Layer, LayerError, layer_type, map_layers, num_params
from fnn.layers import *  # noqa: F401,F403
# Modules after the star import: fnn.layers has submodules of the same names (activations).
from fnn import activations, initializers, losses, metrics, optim, regularizers  # noqa: E402
from fnn.summary import summary  # noqa: E402
from fnn.train.checkpoint import (CheckpointError, load, load_weights, save,  # noqa: E402
                                  save_weights)
from fnn import config, data, diagnostics, meanfield, selection, train  # noqa: E402
from fnn.finetune import Frozen, freeze, transfer, unfreeze  # noqa: E402
from fnn.export import export, load_exported  # noqa: E402
from fnn import interop  # noqa: E402

__version__ = "0.1.0"
