"""Replay the step where a training run's loss turned non-finite, and say which layer did it.

When :func:`fnn.train.fit` stops on a NaN/Inf loss, :func:`replay_divergence` starts again from
the epoch's first state (the last good checkpoint, or the run's initial state in its first
epoch), runs the epoch's steps on the same batches with the same rngs until the first step whose
loss or updated params are non-finite, and replays that step with :func:`fnn.localize.localize`.
The result goes to ``run_dir/doctor.json`` (written atomically; ``fnn doctor`` prints it) and
to the stop message.

``doctor.json``::

    {"step": 7, "epoch": 1, "fault": {"layer": "block/log_0", "kind": "Log",
     "direction": "forward", "rows": [3, 5], "copy": null, "value": "nan", "where": ""},
     "examples": [812, 4021], "note": ""}

``rows`` are positions in the step's batch, ``examples`` the same examples' indices in the
training arrays.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from fnn.core import Layer
from fnn.files import atomic_write
from fnn.localize import localize

__all__ = ["replay_divergence", "REPORT"]

REPORT = "doctor.json"


def _finite(tree: Any) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(leaf))))
               for leaf in jax.tree_util.tree_leaves(tree)
               if np.issubdtype(np.asarray(leaf).dtype, np.inexact))


def replay_divergence(net: Layer, loss: Callable, step_fn: Callable, start: Any,
                      batch_rows: Callable[[int], np.ndarray] | None,
                      rows_of: Callable[[np.ndarray], dict] | None, *, first_step: int,
                      bad_step: int, epoch: int, augment: Callable | None = None,
                      run_dir: str | Path | None = None, note: str = "") -> str:
    """Find the first non-finite value of a diverged epoch; returns a clause for the stop message.

    Args:
        net, loss, step_fn: the network, the loss and the un-jitted train step of the run.
        start: the train state at the start of the epoch (``None``: it cannot be had; only a
            note is written).
        batch_rows: ``i -> indices`` of the training examples of the epoch's ``i``-th step.
        rows_of: ``indices -> batch`` (host arrays ``{"x", "y"}``).
        first_step: the step count at the start of the epoch.
        bad_step: the (1-based) step whose loss was non-finite.
        epoch: the epoch (0-based).
        augment: the run's augmentation (applied with the step's rng, as the step does).
        run_dir: where ``doctor.json`` goes (``None``: nothing is written).
        note: why ``start`` is ``None``.
    """
    report: dict[str, Any] = {"step": bad_step, "epoch": epoch + 1, "fault": None,
                              "examples": [], "note": note}
    if start is not None and batch_rows is not None:
        try:
            _replay(net, loss, step_fn, start, batch_rows, rows_of, first_step, bad_step,
                    augment, report)
        except Exception as e:  # noqa: BLE001 - the stop's own message must not be lost to it
            report["note"] = f"the replay failed ({type(e).__name__}: {' '.join(str(e).split())})"
    if run_dir is not None:
        atomic_write(Path(run_dir) / REPORT, (json.dumps(report) + "\n").encode())
    return _clause(report, run_dir)


def _replay(net, loss, step_fn, start, batch_rows, rows_of, first_step, bad_step, augment,
            report) -> None:
    """Run the epoch's steps from ``start``; localise the first one that turns non-finite."""
    step = jax.jit(step_fn)
    ts = start
    for i in range(bad_step - first_step):
        indices = np.asarray(batch_rows(i))
        batch = rows_of(indices)
        new_ts, metrics = step(ts, batch)
        if _finite(metrics["loss"]) and _finite(new_ts.params):
            ts = new_ts
            continue
        _, step_rng = jax.random.split(ts.rng)  # as the train step splits it
        x = batch["x"]
        if augment is not None:
            step_rng, aug_rng = jax.random.split(step_rng)
            x = augment(aug_rng, x)
        fault = localize(net, ts.params, ts.model_state, {"x": x, "y": batch["y"]}, loss,
                         rng=step_rng)
        report["step"] = first_step + i + 1
        if fault is None:
            report["note"] = ("the replayed step was finite in every layer and gradient: "
                              "the optimizer's update overflowed (optimizer.learning_rate)")
        else:
            report["fault"] = fault.record()
            report["examples"] = [int(indices[r]) for r in fault.rows if r < len(indices)]
        break
    else:
        report["note"] = "the replay did not reproduce the non-finite loss"


def _clause(report: dict[str, Any], run_dir: str | Path | None) -> str:
    saved = f" ({Path(run_dir) / REPORT})" if run_dir is not None else ""
    fault = report["fault"]
    if fault is None:
        return f"not localised: {report['note']}{saved}" if report["note"] else ""
    from fnn.localize import Fault
    f = Fault(**{**fault, "rows": tuple(fault["rows"])})
    return f"first non-finite value at step {report['step']}: {f.describe()}{saved}"


def locate_in_fit(bad_step: int, *, net: Layer, loss: Callable, step_fn: Callable, train: Any,
                  batch_size: int | None, data_key: jax.Array, epoch: int, first_step: int,
                  folder: Any, template: Any, initial: Callable[[], Any] | None,
                  augment: Callable | None, num_devices: int) -> str:
    """:func:`replay_divergence` for :func:`fnn.train.fit`: the epoch's first state is the
    ``latest`` checkpoint (``template`` gives its shapes) or, in the first epoch of a run
    without one, ``initial()``; the batches are drawn as ``fit`` draws them. A negative
    ``bad_step`` is a loss that exploded (finite): it is recorded, not replayed."""
    from fnn.train.data import ArraySource
    from fnn.train.loop import batch_order

    start, note = None, ""
    if bad_step < 0:
        bad_step = -bad_step
        note = ("the loss exploded past training.divergence.factor (finite: nothing to "
                "localise)")
    elif not isinstance(train, ArraySource) or batch_size is None:
        note = "the training data is a Loader or an iterable: its batches cannot be replayed"
    elif num_devices > 1:
        note = "a data-parallel step is not replayed: rerun on one device (parallel.mode: none)"
    elif folder.has("latest"):
        start = folder.load("latest", template)[0]
    elif initial is not None and epoch == 0:
        start = initial()
    else:
        note = "no checkpoint of the epoch's start (fit(..., run=...))"
    batch_rows = rows_of = None
    if start is not None:
        order = np.asarray(batch_order(data_key, epoch, train.num_examples))
        batch_rows = lambda i: order[i * batch_size:(i + 1) * batch_size]  # noqa: E731
        rows_of = train.rows
    return replay_divergence(net, loss, step_fn, start, batch_rows, rows_of,
                             first_step=first_step, bad_step=bad_step, epoch=epoch,
                             augment=augment, run_dir=folder.path if folder.writes else None,
                             note=note)
