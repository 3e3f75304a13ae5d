"""fnn's version: one source of truth, the ``version`` in ``pyproject.toml``.

:func:`version` reads it from the source tree's ``pyproject.toml`` when fnn is imported from a
checkout (the package folder sits beside a ``pyproject.toml`` of the project ``fnn``), else from
the installed package's metadata (``importlib.metadata``). The source tree comes first because
an editable install's metadata keeps the version of the day it was installed, while the
checkout's ``pyproject.toml`` is what a release from it would say.

Example:
    >>> import re
    >>> fnn.__version__ == version()
    True
    >>> bool(re.fullmatch(r"\\d+\\.\\d+\\.\\d+\\S*", version()))
    True
"""

from __future__ import annotations

import functools
import importlib.metadata
import tomllib
from pathlib import Path

__all__ = ["version", "UNKNOWN"]

UNKNOWN = "0+unknown"  # neither a source tree nor installed metadata (a copied folder)


def _source_tree_version() -> str | None:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    if project.get("name") != "fnn" or not isinstance(project.get("version"), str):
        return None
    return project["version"]


@functools.cache
def version() -> str:
    """The fnn version, e.g. ``"0.1.0"``: the checkout's ``pyproject.toml``, else the installed
    package's metadata, else ``"0+unknown"``."""
    found = _source_tree_version()
    if found is not None:
        return found
    try:
        return importlib.metadata.version("fnn")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN


__version__ = version()
