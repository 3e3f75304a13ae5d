"""Training one model for model selection: a fresh output folder, a prefixed progress log, and a
run that never evaluates the test set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fnn import run as fnn_run
from fnn.train import loop

__all__ = ["Log", "fresh_dir", "prefixed_log", "train_model"]

Log = Callable[[str], None] | None


def fresh_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and its parents); an existing one must be empty.

    Example:
        >>> import pathlib, tempfile
        >>> out = fresh_dir(pathlib.Path(tempfile.mkdtemp()) / "sweep")
        >>> _ = (out / "sweep.csv").write_text("trial\\n")
        >>> fresh_dir(out)
        Traceback (most recent call last):
        FileExistsError: .../sweep already exists and is not empty; pass --out with a new folder
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists and is not empty; pass --out with a new "
                              "folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def prefixed_log(log: Log, prefix: str) -> Log:
    """``log`` with ``prefix`` and a space before every line (``None`` stays silent).

    Example:
        >>> prefixed_log(print, "[fold 1/5]")("epoch 1")
        [fold 1/5] epoch 1
        >>> prefixed_log(None, "[fold 1/5]") is None
        True
    """
    return None if log is None else (lambda line: log(f"{prefix} {line}"))


def train_model(cfg: dict[str, Any], train: dict[str, np.ndarray],
                val: dict[str, np.ndarray], run_dir: Path, *, log: Log) -> loop.FitResult:
    """Train one model of ``cfg`` on ``train``, validated on ``val``, into a run folder: the same
    run as ``fnn train`` except that the test set is not evaluated (selection must not see it).

    ``train`` and ``val`` are ``{"x": (n, ...), "y": (n, ...)}`` arrays; see
    :func:`fnn.run.train_model` (:func:`fnn.selection.cross_validate` and
    :func:`fnn.selection.sweep` show it at work).
    """
    return fnn_run.train_model(cfg, train, val, run_dir, log=log)
