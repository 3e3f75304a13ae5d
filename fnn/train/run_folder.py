"""A training run's folder: its paths, the metrics log and the train-state checkpoints.

::

    <run_dir>/metrics.jsonl                one JSON object per epoch (appended, see fnn.logs)
    <run_dir>/checkpoints/latest.safetensors   the train state after the last epoch
    <run_dir>/checkpoints/best.safetensors     the train state of the best epoch

A checkpoint holds the whole train state (params, model state, optimizer state, step, rng),
the loop's progress (epoch, history, tracker) to resume from, the caller's metadata (e.g. the
config) and the network's spec where it is plain data. ``RunFolder(None)`` writes nothing.

Example:
    >>> import tempfile
    >>> from fnn.train.state import init_train_state
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
    >>> _, train_state = init_train_state(net, optax.adam(1e-3), (-1, 4), jax.random.key(0))
    >>> folder = RunFolder(tempfile.mkdtemp())
    >>> folder.save("latest", train_state, net, {"epoch": 1, "history": []}, {"note": "demo"})
    >>> folder.has("latest"), folder.checkpoint("latest").name
    (True, 'latest.safetensors')
    >>> ts, progress = folder.load("latest", template=train_state)
    >>> progress
    {'epoch': 1, 'history': []}
    >>> bool(jnp.all(ts.params["dense_0"]["w"] == train_state.params["dense_0"]["w"]))
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fnn import logs
from fnn.core import Layer
from fnn.train import checkpoint as ckpt
from fnn.train.state import TrainState

__all__ = ["RunFolder"]


class RunFolder:
    """The files of one run; every method is a no-op when ``path`` is ``None`` or ``writes`` is false.

    Opening a folder that writes removes the temporary files of a write killed midway.

    Args:
        path: the run folder (``None``: an in-memory run).
        writes: whether this process writes (only process 0 does in a multi-process run).
    """

    def __init__(self, path: str | Path | None, writes: bool = True):
        self.path = Path(path) if path is not None else None
        self.writes = writes and self.path is not None
        if self.writes:  # leftovers of a write killed midway
            ckpt.clean_temporary_files(self.path)
            ckpt.clean_temporary_files(self.path / "checkpoints")

    def checkpoint(self, which: str) -> Path | None:
        """``checkpoints/<which>.safetensors`` (``None`` for an in-memory run)."""
        return self.path / "checkpoints" / f"{which}.safetensors" if self.path else None

    def has(self, which: str) -> bool:
        path = self.checkpoint(which)
        return path is not None and path.exists()

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl`` (a line, flushed; strict JSON)."""
        if self.writes:
            logs.append_record(self.path / "metrics.jsonl", record)

    def trim_metrics(self, last_step: int) -> None:
        """Keep the ``metrics.jsonl`` records up to ``last_step`` (the step a run starts from:
        a resumed checkpoint's, or -1 for a fresh run); rewritten once, only if that changes it."""
        if self.writes:
            logs.trim_records(self.path / "metrics.jsonl", last_step)

    def save(self, which: str, ts: TrainState, net: Layer, progress: dict[str, Any],
             metadata: dict[str, Any] | None) -> None:
        """Write the train state and the loop's progress to ``checkpoints/<which>``."""
        if self.writes:
            self.save_to(self.checkpoint(which), ts, net, progress, metadata)

    def save_to(self, path: Path, ts: TrainState, net: Layer, progress: dict[str, Any],
                metadata: dict[str, Any] | None) -> None:
        """Write a train-state checkpoint to ``path`` (atomic, checksummed), as :meth:`save`."""
        meta = {"kind": "train_state", "progress": progress, **(metadata or {})}
        try:
            spec = net.spec
            json.dumps(spec)
            meta["spec"] = spec
        except (TypeError, ValueError):  # a hand-made layer or a function argument: weights only
            pass
        ckpt.save_tree(path, {f: getattr(ts, f) for f in TrainState._fields}, meta)

    def save_epoch(self, history: list[dict[str, Any]], progress: dict[str, Any], improved: bool,
                   ts: TrainState, net: Layer, metadata: dict[str, Any] | None) -> None:
        """After an epoch: the metrics log, ``latest``, and ``best`` when the epoch ``improved``."""
        self.append_metrics(history[-1])
        progress = {**progress, "history": history}
        for which in (("best", "latest") if improved else ("latest",)):
            self.save(which, ts, net, progress, metadata)

    def load(self, which: str, template: TrainState, skip: tuple[str, ...] = ()
             ) -> tuple[TrainState, dict[str, Any]]:
        """The train state of ``checkpoints/<which>`` (shaped like ``template``) and its progress;
        the fields in ``skip`` are kept from ``template`` (e.g. a reset optimizer state)."""
        path = self.checkpoint(which)
        arrays, meta = ckpt.read_checkpoint(path)  # one read, every checksum checked
        restored = TrainState(*(getattr(template, f) if f in skip else
                                ckpt.restore_like(getattr(template, f), arrays, f, source=path)
                                for f in TrainState._fields))
        return restored, meta.get("progress", {})
