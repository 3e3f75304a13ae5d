"""K-fold cross-validation of the run a config describes; the test set is never used."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

from fnn import run as fnn_run
from fnn.config import ConfigError
from fnn.data.splits import kfold
from fnn.selection.errors import SelectionError
from fnn.selection.ranking import check_metric, default_metric, kept_record, val_metrics
from fnn.selection.report import format_cv_table, write_cv
from fnn.selection.results import CVResult, FoldResult
from fnn.selection.training import (Log, check_fresh_dir, check_trial, locked_fresh_dir,
                                    prefixed_log, train_model)

__all__ = ["cross_validate"]


def _stratify_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.size != len(y):
        raise ConfigError("data.stratify", f"stratified folds need one label per example, got "
                                           f"targets of shape {y.shape}")
    return y.reshape(len(y))


def cross_validate(cfg: dict[str, Any], folds: int = 5, *, out: str | os.PathLike | None = None,
                   seed: int | None = None, metric: str | None = None,
                   log: Log = print) -> CVResult:
    """K-fold cross-validation of the run ``cfg`` describes; the test set is never used.

    The config's training data (with ``data.validation`` ignored, so train + validation, never
    test) is divided into ``folds`` folds (``fnn.data.splits.kfold``, stratified when
    ``data.stratify``); fold ``i``'s model is trained from the config's initialization on the
    other folds and validated on fold ``i``. Writes ``cv.json`` (per-fold sizes, epochs and
    validation metrics; mean and std), ``cv.csv`` (one row per fold, then ``mean`` and ``std``
    rows) and ``folds.npz`` (``val_<i>`` index arrays) to ``out`` (default: ``output.dir``, else
    ``runs/<name>-cv``), with each fold's run in ``fold_<i>/``.

    Args:
        cfg: a validated config (``fnn.config.load_config``).
        folds: ``K >= 2``.
        out: the output folder; it must be new or empty.
        seed: the seed of the fold assignment (default: the config's ``seed``).
        metric: the headline metric (a ``val_*`` key; default ``val_accuracy`` or ``val_loss``).
        log: where progress and the final table go (``None``: silent).

    Returns:
        A :class:`CVResult`.

    Example (XOR's four points in two folds, two epochs each; a few seconds):
        >>> import pathlib, tempfile
        >>> xor = pathlib.Path(fnn.__file__).parents[1] / "configs" / "xor.yaml"
        >>> cfg = fnn.config.load_config(xor, ["training.epochs=2", "output.plots=false"])
        >>> cv = cross_validate(cfg, folds=2, out=tempfile.mkdtemp(), log=None)
        >>> cv.metric, [(f.fold, f.train_size, f.val_size) for f in cv.folds]
        ('val_accuracy', [(1, 2, 2), (2, 2, 2)])
        >>> sorted(cv.summary)                            # mean and std of each over the folds
        ['val_accuracy', 'val_loss']
        >>> sorted(p.name for p in cv.out_dir.iterdir())
        ['cv.csv', 'cv.json', 'fold_1', 'fold_2', 'folds.npz']
    """
    check_metric(metric)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise SelectionError(f"--folds: must be an int >= 2, got {folds!r}")
    out_dir = check_fresh_dir(out or cfg["output"]["dir"] or Path("runs") / f"{cfg['name']}-cv")
    base = copy.deepcopy(cfg)
    base["data"]["validation"] = 0
    base["data"]["standardize"] = False  # fitted per fold below, on the fold's training part
    loaded = fnn_run.load_data(base)
    x, y = loaded["train"]["x"], loaded["train"]["y"]  # "test" is left alone
    n = len(x)
    if folds > n:
        raise SelectionError(f"--folds: {folds} folds need at least {folds} examples, the data "
                             f"has {n}")
    strata = _stratify_labels(y) if cfg["data"]["stratify"] else None
    assignment = kfold(n, int(folds), seed=cfg["seed"] if seed is None else seed,
                       stratify_labels=strata)
    train_idx, val_idx = assignment[0]  # every fold's run has the same shapes: check one
    check_trial(cfg, {"train": {"x": x[train_idx], "y": y[train_idx]},
                      "val": {"x": x[val_idx], "y": y[val_idx]}}, metric)
    out_dir, lock = locked_fresh_dir(out_dir)  # only now: every check passed
    with lock:
        if log:
            log(f"cross-validation: {folds} folds of {n} examples -> {out_dir}")
        results: list[FoldResult] = []
        for i, (train_idx, val_idx) in enumerate(assignment, start=1):
            train = {"x": x[train_idx], "y": y[train_idx]}
            val = {"x": x[val_idx], "y": y[val_idx]}
            if cfg["data"]["standardize"]:
                from fnn.data.tabular import Standardizer
                scaler = Standardizer.fit(train["x"])
                train["x"], val["x"] = scaler.transform(train["x"]), scaler.transform(val["x"])
            if log:
                log(f"fold {i}/{folds}: training on {len(train_idx)}, validating on {len(val_idx)}")
            result = train_model(cfg, train, val, out_dir / f"fold_{i}",
                                 log=prefixed_log(log, f"[fold {i}/{folds}]"))
            record = kept_record(result)
            results.append(FoldResult(i, train_idx, val_idx, int(record["epoch"]),
                                      val_metrics(record), out_dir / f"fold_{i}"))
            metric = metric or default_metric(record)
            if metric not in record:  # check_trial refused this before any folder; a guard
                raise SelectionError(f"--metric: {metric!r} is not logged; choose one of "
                                     f"{sorted(val_metrics(record))}")
        names = [k for k in results[0].metrics if all(k in f.metrics for f in results)]
        summary = {}
        for name in names:
            values = np.array([f.metrics[name] for f in results], np.float64)
            summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
        cv = CVResult(metric, results, summary, n, out_dir)
        write_cv(cv, cfg)
        if log:
            log(format_cv_table(cv))
            log(f"{metric}: {cv.mean:.4f} ± {cv.std:.4f} (mean ± std over {folds} folds)")
        return cv
