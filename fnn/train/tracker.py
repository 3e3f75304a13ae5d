"""The best epoch and early stopping: one tracker for ``fit`` and for model selection.

A :class:`Tracker` follows one monitored value (``val_loss``, ``val_accuracy``...) epoch by
epoch: whether this epoch improved on the best so far, which epoch was best, and how many epochs
have passed without improvement. ``fit`` uses it to keep ``best.safetensors`` and to stop early;
``fnn.selection`` uses the same rules (:func:`metric_mode`, :func:`default_metric`,
:func:`kept_record`) to score a run by the epoch it kept.

Example:
    >>> t = Tracker(EarlyStopping("val_loss", patience=2))
    >>> [t.update({"val_loss": v}, epoch) for epoch, v in enumerate([0.5, 0.4, 0.45, 0.41], 1)]
    [True, True, False, False]
    >>> t.best_epoch, t.should_stop
    (2, True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

__all__ = ["EarlyStopping", "Tracker", "metric_mode", "default_metric", "kept_record"]


def metric_mode(metric: str, mode: str = "auto") -> str:
    """``"max"`` or ``"min"``: ``auto`` is max for accuracies (``"acc"`` in the name), else min."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode: must be auto, min or max, got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in metric else "min"
    return mode


def default_metric(record: Mapping[str, Any]) -> str:
    """``"val_accuracy"`` when an epoch record has it (classification), else ``"val_loss"``."""
    return "val_accuracy" if "val_accuracy" in record else "val_loss"


def kept_record(history: Sequence[Mapping[str, Any]], best_epoch: int | None) -> Mapping[str, Any]:
    """The epoch record of the checkpoint a run keeps (``best_epoch``'s, else the last one)."""
    if best_epoch is not None:
        for record in history:
            if record["epoch"] == best_epoch:
                return record
    return history[-1]


@dataclasses.dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Attributes:
        monitor: a key of the epoch record, e.g. ``"val_loss"`` or ``"val_accuracy"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracies, min otherwise).
        patience: epochs without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        restore_best: end with the params of the best epoch.
    """

    monitor: str = "val_loss"
    mode: str = "auto"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` (``None``: nothing yet, so it does)."""
        if best is None:
            return True
        if metric_mode(self.monitor, self.mode) == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta


class Tracker:
    """The best value of a monitored metric so far, its epoch, and epochs without improvement.

    Args:
        early_stopping: an :class:`EarlyStopping`, whose monitor, mode and patience are used;
            ``None``: follow ``val_accuracy`` or ``val_loss``, whichever the first record has,
            and never stop (only the best epoch is tracked). Without validation there is no
            best epoch.
    """

    def __init__(self, early_stopping: EarlyStopping | None = None):
        self.rule = early_stopping
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.waited = 0

    def update(self, record: Mapping[str, Any], epoch: int) -> bool:
        """Take one epoch's record; returns whether it is the best so far."""
        rule = self.rule
        if rule is None:
            if not any(k.startswith("val_") for k in record):
                return False  # no validation: no best epoch
            rule = EarlyStopping(default_metric(record))
        if rule.monitor not in record:
            raise ValueError(f"early_stopping.monitor: {rule.monitor!r} is not logged; choose one "
                             f"of {sorted(record)}")
        value = record[rule.monitor]
        if math.isfinite(value) and rule.better(value, self.best_value):
            self.best_value, self.best_epoch, self.waited = value, epoch, 0
            return True
        self.waited += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Whether early stopping's patience has run out."""
        return self.rule is not None and self.waited >= self.rule.patience

    def stop_message(self) -> str:
        return (f"early stopping: {self.rule.monitor} did not improve for {self.rule.patience} "
                f"epochs (best {self.best_value:.6g} at epoch {self.best_epoch})")

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume the tracker."""
        return {"best_value": self.best_value, "best_epoch": self.best_epoch,
                "waited": self.waited}

    def load_state_dict(self, progress: Mapping[str, Any]) -> None:
        self.best_value = progress["best_value"]
        self.best_epoch = progress["best_epoch"]
        self.waited = progress["waited"]
