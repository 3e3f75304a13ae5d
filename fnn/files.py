"""Files fnn writes: atomically, with the umask's permissions, and cleaned up after a kill.

* ``atomic_write(path, data)``: readers see the old file or the new one, never half of one.
* ``temporary_file(folder, name, suffix)``: a temporary file beside ``name`` whose permissions
  follow the umask (``tempfile.mkstemp`` alone gives 0600).
* ``clean_temporary_files(folder)``: remove what writes killed midway left behind.
* ``WriteError``: a write that failed (disk full, read-only, no permission), naming the file.

Example:
    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "config.yaml", b"seed: 0")
    >>> clean_temporary_files(folder)
    []
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["WriteError", "atomic_write", "temporary_file", "clean_temporary_files"]


class WriteError(OSError):
    """A file fnn could not write (disk full, read-only file system, no permission).

    The message names the file; the file's previous version, if any, is left as it was.
    """

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


# ".<name>.<8 random chars>.tmp" (atomic_write), ".<name>.<8>.part[.gz]" (IDX files, downloads)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(tmp|part|part\.gz)$")


def temporary_file(folder: str | os.PathLike, name: str, suffix: str) -> tuple[int, str]:
    """Open ``folder/.<name>.<8 random chars><suffix>`` for writing: ``(fd, path)``.

    The name is one :func:`clean_temporary_files` recognises (with suffix ``.tmp``, ``.part``
    or ``.part.gz``), and the permissions follow the umask (``0o666 & ~umask``).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    The bytes go to a temporary file in the same folder (``.<name>.<random>.tmp``), are flushed
    to disk, and the file is renamed over ``path``. Its permissions follow the umask
    (``0o666 & ~umask``), like a file opened with ``open(path, "w")``.

    Raises:
        WriteError: the folder or file cannot be written (disk full, read-only, no permission);
            names the file. ``path`` keeps its previous content and no temporary file is left.

    Example:
        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "config.yaml"
        >>> atomic_write(path, b"seed: 0")
        >>> path.read_bytes()
        b'seed: 0'
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(path.parent, path.name, ".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
            raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}{kept}") from e
        raise


def clean_temporary_files(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writes killed midway left in ``folder``; returns them.

    Only fnn's own temporary names are touched: ``.<name>.<8 chars>.tmp`` (from
    :func:`atomic_write`) and ``.<name>.<8 chars>.part[.gz]`` (downloads). Not
    recursive; a missing folder is fine. Call it when a run folder or checkpoint folder is
    opened, before anything else writes there.

    Example:
        >>> import os, tempfile
        >>> folder = os.path.join(tempfile.mkdtemp(), "checkpoints")
        >>> os.mkdir(folder)
        >>> for name in (".latest.safetensors.k2j4x9q1.tmp", "latest.safetensors"):
        ...     open(os.path.join(folder, name), "wb").close()
        >>> clean_temporary_files(folder)
        [PosixPath('.../checkpoints/.latest.safetensors.k2j4x9q1.tmp')]
        >>> os.listdir(folder)
        ['latest.safetensors']
        >>> clean_temporary_files(os.path.join(folder, "missing"))
        []
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if _TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
