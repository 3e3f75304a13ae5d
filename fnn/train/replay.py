"""Replay the step where a training run's loss turned non-finite, and say which layer did it.

When :func:`fnn.train.fit` stops on a NaN/Inf loss, :func:`replay_divergence` starts again from
the last good checkpoint (the previous epoch's ``latest``, or a step checkpoint inside the
failing epoch; the run's initial state in its first epoch without one), runs the epoch's steps
from there on the same batches with the same rngs until the first step whose loss or updated
params are non-finite, and replays that step with :func:`fnn.localize.localize`. A
data-parallel run is replayed on one device: the global batch and the rngs are the same.
Batches of an iterable or a ``Loader`` cannot be drawn again: the report says so.
The result goes to ``run_dir/doctor.json`` (written atomically; ``fnn doctor`` prints it) and
to the stop message.

``doctor.json``::

    {"step": 7, "epoch": 1, "fault": {"layer": "block/log_0", "kind": "Log",
     "direction": "forward", "rows": [3, 5], "copy": null, "value": "nan", "where": ""},
     "examples": [812, 4021], "from_step": 4, "note": ""}

``rows`` are positions in the step's batch, ``examples`` the same examples' indices in the
training arrays, ``from_step`` the step count of the state the replay started from (``null``:
no replay; ``note`` says why).
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
        start: the last good train state (``None``: it cannot be had; only a note is
            written).
        batch_rows: ``i -> indices`` of the training examples of the ``i``-th step after
            ``start`` (from 0).
        rows_of: ``indices -> batch`` (host arrays ``{"x", "y"}``).
        first_step: the step count of ``start``.
        bad_step: the (1-based) step whose loss was non-finite.
        epoch: the epoch (0-based).
        augment: the run's augmentation (applied with the step's rng, as the step does).
        run_dir: where ``doctor.json`` goes (``None``: nothing is written).
        note: why ``start`` is ``None``.
    """
    report: dict[str, Any] = {"step": bad_step, "epoch": epoch + 1, "fault": None,
                              "examples": [], "from_step": None, "note": note}
    if start is not None and batch_rows is not None:
        report["from_step"] = first_step
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
                  augment: Callable | None, pending: Callable[[], None] | None = None) -> str:
    """:func:`replay_divergence` for :func:`fnn.train.fit`.

    The replay starts from the last good checkpoint, whichever it is: ``latest`` (``template``
    gives its shapes) written at the end of the previous epoch, or a step checkpoint
    (``training.checkpoint``) written inside the failing epoch, whose step count gives its
    offset in the epoch; in the first epoch of a run without one, ``initial()``. The batches
    are drawn as ``fit`` draws them (the epoch's order from ``data_key``), from that offset on.

    ``step_fn`` is a one-device step: a data-parallel run (``pmap``, ``mesh``, ``fsdp``) is
    replayed on one device, on the same global batch with the same rngs (fnn's randomness does
    not depend on the device count), so the same values up to the rounding of the reductions.

    Args:
        bad_step: the (1-based) step whose loss was non-finite; negative: a loss that exploded
            (finite), recorded, not replayed.
        first_step: the step count at the start of ``epoch``.
        pending: waits for a checkpoint being written in the background (it is a good one).
    """
    from fnn.train.data import ArraySource
    from fnn.train.loop import batch_order

    start, note, at = None, "", first_step
    if bad_step < 0:
        bad_step = -bad_step
        note = ("the loss exploded past training.divergence.factor (finite: nothing to "
                "localise)")
    elif not isinstance(train, ArraySource) or batch_size is None:
        note = ("the training data is an iterable or a Loader (a stream): its batches cannot "
                "be drawn again; call fnn.doctor.localize on the failing step's batch")
    else:
        try:
            start, at, note = _replay_start(folder, template, initial, epoch, first_step,
                                            bad_step, pending)
        except Exception as e:  # noqa: BLE001 - the stop's own message must not be lost to it
            note = (f"the last good checkpoint could not be read ({type(e).__name__}: "
                    f"{' '.join(str(e).split())})")
    batch_rows = rows_of = None
    if start is not None:
        order = np.asarray(batch_order(data_key, epoch, train.num_examples))
        order = order[(at - first_step) * batch_size:]  # from the checkpoint's step on
        batch_rows = lambda i: order[i * batch_size:(i + 1) * batch_size]  # noqa: E731
        rows_of = train.rows
    return replay_divergence(net, loss, step_fn, start, batch_rows, rows_of,
                             first_step=at, bad_step=bad_step, epoch=epoch,
                             augment=augment, run_dir=folder.path if folder.writes else None,
                             note=note)


def _replay_start(folder: Any, template: Any, initial: Callable[[], Any] | None, epoch: int,
                  first_step: int, bad_step: int, pending: Callable[[], None] | None
                  ) -> tuple[Any, int, str]:
    """``(state, its step count, note)``: the ``latest`` checkpoint when it lies inside the
    failing epoch (``first_step <= step < bad_step``), else the initial state in the first
    epoch, else ``(None, first_step, why)``."""
    if pending is not None:
        pending()
    if folder.has("latest"):
        start = folder.load("latest", template)[0]
        at = int(np.asarray(start.step))
        if first_step <= at < bad_step:
            return start, at, ""
        return None, first_step, (f"the latest checkpoint (step {at}) is not inside the failing "
                                  f"epoch (steps {first_step + 1}-{bad_step})")
    if initial is not None and epoch == 0:
        return initial(), first_step, ""
    return None, first_step, "no checkpoint of the epoch's start (fit(..., run=...))"
