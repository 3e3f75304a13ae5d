"""The IDX file format (MNIST, Fashion-MNIST): read and write, gzipped or not.

An IDX file is a 4-byte magic number, one big-endian ``uint32`` per dimension, then the
data in C order, big-endian::

    magic = 0x00 0x00 <dtype code> <number of dims>
    dims  = ndim x uint32 (big-endian)
    data  = prod(dims) items of the dtype (big-endian)

Dtype codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32,
``0x0E`` float64. A file whose name ends in ``.gz`` is read through gzip.

Example:
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train-images-idx3-ubyte.gz")
    >>> _ = write_idx(path, np.zeros((5, 28, 28), np.uint8))        # gzipped: the name ends in .gz
    >>> images = read_idx(path)
    >>> images.shape, images.dtype
    ((5, 28, 28), dtype('uint8'))
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from fnn.data.checks import DataError, check_data_file
from fnn.files import atomic_write

__all__ = ["IdxFormatError", "read_idx", "read_raw", "parse_idx", "write_idx"]

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in _DTYPES.items()}


class IdxFormatError(DataError):
    """A file that is not a well-formed IDX file (bad magic, truncated, trailing bytes, corrupt
    gzip); the message names the file."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) into a native-endian numpy array.

    Shapes: the array has the dims of the file's header, e.g. ``(60000, 28, 28)`` for MNIST
    training images and ``(60000,)`` for their labels; dtype as coded in the header
    (``uint8`` for MNIST and Fashion-MNIST).

    Raises:
        FileNotFoundError: no such file.
        IdxFormatError: the file is corrupt or truncated; the message names the file.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "t10k-labels-idx1-ubyte.gz")
        >>> _ = write_idx(path, np.array([7, 2, 1], np.uint8))
        >>> read_idx(path)                                   # (N,) uint8
        array([7, 2, 1], dtype=uint8)
        >>> with open(path, "wb") as f:                      # a damaged file
        ...     _ = f.write(b"not gzip")
        >>> read_idx(path)
        Traceback (most recent call last):
        fnn.data.idx.IdxFormatError: ...t10k-labels-idx1-ubyte.gz: ...
    """
    path = Path(path)
    return parse_idx(read_raw(path), source=str(path))


def read_raw(path: str | os.PathLike) -> bytes:
    """The uncompressed bytes of a file: gunzipped when its name ends in ``.gz``.

    Raises:
        IdxFormatError: a corrupt or truncated gzip stream; the message names the file.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "t10k-labels-idx1-ubyte.gz")
        >>> _ = write_idx(path, np.array([7, 2, 1], np.uint8))
        >>> raw = read_raw(path)                             # gunzipped bytes
        >>> list(raw[:4]), parse_idx(raw).shape              # magic: uint8 (0x08), 1 dim
        ([0, 0, 8, 1], (3,))
    """
    path = check_data_file(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise IdxFormatError(f"{path}: corrupt or truncated gzip file ({e}); "
                             "delete it and fetch it again") from None


def parse_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file; ``source`` names it in errors.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
        array([7, 9], dtype=uint8)
    """
    if len(raw) < 4:
        raise IdxFormatError(f"{source}: not an IDX file: only {len(raw)} bytes, "
                             "shorter than the 4-byte magic number")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or code not in _DTYPES:
        raise IdxFormatError(
            f"{source}: not an IDX file: bad magic number {raw[:4].hex()} (expected 0000 then a "
            f"dtype code in {sorted(hex(c) for c in _DTYPES)} and the number of dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IdxFormatError(f"{source}: truncated IDX header: {ndim} dims need {header} bytes, "
                             f"the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got < expected:
        raise IdxFormatError(f"{source}: truncated IDX file: header says shape {dims} of "
                             f"{dtype.newbyteorder('=')} ({expected} data bytes), "
                             f"found {got} bytes")
    if got > expected:
        raise IdxFormatError(f"{source}: corrupt IDX file: {got - expected} bytes after the "
                             f"{expected} data bytes of shape {dims}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=True)  # writable, native byte order


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``path`` ends in ``.gz``), atomically.

    The file is written to a temporary name in the same folder and renamed into place, so a
    failure leaves no partial file. Dtypes: uint8, int8, int16, int32, float32, float64.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> write_idx(path, np.array([3, 1, 4], np.uint8))
        PosixPath('.../labels-idx1-ubyte')
        >>> with open(path, "rb") as f:
        ...     list(f.read())                               # magic, count 3, then the data
        [0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4]
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code; "
                         f"use one of uint8, int8, int16, int32, float32, float64")
    if array.ndim > 255:
        raise ValueError(f"write_idx: at most 255 dims, got shape {array.shape}")
    code = _CODES[native]
    payload = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
               + np.ascontiguousarray(array, dtype=_DTYPES[code]).tobytes())
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write(path, payload)  # permissions follow the umask; no partial file on failure
    return path
