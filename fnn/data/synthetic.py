"""Small synthetic data sets for demos and tests: XOR, two spirals, circles, noisy regression,
the adding problem, multi-digit addition as token sequences.

Classification sets return ``(x float32 (N, 2), y int32 (N,))`` with labels 0/1, shuffled
with the seed; for a single sigmoid output use ``y[:, None].astype("float32")``.

Example:
    >>> x, y = two_spirals(400, noise=0.05, seed=0)
    >>> x.shape, y.shape, y.dtype
    ((400, 2), (400,), dtype('int32'))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["xor", "two_spirals", "circles", "noisy_regression", "RegressionData", "adding_problem",
           "addition", "ADDITION_TOKENS"]


def xor() -> tuple[np.ndarray, np.ndarray]:
    """The four XOR points: ``x float32 (4, 2)`` in {0, 1}², ``y int32 (4,) = x0 xor x1``.

    Example:
        >>> x, y = xor()
        >>> y.tolist()
        [0, 1, 1, 0]
    """
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = np.array([0, 1, 1, 0], np.int32)
    return x, y


def _check(name: str, n: int, noise: float, minimum: int = 2) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < minimum:
        raise ValueError(f"{name}: n must be an int >= {minimum}, got {n!r}")
    if not noise >= 0:
        raise ValueError(f"{name}: noise must be >= 0, got {noise!r}")


def _shuffled(rng: np.random.Generator, x: np.ndarray, y: np.ndarray):
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order].astype(np.int32)


def two_spirals(n: int = 400, *, noise: float = 0.05, turns: float = 1.5,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals, a classic hard case for a small MLP.

    Class 0 is ``r(t) * (cos t, sin t)`` with ``t`` in ``[0, 2 pi turns]`` and radius
    ``r = t / (2 pi turns)`` (so points lie in the unit disc); class 1 is class 0 rotated by
    180 degrees. Gaussian noise of std ``noise`` is added to each coordinate.

    Shapes: ``x float32 (n, 2)``, ``y int32 (n,)``; ``n // 2`` points of class 0.

    Example:
        >>> x, y = two_spirals(200, noise=0.0, seed=1)
        >>> x.shape, np.bincount(y)                   # two balanced classes
        ((200, 2), array([100, 100]))
    """
    _check("two_spirals", n, noise)
    if not turns > 0:
        raise ValueError(f"two_spirals: turns must be > 0, got {turns!r}")
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t_max = 2 * np.pi * turns
    # sqrt spreads points evenly along the arc length, which grows with the radius
    t = np.sqrt(rng.uniform(0.0, 1.0, n)) * t_max
    sign = np.where(np.arange(n) < n0, 1.0, -1.0)
    r = t / t_max
    x = sign[:, None] * np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    x = x + noise * rng.standard_normal((n, 2))
    y = (np.arange(n) >= n0).astype(np.int32)
    return _shuffled(rng, x, y)


def circles(n: int = 400, *, noise: float = 0.05, factor: float = 0.5,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric circles: class 0 on radius 1, class 1 on radius ``factor``.

    Angles are uniform at random; Gaussian noise of std ``noise`` is added to each coordinate.

    Shapes: ``x float32 (n, 2)``, ``y int32 (n,)``; ``n // 2`` points of class 0.

    Example:
        >>> x, y = circles(200, factor=0.3)
        >>> x.shape, np.bincount(y)
        ((200, 2), array([100, 100]))
        >>> r = np.linalg.norm(x, axis=1)             # class 1: the inner circle
        >>> bool(r[y == 1].max() < r[y == 0].min())
        True
    """
    _check("circles", n, noise)
    if not 0 < factor < 1:
        raise ValueError(f"circles: factor must be in (0, 1), got {factor!r}")
    rng = np.random.default_rng(seed)
    n0 = n // 2
    angle = rng.uniform(0.0, 2 * np.pi, n)
    radius = np.where(np.arange(n) < n0, 1.0, factor)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    x = x + noise * rng.standard_normal((n, 2))
    y = (np.arange(n) >= n0).astype(np.int32)
    return _shuffled(rng, x, y)


class RegressionData(NamedTuple):
    """Noisy samples of a smooth curve, and the clean curve on a dense grid for plotting.

    Attributes:
        x, y: ``float32 (n, 1)`` inputs in ``[0, 1]`` and noisy targets.
        x_grid, y_grid: ``float32 (G, 1)`` the noiseless function on ``G`` evenly spaced points.
    """

    x: np.ndarray
    y: np.ndarray
    x_grid: np.ndarray
    y_grid: np.ndarray


def noisy_regression(n: int = 10, *, noise: float = 0.3, seed: int = 0,
                     grid: int = 200) -> RegressionData:
    """``y = sin(2 pi x) + noise`` at ``n`` evenly spaced ``x`` in ``[0, 1]`` (Bishop's
    curve-fitting example): with 10 points, a large network or polynomial overfits visibly.

    Shapes: ``x, y float32 (n, 1)``; ``x_grid, y_grid float32 (grid, 1)`` (noiseless).

    Example:
        >>> d = noisy_regression(10, noise=0.3, seed=0)
        >>> d.x.shape, d.x_grid.shape
        ((10, 1), (200, 1))
    """
    _check("noisy_regression", n, noise)
    if not isinstance(grid, (int, np.integer)) or grid < 2:
        raise ValueError(f"noisy_regression: grid must be an int >= 2, got {grid!r}")
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    y = np.sin(2 * np.pi * x) + noise * rng.standard_normal(n)
    xg = np.linspace(0.0, 1.0, grid)
    yg = np.sin(2 * np.pi * xg)
    col = lambda a: a.astype(np.float32)[:, None]  # noqa: E731
    return RegressionData(col(x), col(y), col(xg), col(yg))


def adding_problem(n: int = 10000, *, length: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997): a long-range memory task.

    Each sequence has ``length`` steps of two features: a value drawn from U(0, 1) and a marker
    that is 1 at exactly two steps (one in each half) and 0 elsewhere. The target is the sum of
    the two marked values. Always predicting 1 gives a mean squared error of about 0.167; a
    network must remember the first marked value across up to ``length`` steps to do better.

    Shapes: ``x float32 (n, length, 2)``, ``y float32 (n, 1)``.

    Example:
        >>> x, y = adding_problem(4, length=50, seed=0)
        >>> x.shape, y.shape, x[..., 1].sum(axis=1)
        ((4, 50, 2), (4, 1), array([2., 2., 2., 2.], dtype=float32))
    """
    _check("adding_problem", n, 0.0, minimum=1)
    if not isinstance(length, (int, np.integer)) or length < 2:
        raise ValueError(f"adding_problem: length must be an int >= 2, got {length!r}")
    rng = np.random.default_rng(seed)
    values = rng.random((n, length))
    half = length // 2
    first = rng.integers(0, half, n)
    second = rng.integers(half, length, n)
    markers = np.zeros((n, length))
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype(np.float32)
    y = (values[rows, first] + values[rows, second]).astype(np.float32)[:, None]
    return x, y


ADDITION_TOKENS = "0123456789+="  # token id i is ADDITION_TOKENS[i]


def addition(n: int = 50000, *, digits: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Multi-digit addition as next-token prediction, for a decoder-only Transformer.

    Each problem is ``a + b`` with ``a, b`` uniform in ``[0, 10^digits)``, drawn without
    repetition (no pair twice, so the first ``k`` problems and the rest are disjoint). It is
    written ``a+b=`` with ``digits`` digits each (zero-padded, most significant first), then
    the sum's ``digits + 1`` digits *least significant first* (the order in which carries are
    computed). Tokens are the indices in :data:`ADDITION_TOKENS` (``+`` is 10, ``=`` 11).
    ``x`` is the sequence without its last token, ``y`` the sequence shifted by one (the next
    token at each step) with ``-1`` (not scored) where the next token is part of the problem,
    so that ``fnn.losses.sequence_cross_entropy`` and ``fnn.metrics.exact_match`` score the
    answer only.

    Shapes: ``x, y int32 (n, 3 * digits + 2)``.

    Example:
        >>> x, y = addition(2, digits=2, seed=0)
        >>> "".join(ADDITION_TOKENS[t] for t in x[0]), y[0].tolist()   # 85 + 5 = 090, reversed
        ('85+05=09', [-1, -1, -1, -1, -1, 0, 9, 0])
    """
    _check("addition", n, 0.0, minimum=1)
    if not isinstance(digits, (int, np.integer)) or isinstance(digits, bool) or not 1 <= digits <= 9:
        raise ValueError(f"addition: digits must be an int in [1, 9], got {digits!r}")
    space = 10 ** (2 * digits)
    if n > space:
        raise ValueError(f"addition: only {space} distinct problems of {digits} digits, asked for {n}")
    rng = np.random.default_rng(seed)
    pairs = rng.choice(space, size=n, replace=False)
    a, b = pairs // 10 ** digits, pairs % 10 ** digits

    def digits_of(v: np.ndarray, k: int) -> np.ndarray:  # (n, k), most significant first
        return (v[:, None] // 10 ** np.arange(k - 1, -1, -1)) % 10

    seq = np.concatenate([digits_of(a, digits), np.full((n, 1), 10), digits_of(b, digits),
                          np.full((n, 1), 11), digits_of(a + b, digits + 1)[:, ::-1]], axis=1)
    x, y = seq[:, :-1].astype(np.int32), seq[:, 1:].astype(np.int32)
    y[:, :2 * digits + 1] = -1  # the next token is still part of the problem
    return x, y
