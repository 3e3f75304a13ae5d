"""Metric rules of model selection: which validation metric judges a model, in which direction,
which epoch's record counts, and which trial wins."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from fnn.selection.errors import SelectionError
from fnn.selection.results import Trial
from fnn.train import loop, tracker

__all__ = ["default_metric", "metric_mode", "check_metric", "kept_record", "val_metrics",
           "choose_best"]


def default_metric(record: Mapping[str, Any]) -> str:
    """``"val_accuracy"`` when an epoch record has it (classification), else ``"val_loss"``.

    Example:
        >>> default_metric({"epoch": 3, "loss": 0.2, "val_loss": 0.3, "val_accuracy": 0.9})
        'val_accuracy'
        >>> default_metric({"epoch": 3, "loss": 0.2, "val_loss": 0.3})
        'val_loss'
    """
    return tracker.default_metric(record)


def metric_mode(metric: str, mode: str = "auto") -> str:
    """``"max"`` or ``"min"``: ``auto`` is max for accuracies, min otherwise (losses); the rule
    ``fit`` uses for early stopping (:func:`fnn.train.tracker.metric_mode`).

    Example:
        >>> metric_mode("val_accuracy"), metric_mode("val_loss"), metric_mode("val_loss", "max")
        ('max', 'min', 'max')
    """
    try:
        return tracker.metric_mode(metric, mode)
    except ValueError:
        raise SelectionError(f"--mode: must be auto, min or max, got {mode!r}") from None


def check_metric(metric: str | None) -> None:
    """Refuse a selection metric that is not a validation metric (``val_*``); ``None`` (the
    default metric) passes.

    Example:
        >>> check_metric("val_loss")
        >>> check_metric("accuracy")
        Traceback (most recent call last):
        fnn.selection.errors.SelectionError: --metric: ... validation metrics only ...'accuracy'
    """
    if metric is not None and not str(metric).startswith("val_"):
        raise SelectionError(f"--metric: models are chosen by validation metrics only "
                             f"(val_loss, val_accuracy, ...), got {metric!r}")


def kept_record(result: loop.FitResult) -> dict[str, Any]:
    """The epoch record of the checkpoint a run keeps (``best``, else the last epoch).

    Example:
        >>> history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.3},
        ...            {"epoch": 3, "val_loss": 0.4}]
        >>> from fnn.train.loop import FitResult
        >>> kept_record(FitResult(None, history, best_epoch=2, stopped_early=True))
        {'epoch': 2, 'val_loss': 0.3}
        >>> kept_record(FitResult(None, history, best_epoch=None, stopped_early=False))
        {'epoch': 3, 'val_loss': 0.4}
    """
    return dict(tracker.kept_record(result.history, result.best_epoch))


def val_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The validation metrics (``val_*`` keys) of an epoch record, as floats.

    Example:
        >>> val_metrics({"epoch": 2, "loss": 0.2, "val_loss": 0.3, "val_accuracy": 1})
        {'val_loss': 0.3, 'val_accuracy': 1.0}
    """
    return {k: float(v) for k, v in record.items() if k.startswith("val_")}


def choose_best(trials: Sequence[Trial], mode: str) -> Trial:
    """The trial with the best finite score (``"max"`` or ``"min"``); ties go to the earlier one.

    Example:
        >>> import pathlib
        >>> trials = [Trial(0, {"optimizer.learning_rate": 0.1}, pathlib.Path("t0"), score=0.8),
        ...           Trial(1, {"optimizer.learning_rate": 0.01}, pathlib.Path("t1"), score=0.9),
        ...           Trial(2, {"optimizer.learning_rate": 10.0}, pathlib.Path("t2"),
        ...                 error="diverged: loss is nan")]
        >>> choose_best(trials, "max").setting
        {'optimizer.learning_rate': 0.01}
        >>> choose_best(trials, "min").index
        0
    """
    finite = [t for t in trials if t.score is not None and math.isfinite(t.score)]
    if not finite:
        reasons = "; ".join(f"trial {t.index}: {t.error or 'no score'}" for t in trials)
        raise SelectionError(f"no trial finished with a finite validation score: {reasons}")
    if mode == "max":
        return max(finite, key=lambda t: (t.score, -t.index))
    return min(finite, key=lambda t: (t.score, t.index))
