"""All fnn layers. Each is a ``Layer(init, apply)``; see ``fnn.core`` for the protocol."""

from fnn.layers.activations import *  # noqa: F401,F403
from fnn.layers.combinators import *  # noqa: F401,F403
from fnn.layers.dense import *  # noqa: F401,F403
