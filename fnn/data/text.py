"""Character-level text from the Python standard library's own source files (no download).

:func:`python_source` reads :data:`PYTHON_SOURCE_FILES` from the running interpreter's
standard library (``sysconfig.get_paths()["stdlib"]``), joins them in that order, and maps each
character to its code point, non-ASCII ones to ``?`` (vocabulary of 128). The last
``test_fraction`` of the characters (the end of the last file) is the test set; the rest is
cut into windows for training. The text is that of the installed Python version, so figures
are comparable between machines running the same version.

Example:
    >>> x, y, test_x, test_y = python_source(length=64)
    >>> x.shape[1:], bool((x[:, 1:] == y[:, :-1]).all()), int(x.max()) < 128
    ((64,), True, True)
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["python_source", "PYTHON_SOURCE_FILES", "decode_chars"]

PYTHON_SOURCE_FILES = ("functools.py", "textwrap.py", "dataclasses.py", "argparse.py",
                       "difflib.py", "inspect.py")


def _windows(codes: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    n = (len(codes) - 1) // length
    x = codes[:n * length].reshape(n, length)
    y = codes[1:n * length + 1].reshape(n, length)
    return x.astype(np.int32), y.astype(np.int32)


def python_source(*, length: int = 128, test_fraction: float = 0.1,
                  files: tuple[str, ...] = PYTHON_SOURCE_FILES
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Next-character windows of the standard library's source: ``x, y, test_x, test_y``.

    ``x`` holds ``length`` characters, ``y`` the same window shifted by one (the next character
    at each step); windows do not overlap. ``files`` are paths under the standard library.

    Shapes: all ``int32 (windows, length)``, ids in ``[0, 128)``.
    """
    if not isinstance(length, int) or isinstance(length, bool) or length < 2:
        raise ValueError(f"python_source: length must be an int >= 2, got {length!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"python_source: test_fraction must be in (0, 1), got {test_fraction!r}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in files:
        path = stdlib / name
        if not path.is_file():
            raise ValueError(f"python_source: {path} is not a file of this Python's standard library")
        texts.append(path.read_text(encoding="utf-8"))
    codes = np.frombuffer("\n".join(texts).encode("ascii", errors="replace"), np.uint8)
    cut = int(len(codes) * (1.0 - test_fraction))
    x, y = _windows(codes[:cut], length)
    test_x, test_y = _windows(codes[cut:], length)
    if not len(test_x):
        raise ValueError(f"python_source: the test part of {len(codes) - cut} characters holds no "
                         f"window of {length}; lower length or raise test_fraction")
    return x, y, test_x, test_y


def decode_chars(ids: np.ndarray) -> str:
    """Character ids back to text.

    Example:
        >>> decode_chars(np.array([100, 101, 102]))
        'def'
    """
    return "".join(chr(int(i)) for i in np.asarray(ids).reshape(-1))
