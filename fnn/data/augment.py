"""Image augmentation in JAX: per-example random shifts, rotations, zooms and flips.

Every function takes a batch of float images ``(N, H, W)`` or ``(N, H, W, C)`` and returns
the same shape and dtype; the random ones draw independent parameters for each example
from one ``rng`` and are ``jit``-compatible (strengths are Python numbers, fixed at trace
time, so each is compiled once per image shape and strength, also when called eagerly).
Pixels that come from outside the image are 0.

Conventions (row 0 at the top, as images are displayed):

* ``shift(images, dy, dx)``: content moves ``dy`` rows down and ``dx`` columns right, like
  ``np.roll(images, (dy, dx), axis=(1, 2))`` but with zero fill instead of wrap-around.
* ``rotate(images, degrees)``: positive angles turn counter-clockwise about the image centre
  ``((H-1)/2, (W-1)/2)``; ``rotate(x, 90) == np.rot90(x, 1, axes=(1, 2))`` for square images.
* ``zoom(images, factor)``: ``factor > 1`` magnifies about the centre, ``< 1`` shrinks.
* Resampling is bilinear (``jax.scipy.ndimage.map_coordinates``, ``order=1``). Source
  coordinates within 1e-4 pixel of the pixel grid are snapped to it, so multiples of 90
  degrees and integer shifts are exact, not blurred by float rounding.

``make_augment({"shift": 2, "rotation": 10, "zoom": 0.1, "flip_lr": False})`` combines
them (flip first, then rotation, zoom and shift in a single resampling).

Example:
    >>> x = np.zeros((4, 28, 28), np.float32)          # (N, H, W) float
    >>> augment = jax.jit(make_augment({"shift": 2, "rotation": 10}))
    >>> augment(jax.random.key(0), x).shape
    (4, 28, 28)
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.scipy.ndimage import map_coordinates

from fnn.errors import ConfigError

__all__ = ["shift", "rotate", "zoom", "random_shift", "random_rotation", "random_zoom",
           "random_flip_lr", "random_affine", "make_augment", "AUGMENT_KEYS"]

_SNAP = 1e-4


def _images(images: Any, where: str) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"{where}: images must be (N, H, W) or (N, H, W, C), "
                         f"got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"{where}: images must be float (e.g. x.astype('float32') / 255), "
                         f"got {images.dtype} of shape {images.shape}")
    return images


def _per_example(value: Any, n: int, where: str, what: str) -> jax.Array:
    value = jnp.asarray(value, jnp.float32)
    if value.ndim == 0:
        return jnp.broadcast_to(value, (n,))
    if value.shape != (n,):
        raise ValueError(f"{where}: {what} must be a scalar or one per image ({n},), "
                         f"got shape {value.shape}")
    return value


def _number_problem(what: str, value: Any, low: float, high: float | None = None,
                    *, integer: bool = False) -> str | None:
    """Why ``value`` is not a number (an int if ``integer``) in ``[low, high)``; ``None`` if
    it is."""
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real)
    if not ok_type or isinstance(value, bool) or not value >= low or (
            high is not None and not value < high):
        kind = "an int" if integer else "a number"
        bound = f">= {low}" + (f" and < {high}" if high is not None else "")
        return f"{what} must be {kind} {bound}, got {value!r}"
    return None


def _check_number(where: str, what: str, value: Any, low: float, high: float | None = None,
                  *, integer: bool = False) -> None:
    problem = _number_problem(what, value, low, high, integer=integer)
    if problem:
        raise ValueError(f"{where}: {problem}")


# --------------------------------------------------------------------------- deterministic

@jax.jit
def shift(images: Any, dy: Any, dx: Any) -> jax.Array:
    """Translate by whole pixels with zero fill: ``dy`` rows down, ``dx`` columns right.

    Shapes: ``images (N, H, W[, C])``; ``dy``, ``dx`` ints or int arrays ``(N,)`` (one shift
    per image). Output: same shape and dtype.

    Example:
        >>> x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4)
        >>> x[0]
        array([[ 1.,  2.,  3.,  4.],
               [ 5.,  6.,  7.,  8.],
               [ 9., 10., 11., 12.],
               [13., 14., 15., 16.]], dtype=float32)
        >>> shift(x, 1, -2)[0]  # np.roll(x, (1, -2), axis=(1, 2)) with the wrapped part zeroed
        Array([[ 0.,  0.,  0.,  0.],
               [ 3.,  4.,  0.,  0.],
               [ 7.,  8.,  0.,  0.],
               [11., 12.,  0.,  0.]], dtype=float32)
    """
    images = _images(images, "shift")
    n, h, w = images.shape[:3]
    dy = jnp.broadcast_to(jnp.asarray(dy, jnp.int32), (n,))
    dx = jnp.broadcast_to(jnp.asarray(dx, jnp.int32), (n,))
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]

    def one(img, sy, sx):
        rolled = jnp.roll(img, (sy, sx), axis=(0, 1))
        inside = (rows >= sy) & (rows < h + sy) & (cols >= sx) & (cols < w + sx)
        if img.ndim == 3:
            inside = inside[..., None]
        return jnp.where(inside, rolled, jnp.zeros((), img.dtype))

    return jax.vmap(one)(images, dy, dx)


def _resample(images: jax.Array, m: jax.Array, offset: jax.Array) -> jax.Array:
    """Output pixel ``p`` (row, col) reads the input at ``c + M (p - c) + offset``.

    ``m`` is ``(N, 2, 2)``, ``offset`` ``(N, 2)``, ``c`` the image centre; bilinear, zero fill.
    """
    dtype = images.dtype
    x = images.astype(jnp.promote_types(dtype, jnp.float32))
    channels_last = x.ndim == 4
    if not channels_last:
        x = x[..., None]
    _, h, w, _ = x.shape
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ry, rx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - cy,
                          jnp.arange(w, dtype=jnp.float32) - cx, indexing="ij")

    def one(img, mi, oi):
        # Elementwise (not a matmul) so that no reduced-precision matmul can change it.
        src_y = mi[0, 0] * ry + mi[0, 1] * rx + (cy + oi[0])
        src_x = mi[1, 0] * ry + mi[1, 1] * rx + (cx + oi[1])
        src_y = jnp.where(jnp.abs(src_y - jnp.round(src_y)) < _SNAP, jnp.round(src_y), src_y)
        src_x = jnp.where(jnp.abs(src_x - jnp.round(src_x)) < _SNAP, jnp.round(src_x), src_x)
        sample = lambda plane: map_coordinates(plane, [src_y, src_x], order=1,  # noqa: E731
                                               mode="constant", cval=0.0)
        return jax.vmap(sample, in_axes=2, out_axes=2)(img)

    out = jax.vmap(one)(x, m, offset)
    if not channels_last:
        out = out[..., 0]
    return out.astype(dtype)


def _rotation_matrices(degrees: jax.Array) -> jax.Array:
    """``(N, 2, 2)`` maps from output to input offsets (row, col) for a counter-clockwise turn."""
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)


@jax.jit
def rotate(images: Any, degrees: Any) -> jax.Array:
    """Rotate counter-clockwise (as displayed) by ``degrees`` about the image centre.

    Shapes: ``images (N, H, W[, C])``; ``degrees`` a scalar or ``(N,)``. Output: same shape
    and dtype; corners that come from outside the image are 0.

    Example:
        >>> x = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
        >>> np.array_equal(rotate(x, 90), np.rot90(x, 1, axes=(1, 2)))  # square images
        True
    """
    images = _images(images, "rotate")
    n = images.shape[0]
    degrees = _per_example(degrees, n, "rotate", "degrees")
    return _resample(images, _rotation_matrices(degrees), jnp.zeros((n, 2), jnp.float32))


@jax.jit
def zoom(images: Any, factor: Any) -> jax.Array:
    """Scale about the image centre by ``factor`` (> 1 magnifies, < 1 shrinks with zero border).

    Shapes: ``images (N, H, W[, C])``; ``factor`` a positive scalar or ``(N,)``.

    Example:
        >>> x = np.arange(1, 26, dtype=np.float32).reshape(1, 5, 5)
        >>> zoom(x, 1.25).shape
        (1, 5, 5)
        >>> zoom(x, 0.5)[0]    # half size, about the centre pixel (13), with a zero border
        Array([[ 0.,  0.,  0.,  0.,  0.],
               [ 0.,  1.,  3.,  5.,  0.],
               [ 0., 11., 13., 15.,  0.],
               [ 0., 21., 23., 25.,  0.],
               [ 0.,  0.,  0.,  0.,  0.]], dtype=float32)
    """
    images = _images(images, "zoom")
    n = images.shape[0]
    factor = _per_example(factor, n, "zoom", "factor")
    m = jnp.eye(2, dtype=jnp.float32)[None] / factor[:, None, None]
    return _resample(images, m, jnp.zeros((n, 2), jnp.float32))


# --------------------------------------------------------------------------- random

@functools.partial(jax.jit, static_argnames=("max_shift",))
def random_shift(rng: jax.Array, images: Any, max_shift: int) -> jax.Array:
    """Shift each image by its own whole-pixel ``(dy, dx)``, each uniform in
    ``[-max_shift, max_shift]``, with zero fill.

    Shapes: ``images (N, H, W[, C])`` float; output the same.

    Example:
        >>> x = np.ones((4, 28, 28), np.float32)
        >>> random_shift(jax.random.key(0), x, 2).shape
        (4, 28, 28)
    """
    _check_number("random_shift", "max_shift", max_shift, 0, integer=True)
    images = _images(images, "random_shift")
    if max_shift == 0:
        return images
    d = jax.random.randint(rng, (2, images.shape[0]), -max_shift, max_shift + 1)
    return shift(images, d[0], d[1])


@functools.partial(jax.jit, static_argnames=("max_degrees",))
def random_rotation(rng: jax.Array, images: Any, max_degrees: float) -> jax.Array:
    """Rotate each image by its own angle, uniform in ``[-max_degrees, max_degrees]``
    (counter-clockwise positive, bilinear, zero fill).

    Example:
        >>> x = np.ones((4, 28, 28), np.float32)
        >>> random_rotation(jax.random.key(0), x, 15.0).shape
        (4, 28, 28)
    """
    _check_number("random_rotation", "max_degrees", max_degrees, 0)
    images = _images(images, "random_rotation")
    if max_degrees == 0:
        return images
    degrees = jax.random.uniform(rng, (images.shape[0],), minval=-max_degrees,
                                 maxval=max_degrees)
    return rotate(images, degrees)


@functools.partial(jax.jit, static_argnames=("max_zoom",))
def random_zoom(rng: jax.Array, images: Any, max_zoom: float) -> jax.Array:
    """Zoom each image by its own factor, uniform in ``[1 - max_zoom, 1 + max_zoom]``.

    Example:
        >>> x = np.ones((4, 28, 28), np.float32)
        >>> random_zoom(jax.random.key(0), x, 0.1).shape
        (4, 28, 28)
    """
    _check_number("random_zoom", "max_zoom", max_zoom, 0, 1)
    images = _images(images, "random_zoom")
    if max_zoom == 0:
        return images
    factor = jax.random.uniform(rng, (images.shape[0],), minval=1 - max_zoom,
                                maxval=1 + max_zoom)
    return zoom(images, factor)


@functools.partial(jax.jit, static_argnames=("prob",))
def random_flip_lr(rng: jax.Array, images: Any, prob: float = 0.5) -> jax.Array:
    """Mirror each image left-right (along W) with probability ``prob``.

    Example:
        >>> x = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
        >>> random_flip_lr(jax.random.key(0), x).shape  # about half the images mirrored
        (2, 3, 3)
        >>> np.array_equal(random_flip_lr(jax.random.key(0), x, prob=1.0), x[:, :, ::-1])
        True
    """
    _check_number("random_flip_lr", "prob", prob, 0)
    if prob > 1:
        raise ValueError(f"random_flip_lr: prob must be in [0, 1], got {prob!r}")
    images = _images(images, "random_flip_lr")
    if prob == 0:
        return images
    flip = jax.random.bernoulli(rng, prob, (images.shape[0],))
    flip = flip.reshape((-1,) + (1,) * (images.ndim - 1))
    return jnp.where(flip, jnp.flip(images, axis=2), images)


@functools.partial(jax.jit, static_argnames=("max_degrees", "max_zoom", "max_shift"))
def random_affine(rng: jax.Array, images: Any, *, max_degrees: float = 0.0,
                  max_zoom: float = 0.0, max_shift: int = 0) -> jax.Array:
    """Rotate, zoom, then shift each image by its own random parameters, in one bilinear
    resampling (one interpolation instead of three). Parameters are drawn as in
    ``random_rotation``, ``random_zoom`` and ``random_shift``.

    Example:
        >>> x = np.ones((4, 28, 28, 1), np.float32)
        >>> random_affine(jax.random.key(0), x, max_degrees=10, max_zoom=0.1, max_shift=2).shape
        (4, 28, 28, 1)
    """
    _check_number("random_affine", "max_degrees", max_degrees, 0)
    _check_number("random_affine", "max_zoom", max_zoom, 0, 1)
    _check_number("random_affine", "max_shift", max_shift, 0, integer=True)
    images = _images(images, "random_affine")
    n = images.shape[0]
    if max_degrees == 0 and max_zoom == 0:
        return random_shift(rng, images, max_shift)
    r_rng, z_rng, s_rng = jax.random.split(rng, 3)
    degrees = jax.random.uniform(r_rng, (n,), minval=-max_degrees, maxval=max_degrees)
    factor = jax.random.uniform(z_rng, (n,), minval=1 - max_zoom, maxval=1 + max_zoom)
    m = _rotation_matrices(degrees) / factor[:, None, None]
    s = jax.random.randint(s_rng, (n, 2), -max_shift, max_shift + 1).astype(jnp.float32)
    # out(p) = transformed(p - s): read the input at c + M (p - c) - M s
    offset = -(m[:, :, 0] * s[:, 0:1] + m[:, :, 1] * s[:, 1:2])
    return _resample(images, m, offset)


AUGMENT_KEYS = {
    "shift": "max whole-pixel shift (int >= 0)",
    "rotation": "max rotation in degrees (>= 0)",
    "zoom": "max zoom change, factor in [1 - zoom, 1 + zoom] (0 <= zoom < 1)",
    "flip_lr": "left-right flip: true (probability 0.5), false, or a probability",
}


def make_augment(config: dict[str, Any] | None, where: str = "augment config"
                 ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """An augmentation function ``augment(rng, images) -> images`` from a config dict.

    Keys (all optional; missing or 0/false means off): ``"shift"`` (int pixels),
    ``"rotation"`` (degrees), ``"zoom"`` (fraction), ``"flip_lr"`` (bool or probability).
    The flip comes first, then rotation, zoom and shift in one resampling. An empty config
    gives the identity.

    ``where`` names the config in errors (``fnn.checks`` passes ``"data.augment"``).

    Raises:
        ConfigError: (a ``ValueError``) an unknown key (named, with the known ones) or a bad
            value; its ``path`` is ``where``.

    Example:
        >>> x = np.ones((4, 28, 28), np.float32)
        >>> augment = make_augment({"shift": 2, "rotation": 10, "flip_lr": False, "zoom": 0.1})
        >>> jax.jit(augment)(jax.random.key(0), x).shape
        (4, 28, 28)
        >>> np.array_equal(make_augment({})(jax.random.key(0), x), x)   # the identity
        True
        >>> make_augment({"shfit": 2})
        Traceback (most recent call last):
        fnn.errors.ConfigError: augment config: unknown key 'shfit'; known keys are ['flip_lr', 'rotation', 'shift', 'zoom']
    """
    config = dict(config or {})
    for key in config:
        if key not in AUGMENT_KEYS:
            raise ConfigError(where, f"unknown key {key!r}; known keys are "
                                     f"{sorted(AUGMENT_KEYS)}")
    max_shift = config.get("shift", 0) or 0
    max_degrees = config.get("rotation", 0) or 0
    max_zoom = config.get("zoom", 0) or 0
    flip = config.get("flip_lr", False)
    for what, value, high in (("'shift'", max_shift, None), ("'rotation'", max_degrees, None),
                              ("'zoom'", max_zoom, 1)):
        problem = _number_problem(what, value, 0, high, integer=what == "'shift'")
        if problem:
            raise ConfigError(where, problem)
    if isinstance(flip, bool):
        flip_prob = 0.5 if flip else 0.0
    elif isinstance(flip, numbers.Real) and 0 <= flip <= 1:
        flip_prob = float(flip)
    else:
        raise ConfigError(where, f"'flip_lr' must be true, false or a probability in [0, 1], "
                                 f"got {flip!r}")

    def augment(rng: jax.Array, images: jax.Array) -> jax.Array:
        images = _images(images, "augment")
        flip_rng, affine_rng = jax.random.split(rng)
        images = random_flip_lr(flip_rng, images, flip_prob)
        return random_affine(affine_rng, images, max_degrees=max_degrees, max_zoom=max_zoom,
                             max_shift=max_shift)

    return augment
