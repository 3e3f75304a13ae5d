"""The error of a bad config entry, carrying its place as data: the key path, and the file and
line it was read from where known. The message is built from that data, so code that catches the
error reads ``e.path`` and ``e.detail`` and never takes the message apart.

It lives in a module of its own, importing nothing of fnn, so that every module that checks a
part of a config (``fnn.config``, ``fnn.checks``, ``fnn.optim``, ``fnn.data.augment``,
``fnn.train.parallel``) raises the same error without importing the others.

Example:
    >>> e = ConfigError("training.epochs", "must be >= 1, got 0")
    >>> str(e), e.path, e.detail
    ('training.epochs: must be >= 1, got 0', 'training.epochs', 'must be >= 1, got 0')
    >>> str(ConfigError("", "duplicate key 'optimizer' (first at line 3)", file="run.yaml", line=12))
    "run.yaml:12: duplicate key 'optimizer' (first at line 3)"
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad config entry: ``path`` (the key path, ``""`` for the whole config), ``detail`` (what
    is wrong, and the fix), ``file`` and ``line`` (where it was read, when known). The message is
    ``file:line: path: detail``, leaving out the parts that are not known."""

    def __init__(self, path: str, detail: str, *, file: str | None = None,
                 line: int | None = None):
        self.path = path
        self.detail = detail
        self.file = file
        self.line = line
        place = f"{file}:{line}" if file and line else file
        super().__init__(": ".join(part for part in (place, path, detail) if part))

    def __reduce__(self):  # keep pickling (multiprocessing) working with the keyword arguments
        return (_rebuild, (self.path, self.detail, self.file, self.line))


def _rebuild(path: str, detail: str, file: str | None, line: int | None) -> ConfigError:
    return ConfigError(path, detail, file=file, line=line)
