"""Upsampling of images, channels last: ``Upsample2D`` on ``(N, H, W, C)``.

Both methods equal PyTorch's ``torch.nn.Upsample(scale_factor=s, mode=...)`` with
``align_corners=False`` for integer scale factors. For an output index ``o`` on an axis
scaled by ``s`` (input size ``n``, output size ``n * s``):

* ``"nearest"``: PyTorch's ``nearest`` rule, input index ``floor(o * n / (n * s)) =
  floor(o / s)`` (each input repeated ``s`` times; not ``nearest-exact``'s
  ``floor((o + 0.5) / s)``, which is the same index for integer ``s``);
* ``"bilinear"``: the half-pixel rule ``src = max((o + 0.5) / s - 0.5, 0)``, interpolating
  linearly between ``floor(src)`` and ``min(floor(src) + 1, n - 1)`` (separably, height then
  width).

Bilinear is two small matrix products with fixed interpolation matrices built when the layer
is traced, so its gradient is exact and cheap.

Example:
    >>> y, _ = fnn.Upsample2D(2).apply({}, {}, jnp.arange(4.0).reshape(1, 2, 2, 1))
    >>> y[0, :, :, 0]
    Array([[0., 0., 1., 1.],
           [0., 0., 1., 1.],
           [2., 2., 3., 3.],
           [2., 2., 3., 3.]], dtype=float32)
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import Layer, LayerError, check_shape, layer_type
from fnn.layers.conv import as_tuple

__all__ = ["Upsample2D"]

METHODS = ("nearest", "bilinear")


def bilinear_matrix(size: int, scale: int) -> np.ndarray:
    """The ``(size * scale, size)`` matrix of PyTorch's bilinear weights (``align_corners=False``).

    Example:
        >>> bilinear_matrix(2, 2)
        array([[1.  , 0.  ],
               [0.75, 0.25],
               [0.25, 0.75],
               [0.  , 1.  ]])
    """
    out = np.arange(size * scale)
    src = np.maximum((out + 0.5) / scale - 0.5, 0.0)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    m = np.zeros((size * scale, size))
    np.add.at(m, (out, lo), 1.0 - frac)
    np.add.at(m, (out, hi), frac)
    return m


@layer_type("Upsample2D")
def Upsample2D(scale: int | Sequence[int] = 2, method: str = "nearest") -> Layer:
    """Upsample height and width by integer factors (PyTorch's ``nn.Upsample``,
    ``align_corners=False``; the rules in the module docstring).

    Shapes: ``(batch, H, W, C) -> (batch, H * sh, W * sw, C)``. No params. Integer inputs are
    repeated as they are by ``"nearest"`` and give float32 with ``"bilinear"``.

    Args:
        scale: a positive int or ``(sh, sw)``.
        method: ``"nearest"`` (default) or ``"bilinear"``.

    Example:
        >>> fnn.Upsample2D((2, 3), method="bilinear").init(jax.random.key(0), (-1, 7, 7, 8))[0]
        (-1, 14, 21, 8)
    """
    factors = as_tuple(scale, 2, "scale", "Upsample2D")
    if method not in METHODS:
        raise ValueError(f"Upsample2D: method must be one of {', '.join(METHODS)}, "
                         f"got {method!r}")

    def check_input(shape: tuple[int, ...]) -> None:
        if len(shape) != 4:
            raise LayerError(f"expects inputs (batch, height, width, channels) of rank 4, "
                             f"got shape {shape}")

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        check_input(shape)
        spatial = tuple(-1 if n < 0 else n * s for n, s in zip(shape[1:3], factors))
        return (shape[0], *spatial, shape[3]), {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        check_input(tuple(x.shape))
        if method == "nearest":
            return jnp.repeat(jnp.repeat(x, factors[0], axis=1), factors[1], axis=2), state
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = jnp.asarray(x, jnp.float32)
        mh = jnp.asarray(bilinear_matrix(x.shape[1], factors[0]), x.dtype)
        mw = jnp.asarray(bilinear_matrix(x.shape[2], factors[1]), x.dtype)
        exact = jax.lax.Precision.HIGHEST  # no reduced-precision passes on GPU/TPU
        y = jnp.einsum("oh,nhwc->nowc", mh, x, precision=exact)
        return jnp.einsum("pw,nowc->nopc", mw, y, precision=exact), state

    return Layer(init, apply)
