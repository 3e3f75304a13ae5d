"""Training one model for model selection: a fresh output folder, a prefixed progress log, and a
run that never evaluates the test set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fnn import rundir
from fnn import run as fnn_run
from fnn.checks import check_run, monitored_keys
from fnn.selection.errors import SelectionError
from fnn.train import loop

__all__ = ["Log", "check_fresh_dir", "locked_fresh_dir", "prefixed_log",
           "train_model", "check_trial", "logged_val_metrics"]

Log = Callable[[str], None] | None


def check_fresh_dir(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if it can become a new output folder (absent, or an empty folder);
    a ``FileExistsError`` otherwise. Writes nothing: call it before any other check, and
    :func:`locked_fresh_dir` once every check has passed.

    Example:
        >>> import pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "sweep"
        >>> check_fresh_dir(out) == out
        True
        >>> out.mkdir(); _ = (out / "sweep.csv").write_text("trial\\n")
        >>> check_fresh_dir(out)
        Traceback (most recent call last):
        FileExistsError: .../sweep already exists and is not empty; pass --out with a new folder
    """
    path = Path(path)
    rundir.check_unlocked(path)  # another cv or sweep writing there: named in one line
    _check_empty(path)
    return path


def _check_empty(path: Path) -> None:
    """Refuse a file, or a folder with anything but a lock file in it."""
    if path.exists() and (not path.is_dir() or any(p.name != rundir.LOCK
                                                   for p in path.iterdir())):
        raise FileExistsError(f"{path} already exists and is not empty; pass --out with a new "
                              "folder")


def locked_fresh_dir(path: str | os.PathLike) -> tuple[Path, rundir.RunLock]:
    """Create the new output folder ``path`` (checked by :func:`check_fresh_dir`, parents
    too) holding its lock (:func:`fnn.rundir.take_lock`), which
    ``fnn cv`` and ``fnn sweep`` keep until they end: of two started on one folder, the second
    is refused in one line. Release the lock (or use it as a ``with`` block) when done.

    Example:
        >>> import pathlib, tempfile
        >>> out, lock = locked_fresh_dir(pathlib.Path(tempfile.mkdtemp()) / "cv")
        >>> check_fresh_dir(out)
        Traceback (most recent call last):
        fnn.rundir.RunFolderError: .../cv: another run is using this folder (pid ...); wait for
        it to end, or choose another folder with --out
        >>> lock.release()
    """
    path = check_fresh_dir(path)
    lock = rundir.take_lock(path)[0]  # creates the folder
    try:
        _check_empty(path)  # nothing came in between
    except BaseException:
        lock.release()
        raise
    return path, lock


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
    :func:`fnn.selection.sweep` show it at work). The run folder's lock is held while it
    trains, as ``fnn train`` holds it.
    """
    with rundir.take_lock(run_dir)[0]:
        return fnn_run.train_model(cfg, train, val, run_dir, log=log)


def logged_val_metrics(cfg: dict[str, Any]) -> list[str]:
    """The validation keys (``val_loss``, ``val_accuracy``...) a run of ``cfg`` logs each epoch:
    what ``--metric`` may name. Builds the experiment; compiles nothing.

    Example:
        >>> import pathlib
        >>> xor = pathlib.Path(fnn.__file__).parents[1] / "configs" / "xor.yaml"
        >>> logged_val_metrics(fnn.config.load_config(xor))
        ['val_loss', 'val_accuracy']
    """
    exp = fnn_run.build(cfg)
    keys = monitored_keys(exp.metrics, exp.regularizer is not None, validation=True)
    return [k for k in keys if k.startswith("val_")]


def check_trial(cfg: dict[str, Any], data: dict[str, dict[str, np.ndarray]],
                metric: str | None) -> None:
    """Every check a training run of ``cfg`` on ``data`` (``{"train": ..., "val": ...}``) makes
    before it compiles or writes (:func:`fnn.checks.check_run`), and that ``metric`` (a
    ``val_*`` key, or ``None`` for the default) is logged by it; model selection calls it for
    each run before it creates its output folder.

    Raises:
        ConfigError: naming the key (from ``check_run``).
        SelectionError: ``--metric`` names a key the run does not log.
    """
    check_run(cfg, fnn_run.build(cfg), data)
    logged = logged_val_metrics(cfg)
    if metric is not None and metric not in logged:
        raise SelectionError(f"--metric: {metric!r} is not logged; choose one of "
                             f"{sorted(logged)}")
