"""``fit``: the training loop, from data to a trained train state, with a run folder.

The data (see :mod:`fnn.train.data`) is a dict of arrays whose ``x`` and ``y`` may be any
pytrees (``x=(x1, x2)`` for a siamese net), a :class:`fnn.data.Loader`, or any iterable of
batches (``steps_per_epoch`` for streams that do not end). Two modes run the same step:

* ``"epoch"`` -- the training arrays are put on the device once and each epoch is one compiled
  ``lax.scan`` over its steps, shuffling included (no per-step Python dispatch);
* ``"step"`` -- one compiled step per batch, batches gathered on the host and prefetched to the
  device while the previous step runs (data that does not fit on the device, Loaders, streams).

``mode="auto"`` (the default) takes ``epoch`` for arrays that fit on the device and ``step``
otherwise. Both modes draw each epoch's order of an array data set from ``(seed, epoch)`` the
same way, so they visit the same batches. A batch size larger than the training set trains on
the whole set as one batch (with a notice).

With a ``run`` folder (:class:`~fnn.train.run_options.RunOptions`) the loop keeps a
:class:`~fnn.train.run_folder.RunFolder`: ``metrics.jsonl``, ``checkpoints/latest.safetensors``
after every epoch and ``checkpoints/best.safetensors`` when the monitored metric improves
(:class:`~fnn.train.tracker.Tracker`); ``RunOptions(dir, resume=True)`` continues from
``latest`` and ends with the same params, bit for bit, as a run that was never stopped.

``parallel="pmap"``, ``"mesh"`` or ``"fsdp"`` (or ``DataParallel(mode, devices)``) runs the
same step data-parallel; the loop does not branch on the mode:
:class:`~fnn.train.parallel.DataParallel` (one object per mode) compiles, places and gathers
for every mode alike (``"none"`` is one device). See ``docs/DISTRIBUTED.md``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 4)).astype(np.float32)
    >>> y = (x[:, 0] > 0).astype(np.int32)                # two classes
    >>> x_train, y_train, x_val, y_val = x[:48], y[:48], x[48:], y[48:]
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(2))
    >>> result = fnn.train.fit(net, fnn.losses.softmax_cross_entropy, optax.adam(1e-2),
    ...                        {"x": x_train, "y": y_train}, {"x": x_val, "y": y_val},
    ...                        epochs=3, batch_size=16, metrics={"accuracy": fnn.train.correct},
    ...                        log=None)
    >>> len(result.history), sorted(result.history[-1])
    (3, ['epoch', 'examples_per_sec', 'learning_rate', 'seconds', 'step', 'train_accuracy',
         'train_loss', 'val_accuracy', 'val_loss'])
    >>> 0.0 <= result.history[-1]["val_accuracy"] <= 1.0
    True
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fnn.compile_cache import log_compile
from fnn.core import Layer
from fnn.layers.conv import straight_line_gradients
from fnn.summary import summary
from fnn.logs import check_logs
from fnn.data.pipeline import prefetch_to_device
from fnn.optim import learning_rate_of
from fnn.train.contract import check_mean_over_examples, check_shapes
from fnn.train.checkpointing import BackgroundWriter, Checkpointing, Preempted, StopSignals
from fnn.train.divergence import Divergence, TrainingDiverged
from fnn.train.ema import ema_weights, weights_key, with_ema
from fnn.train.data import (ArraySource, IterableSource, batch_source, check_batch_size,
                            fits_on_device, is_one_shot, num_rows, pad_batch)
from fnn.train.plateau import Plateau
from fnn.train.replay import locate_in_fit
from fnn.train.parallel import DataParallel, as_data_parallel, synchronize
from fnn.train.predict import evaluate
from fnn.train.run_folder import RunFolder
from fnn.train.run_options import RunOptions, as_run_options
from fnn.train.state import TrainState, init_train_state
from fnn.train.step import eval_step_fn, train_step_fn
from fnn.train.tracker import EarlyStopping, Tracker
from fnn.trackers import Trackers
from fnn.finetune import keep_frozen, load_pretrained, transfer, with_frozen_mask

__all__ = ["fit", "evaluate", "FitResult", "EarlyStopping", "TrainingDiverged", "Checkpointing",
           "Preempted", "RunOptions", "batch_order", "prefetch"]

MODES = ("auto", "epoch", "step")
# per-step values the trackers get that are not averaged into the epoch record
STEP_ONLY = ("grad_norm", "learning_rate", "examples_per_sec")


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


def fit(net: Layer, loss: Callable[..., jax.Array], optimizer: optax.GradientTransformation,
        train_data: Any = None, val_data: Any = None, *, x: Any = None, y: Any = None,
        epochs: int, batch_size: int | None = None, steps_per_epoch: int | None = None,
        seed: int = 0, mode: str = "auto", metrics: Mapping[str, Callable] | None = None,
        regularizer: Callable[[Any], jax.Array] | None = None,
        constraint: Callable[[Any], Any] | None = None,
        augment: Callable[[jax.Array, Any], Any] | None = None,
        accumulate: int = 1, ema: float | None = None,
        early_stopping: EarlyStopping | None = None, divergence_factor: float | None = 1e4,
        plateau: Plateau | None = None, init: Any = None,
        run: RunOptions | str | Path | None = None,
        parallel: str | DataParallel | None = None, eval_batch_size: int = 1024,
        callbacks: Sequence[Callable[[dict, TrainState], Any]] = (),
        log: Callable[[str], None] | None = print, progress: bool = False) -> FitResult:
    """Train ``net`` on ``train_data``; validate on ``val_data`` after every epoch.

    Args:
        net, loss, optimizer: the network; a loss, per-example (``reduction="none"``) or a
            batch mean ``loss(outputs, targets) -> scalar`` (see :mod:`fnn.train.contract`);
            an optax optimizer. Layers frozen with :func:`fnn.freeze` get no updates and no
            optimizer state.
        train_data, val_data: a dict ``{"x": ..., "y": ...}`` of arrays (any pytrees with one
            leading length), a ``fnn.data.Loader``, or an iterable of such batches.
        x, y: the training arrays, instead of ``train_data`` (``fit(..., x=(x1, x2), y=y)``).
        epochs, batch_size, seed: the schedule; the seed fixes init, shuffling and dropout.
            ``batch_size`` (default 32) is for arrays; a Loader or iterable brings its own.
        steps_per_epoch: batches per epoch read from an iterable that runs across epochs
            (required for a generator when ``epochs > 1``: refused when ``fit`` is called).
        mode: ``"auto"``, ``"epoch"`` (scanned epochs, arrays on the device) or ``"step"``.
        metrics, regularizer, constraint, augment: as in :func:`fnn.train.make_train_step`.
        accumulate: split each batch into this many micro-batches, run in turn inside the
            compiled step, and make one update of their summed gradients: the large batch's
            update in the memory of a micro-batch (see :func:`fnn.train.step.train_step_fn`
            for dropout and batch norm). ``batch_size`` must divide by it (per device).
        ema: keep a moving average of the trained weights with this decay (e.g. 0.999) in the
            optimizer state (:mod:`fnn.train.ema`); validation, and so ``best``, use it (frozen
            layers' weights as they are), and :func:`fnn.load_weights` reads it from the
            checkpoints (``fnn.train.ema.ema_weights(ts.params, ts.opt_state)`` after ``fit``).
        early_stopping: an :class:`EarlyStopping`, or ``None`` to train all epochs.
        divergence_factor: stop when a step's loss exceeds this many times the loss at the
            start of training (the median of the first steps, at least 1e-3; see
            :mod:`fnn.train.divergence`), from the second step on; ``None``: only NaN/Inf stop.
        plateau: a :class:`~fnn.train.plateau.Plateau`: lower the learning rate held in the
            optimizer state (``schedule: plateau`` of :func:`fnn.optim.make_optimizer`) when
            its monitored metric stops improving; its counter is kept in the checkpoints.
        init: where to start: pretrained weights, a ``(params, state)`` pair or a checkpoint
            path (every param whose path and shape match is copied, :func:`fnn.transfer`), or
            a :class:`TrainState` to continue from exactly (copied: its arrays stay usable).
        run: the run folder, a :class:`~fnn.train.run_options.RunOptions` (resume,
            checkpoints, diagnostics, trackers, profile) or just its path; ``None``: nothing
            is written.
        parallel: ``None``/``"none"`` (one device), ``"pmap"``, ``"mesh"`` or ``"fsdp"`` over
            all local devices, or a :class:`DataParallel` (``DataParallel("mesh", 4)``: four).
            ``batch_size`` is the global batch and must divide by the number of devices; a
            batch of an iterable that does not is padded with masked rows (exact for losses and
            metrics; batch-norm statistics see the padding). Only process 0 writes the run
            folder and logs; ``callbacks`` run on every process and must decide alike.
        eval_batch_size: the batch of validation.
        callbacks: called as ``cb(record, train_state)`` after each epoch; a truthy return stops.
            The train state is a copy a callback may keep (the training steps donate their
            own buffers, which would leave a kept reference deleted).
        log: where notices and one-line epoch summaries go (``None``: silent).
        progress: a tqdm bar over the steps of each epoch (step mode) or over epochs.

    Returns:
        A :class:`FitResult`; its train state is one unreplicated copy, whatever the devices.

    Raises:
        Preempted: SIGTERM/SIGINT stopped the run after writing ``latest`` (with a ``run``).
        TrainingDiverged: the loss became NaN/Inf or exploded past ``divergence_factor``
            (the last good checkpoint is left intact; a diverged epoch is never saved).
        LossContractError: the loss cannot score the network's outputs against the targets
            (checked before compiling; names the loss and both shapes).

    Example:
        >>> siamese = fnn.shared(fnn.Dense(4))            # (x1, x2) -> (e1, e2), one set of weights
        >>> def contrastive(outputs, same):               # a batch mean, as users write losses
        ...     d = jnp.linalg.norm(outputs[0] - outputs[1], axis=-1)
        ...     return jnp.mean(same * d**2 + (1 - same) * jnp.maximum(0.0, 1.0 - d) ** 2)
        >>> rng = np.random.default_rng(0)
        >>> x1, x2 = rng.normal(size=(2, 32, 3)).astype(np.float32)
        >>> same = rng.integers(0, 2, size=32).astype(np.float32)
        >>> result = fit(siamese, contrastive, optax.adam(1e-3), {"x": (x1, x2), "y": same},
        ...              epochs=5, log=None)
        >>> [record["epoch"] for record in result.history]
        [1, 2, 3, 4, 5]
    """
    if (x is None) == (train_data is None):
        raise ValueError("fit: give the training data as train_data or as x= and y=, once")
    train_data = {"x": x, "y": y} if train_data is None else train_data
    _check_passes(train_data, val_data, epochs, steps_per_epoch, eval_batch_size)
    run = as_run_options(run)
    run_dir, resume, metadata = (None, False, None) if run is None else \
        (run.dir, run.resume, run.metadata)
    checkpoint = None if run is None else run.checkpoint
    dp = as_data_parallel(parallel)
    log, progress = (log, progress) if dp.is_main else (None, False)
    events = Trackers(run.trackers if run is not None and dp.is_main else (),
                      10 if run is None else run.log_every)
    train = batch_source(train_data, steps_per_epoch, "train_data")
    val = None if val_data is None else batch_source(val_data, where="val_data")
    batch_size = _batch_size(train, batch_size, dp, log)
    if batch_size is not None and accumulate != 1 and batch_size % (accumulate * dp.num_devices):
        raise ValueError(f"training.accumulate: a batch of {batch_size} examples"
                         + (f" over {dp.num_devices} devices" if dp.num_devices > 1 else "")
                         + f" does not split into {accumulate} micro-batches")
    mode = _mode(mode, train)
    seed_key = jax.random.key(seed)
    first = train.first() if batch_size is None else train.rows(np.arange(batch_size))
    if first.get("y") is None:
        raise ValueError("train_data: a training batch needs targets 'y' next to 'x' (for an "
                         "autoencoder, y=x)")
    check_shapes(net, loss, first["x"], first["y"], metrics=metrics)
    if ema is not None:  # inside the mask: an average of the trained weights only
        optimizer = with_ema(optimizer, ema)
    optimizer = with_frozen_mask(net, optimizer)     # frozen layers: no update, no state
    constraint = keep_frozen(net, constraint)         # ... and no max-norm projection
    # a given train state: continued exactly (None: a diverged first epoch replays a fresh init)
    given_state = init if isinstance(init, TrainState) else None
    train_state = _initial_state(net, optimizer, train.input_shape, seed_key, init, log)
    if weights_key(train_state.opt_state) is not None:  # what load_weights reads
        metadata = {**(metadata or {}), "weights": weights_key(train_state.opt_state)}
    check_mean_over_examples(loss, lambda: net.apply(train_state.params, train_state.model_state,
                                                     first["x"])[0], first["y"])

    if resume and run_dir is not None and dp.is_main:
        check_logs(run_dir)  # a damaged log line is refused before anything is touched
    folder = RunFolder(run_dir, writes=dp.is_main)
    tracker = Tracker(early_stopping)
    history: list[dict[str, Any]] = []
    resumed = resume and folder.has("latest")
    divergence = Divergence(divergence_factor)
    done: dict[str, Any] = {}
    if resumed:
        train_state, done = folder.load("latest", train_state,
                                        skip=("opt_state",) if run.reset_optimizer else ())
        if run.reset_optimizer:
            train_state = train_state._replace(opt_state=optimizer.init(train_state.params))
        history = done["history"]
        tracker.load_state_dict(done)
        if plateau is not None:
            plateau.load_state_dict(done)
        divergence = Divergence.from_progress(divergence_factor, done)
        if log:
            inside = f", {done['offset']} steps into epoch {len(history) + 1}" \
                if done.get("offset") else ""
            log(f"resumed from {folder.checkpoint('latest')} at epoch {len(history)} "
                f"(step {int(train_state.step)}{inside})")
    start_epoch = len(history)
    # where a checkpoint written inside an epoch left it: steps done, and their metrics
    start_offset = int(done.get("offset", 0))
    partial = {k: np.asarray(v, np.float32) for k, v in (done.get("partial") or {}).items()}
    # metrics.jsonl: the resumed checkpoint's records (a torn last line and later ones cut)
    folder.trim_metrics(int(train_state.step) if resumed else -1)

    train_net = dp.prepare_net(net)  # BatchNorm axis names for the mode
    # a step compiled on its own differentiates convolutions with XLA's gradient; a scanned
    # epoch or accumulation loop keeps the loop-friendly one (fnn.layers.conv)
    step_net = straight_line_gradients(train_net) if mode == "step" and accumulate == 1 \
        else train_net
    step_fn = train_step_fn(step_net, loss, optimizer, regularizer=regularizer,
                            constraint=constraint, metrics=metrics, augment=augment,
                            axis_name=dp.axis_name, accumulate=accumulate,
                            stats_every=(events.log_every if run is not None and run.trackers
                                         else None))  # the same program on every process
    eval_step = log_compile(dp.compile_eval(eval_step_fn(train_net, loss, metrics=metrics,
                                                         axis_name=dp.axis_name)),
                            "eval_step", log)
    diag, diag_log = _diagnostics(None if run is None else run.diagnostics, dp, net, loss,
                                  optimizer, folder, first, start_step=int(train_state.step),
                                  events=events)
    step_rates: dict[int, float] = {}  # step mode: examples/s of the log_every steps to a step
    run_epoch = _epoch_runner(dp, step_fn, train, mode, batch_size,
                              jax.random.fold_in(seed_key, 1), start_epoch, progress, epochs, diag,
                              chunk=checkpoint.scan_chunk if checkpoint is not None else None,
                              log=log, rates=step_rates if events else None,
                              rate_every=events.log_every)
    if given_state is not None:  # the steps donate their input: keep the caller's arrays
        train_state = _copy(train_state)
    train_state = dp.place(train_state)
    if log and dp.num_devices > 1:  # measured from the live arrays
        log(f"params and optimizer state: {dp.memory((train_state.params, train_state.opt_state))}")
    bar = _epoch_bar(progress and mode == "epoch", start_epoch, epochs)
    stopped_early = False
    signals = StopSignals()
    writer = (BackgroundWriter(lambda path, host, done: folder.save_to(path, host, net, done,
                                                                       metadata),
                               folder.checkpoint("latest").parent,
                               checkpoint.keep if checkpoint is not None else 1)
              if folder.writes else None)
    last_saved = {"step": int(dp.gather(train_state.step)), "time": time.monotonic(),
                  "any": folder.has("latest")}  # "any": a latest written (or being written)
    checked = [0]  # losses of this epoch already given to the divergence check

    tracing = {"until": None}  # the step at which a --profile trace stops

    def trace_until(step: int) -> None:
        if tracing["until"] is not None and step >= tracing["until"]:
            tracing["until"] = None
            jax.profiler.stop_trace()
            if log:
                log(f"profile: {step} steps traced to {folder.path / 'profile'}")

    def extra_progress() -> dict[str, Any]:
        return plateau.state_dict() if plateau is not None else {}

    def locate(epoch: int, base: int, ts: TrainState) -> Callable[[int], str]:
        """``bad_step -> clause``: replays a non-finite step of ``epoch`` (which began at step
        ``base``; ``ts`` is a live state, for shapes) on one device and names the layer that
        made it (doctor.json), from the last good checkpoint (an epoch's or a step's)."""
        def one_device_step() -> Callable:
            if dp.axis_name is None:  # one device, or a mesh: the step sees the global batch
                return step_fn
            return train_step_fn(net, loss, optimizer, regularizer=regularizer,
                                 constraint=constraint, metrics=metrics, augment=augment,
                                 accumulate=accumulate)

        return lambda bad: locate_in_fit(
            bad, net=net, loss=loss, step_fn=one_device_step(), train=train,
            batch_size=batch_size, data_key=jax.random.fold_in(seed_key, 1), epoch=epoch,
            first_step=base, folder=folder, template=dp.gather(ts), augment=augment,
            initial=None if given_state is not None else
            lambda: _initial_state(net, optimizer, train.input_shape, seed_key, init, None),
            pending=None if writer is None else writer.wait)

    def after(ts, epoch, base, offset, chunks) -> bool:
        """After a step (a scan chunk) of ``epoch``, ``offset`` steps into it: a step
        checkpoint when due or asked to stop (then: stop)."""
        stop = signals.received is not None
        step = base + offset
        trace_until(step)
        if not stop and (checkpoint is None or not checkpoint.due(
                step - last_saved["step"], time.monotonic() - last_saved["time"])):
            return False
        metrics = _concat(chunks)
        divergence.update(metrics["loss"][checked[0]:], base + checked[0], epoch,
                          # a diverged state is never saved
                          _last_good(folder, epoch, last_saved, base),
                          locate=locate(epoch, base, ts))
        checked[0] = len(metrics["loss"])
        writer.write(dp.gather(ts),
                     {"epoch": epoch - 1, "offset": offset, "history": list(history),
                      "partial": {k: v.tolist() for k, v in metrics.items()},
                      **tracker.state_dict(), **divergence.state_dict(), **extra_progress()},
                     step, wait=stop)
        last_saved.update(step=step, time=time.monotonic(), any=True)
        return stop

    try:
        if events:  # a resumed run keeps the events of the epochs its checkpoint holds
            events.start(folder.path, (metadata or {}).get("config"),
                         str(summary(net, train.input_shape)),
                         (history[-1]["step"] if history else 0) if resumed else None)
        if writer is not None:
            signals.__enter__()
            if run.profile is not None:
                jax.profiler.start_trace(str(folder.path / "profile"))
                tracing["until"] = int(dp.gather(train_state.step)) + run.profile
        for epoch in range(start_epoch, epochs):
            start, first_step = time.perf_counter(), int(dp.gather(train_state.step))
            offset = start_offset if epoch == start_epoch else 0
            base = first_step - offset  # the step at which this epoch began
            checked[0] = offset
            chunks = [partial] if offset else []
            train_state, chunks, examples, stopped = run_epoch(
                train_state, epoch, offset, chunks,
                None if writer is None else
                lambda ts, at, chunks: after(ts, epoch, base, at, chunks))
            if stopped:
                raise Preempted(
                    f"stopped by {signals.name} at step {int(dp.gather(train_state.step))} "
                    f"(epoch {epoch + 1}); latest checkpoint: {folder.checkpoint('latest')}")
            stacked = _concat(chunks)
            seconds = time.perf_counter() - start
            divergence.update(stacked["loss"][checked[0]:], base + checked[0], epoch,
                              _last_good(folder, epoch, last_saved, base),
                              locate=locate(epoch, base, train_state))
            record = {"epoch": epoch + 1, "step": base + len(stacked["loss"]),
                      "learning_rate": _learning_rate(dp, train_state.opt_state),
                      **{f"train_{k}": float(np.mean(v)) for k, v in stacked.items()
                         if (k != "objective" or regularizer is not None)
                         and k not in STEP_ONLY}}
            if val is not None:
                weights = ema_weights(train_state.params, train_state.opt_state)
                scores = evaluate(eval_step, weights, train_state.model_state, val,
                                  batch_size=eval_batch_size, parallel=dp)
                record.update({f"val_{k}": v for k, v in scores.items()})
            record.update(seconds=round(seconds, 4), examples_per_sec=round(examples / seconds, 1))
            history.append(record)
            events.epoch(base, _per_step(stacked, record, base, mode, step_rates),
                         record)  # before the checkpoint that holds them
            trace_until(record["step"])
            improved = tracker.update(record, epoch + 1)
            if plateau is not None:
                opt_state, note = plateau.update(record, epoch + 1, train_state.opt_state)
                train_state = train_state._replace(opt_state=opt_state)
                if note and log:
                    log(note)
            whole = dp.gather(train_state)  # every process (a collective under fsdp)
            if folder.writes:  # one whole copy: the same file whatever the devices
                writer.wait()  # a step checkpoint in flight is written first
                last_saved.update(step=record["step"], time=time.monotonic(), any=True)
                folder.save_epoch(history, {"epoch": epoch, **tracker.state_dict(),
                                            **divergence.state_dict(), **extra_progress()},
                                  improved, whole, net, metadata)
            if log:
                log(_format_record(record, epochs))
            if bar is not None:
                bar.update(1)
            # a copy: the next step donates train_state's buffers, and a callback may keep it
            kept = _copy(whole) if callbacks else None  # one copy, shared by the callbacks
            stop = any(bool(cb(record, kept)) for cb in callbacks)
            if signals.received is not None and epoch + 1 < epochs:
                raise Preempted(f"stopped by {signals.name} at the end of epoch {epoch + 1} "
                                f"(step {record['step']}); latest checkpoint: "
                                f"{folder.checkpoint('latest')}")
            if tracker.should_stop:
                stopped_early = True
                if log:
                    log(tracker.stop_message())
                break
            if stop:
                break
    finally:
        if tracing["until"] is not None:  # a run shorter than the steps to trace
            trace_until(tracing["until"])
        signals.__exit__()
        if diag_log is not None:  # gradflow.png with the last records, whatever stopped the run
            diag_log.finish()
        if writer is not None:
            writer.wait()
        events.close()
    if bar is not None:
        bar.close()

    train_state = _restored_best(dp.gather(train_state), early_stopping, tracker, folder,
                                 len(history))
    return FitResult(train_state, history, tracker.best_epoch, stopped_early)


# --------------------------------------------------------------------------- fit's parts

def _check_passes(train_data: Any, val_data: Any, epochs: Any, steps_per_epoch: int | None,
                  eval_batch_size: Any) -> None:
    """Refuse, before anything compiles or is written, what would fail (or hang) later: a
    generator read for more than one epoch without ``steps_per_epoch`` (a second pass over it
    is empty; an endless one never ends epoch 1), a one-shot ``val_data`` for several epochs."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1, got {epochs!r}")
    check_batch_size(eval_batch_size, "fit: eval_batch_size")
    if epochs > 1 and steps_per_epoch is None and is_one_shot(train_data):
        raise ValueError(f"fit: train_data is a generator (a one-shot iterator) and epochs is "
                         f"{epochs}: pass steps_per_epoch=N to read N batches per epoch from it "
                         "(required for one that never ends), or give a list or a "
                         "fnn.data.Loader")
    if epochs > 1 and is_one_shot(val_data):
        raise ValueError(f"fit: val_data is a generator (a one-shot iterator), read once per "
                         f"epoch for {epochs} epochs: give a list, a dict of arrays or a "
                         "fnn.data.Loader")


def _copy(tree: Any) -> Any:
    """A copy of every array of ``tree`` (its own buffers, which no step donates)."""
    return jax.tree_util.tree_map(lambda a: a.copy() if isinstance(a, jax.Array) else a, tree)


def _batch_size(train: ArraySource | IterableSource, batch_size: int | None, dp: DataParallel,
                log: Callable[[str], None] | None) -> int | None:
    """The global batch size for arrays: at most the training set (with a notice)."""
    if not isinstance(train, ArraySource):
        return None
    batch_size = 32 if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size: must be an int >= 1, got {batch_size!r}")
    n = train.num_examples
    if batch_size > n:
        whole = n // dp.num_devices * dp.num_devices
        if whole < 1:
            raise ValueError(f"batch_size: {n} training examples cannot be split over "
                             f"{dp.num_devices} devices")
        if log:
            log(f"batch_size {batch_size} is larger than the {n} training examples: training on "
                f"{'all ' + str(n) if whole == n else whole} of them as one batch")
        batch_size = whole
    dp.check_batch_size(batch_size)
    return int(batch_size)


def _mode(mode: str | None, train: ArraySource | IterableSource) -> str:
    mode = "auto" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "epoch" and not isinstance(train, ArraySource):
        raise ValueError("mode 'epoch' scans over arrays on the device; a Loader or an iterable "
                         "of batches trains in mode 'step' (or 'auto')")
    if mode == "auto":
        return ("epoch" if isinstance(train, ArraySource) and fits_on_device(train.arrays)
                else "step")
    return mode


def _initial_state(net: Layer, optimizer: optax.GradientTransformation, input_shape: Any,
                   seed_key: jax.Array, init: Any, log: Callable[[str], None] | None
                   ) -> TrainState:
    """``init`` if it is a train state (with an optimizer state that fits ``optimizer``), else
    a fresh init, with ``init``'s pretrained weights transferred where path and shape match."""
    if isinstance(init, TrainState):
        return _matching_opt_state(init, optimizer)
    rng = jax.random.fold_in(seed_key, 0)
    if init is None:
        return init_train_state(net, optimizer, input_shape, rng)[1]
    pretrained_params, pretrained_state = load_pretrained(init)
    init_rng, train_rng = jax.random.split(rng)  # as init_train_state splits it
    params, state, report = transfer(pretrained_params, pretrained_state, net, input_shape,
                                     init_rng)
    if log:
        log(f"init: {report.one_line()}")
    return TrainState(params, state, optimizer.init(params), jnp.zeros((), jnp.int32), train_rng)


def _matching_opt_state(ts: TrainState, optimizer: optax.GradientTransformation) -> TrainState:
    """A given train state whose optimizer state does not fit ``optimizer`` (e.g. layers were
    frozen since) gets a fresh one; a fitting one is kept."""
    fresh = jax.eval_shape(optimizer.init, ts.params)
    same = jax.tree_util.tree_structure(fresh) == jax.tree_util.tree_structure(ts.opt_state)
    return ts if same else ts._replace(opt_state=optimizer.init(ts.params))


def _diagnostics(every: int | None, dp: DataParallel, net: Layer, loss: Callable,
                 optimizer: optax.GradientTransformation, folder: RunFolder, batch: dict,
                 start_step: int, events: Trackers) -> tuple[Callable | None, Any]:
    """``record(train_state, step, epoch, steps_in_epoch=None)``: gradient-flow diagnostics
    when due, and the :class:`~fnn.diagnostics.Diagnostics` (its ``finish`` draws the last
    records; ``None`` but on process 0); ``(None, None)`` without ``diagnostics``.
    ``start_step``: the step a resumed run starts from (its earlier records are kept).
    Every process gathers the state when a record is due (under ``fsdp`` the gather is a
    collective that needs them all); process 0 alone computes and writes the record."""
    if every is None:
        return None, None
    from fnn.diagnostics import Diagnostics
    diag = Diagnostics(net, loss, optimizer, every=every,
                       run_dir=folder.path if folder.writes else None, start_step=start_step,
                       keep_grads=events.histograms)

    def record(ts, step, epoch, steps_in_epoch=None):
        due = diag.due(step) if steps_in_epoch is None else diag.due(step, steps_in_epoch)
        if due:
            whole = dp.gather(ts)
            if dp.is_main:
                events.diagnostics(diag.record(whole, batch, step=step, epoch=epoch + 1),
                                   whole.params, diag.last_grads)

    return record, diag if dp.is_main else None


def _epoch_runner(dp: DataParallel, step_fn: Callable, train: ArraySource | IterableSource,
                  mode: str, batch_size: int | None, data_key: jax.Array, start_epoch: int,
                  progress: bool, epochs: int, diag: Callable | None = None,
                  chunk: int | None = None, log: Callable[[str], None] | None = None,
                  rates: dict[int, float] | None = None, rate_every: int = 10) -> Callable:
    """``run(train_state, epoch, offset, chunks, after) -> (train_state, chunks, examples,
    stopped)``: the steps of ``epoch`` from step ``offset`` on, their metrics appended to
    ``chunks`` (one dict per step or scan chunk). ``after(train_state, offset, chunks)``
    (``None``: not called) runs after each step, or each scan of ``chunk`` steps in epoch mode
    (``chunk=None``: the epoch is one scan), and stops the epoch by returning true.

    ``rates`` (step mode): at each step that is a multiple of ``rate_every``, the examples/s
    since the previous such step (or the epoch's start) go to ``rates[step]``, timed when
    that step's loss is ready (one wait for the device per ``rate_every`` steps)."""
    if mode == "epoch":
        whole = log_compile(dp.compile_epoch(step_fn, train.num_examples, batch_size),
                            "train_epoch", log)
        device_data = dp.put_data(train.arrays)
        steps = train.num_examples // batch_size
        pieces: dict[int, Callable] = {}  # compiled scans by length

        def run_scanned(ts, epoch, offset, chunks, after):
            key, start = jax.random.fold_in(data_key, epoch), offset
            while offset < steps:
                length = steps - offset if chunk is None else min(chunk, steps - offset)
                first_step = int(dp.gather(ts.step)) if diag is not None else 0
                if length == steps:
                    ts, stacked = whole(ts, device_data, key)
                else:
                    if length not in pieces:
                        pieces[length] = log_compile(
                            dp.compile_epoch(step_fn, train.num_examples, batch_size,
                                             chunk=length), f"train_chunk ({length} steps)", log)
                    ts, stacked = pieces[length](ts, device_data, key, np.int32(offset))
                offset += length
                chunks.append(jax.device_get(stacked))
                if diag is not None:
                    diag(ts, first_step + length, epoch, length)
                if after is not None and offset < steps and after(ts, offset, chunks):
                    return ts, chunks, (offset - start) * batch_size, True
            return ts, chunks, (offset - start) * batch_size, False

        return run_scanned
    run = log_compile(dp.compile_step(step_fn), "train_step", log)

    def run_steps(ts, epoch, offset, chunks, after):
        last = None  # the epoch's last step, where the epoch's end writes latest anyway
        if isinstance(train, ArraySource):
            last = train.num_examples // batch_size
            order = np.asarray(batch_order(data_key, epoch, train.num_examples))
            rows = dp.local_slice(batch_size)
            host = (train.rows(order[i * batch_size:(i + 1) * batch_size][rows])
                    for i in range(offset, train.num_examples // batch_size))
        else:  # a resumed epoch skips the batches it had trained on
            host = itertools.islice(map(dp.local_part, (_fit_devices(b, dp) for b in
                                                        train.epoch(epoch, start_epoch))),
                                    offset, None)
        counted = [0]
        sizes: collections.deque[int] = collections.deque()  # rows of the batches made

        def count(batch):
            rows = _rows(batch) * dp.process_count
            counted[0] += rows
            sizes.append(rows)
            return batch

        batches = prefetch(map(count, host), put=dp.put_batch)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, unit="step")
        first_step = int(dp.gather(ts.step)) if diag is not None or rates is not None else 0
        done, window = 0, [time.perf_counter(), 0]  # since when, and examples since
        for batch in batches:
            ts, m = run(ts, batch)
            chunks.append(m)
            done += 1
            if rates is not None:
                window[1] += sizes.popleft()
                if (first_step + done) % rate_every == 0:
                    jax.block_until_ready(m["loss"])
                    now = time.perf_counter()
                    rates[first_step + done] = window[1] / max(now - window[0], 1e-9)
                    window[:] = [now, 0]
            if diag is not None:
                diag(ts, first_step + done, epoch)
            if after is not None and offset + done != last and after(ts, offset + done, chunks):
                return ts, chunks, counted[0], True
        if not chunks:
            raise ValueError(f"train_data: no batches in epoch {epoch + 1}")
        return ts, chunks, counted[0], False

    return run_steps


def _per_step(stacked: dict[str, np.ndarray], record: dict[str, Any], base: int, mode: str,
              rates: dict[int, float]) -> dict[str, np.ndarray]:
    """What the trackers get per step: the record's metrics, the learning rate and gradient
    norm, and examples/s -- the epoch's rate in epoch mode; in step mode the rate measured
    over the ``log_every`` steps up to each multiple of ``log_every`` (NaN, not sent, at the
    other steps and at the steps a resumed epoch had trained before it stopped)."""
    out = {k: v for k, v in stacked.items() if f"train_{k}" in record or k in STEP_ONLY}
    n = len(stacked["loss"])
    if mode == "epoch":
        out["examples_per_sec"] = np.full(n, record["examples_per_sec"])
    else:
        out["examples_per_sec"] = np.array([rates.pop(base + i + 1, np.nan) for i in range(n)])
    return out


def _concat(chunks: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The metrics of an epoch's steps so far, one array per metric (host copies)."""
    chunks = jax.device_get(chunks)
    return {k: np.concatenate([np.asarray(c[k]).reshape(-1) for c in chunks])
            for k in chunks[0]}


def _fit_devices(batch: dict, dp: DataParallel) -> dict:
    """A batch of an iterable, padded (masked) to a multiple of the device count if needed."""
    n = num_rows(batch["x"], "a training batch")
    size = dp.round_batch_size(n)
    return batch if size == n else pad_batch(batch, size)


def _rows(batch: dict) -> int:
    """Real examples in a host batch (padding excluded)."""
    if "mask" in batch:
        return int(np.asarray(batch["mask"]).sum())
    return num_rows(batch["x"], "a training batch")


def _restored_best(ts: TrainState, early_stopping: EarlyStopping | None, tracker: Tracker,
                   folder: RunFolder, last_epoch: int) -> TrainState:
    """With ``early_stopping.restore_best``: the train state of the best epoch, if not the last."""
    if early_stopping is None or not early_stopping.restore_best or folder.path is None \
            or tracker.best_epoch in (None, last_epoch):
        return ts
    synchronize("fnn-fit-restore-best")  # process 0 has written best.safetensors
    return folder.load("best", ts)[0] if folder.has("best") else ts


def _last_good(folder: RunFolder, epoch: int, last_saved: dict, epoch_base: int) -> str:
    """Where a diverged run can go back to (for the divergence message): ``latest``, written
    at step ``last_saved["step"]`` (``last_saved["any"]``: one was written, or is being
    written in the background), at the end of ``epoch`` epochs or inside the next (a step
    checkpoint: the epoch began at step ``epoch_base``)."""
    if not last_saved["any"]:
        return "no checkpoint was written yet"
    saved_step = last_saved["step"]
    where = (f"epoch {epoch}" if saved_step <= epoch_base else
             f"step {saved_step}, {saved_step - epoch_base} steps into epoch {epoch + 1}")
    return f"the last good checkpoint is {folder.checkpoint('latest')} ({where})"


def _learning_rate(dp: DataParallel, opt_state: Any) -> float | None:
    lr = learning_rate_of(opt_state)
    # Shortest decimal that round-trips in the state's dtype: 0.1, not 0.10000000149011612.
    return None if lr is None else float(str(np.asarray(dp.gather(lr))))


def _epoch_bar(show: bool, start: int, epochs: int):
    if not show:
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
