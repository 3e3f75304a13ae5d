"""All fnn layers. Each is a ``Layer(init, apply)``; see ``fnn.core`` for the protocol."""

from fnn.layers.activations import *  # noqa: F401,F403
from fnn.layers.combinators import *  # noqa: F401,F403
from fnn.layers.dense import *  # noqa: F401,F403
from fnn.layers.dropout import *  # noqa: F401,F403
from fnn.layers.normalization import *  # noqa: F401,F403
from fnn.layers.conv import *  # noqa: F401,F403
from fnn.layers.pooling import *  # noqa: F401,F403
from fnn.layers.reshape import *  # noqa: F401,F403
from fnn.layers.embedding import *  # noqa: F401,F403
