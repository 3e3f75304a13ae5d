"""All fnn layers. Each is a ``Layer(init, apply)``; see ``fnn.core`` for the protocol."""

from fnn.layers import (activations, bidirectional, cells, combinators, conv, conv_transpose, dense,
                        dropout, embedding, normalization, pooling, precision, recurrent, repeated,
                        resample, reshape, sequences)
from fnn.layers.activations import *  # noqa: F401,F403
from fnn.layers.bidirectional import *  # noqa: F401,F403
from fnn.layers.cells import *  # noqa: F401,F403
from fnn.layers.combinators import *  # noqa: F401,F403
from fnn.layers.conv import *  # noqa: F401,F403
from fnn.layers.conv_transpose import *  # noqa: F401,F403
from fnn.layers.dense import *  # noqa: F401,F403
from fnn.layers.dropout import *  # noqa: F401,F403
from fnn.layers.embedding import *  # noqa: F401,F403
from fnn.layers.normalization import *  # noqa: F401,F403
from fnn.layers.pooling import *  # noqa: F401,F403
from fnn.layers.precision import DtypePolicy  # noqa: F401
from fnn.layers.recurrent import *  # noqa: F401,F403
from fnn.layers.repeated import *  # noqa: F401,F403
from fnn.layers.resample import *  # noqa: F401,F403
from fnn.layers.reshape import *  # noqa: F401,F403
from fnn.layers.sequences import *  # noqa: F401,F403
from fnn.layers.spec import SpecError, from_spec

# Only the layers themselves are re-exported by ``from fnn.layers import *`` (not the submodules,
# whose names such as ``activations`` would shadow ``fnn.activations``).
__all__ = [name for module in (activations, bidirectional, cells, combinators, conv,
                               conv_transpose, dense, dropout, embedding, normalization, pooling,
                               recurrent, repeated, resample, reshape, sequences)
           for name in module.__all__] + ["DtypePolicy", "from_spec", "SpecError"]
