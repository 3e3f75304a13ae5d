"""Data from numpy array files: ``.npz`` archives and ``.npy`` arrays (memory-mapped if large).

Example:
    >>> x, y = load_arrays("train.npz")                  # the arrays named "x" and "y"
    >>> images, labels = load_arrays("d.npz", ["images", "labels"])
    >>> (features,) = load_arrays("features.npy")        # np.memmap when the file is large
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

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

    Raises:
        KeyError: a requested key is not in the ``.npz`` (the message lists those it has).
        ValueError: another extension, an object array, or arrays of different lengths.

    Example:
        >>> x, y = load_arrays("train.npz")              # x (N, ...), y (N,)
        >>> (big,) = load_arrays("features.npy")         # np.memmap when large
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if isinstance(keys, str):
        keys = (keys,)
    if suffix == ".npz":
        names = tuple(keys) if keys is not None else ("x", "y")
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in names if k not in archive.files]
                if missing:
                    raise KeyError(f"{path}: no array named {missing[0]!r}; it has "
                                   f"{sorted(archive.files)} (pass keys=[...])")
                out = tuple(archive[k] for k in names)
        except ValueError as e:
            raise ValueError(f"{path}: cannot load ({e})") from None
    elif suffix == ".npy":
        if keys is not None and len(keys) != 1:
            raise ValueError(f"{path}: an .npy file holds one array; got keys {list(keys)}")
        names = tuple(keys) if keys is not None else ("x",)
        if mmap is None:
            mmap = path.stat().st_size >= MMAP_THRESHOLD_BYTES
        try:
            out = (np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False),)
        except ValueError as e:
            raise ValueError(f"{path}: cannot load ({e})") from None
    else:
        raise ValueError(f"load_arrays: {path} is neither .npz nor .npy")
    if any(a.ndim == 0 for a in out) or len({a.shape[0] for a in out}) > 1:
        raise ValueError(f"{path}: arrays must share their first (example) dim, got "
                         + ", ".join(f"{k}: {a.shape}" for k, a in zip(names, out)))
    return out
