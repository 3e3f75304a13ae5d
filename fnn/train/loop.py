"""``fit``: the training loop, from arrays to a trained train state, with a run folder.

Two modes run the same step:

* ``"epoch"`` -- the training set is put on the device once and each epoch is one compiled
  ``lax.scan`` over its steps, shuffling included (no per-step Python dispatch);
* ``"step"`` -- one jitted step per batch, batches shuffled on the host and prefetched to the
  device while the previous step runs (for data that does not fit on the device).

Both draw each epoch's order from ``(seed, epoch)`` the same way, so they visit the same
batches. Evaluation pads the last partial batch with a zero mask: one compilation, every
example counted. With ``run_dir`` the loop writes ``metrics.jsonl`` (one JSON object per epoch),
``checkpoints/latest.safetensors`` after every epoch and ``checkpoints/best.safetensors`` when
the monitored metric improves; ``resume=True`` continues from ``latest`` and ends with the same
params, bit for bit, as a run that was never stopped.

``parallel="pmap"`` or ``"mesh"`` (with ``devices``) runs the same step data-parallel over
several devices, and over several processes after :func:`fnn.train.parallel.initialize`; see
:mod:`fnn.train.parallel` and ``docs/DISTRIBUTED.md``. Each process feeds only its slice of every
global batch, only process 0 writes the run folder and logs, and checkpoints hold one
unreplicated copy of the state, so a run resumes on any number of devices.

Example:
    >>> result = fnn.train.fit(net, fnn.losses.softmax_cross_entropy, optax.adam(1e-3),
    ...                        {"x": x_train, "y": y_train}, {"x": x_val, "y": y_val},
    ...                        epochs=10, batch_size=128, metrics={"accuracy": correct})
    >>> result.history[-1]["val_accuracy"]
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.core import Layer
from fnn.data.pipeline import prefetch_to_device
from fnn.optim import learning_rate_of
from fnn.train.parallel import DataParallel, as_data_parallel, synchronize
from fnn.train import checkpoint as ckpt
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import eval_step_fn, train_step_fn

__all__ = ["fit", "evaluate", "FitResult", "EarlyStopping", "TrainingDiverged", "batch_order",
           "prefetch"]


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


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
        if best is None:
            return True
        mode = self.mode
        if mode == "auto":
            mode = "max" if "acc" in self.monitor else "min"
        if mode == "max":
            return value > best + self.min_delta
        return value < best - self.min_delta


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: the final train state, one record per epoch, and the best epoch."""

    train_state: TrainState
    history: list[dict[str, Any]]
    best_epoch: int | None
    stopped_early: bool


def batch_order(seed_key: jax.Array, epoch: int, num_examples: int) -> jax.Array:
    """The shuffled order of examples in ``epoch`` (the same in epoch and step mode)."""
    return jax.random.permutation(jax.random.fold_in(seed_key, epoch), num_examples)


def prefetch(batches: Iterable[Any], size: int = 2, sharding: Any = None,
             put: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Put the next ``size`` batches on the device in a background thread while one is used.

    ``put(batch)`` moves one host batch (default ``jax.device_put(batch, sharding)``); with
    ``DataParallel.put_batch`` each process's batch goes to its devices, split for the mode.
    The same prefetcher as :func:`fnn.data.prefetch_to_device`.
    """
    return prefetch_to_device(batches, size, sharding=sharding, put=put)


def _num_examples(data: Mapping[str, Any]) -> int:
    sizes = {k: len(v) for k, v in data.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all arrays of a dataset need one length, got {sizes}")
    return next(iter(sizes.values()))


def _padded_batches(data: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict]:
    n = _num_examples(data)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        batch = {k: np.asarray(v[start:stop]) for k, v in data.items()}
        mask = np.ones(stop - start, np.float32)
        if stop - start < batch_size:  # pad: one compiled shape, padding masked out
            pad = batch_size - (stop - start)
            batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                     for k, v in batch.items()}
            mask = np.concatenate([mask, np.zeros(pad, np.float32)])
        batch["mask"] = mask
        yield batch


def evaluate(eval_step: Callable, params: Any, model_state: Any, data: Mapping[str, np.ndarray],
             batch_size: int = 1024, *, parallel: DataParallel | None = None) -> dict[str, float]:
    """Exact means of loss and metrics over ``data`` (``eval_step`` from ``make_eval_step``).

    With ``parallel`` (a :class:`~fnn.train.parallel.DataParallel`), ``eval_step`` comes from its
    ``compile_eval`` and ``params``/``model_state`` from its ``replicate``; the batch size is
    rounded up to a multiple of the device count (padding is masked out) and each process
    evaluates its slice of every batch.
    """
    n = _num_examples(data)
    batch_size = min(batch_size, n)
    put = None
    batches: Iterable[dict] = _padded_batches(data, batch_size)
    if parallel is not None:
        batch_size = parallel.round_batch_size(batch_size)
        batches = map(parallel.local_part, _padded_batches(data, batch_size))
        put = parallel.put_batch
    totals: dict[str, Any] = {}
    for batch in prefetch(batches, put=put):
        sums = eval_step(params, model_state, batch)
        totals = sums if not totals else jax.tree_util.tree_map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {k: float(v) / count for k, v in totals.items()}


def _host_batches(data: Mapping[str, np.ndarray], order: np.ndarray, batch_size: int,
                  rows: slice = slice(None)):
    """The batches of one epoch; ``rows``: only this process's rows of each global batch."""
    for i in range(len(order) // batch_size):
        idx = order[i * batch_size:(i + 1) * batch_size][rows]
        yield {k: np.asarray(v[idx]) for k, v in data.items()}


def fit(net: Layer, loss: Callable[..., jax.Array], optimizer: optax.GradientTransformation,
        train_data: Mapping[str, np.ndarray], val_data: Mapping[str, np.ndarray] | None = None, *,
        epochs: int, batch_size: int, seed: int = 0,
        regularizer: Callable[[Any], jax.Array] | None = None,
        constraint: Callable[[Any], Any] | None = None,
        metrics: Mapping[str, Callable] | None = None,
        augment: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
        mode: str = "epoch", early_stopping: EarlyStopping | None = None,
        run_dir: str | Path | None = None, resume: bool = False, reset_optimizer: bool = False,
        divergence_factor: float | None = 1e4,
        metadata: dict[str, Any] | None = None,
        train_state: TrainState | None = None, eval_batch_size: int = 1024,
        callbacks: Sequence[Callable[[dict, TrainState], Any]] = (),
        progress: bool = False, log: Callable[[str], None] | None = print,
        parallel: str | DataParallel | None = None,
        devices: int | Sequence[Any] | None = None,
        diagnostics: int | None = None) -> FitResult:
    """Train ``net`` on ``train_data`` (a dict with ``"x"`` and ``"y"`` arrays, first axis examples).

    Args:
        net, loss, optimizer: the network, a per-example loss (``reduction="none"``), optax.
        train_data, val_data: dicts of numpy arrays; validation is evaluated after every epoch.
        epochs, batch_size, seed: the schedule; the seed fixes init, shuffling and dropout.
        regularizer, constraint, metrics, augment: as in :func:`fnn.train.make_train_step`.
        mode: ``"epoch"`` (scanned epochs, data on device) or ``"step"`` (per-step, prefetched).
        early_stopping: an :class:`EarlyStopping`, or ``None`` to train all epochs.
        run_dir: where ``metrics.jsonl`` and checkpoints go (``None``: nothing is written).
        resume: continue from ``run_dir/checkpoints/latest.safetensors`` if it exists.
        reset_optimizer: on resume, restore everything but the optimizer state, which starts
            afresh (``optimizer.init`` of the restored params): resuming with another optimizer.
        divergence_factor: stop when a step's loss exceeds this many times the first epoch's
            mean loss (at least 1e-3), from the second epoch on; ``None``: only NaN/Inf stop.
        metadata: JSON-able data saved in every checkpoint (e.g. the run's config).
        train_state: start from this state instead of a fresh init (e.g. pretrained params).
        callbacks: called as ``cb(record, train_state)`` after each epoch; a truthy return stops.
        progress: show a tqdm bar over the steps of each epoch (step mode) or over epochs.
        log: where the one-line epoch summaries go (``None``: silent).
        parallel: ``None``/``"none"`` (one device), ``"pmap"`` or ``"mesh"`` (data-parallel
            over ``devices``; see :mod:`fnn.train.parallel`), or a ``DataParallel``. ``batch_size``
            is the global batch and must divide by the number of devices. Only process 0
            writes ``run_dir`` and logs; ``callbacks`` run on every process and must decide
            alike. With several hosts ``run_dir`` must be on a shared file system for
            ``resume`` and ``restore_best``.
        devices: local devices for ``parallel`` (a count per process; default all).
        diagnostics: every this many steps, log gradient-flow diagnostics of the first
            ``batch_size`` training examples to ``run_dir/diagnostics.jsonl`` and
            ``gradflow.png`` (:class:`fnn.diagnostics.Diagnostics`; in ``"epoch"`` mode at the
            end of the epochs in which such a step falls). ``None``: none, no cost.

    Returns:
        A :class:`FitResult`; its train state is one unreplicated copy, whatever the devices.

    Raises:
        TrainingDiverged: the loss became NaN/Inf or exploded past ``divergence_factor``
            (the last good checkpoint is left intact; a diverged epoch is never saved).
        ValueError: ``batch_size`` does not split evenly over the devices.

    Example:
        >>> fit(net, loss, optax.adam(1e-3), train, val, epochs=5, batch_size=256,
        ...     parallel="mesh")                 # every local device, XLA collectives
    """
    if mode not in ("epoch", "step"):
        raise ValueError(f"mode must be 'epoch' or 'step', got {mode!r}")
    dp = as_data_parallel(parallel, devices)
    n = _num_examples(train_data)
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    dp.check_batch_size(batch_size)
    if not dp.is_main:  # process 0 alone logs and writes the run folder
        log, progress = None, False
    steps_per_epoch = n // batch_size
    seed_key = jax.random.key(seed)
    data_key = jax.random.fold_in(seed_key, 1)
    input_shape = (-1, *np.shape(train_data["x"])[1:])
    if train_state is None:
        _, train_state = init_train_state(net, optimizer, input_shape, jax.random.fold_in(seed_key, 0))

    run_path = Path(run_dir) if run_dir is not None else None
    latest = run_path / "checkpoints" / "latest.safetensors" if run_path else None
    best_path = run_path / "checkpoints" / "best.safetensors" if run_path else None
    if run_path is not None and dp.is_main:  # leftovers of a write killed midway
        ckpt.clean_temporary_files(run_path)
        ckpt.clean_temporary_files(run_path / "checkpoints")
    history: list[dict[str, Any]] = []
    start_epoch, best_value, best_epoch, waited = 0, None, None, 0
    if resume and latest is not None and latest.exists():
        train_state, progress_meta = _load_train_state(
            latest, train_state, skip=("opt_state",) if reset_optimizer else ())
        if reset_optimizer:
            train_state = train_state._replace(opt_state=optimizer.init(train_state.params))
        history = progress_meta["history"]
        start_epoch = progress_meta["epoch"] + 1
        best_value, best_epoch = progress_meta["best_value"], progress_meta["best_epoch"]
        waited = progress_meta["waited"]
        if log:
            log(f"resumed from {latest} at epoch {start_epoch} (step {int(train_state.step)})")

    train_net = dp.prepare_net(net)  # BatchNorm axis names for the mode
    step_fn = train_step_fn(train_net, loss, optimizer, regularizer=regularizer,
                            constraint=constraint, metrics=metrics, augment=augment,
                            axis_name=dp.axis_name)
    eval_step = dp.compile_eval(eval_step_fn(train_net, loss, metrics=metrics,
                                             axis_name=dp.axis_name))
    if mode == "epoch":
        run_epoch = dp.compile_epoch(step_fn, n, batch_size)
        device_data = dp.put_data({k: np.asarray(v) for k, v in train_data.items()})
    else:
        run_step = dp.compile_step(step_fn)
    train_state = dp.replicate(train_state)
    writes = run_path is not None and dp.is_main
    diag = None
    if diagnostics is not None and dp.is_main:
        from fnn.diagnostics import Diagnostics
        diag = Diagnostics(net, loss, optimizer, every=diagnostics,
                           run_dir=run_path if writes else None)
        diag_batch = {k: np.asarray(v[:batch_size]) for k, v in train_data.items()}
    stopped_early = False
    bar = _epoch_bar(progress, mode, start_epoch, epochs)

    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        first_step = int(dp.unreplicate(train_state.step))
        if mode == "epoch":
            train_state, stacked = run_epoch(train_state, device_data,
                                             jax.random.fold_in(data_key, epoch))
            stacked = jax.device_get(stacked)
        else:
            order = np.asarray(batch_order(data_key, epoch, n))
            collected = []
            steps = prefetch(_host_batches(train_data, order, batch_size,
                                           dp.local_slice(batch_size)), put=dp.put_batch)
            if progress:
                from tqdm.auto import tqdm
                steps = tqdm(steps, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}",
                             leave=False, unit="step")
            for batch in steps:
                train_state, m = run_step(train_state, batch)
                collected.append(m)
                if diag is not None and diag.due(first_step + len(collected)):
                    diag.record(dp.unreplicate(train_state), diag_batch,
                                step=first_step + len(collected), epoch=epoch + 1)
            stacked = jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *collected))
        jax.block_until_ready(train_state)
        seconds = time.perf_counter() - start
        if mode == "epoch" and diag is not None and diag.due(first_step + steps_per_epoch,
                                                             steps_per_epoch):
            diag.record(dp.unreplicate(train_state), diag_batch,
                        step=first_step + steps_per_epoch, epoch=epoch + 1)

        losses = np.asarray(stacked["loss"])
        if not np.all(np.isfinite(losses)):
            bad = int(np.argmax(~np.isfinite(losses)))
            last = (f"the last good checkpoint is {latest} (epoch {epoch})"
                    if latest is not None and latest.exists() else "no checkpoint was written yet")
            raise TrainingDiverged(f"the training loss became {losses[bad]} at step "
                                   f"{first_step + bad + 1} (epoch {epoch + 1}); {last}")
        if divergence_factor is not None and history:
            limit = divergence_factor * max(abs(history[0]["train_loss"]), 1e-3)
            if np.any(np.abs(losses) > limit):
                bad = int(np.argmax(np.abs(losses) > limit))
                last = (f"the last good checkpoint is {latest} (epoch {epoch})"
                        if latest is not None and latest.exists() else "no checkpoint was written")
                raise TrainingDiverged(
                    f"the training loss exploded to {losses[bad]:.4g} at step "
                    f"{first_step + bad + 1} (epoch {epoch + 1}), over {divergence_factor:g} x "
                    f"the first epoch's mean loss {history[0]['train_loss']:.4g} "
                    f"(training.divergence.factor); {last}")
        record: dict[str, Any] = {"epoch": epoch + 1, "step": first_step + len(losses)}
        record["learning_rate"] = _learning_rate(dp, train_state.opt_state)
        record.update({f"train_{k}": float(np.mean(v)) for k, v in stacked.items()
                       if k != "objective" or regularizer is not None})
        if val_data is not None:
            val = evaluate(eval_step, train_state.params, train_state.model_state, val_data,
                           eval_batch_size, parallel=dp)
            record.update({f"val_{k}": v for k, v in val.items()})
        record["seconds"] = round(seconds, 4)
        record["examples_per_sec"] = round(steps_per_epoch * batch_size / seconds, 1)
        history.append(record)

        improved = False
        if early_stopping is not None:
            if early_stopping.monitor not in record:
                raise ValueError(f"early_stopping.monitor: {early_stopping.monitor!r} is not "
                                 f"logged; choose one of {sorted(record)}")
            value = record[early_stopping.monitor]
            if np.isfinite(value) and early_stopping.better(value, best_value):
                best_value, best_epoch, waited, improved = value, epoch + 1, 0, True
            else:
                waited += 1
        elif val_data is not None:
            monitor = "val_accuracy" if "val_accuracy" in record else "val_loss"
            value = record[monitor]
            if np.isfinite(value) and EarlyStopping(monitor).better(value, best_value):
                best_value, best_epoch, improved = value, epoch + 1, True
        if writes:
            _write_jsonl(run_path / "metrics.jsonl", history)
            progress_meta = {"epoch": epoch, "history": history, "best_value": best_value,
                             "best_epoch": best_epoch, "waited": waited}
            one_copy = dp.unreplicate(train_state)  # the same file whatever the devices
            if improved:
                _save_train_state(best_path, one_copy, net, progress_meta, metadata)
            _save_train_state(latest, one_copy, net, progress_meta, metadata)
        if log:
            log(_format_record(record, epochs))
        if bar is not None:
            bar.update(1)
        stop = any(bool(cb(record, dp.unreplicate(train_state))) for cb in callbacks)
        if early_stopping is not None and waited >= early_stopping.patience:
            stopped_early = True
            if log:
                log(f"early stopping: {early_stopping.monitor} did not improve for "
                    f"{early_stopping.patience} epochs (best {best_value:.6g} at epoch {best_epoch})")
            break
        if stop:
            break
    if bar is not None:
        bar.close()

    train_state = dp.unreplicate(train_state)
    if early_stopping is not None and early_stopping.restore_best and best_epoch is not None \
            and best_path is not None and best_epoch != len(history):
        synchronize("fnn-fit-restore-best")  # process 0 has written best.safetensors
        if best_path.exists():
            train_state, _ = _load_train_state(best_path, train_state)
    return FitResult(train_state, history, best_epoch, stopped_early)


def _learning_rate(dp: DataParallel, opt_state: Any) -> float | None:
    lr = learning_rate_of(opt_state)
    # Shortest decimal that round-trips in the state's dtype: 0.1, not 0.10000000149011612.
    return None if lr is None else float(str(np.asarray(dp.unreplicate(lr))))


def _epoch_bar(progress: bool, mode: str, start: int, epochs: int):
    if not progress or mode != "epoch":
        return None
    from tqdm.auto import tqdm
    return tqdm(total=epochs, initial=start, desc="epochs", unit="epoch", leave=False)


def _format_record(r: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {r['epoch']}/{epochs}"]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        if key in r:
            parts.append(f"{key} {r[key]:.4f}")
    if r.get("learning_rate") is not None:
        parts.append(f"lr {r['learning_rate']:.3g}")
    parts.append(f"{r['examples_per_sec']:,.0f} ex/s")
    parts.append(f"{r['seconds']:.1f}s")
    return "  ".join(parts)


def _strict(value: Any) -> Any:
    """NaN and +-Inf as ``null``: metrics.jsonl is strict JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_jsonl(path: Path, history: list[dict]) -> None:
    # rewritten whole (atomically) so a resumed run never repeats or loses an epoch's line
    lines = (json.dumps({k: _strict(v) for k, v in r.items()}, allow_nan=False) + "\n"
             for r in history)
    ckpt.atomic_write(path, "".join(lines).encode())


def _save_train_state(path: Path, ts: TrainState, net: Layer, progress: dict,
                      metadata: dict[str, Any] | None) -> None:
    meta = {"kind": "train_state", "progress": progress, **(metadata or {})}
    try:
        json.dumps(net.spec)
        meta["spec"] = net.spec
    except TypeError:
        pass
    ckpt.save_tree(path, {"params": ts.params, "model_state": ts.model_state,
                          "opt_state": ts.opt_state, "step": ts.step, "rng": ts.rng}, meta)


def _load_train_state(path: Path, template: TrainState,
                      skip: Sequence[str] = ()) -> tuple[TrainState, dict]:
    arrays, meta = ckpt.read_checkpoint(path)  # one read, every checksum checked
    restored = TrainState(*(getattr(template, f) if f in skip else
                            ckpt.restore_like(getattr(template, f), arrays, f, source=path)
                            for f in TrainState._fields))
    return restored, meta.get("progress", {})
