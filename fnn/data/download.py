"""Fetching data files: mirrors tried in order, a progress bar, a checksum, an atomic rename.

``fetch(urls, dest, checksum=...)`` streams the first mirror that answers into a temporary
file beside ``dest`` (with a tqdm progress bar), checks its digest and only then renames it
to ``dest``. On any failure the temporary file is removed: ``dest`` either is complete and
verified, or does not exist.

A ``Checksum`` names the hash (``"sha256"`` or ``"md5"``), its hex digest, and whether it is
taken over the bytes as stored (``of="file"``) or over the gunzipped content of a ``.gz``
file (``of="content"``, as the MNIST checksums are).

Example:
    >>> import tempfile
    >>> from fnn.data import write_idx
    >>> mirror = Path(tempfile.mkdtemp())                  # a local "mirror" (file:// URLs)
    >>> _ = write_idx(mirror / "a.gz", np.array([3, 1, 4], np.uint8))
    >>> digest = file_digest(mirror / "a.gz", "sha256", of="content")
    >>> dest = Path(tempfile.mkdtemp()) / "a.gz"
    >>> fetch([(mirror / "a.gz").as_uri()], dest, progress=False,
    ...       checksum=Checksum("sha256", digest, of="content")) == dest
    True
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
import zlib
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from tqdm import tqdm

from fnn.data.checks import DataError
from fnn.files import temporary_file

__all__ = ["Checksum", "ChecksumError", "DownloadError", "fetch", "file_digest",
           "user_cache_dir", "verify"]

_CHUNK = 1 << 20


class ChecksumError(DataError):
    """A file whose digest is not the expected one (names the file and both digests)."""


class DownloadError(OSError):
    """No mirror could deliver a file; ``attempts`` lists ``(url, reason)`` for each try."""

    def __init__(self, message: str, attempts: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.attempts = list(attempts)


class Checksum(NamedTuple):
    """An expected digest: ``algorithm`` (``"sha256"``, ``"md5"``), ``hexdigest``, and ``of``:
    ``"file"`` (the bytes as stored) or ``"content"`` (the gunzipped bytes of a ``.gz`` file;
    the bytes as stored for a plain file)."""

    algorithm: str
    hexdigest: str
    of: str = "file"


def user_cache_dir(*parts: str) -> Path:
    """The per-user cache folder of fnn: ``$XDG_CACHE_HOME/fnn/...`` or ``~/.cache/fnn/...``.

    Example:
        >>> user_cache_dir("mnist")          # e.g. PosixPath('/home/me/.cache/fnn/mnist')
        PosixPath('.../fnn/mnist')
    """
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "fnn", *parts)


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", *,
                of: str = "file") -> str:
    """Hex digest of a file, of its stored bytes (``of="file"``) or, for a ``.gz`` file, of its
    gunzipped content (``of="content"``).

    Example:
        >>> import tempfile
        >>> from fnn.data import write_idx
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte.gz"
        >>> _ = write_idx(path, np.array([3, 1, 4], np.uint8))
        >>> file_digest(path, "sha256", of="content")      # of the gunzipped bytes
        '6bd877acd0ad03242cbf953ed5746fa6e84907570c38d09e7c80b58320ded437'
    """
    if of not in ("file", "content"):
        raise ValueError(f"file_digest: of must be 'file' or 'content', got {of!r}")
    h = hashlib.new(algorithm)
    path = Path(path)
    gunzip = of == "content" and path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gunzip else open(path, "rb")) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ChecksumError(f"{path}: corrupt gzip file, cannot take its checksum ({e})") from None
    return h.hexdigest()


def verify(path: str | os.PathLike, checksum: Checksum, *, name: str | None = None) -> None:
    """Raise ``ChecksumError`` unless ``path`` has the digest ``checksum``."""
    got = file_digest(path, checksum.algorithm, of=checksum.of)
    if got != checksum.hexdigest.lower():
        what = "gunzipped content" if checksum.of == "content" else "bytes"
        raise ChecksumError(f"{name or path}: {checksum.algorithm} of the {what} is {got}, "
                            f"expected {checksum.hexdigest}")


def _open_url(url: str, timeout: float):
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http(s) and file URLs)


def fetch(urls: Sequence[str], dest: str | os.PathLike, *, checksum: Checksum | None = None,
          validate: Callable[[Path], None] | None = None, progress: bool = True,
          timeout: float = 60.0) -> Path:
    """Download the first of ``urls`` that answers with the right bytes to ``dest``, atomically.

    Each mirror is streamed into ``.<name>.<random>.part[.gz]`` beside ``dest``; the file is checked
    with ``checksum`` (and ``validate(tmp_path)``, which raises on bad content), then renamed
    to ``dest``. A mirror that fails (network error, wrong checksum) is followed by the next.
    When no mirror succeeds, the folders that ``fetch`` created for ``dest`` are removed again.

    Raises:
        ChecksumError: no mirror gave a good file, and one at least gave a file with the
            wrong digest (or content that ``validate`` rejected).
        DownloadError: no mirror could be reached; ``.attempts`` lists why for each.

    Example:
        >>> import tempfile
        >>> from fnn.data import read_idx, write_idx
        >>> mirror_b = Path(tempfile.mkdtemp())              # file:// URLs work as mirrors
        >>> _ = write_idx(mirror_b / "x.gz", np.array([3, 1, 4], np.uint8))
        >>> sha = "6bd877acd0ad03242cbf953ed5746fa6e84907570c38d09e7c80b58320ded437"
        >>> dest = Path(tempfile.mkdtemp(), "data", "x.gz")
        >>> path = fetch(["file:///no/such/mirror-a/x.gz", (mirror_b / "x.gz").as_uri()],
        ...              dest, checksum=Checksum("sha256", sha, of="content"), progress=False)
        >>> read_idx(path)                                  # mirror a failed, b answered
        array([3, 1, 4], dtype=uint8)
        >>> fetch([(mirror_b / "x.gz").as_uri()], dest.with_name("y.gz"), progress=False,
        ...       checksum=Checksum("sha256", "0" * 64, of="content"))
        Traceback (most recent call last):
        fnn.data.download.ChecksumError: could not get a good copy of y.gz; tried: ...
    """
    dest = Path(dest)
    created = _missing_parents(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _fetch(urls, dest, checksum=checksum, validate=validate, progress=progress,
                      timeout=timeout)
    except BaseException:
        for folder in created:  # a failed download leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or not ours to remove): keep it and its parents
        raise


def _missing_parents(folder: Path) -> list[Path]:
    """The folders ``mkdir(parents=True)`` would create for ``folder``, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _fetch(urls: Sequence[str], dest: Path, *, checksum: Checksum | None,
           validate: Callable[[Path], None] | None, progress: bool, timeout: float) -> Path:
    attempts: list[tuple[str, str]] = []
    bad_content = False
    for url in urls:
        # keep a .gz ending so that the checks of the temporary file see it as gzipped
        suffix = ".part.gz" if dest.name.endswith(".gz") else ".part"
        fd, tmp_name = temporary_file(dest.parent, dest.name, suffix)  # umask permissions
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb") as out:
                    _stream(url, out, name=dest.name, progress=progress, timeout=timeout)
            except (OSError, ValueError, EOFError) as e:  # URLError and HTTPError are OSErrors
                attempts.append((url, f"{type(e).__name__}: {e}"))
                continue
            try:
                if checksum is not None:
                    verify(tmp, checksum, name=f"{dest.name} from {url}")
                if validate is not None:
                    validate(tmp)
            except ValueError as e:  # ChecksumError, or a format error raised by validate
                bad_content = True
                attempts.append((url, str(e)))
                continue
            os.replace(tmp, dest)
            return dest
        finally:
            tmp.unlink(missing_ok=True)
    tried = "\n".join(f"  {url}: {why}" for url, why in attempts)
    if bad_content:
        raise ChecksumError(f"could not get a good copy of {dest.name}; tried:\n{tried}")
    raise DownloadError(f"could not download {dest.name}; tried:\n{tried}", attempts)


def _stream(url: str, out, *, name: str, progress: bool, timeout: float) -> None:
    with _open_url(url, timeout) as response:
        length = response.headers.get("Content-Length") if response.headers else None
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=f"downloading {name}", disable=not progress, leave=False) as bar:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and out.tell() != total:
            raise OSError(f"connection closed after {out.tell()} of {total} bytes")
