"""Data from numpy array files: ``.npz`` archives and ``.npy`` arrays (memory-mapped if large).

Example:
    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> np.savez(os.path.join(folder, "train.npz"), x=np.zeros((5, 3)), y=np.arange(5))
    >>> x, y = load_arrays(os.path.join(folder, "train.npz"))   # the arrays named "x" and "y"
    >>> x.shape, y.shape
    ((5, 3), (5,))
    >>> np.savez(os.path.join(folder, "d.npz"), images=np.zeros((4, 2, 2)), labels=np.ones(4))
    >>> images, labels = load_arrays(os.path.join(folder, "d.npz"), ["images", "labels"])
    >>> np.save(os.path.join(folder, "features.npy"), np.ones((6, 2)))
    >>> (features,) = load_arrays(os.path.join(folder, "features.npy"))  # np.memmap if large
    >>> features.shape
    (6, 2)
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from fnn.data.checks import DataError, check_data_file, check_finite

__all__ = ["load_arrays", "MMAP_THRESHOLD_BYTES"]

MMAP_THRESHOLD_BYTES = 256 * 2**20
"""``.npy`` files at least this large are memory-mapped by ``load_arrays`` (``mmap=None``)."""


def load_arrays(path: str | os.PathLike, keys: Sequence[str] | None = None, *,
                mmap: bool | None = None) -> tuple[np.ndarray, ...]:
    """Arrays from an ``.npz`` or ``.npy`` file, as a tuple (ready for ``fnn.data.batches``).

    * ``.npz``: the arrays named by ``keys``, in that order (default ``("x", "y")``). They are
      read into memory (members of a zip archive cannot be memory-mapped).
    * ``.npy``: a 1-tuple ``(array,)``. With ``mmap=None`` a file of at least
      ``MMAP_THRESHOLD_BYTES`` is opened with ``np.load(mmap_mode="r")``: read-only, paged in
      on use; ``mmap=True``/``False`` forces either.

    Shapes: as stored; all returned arrays must share their first (example) dim.

    Checks: float arrays must be finite (NaN or infinity is refused naming the array, row and
    column; read in chunks, so a memory map stays a memory map).

    Raises:
        DataError: (a ``ValueError``) a requested key is not in the ``.npz`` (the message lists
            those it has), a damaged or truncated file, another extension, an object array,
            arrays of different lengths, or a non-finite value.
        FileNotFoundError: no such file.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "train.npz")
        >>> np.savez(path, x=np.zeros((5, 28, 28), np.uint8), y=np.arange(5))
        >>> x, y = load_arrays(path)                     # x (N, ...), y (N,)
        >>> x.shape, y.shape
        ((5, 28, 28), (5,))
        >>> big = path[:-4] + ".npy"
        >>> np.save(big, np.ones((6, 2), np.float32))
        >>> (features,) = load_arrays(big, mmap=True)    # np.memmap (default: when large)
        >>> isinstance(features, np.memmap), features.shape
        (True, (6, 2))
        >>> load_arrays(path, ["images"])
        Traceback (most recent call last):
        fnn.data.checks.DataError: ...train.npz: no array named 'images'; it has ['x', 'y'] (pass keys=[...])
    """
    path = check_data_file(path)
    suffix = path.suffix.lower()
    if isinstance(keys, str):
        keys = (keys,)
    if suffix == ".npz":
        names = tuple(keys) if keys is not None else ("x", "y")
        try:
            archive = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
                raise
            raise DataError(f"{path}: not a readable .npz archive ({_reason(e)})") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: not an .npz archive: it holds a single .npy array "
                            "(rename it to .npy, or save it with np.savez(path, x=..., y=...))")
        try:
            with archive:
                missing = [k for k in names if k not in archive.files]
                if missing:
                    raise DataError(f"{path}: no array named {missing[0]!r}; it has "
                                    f"{sorted(archive.files)} (pass keys=[...])")
                out = tuple(archive[k] for k in names)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: not a readable .npz archive ({_reason(e)})") from None
    elif suffix == ".npy":
        if keys is not None and len(keys) != 1:
            raise DataError(f"{path}: an .npy file holds one array; got keys {list(keys)}")
        names = tuple(keys) if keys is not None else ("x",)
        if mmap is None:
            mmap = path.stat().st_size >= MMAP_THRESHOLD_BYTES
        try:
            out = (np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False),)
        except (ValueError, OSError, EOFError) as e:
            if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
                raise
            raise DataError(f"{path}: not a readable .npy file ({_reason(e)})") from None
    else:
        raise DataError(f"load_arrays: {path} is neither .npz nor .npy")
    if any(a.ndim == 0 for a in out) or len({a.shape[0] for a in out}) > 1:
        raise DataError(f"{path}: arrays must share their first (example) dim, got "
                        + ", ".join(f"{k}: {a.shape}" for k, a in zip(names, out)))
    for name, array in zip(names, out):
        check_finite(array, f"{path}: {name}")
    return out


def _reason(e: BaseException) -> str:
    if "pickled" in str(e):  # what np.load says of any file that is neither zip nor .npy
        return "neither a zip archive nor an .npy array (or pickled Python objects, never loaded)"
    return str(e) or type(e).__name__
