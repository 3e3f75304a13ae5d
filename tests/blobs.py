"""Small synthetic classification data shared by the training tests."""

from __future__ import annotations

import numpy as np


def blobs(n: int = 240, d: int = 6, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Gaussian points in ``d`` dimensions, ``(n, d)`` float32, labelled ``(n,)`` int32 by
    the arg-max of a random linear map into ``classes`` scores (linearly separable)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(d, classes)), -1).astype(np.int32)
    return x, y
