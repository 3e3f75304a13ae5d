"""Checks of data before training: one ``DataError`` naming the file (or split), row and column.

* ``DataError``: every damaged or unusable data file or array (IDX, gzip, CSV, npz, checksums)
  raises it, or a subclass of it (``IdxFormatError``, ``ChecksumError``); a ``ValueError``.
* ``check_finite(x, where)``: NaN or infinite features are refused before anything trains.
* ``check_labels(y, num_classes, where)``: integer class ids outside ``[0, num_classes)`` are
  refused (a softmax over 3 classes cannot learn label 5; the loss would quietly skip it).
* ``check_data_file(path)``: a data file must be a regular file (not a directory, a device such
  as ``/dev/zero`` or a FIFO, which would be read forever) of at most ``MAX_DATA_FILE_BYTES``;
  checked before a byte is read (``data_file_problem`` gives the reason as text).

Example:
    >>> x_train, y_train = np.ones((4, 3), np.float32), np.array([0, 9, 3, 3])
    >>> check_finite(x_train, "train.npz: x")            # fine: returns None
    >>> check_labels(y_train, 10, "train.npz: y")
    >>> x_train[2, 1] = np.inf
    >>> check_finite(x_train, "train.npz: x")
    Traceback (most recent call last):
    fnn.data.checks.DataError: train.npz: x: 1 non-finite value (first: inf at row 2, column 1); remove or impute them before training
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from fnn.arguments import positive_int

__all__ = ["DataError", "check_finite", "check_labels", "check_data_file", "data_file_problem",
           "file_kind", "MAX_DATA_FILE_BYTES", "MAX_TEXT_DATA_BYTES"]

_CHUNK_BYTES = 64 * 2**20


class DataError(ValueError):
    """A data file or array that cannot be used as it is; the message names the file (or
    split) and, where it applies, the line, row and column."""


MAX_DATA_FILE_BYTES = 64 * 2**30
"""Largest data file read (``.npz``, ``.npy``, IDX), in bytes: far past any data set that fits
a machine's memory (a large ``.npy`` is memory-mapped, not read), and small enough that a wrong
file (a disk image, a sparse file) is refused before it fills the memory."""

MAX_TEXT_DATA_BYTES = 2 * 2**30
"""Largest CSV file read, in bytes: a CSV is parsed into Python lists, several times its size."""

_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"))


def file_kind(path: str | os.PathLike) -> str:
    """What is at ``path``, links followed: ``"a regular file"``, ``"a directory"``, ``"a
    character device"``, ``"a FIFO (named pipe)"``..., ``"a link to nothing"`` or ``"nothing"``.

    Example:
        >>> file_kind("/dev/null"), file_kind("/"), file_kind("/no/such/file")
        ('a character device', 'a directory', 'nothing')
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a link to nothing" if os.path.islink(path) else "nothing"
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _FILE_TYPES if test(mode)), "a special file")


def data_file_problem(path: str | os.PathLike, limit: int = MAX_DATA_FILE_BYTES) -> str | None:
    """Why ``path`` cannot be read as a data file, or ``None``: it must exist and be a regular
    file (links followed) of at most ``limit`` bytes. Nothing is read or opened.

    Example:
        >>> data_file_problem("/dev/zero")
        'not a regular file but a character device'
        >>> data_file_problem("/no/such/file.npz")
        'file not found'
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file but {file_kind(path)}"
    if info.st_size > limit:
        return (f"{info.st_size:,} bytes, more than the {limit:,} bytes fnn reads from a file "
                f"of this kind; is it the right file?")
    return None


def check_data_file(path: str | os.PathLike, limit: int = MAX_DATA_FILE_BYTES) -> Path:
    """``path`` as a ``Path`` if :func:`data_file_problem` finds nothing, else a ``DataError``
    naming the file and the reason."""
    problem = data_file_problem(path, limit)
    if problem:
        raise DataError(f"{path}: {problem}")
    return Path(path)


def _chunks(x: np.ndarray):
    """``(start, x[start:stop])`` over the first axis, in pieces of about 64 MB (memory maps)."""
    row_bytes = max(1, x.itemsize * int(np.prod(x.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_BYTES // row_bytes)
    for start in range(0, x.shape[0], step):
        yield start, np.asarray(x[start:start + step])


def _position(index: tuple[int, ...]) -> str:
    if len(index) == 1:
        return f"row {index[0]}"
    if len(index) == 2:
        return f"row {index[0]}, column {index[1]}"
    return f"row {index[0]}, position {tuple(int(i) for i in index[1:])}"


def check_finite(x: Any, where: str) -> None:
    """Refuse NaN and infinite values in ``x`` (features, or float targets).

    Integer and boolean arrays pass at once; float arrays are scanned in chunks of rows, so a
    memory-mapped file is not read into memory whole. Rows and columns are 0-based indices.

    Args:
        x: array ``(N, ...)``; numpy, a memory map, or a JAX array.
        where: what ``x`` is, for the message (``"data/train.npz: x"``, ``"fit: train x"``).

    Raises:
        DataError: ``"<where>: 3 non-finite values (first: nan at row 7, column 2); ..."``.

    Example:
        >>> check_finite(np.array([[1.0, np.nan]]), "a.csv")
        Traceback (most recent call last):
        fnn.data.checks.DataError: a.csv: 1 non-finite value (first: nan at row 0, column 1); ...
    """
    x = x if isinstance(x, np.ndarray) else np.asarray(x)
    if not np.issubdtype(x.dtype, np.inexact):
        return
    if x.ndim == 0:
        x = x.reshape(1)
    count, first = 0, None
    for start, chunk in _chunks(x):
        bad = ~np.isfinite(chunk)
        n = int(np.count_nonzero(bad))
        if n and first is None:
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            first = ((start + index[0], *index[1:]), chunk[index])
        count += n
    if count:
        index, value = first
        raise DataError(f"{where}: {count} non-finite value{'s' * (count > 1)} (first: {value} at "
                        f"{_position(index)}); remove or impute them before training")


def check_labels(y: Any, num_classes: int, where: str) -> None:
    """Refuse integer class ids outside ``[0, num_classes)``.

    Only integer arrays are class ids; float targets (one-hot, regression) are not checked here
    (their shape is the loss's business).

    Args:
        y: integer labels ``(N,)`` (or ``(N, T)`` for sequences).
        num_classes: the width of the model's output.
        where: the file or split, for the message (``"iris.csv"``, ``"validation split"``).

    Raises:
        DataError: ``"<where>: 2 labels outside [0, 3) for a 3-class output: values [5, 7]
            (first at row 4)"``.

    Example:
        >>> check_labels(np.array([0, 2, 1]), 3, "train")     # fine
        >>> check_labels(np.array([0, 5, -1]), 3, "train")
        Traceback (most recent call last):
        fnn.data.checks.DataError: train: 2 labels outside [0, 3) for a 3-class output: ...
    """
    y = y if isinstance(y, np.ndarray) else np.asarray(y)
    if not np.issubdtype(y.dtype, np.integer) or y.size == 0:
        return
    num_classes = positive_int("check_labels", "num_classes", num_classes)
    bad = (y < 0) | (y >= num_classes)
    count = int(np.count_nonzero(bad))
    if count:
        values = np.unique(y[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        first = tuple(int(i) for i in np.argwhere(bad.reshape(y.shape) if y.ndim else
                                                  bad.reshape(1))[0])
        raise DataError(f"{where}: {count} label{'s' * (count > 1)} outside [0, {num_classes}) "
                        f"for a {num_classes}-class output: values [{shown}] (first at "
                        f"{_position(first)})")
