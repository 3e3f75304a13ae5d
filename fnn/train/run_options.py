"""``RunOptions``: everything :func:`fnn.train.fit` reads from or writes to a run folder.

One small frozen record instead of nine keywords of ``fit``: the folder, whether to resume from
it, what its checkpoints hold (metadata) and when they are written, gradient-flow diagnostics,
experiment trackers and a profiler trace. ``fit(..., run="runs/x")`` is shorthand for
``fit(..., run=RunOptions("runs/x"))``; without ``run`` nothing is written. Every field is
checked when the record is made, with a one-line error naming it.

Example:
    >>> import dataclasses, tempfile
    >>> run = RunOptions(tempfile.mkdtemp(), checkpoint=fnn.train.Checkpointing(every_steps=2),
    ...                  log_every=1)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(32, 3)).astype(np.float32)
    >>> data = {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}
    >>> net = fnn.serial(fnn.Dense(4), fnn.Relu, fnn.Dense(2))
    >>> result = fnn.train.fit(net, fnn.losses.softmax_cross_entropy, optax.sgd(0.1), data,
    ...                        epochs=1, batch_size=8, run=run, log=None)
    >>> sorted(p.name for p in (run.dir / "checkpoints").glob("*.safetensors"))
    ['latest.safetensors', 'step-2.safetensors']
    >>> later = dataclasses.replace(run, resume=True)       # continue the same folder
    >>> RunOptions("runs/x", log_every=0)
    Traceback (most recent call last):
    ValueError: RunOptions.log_every: must be an int >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fnn.train.checkpointing import Checkpointing

__all__ = ["RunOptions", "as_run_options"]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The run folder of :func:`fnn.train.fit` and what goes into it.

    Attributes:
        dir: the folder (``metrics.jsonl``, ``checkpoints/``, ...); a ``str`` becomes a
            ``Path``.
        resume: continue from ``dir/checkpoints/latest.safetensors`` if it exists (at the next
            step when it was written inside an epoch).
        reset_optimizer: on resume, restore everything but the optimizer state, which starts
            afresh (``optimizer.init`` of the restored params): resuming with another optimizer.
        metadata: JSON-able data saved in every checkpoint (e.g. the run's config).
        checkpoint: a :class:`~fnn.train.checkpointing.Checkpointing`: write ``latest`` inside
            epochs too, every N steps and/or M minutes, in the background (``"epoch"`` mode then
            scans each epoch in chunks). SIGTERM or SIGINT then finishes the current step
            (chunk), writes ``latest`` and raises :class:`~fnn.train.checkpointing.Preempted`;
            a second signal ends the process. ``None``: ``latest`` at epoch ends only.
        diagnostics: every this many steps, log gradient-flow diagnostics of the first
            training batch to ``dir/diagnostics.jsonl`` and ``gradflow.png``
            (:class:`fnn.diagnostics.Diagnostics`; in ``"epoch"`` mode at the end of the
            epochs or scan chunks in which such a step falls). ``None``: none, no cost.
        trackers: send the run's events to ``"tensorboard"``, ``"mlflow"``, ``"csv"`` (names,
            or :class:`fnn.trackers.RunTracker` objects) in ``dir``: per-step values every
            ``log_every`` steps (loss, metrics, learning rate, gradient norm -- computed in
            the train step at those steps when there are trackers, which leaves the params
            unchanged bit for bit -- and examples/s: the epoch's rate in ``"epoch"`` mode, the
            rate over the last ``log_every`` steps in ``"step"`` mode), epoch records, the
            diagnostics (TensorBoard: with per-layer histograms) and ``metadata["config"]``
            (see :mod:`fnn.trackers`).
        log_every: the step interval of the trackers' per-step values.
        profile: write a ``jax.profiler`` trace of this many first steps (compilation
            included) to ``dir/profile``.
    """

    dir: Path
    _: dataclasses.KW_ONLY
    resume: bool = False
    reset_optimizer: bool = False
    metadata: Mapping[str, Any] | None = None
    checkpoint: Checkpointing | None = None
    diagnostics: int | None = None
    trackers: Sequence[Any] = ()
    log_every: int = 10
    profile: int | None = None

    def __post_init__(self):
        if isinstance(self.dir, bytes) or not isinstance(self.dir, (str, os.PathLike)) \
                or str(self.dir) == "":
            raise ValueError(f"RunOptions.dir: must be a folder (a str or Path), got "
                             f"{self.dir!r}; for a run that writes nothing, pass no run to fit")
        object.__setattr__(self, "dir", Path(self.dir))
        for name in ("resume", "reset_optimizer"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RunOptions.{name}: must be True or False, got "
                                 f"{getattr(self, name)!r}")
        if self.metadata is not None and not isinstance(self.metadata, Mapping):
            raise ValueError(f"RunOptions.metadata: must be a dict (or None), got "
                             f"{type(self.metadata).__name__}")
        if self.checkpoint is not None and not isinstance(self.checkpoint, Checkpointing):
            raise ValueError(f"RunOptions.checkpoint: must be a fnn.train.Checkpointing (or "
                             f"None), got {self.checkpoint!r}")
        for name in ("diagnostics", "profile"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name), " (or None)")
        _positive_int("log_every", self.log_every, "")
        if isinstance(self.trackers, (str, bytes)) or not isinstance(self.trackers, Sequence):
            raise ValueError(f"RunOptions.trackers: must be a list of tracker names or objects, "
                             f"got {self.trackers!r} (e.g. trackers=['csv'])")
        object.__setattr__(self, "trackers", tuple(self.trackers))


def _positive_int(name: str, value: Any, alternative: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"RunOptions.{name}: must be an int >= 1{alternative}, got {value!r}")


def as_run_options(run: "RunOptions | str | os.PathLike | None") -> RunOptions | None:
    """``fit``'s ``run``: a :class:`RunOptions`, a folder (``RunOptions(folder)``), or ``None``
    (no folder: nothing is written)."""
    if run is None or isinstance(run, RunOptions):
        return run
    if isinstance(run, (str, os.PathLike)):
        return RunOptions(run)
    raise ValueError(f"fit: run must be a folder (str or Path) or a fnn.train.RunOptions, "
                     f"got {type(run).__name__}")
