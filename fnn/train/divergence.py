"""The divergence stop: a NaN/Inf loss, or one far above the loss at the start of training.

The reference is the loss at the start of training: the first step's loss until
:data:`START_STEPS` steps have run, then the median of those first steps (one noisy first batch
does not set it). Every step's loss is compared with it, from the second step on, so a run that
explodes inside its first epoch is stopped at the step where it does. The first steps' losses
are kept in the checkpoint (:meth:`Divergence.state_dict`), so a resumed run compares against
the same reference.

Example:
    >>> check = Divergence(factor=100.0)
    >>> check.update(np.array([2.0, 1.5, 1.2, 1.1]), first_step=0, epoch=0)
    >>> check.update(np.array([1.0, 3e2]), first_step=4, epoch=1)
    Traceback (most recent call last):
    fnn.train.divergence.TrainingDiverged: the training loss exploded to 300 at step 6
    (epoch 2), over 100 x the loss at the start of training 2 (the first step's) ...
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["TrainingDiverged", "Divergence", "START_STEPS"]

START_STEPS = 10  # the median of this many first steps is the start-of-training loss


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite, or exploded; the message names the step and the last
    good checkpoint."""


class Divergence:
    """Stop on a NaN/Inf loss, or one past ``factor`` x the loss at the start of training.

    Args:
        factor: how far above the start-of-training loss (at least 1e-3) a step's loss may go;
            ``None``: only NaN/Inf stop the run.
        start_losses: the first steps' losses of a run being resumed (from :meth:`state_dict`).
    """

    def __init__(self, factor: float | None, start_losses: Any = ()):
        self.factor = factor
        self.start_losses = [float(v) for v in start_losses]

    @property
    def reference(self) -> float | None:
        """The start-of-training loss: the first step's, or the median of the first steps'."""
        if not self.start_losses:
            return None
        if len(self.start_losses) < START_STEPS:
            return self.start_losses[0]
        return float(np.median(self.start_losses))

    def _describe(self) -> str:
        which = ("the first step's" if len(self.start_losses) < START_STEPS
                 else f"the median of the first {START_STEPS} steps")
        return f"{self.reference:.4g} ({which})"

    def update(self, losses: np.ndarray, first_step: int, epoch: int,
               last_good: str = "no checkpoint was written yet", *,
               locate: Callable[[int], str] | None = None) -> None:
        """Check the losses of steps ``first_step + 1 ...`` (in ``epoch``, counted from 0).

        ``locate(step)`` replays a non-finite step and names the first layer that turned
        non-finite (:mod:`fnn.train.replay`, for ``fnn doctor``); ``locate(-step)`` records an
        exploded (finite) one.

        Raises:
            TrainingDiverged: naming the step, the epoch and ``last_good`` (where to go back to).
        """
        losses = np.asarray(losses, np.float64).reshape(-1)
        if not np.all(np.isfinite(losses)):
            bad = int(np.argmax(~np.isfinite(losses)))
            where = locate(first_step + bad + 1) if locate is not None else ""
            raise TrainingDiverged(f"the training loss became {losses[bad]} at step "
                                   f"{first_step + bad + 1} (epoch {epoch + 1}); "
                                   f"{where + '; ' if where else ''}{last_good}")
        for i, value in enumerate(losses):
            fixed = len(self.start_losses) >= START_STEPS  # the reference no longer moves
            bad = self._first_over(losses[i:] if fixed else losses[i:i + 1])
            if bad is not None:
                if locate is not None:  # doctor.json records the stop for `fnn doctor`
                    locate(-(first_step + i + bad + 1))
                raise TrainingDiverged(
                    f"the training loss exploded to {losses[i + bad]:.4g} at step "
                    f"{first_step + i + bad + 1} (epoch {epoch + 1}), over {self.factor:g} x "
                    f"the loss at the start of training {self._describe()} "
                    f"(training.divergence.factor); {last_good}")
            if fixed:
                return
            self.start_losses.append(float(value))

    def _first_over(self, losses: np.ndarray) -> int | None:
        """The index of the first loss past the limit, if any."""
        if self.factor is None or self.reference is None:
            return None
        over = np.abs(losses) > self.factor * max(abs(self.reference), 1e-3)
        return int(np.argmax(over)) if np.any(over) else None

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps to resume the check."""
        return {"start_losses": list(self.start_losses)}

    @classmethod
    def from_progress(cls, factor: float | None, progress: Mapping[str, Any]) -> "Divergence":
        """The check of a resumed run: its stored first losses, else (a checkpoint written
        before they were stored) the first epoch's mean loss."""
        if "start_losses" in progress:
            return cls(factor, progress["start_losses"])
        history = progress.get("history") or []
        return cls(factor, [history[0]["train_loss"]] if history else [])
