"""Labels for losses that compare whole vectors: ``one_hot`` turns class ids into target rows."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["one_hot"]


def one_hot(y: Any, classes: int | None = None, dtype: Any = np.float32) -> np.ndarray:
    """Class ids ``(N,)`` (or ``(N, 1)``) as one-hot rows ``(N, classes)``, e.g. for ``mse`` on digits.

    Args:
        y: integer class ids in ``[0, classes)``.
        classes: the number of classes (default ``max(y) + 1``).
        dtype: of the result.

    Raises:
        ValueError: non-integer labels, or an id outside ``[0, classes)`` (naming the row).

    Example:
        >>> one_hot(np.array([0, 2]), 3)
        array([[1., 0., 0.],
               [0., 0., 1.]], dtype=float32)
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"one_hot: expected class ids of shape (N,), got shape {y.shape}")
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ValueError(f"one_hot: class ids must be integers, got dtype {y.dtype} "
                         f"(row {int(np.argmax(np.mod(y, 1) != 0))}: {y[np.mod(y, 1) != 0][0]})")
    y = y.astype(np.int64)
    classes = int(y.max()) + 1 if classes is None and y.size else int(classes or 0)
    bad = np.flatnonzero((y < 0) | (y >= classes))
    if bad.size:
        raise ValueError(f"one_hot: row {bad[0]} has class {y[bad[0]]}, outside [0, {classes})")
    out = np.zeros((len(y), classes), dtype)
    out[np.arange(len(y)), y] = 1
    return out
