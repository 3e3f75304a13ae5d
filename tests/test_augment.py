"""Tests for fnn.data.augment, against NumPy references (np.rot90, np.roll, np.flip, a
bilinear resampler written from the formula)."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn.data.augment import (make_augment, random_affine, random_flip_lr, random_rotation,
                              random_shift, random_zoom, rotate, shift, zoom)

KEY = jax.random.key(0)


def images(n=3, h=8, w=8, c=None, seed=0):
    """Random, non-symmetric float32 images."""
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).uniform(0.1, 1.0, shape).astype(np.float32)


def np_shift(x, dy, dx):
    """np.roll, then zero what wrapped around."""
    out = np.roll(x, (dy, dx), axis=(0, 1)).copy()
    if dy > 0:
        out[:dy] = 0
    elif dy < 0:
        out[dy:] = 0
    if dx > 0:
        out[:, :dx] = 0
    elif dx < 0:
        out[:, dx:] = 0
    return out


def np_bilinear(img, src_fn):
    """out[i, j] = bilinear sample of img at src_fn(i, j), zero outside the image."""
    h, w = img.shape
    out = np.zeros((h, w), np.float64)
    for i in range(h):
        for j in range(w):
            sy, sx = src_fn(i, j)
            y0, x0 = int(np.floor(sy)), int(np.floor(sx))
            for yy, wy in ((y0, 1 - (sy - y0)), (y0 + 1, sy - y0)):
                for xx, wx in ((x0, 1 - (sx - x0)), (x0 + 1, sx - x0)):
                    if 0 <= yy < h and 0 <= xx < w:
                        out[i, j] += wy * wx * img[yy, xx]
    return out


def np_rotate(img, degrees):
    """Counter-clockwise as displayed: output (i, j) reads the input at the point turned back."""
    h, w = img.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    t = np.deg2rad(degrees)

    def src(i, j):
        y, x = i - cy, j - cx  # row offset down, column offset right
        return cy + np.cos(t) * y + np.sin(t) * x, cx - np.sin(t) * y + np.cos(t) * x

    return np_bilinear(img, src)


def test_shape_and_dtype_are_preserved():
    augment = make_augment({"shift": 1, "rotation": 5, "zoom": 0.1, "flip_lr": True})
    x = images(c=2)
    for out in (random_shift(KEY, x, 2), random_rotation(KEY, x, 20.0),
                random_zoom(KEY, x, 0.2), random_flip_lr(KEY, x), augment(KEY, x)):
        chex.assert_shape(out, x.shape)
        chex.assert_type(out, jnp.float32)
    x = images()
    chex.assert_shape(augment(KEY, x), x.shape)
    half = jnp.asarray(images(), jnp.bfloat16)
    chex.assert_type(random_rotation(KEY, half, 10.0), jnp.bfloat16)


def test_zero_strength_is_exactly_the_identity():
    x = images(c=3)
    for out in (random_shift(KEY, x, 0), random_rotation(KEY, x, 0.0), random_zoom(KEY, x, 0.0),
                random_flip_lr(KEY, x, 0.0), rotate(x, 0.0), zoom(x, 1.0), shift(x, 0, 0),
                random_affine(KEY, x), make_augment({})(KEY, x),
                make_augment({"shift": 0, "rotation": 0, "zoom": 0, "flip_lr": False})(KEY, x)):
        np.testing.assert_array_equal(np.asarray(out), x)


@pytest.mark.parametrize("degrees,k", [(90, 1), (-90, -1), (180, 2), (270, 3)])
def test_rotation_by_quarter_turns_matches_rot90(degrees, k):
    x = images(n=2, h=7, w=7, seed=1)
    want = np.rot90(x, k, axes=(1, 2))
    np.testing.assert_array_equal(np.asarray(rotate(x, degrees)), want)


def test_rot90_direction_on_a_marked_image():
    x = np.zeros((1, 5, 5), np.float32)
    x[0, 0, 4] = 1.0  # top-right corner
    out = np.asarray(rotate(x, 90.0))[0]
    assert out[0, 0] == 1.0 and out.sum() == 1.0  # counter-clockwise: top-right -> top-left


def test_rotation_matches_numpy_bilinear_reference():
    x = images(n=2, h=7, w=9, seed=2)
    angles = np.array([30.0, -47.0], np.float32)
    out = np.asarray(rotate(x, angles))
    for i in range(2):
        np.testing.assert_allclose(out[i], np_rotate(x[i], float(angles[i])), atol=1e-5)


def test_rotation_of_channels_is_per_channel():
    x = images(n=2, h=6, w=6, c=2, seed=3)
    out = np.asarray(rotate(x, 33.0))
    for c in range(2):
        np.testing.assert_allclose(out[..., c], np.asarray(rotate(x[..., c], 33.0)), atol=1e-6)


def test_zoom_matches_numpy_bilinear_reference():
    x = images(n=1, h=8, w=8, seed=4)
    c = 3.5
    for s in (1.3, 0.8):
        want = np_bilinear(x[0], lambda i, j: (c + (i - c) / s, c + (j - c) / s))
        np.testing.assert_allclose(np.asarray(zoom(x, s))[0], want, atol=1e-5)


@pytest.mark.parametrize("dy,dx", [(2, 0), (0, -3), (-1, 2), (3, 3)])
def test_shift_matches_np_roll_with_zero_fill(dy, dx):
    x = images(n=2, h=6, w=7, c=2, seed=5)
    out = np.asarray(shift(x, dy, dx))
    for i in range(2):
        np.testing.assert_array_equal(out[i], np_shift(x[i], dy, dx))


def test_random_shift_gives_each_image_a_shift_within_range():
    x = np.repeat(images(n=1, h=8, w=8, seed=6), 12, axis=0)
    out = np.asarray(random_shift(jax.random.key(3), x, 2))
    found = []
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(out[i], np_shift(x[i], dy, dx))]
        assert len(matches) == 1
        found.append(matches[0])
    assert len(set(found)) > 1  # per-example parameters


def test_flip_matches_np_flip():
    x = images(n=16, c=2, seed=7)
    out = np.asarray(random_flip_lr(jax.random.key(1), x, 0.5))
    flipped = [np.array_equal(out[i], np.flip(x[i], axis=1)) for i in range(16)]
    kept = [np.array_equal(out[i], x[i]) for i in range(16)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 16
    np.testing.assert_array_equal(np.asarray(random_flip_lr(KEY, x, 1.0)), np.flip(x, axis=2))


def test_random_rotation_is_per_example():
    x = np.repeat(images(n=1, seed=8), 6, axis=0)
    out = np.asarray(random_rotation(jax.random.key(4), x, 45.0))
    assert not np.allclose(out[0], out[1])
    # every output is the reference rotation by some angle in [-45, 45]
    grid = np.linspace(-45, 45, 3601)
    for i in range(3):
        errors = [np.abs(out[i] - np_rotate(x[i], a)).max() for a in grid[::40]]
        best = grid[::40][int(np.argmin(errors))]
        fine = grid[(grid >= best - 1.5) & (grid <= best + 1.5)]
        assert min(np.abs(out[i] - np_rotate(x[i], a)).max() for a in fine) < 2e-3


def test_jit_and_rng_determinism():
    x = images(n=4, seed=9)
    augment = make_augment({"shift": 2, "rotation": 10, "zoom": 0.1, "flip_lr": True})
    eager = np.asarray(augment(jax.random.key(5), x))
    jitted = jax.jit(augment)
    np.testing.assert_allclose(np.asarray(jitted(jax.random.key(5), x)), eager, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(jitted(jax.random.key(5), x)),
                                  np.asarray(jitted(jax.random.key(5), x)))
    assert not np.allclose(np.asarray(jitted(jax.random.key(6), x)), eager)
    rot = jax.jit(functools.partial(random_rotation, max_degrees=15.0))
    np.testing.assert_array_equal(np.asarray(rot(KEY, x)), np.asarray(rot(KEY, x)))


def test_affine_with_shift_only_is_an_exact_shift():
    x = np.repeat(images(n=1, h=8, w=8, seed=10), 4, axis=0)
    out = np.asarray(random_affine(jax.random.key(2), x, max_shift=1))
    for i in range(4):
        assert any(np.array_equal(out[i], np_shift(x[i], dy, dx))
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="'brightness'"):
        make_augment({"shift": 1, "brightness": 0.2})
    with pytest.raises(ValueError, match="'shift'"):
        make_augment({"shift": 1.5})
    with pytest.raises(ValueError, match="'zoom'"):
        make_augment({"zoom": 1.0})
    with pytest.raises(ValueError, match="flip_lr"):
        make_augment({"flip_lr": "yes"})
    with pytest.raises(ValueError, match=r"got shape \(8, 8\)"):
        rotate(np.zeros((8, 8), np.float32), 10.0)
    with pytest.raises(ValueError, match="uint8"):
        random_shift(KEY, np.zeros((2, 8, 8), np.uint8), 1)
    with pytest.raises(ValueError, match="max_degrees"):
        random_rotation(KEY, images(), -1.0)
