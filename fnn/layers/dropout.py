"""Inverted dropout (Srivastava et al. 2014): random zeros in training, the identity at test.

In training each unit is kept with probability ``1 - rate`` and kept units are scaled by
``1 / (1 - rate)``, so ``E[y] = x`` and no rescaling is needed at test time.

Example:
    >>> net = fnn.serial(fnn.Dense(16), fnn.Relu, fnn.Dropout(0.5), fnn.Dense(10))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 8))
    >>> x = jnp.ones((4, 8))
    >>> y, _ = net.apply(params, state, x, rng=jax.random.key(1), train=True)
    >>> y.shape
    (4, 10)
    >>> y_test, _ = net.apply(params, state, x)          # test: no rng, no dropout
    >>> np.allclose(y_test, net.apply(params, state, x)[0])
    True
    >>> net.apply(params, state, x, train=True)
    Traceback (most recent call last):
    fnn.core.LayerError: Dropout layer 'dropout_0': needs an rng because it drops random units in training; ...
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from fnn.arguments import ArgumentError
from fnn.core import Layer, LayerError, check_shape, draw, layer_type, require_rng

__all__ = ["Dropout"]


def _check_noise_shape(noise_shape: Sequence[int | None] | None) -> tuple[int, ...] | None:
    """``noise_shape`` as a tuple with ``-1`` for "same as input", or ``None``."""
    if noise_shape is None:
        return None
    if not isinstance(noise_shape, (tuple, list)) or not noise_shape:
        raise ArgumentError("Dropout", f"noise_shape must be a non-empty tuple, "
                                       f"got {noise_shape!r}")
    out = []
    for d in noise_shape:
        if d is None:
            out.append(-1)
        elif isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d >= 1):
            out.append(int(d))
        else:
            raise ArgumentError("Dropout", f"noise_shape entries must be -1, None or a positive "
                                           f"int (1 shares the mask along that axis), "
                                           f"got {noise_shape!r}")
    return tuple(out)


def _mask_shape(noise_shape: tuple[int, ...] | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the keep mask for an input of ``shape`` (``-1`` dims in ``shape`` allowed).

    Raises ``LayerError`` if ``noise_shape`` does not fit ``shape``.
    """
    if noise_shape is None:
        return tuple(shape)
    if len(noise_shape) != len(shape):
        raise LayerError(f"noise_shape {noise_shape} has rank {len(noise_shape)} but the input "
                         f"has rank {len(shape)}, got shape {tuple(shape)}")
    out = []
    for n, d in zip(noise_shape, shape):
        if n == -1:
            out.append(d)
        elif n == 1 or d == -1 or n == d:
            out.append(n)
        else:
            raise LayerError(f"noise_shape {noise_shape} must have 1, -1 or the input's size on "
                             f"each axis, got shape {tuple(shape)}")
    return tuple(out)


@layer_type("Dropout")
def Dropout(rate: float, *, noise_shape: Sequence[int | None] | None = None) -> Layer:
    """Inverted dropout: in training zero each unit with probability ``rate``, scale the rest.

    Training (``train=True``): ``y = x * m / (1 - rate)`` with ``m ~ Bernoulli(1 - rate)``,
    so ``E[y] = x``; needs ``rng``. Test (``train=False``): ``y = x``. ``rate=0`` is always
    the identity (and needs no ``rng``). ``rng`` may be one key per example (what the training
    step passes, see :func:`fnn.core.draw`): each example's mask then depends only on its key.

    Shapes: output shape = input shape. No params, no state.

    Args:
        rate: drop probability, in ``[0, 1)``.
        noise_shape: shape of the random mask, broadcast against the input: one entry per
            input axis, ``1`` to share the mask along that axis, ``-1`` (or ``None``) for the
            input's size. ``(-1, 1, 1, C)`` on ``(N, H, W, C)`` drops whole channels
            (spatial dropout). ``None``: an independent draw for every unit.

    Example:
        >>> layer = fnn.Dropout(0.5)
        >>> _, params, state = layer.init(jax.random.key(0), (-1, 4))
        >>> y, _ = layer.apply(params, state, jnp.ones((2, 4)), rng=jax.random.key(1), train=True)
        >>> sorted(set(y.ravel().tolist()))  # zeros and 1 / (1 - 0.5)
        [0.0, 2.0]
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
        raise ArgumentError("Dropout", f"rate must be a number in [0, 1), got {rate!r}")
    rate = float(rate)
    noise = _check_noise_shape(noise_shape)
    keep = 1.0 - rate

    def init(rng, input_shape):
        shape = check_shape(input_shape)
        _mask_shape(noise, shape)
        return shape, {}, {}

    def apply(params, state, x, *, rng=None, train=False):
        mask_shape = _mask_shape(noise, x.shape)
        if not train or rate == 0.0:
            return x, state
        key = require_rng(rng, "it drops random units in training")
        mask = draw(key, lambda k, shape: jax.random.bernoulli(k, keep, shape), mask_shape)
        return jnp.where(mask, x / keep, 0), state  # python scalars keep x's dtype

    return Layer(init, apply)
