"""The records model selection returns: a fold and a cross-validation, a trial and a sweep."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FoldResult", "CVResult", "Trial", "SweepResult"]


@dataclasses.dataclass
class FoldResult:
    """One fold of a cross-validation.

    Attributes:
        fold: 1-based fold number.
        train_idx, val_idx: ``int64`` indices into the cross-validated data (the config's
            non-test data), sorted and disjoint.
        epoch: the epoch whose record is reported (the kept checkpoint's).
        metrics: that epoch's validation metrics, e.g. ``{"val_loss": ..., "val_accuracy": ...}``.
        run_dir: the fold's folder (metrics.jsonl, checkpoints).

    Example:
        >>> import pathlib
        >>> f = FoldResult(1, np.arange(2, 6), np.arange(2), 7, {"val_loss": 0.3},
        ...                pathlib.Path("cv/fold_1"))
        >>> f.train_size, f.val_size
        (4, 2)
    """

    fold: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    epoch: int
    metrics: dict[str, float]
    run_dir: Path

    @property
    def train_size(self) -> int:
        """Examples the fold's model was trained on."""
        return int(len(self.train_idx))

    @property
    def val_size(self) -> int:
        """Examples it was validated on."""
        return int(len(self.val_idx))


@dataclasses.dataclass
class CVResult:
    """A cross-validation: per-fold results and their mean and standard deviation.

    Attributes:
        metric: the headline metric (``val_accuracy`` for classification, else ``val_loss``).
        folds: one :class:`FoldResult` per fold.
        summary: ``{metric: {"mean": m, "std": s}}`` for every validation metric; ``std`` is the
            sample standard deviation over folds (``ddof=1``).
        num_examples: the size of the cross-validated data (the folds' validation sets cover it).
        out_dir: the folder with ``cv.json``, ``cv.csv``, ``folds.npz`` and ``fold_<i>/``.

    Example:
        >>> import pathlib
        >>> cv = CVResult("val_loss", [], {"val_loss": {"mean": 0.3, "std": 0.1}}, 10,
        ...               pathlib.Path("cv"))
        >>> cv.mean, cv.std
        (0.3, 0.1)
    """

    metric: str
    folds: list[FoldResult]
    summary: dict[str, dict[str, float]]
    num_examples: int
    out_dir: Path

    @property
    def mean(self) -> float:
        """Mean of the headline metric over folds."""
        return self.summary[self.metric]["mean"]

    @property
    def std(self) -> float:
        """Sample standard deviation (``ddof=1``) of the headline metric over folds."""
        return self.summary[self.metric]["std"]


@dataclasses.dataclass
class Trial:
    """One setting of a sweep and how its model did on validation.

    Attributes:
        index: 0-based trial number (its folder is ``trial_<index>``).
        setting: ``{dotted key: value}`` applied to the base config.
        run_dir: the trial's run folder.
        score: the selection metric at the kept checkpoint (NaN if training failed).
        epoch: that checkpoint's epoch (``None`` if training failed).
        metrics: all validation metrics at that epoch.
        error: why training failed (e.g. the loss diverged), else ``None``.

    Example:
        >>> import pathlib
        >>> t = Trial(0, {"optimizer.learning_rate": 0.1}, pathlib.Path("sweep/trial_00"))
        >>> t.score, t.epoch, t.error                     # not trained yet
        (nan, None, None)
    """

    index: int
    setting: dict[str, Any]
    run_dir: Path
    score: float = math.nan
    epoch: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None


@dataclasses.dataclass
class SweepResult:
    """A finished sweep: every trial, the winner by validation, and the winner's test metrics.

    Attributes:
        metric, mode: what was compared (e.g. ``"val_accuracy"``, ``"max"``).
        trials: every :class:`Trial`, in order.
        best: the winning trial.
        test: the winner's test metrics (its ``test.json``), or ``None`` when the data has no
            test set or ``evaluate_test=False``.
        out_dir: the sweep folder.
    """

    metric: str
    mode: str
    trials: list[Trial]
    best: Trial
    test: dict[str, Any] | None
    out_dir: Path
