"""What the trackers cost: epoch time with output.trackers at log_every 10 vs no trackers.

A small MLP (784-256-10, batch 128, 64 steps per epoch, Adam with its learning rate in the
optimizer state) trains in epoch mode into a run folder (checkpoints are written in every
variant). With trackers the train step also computes the gradient norm and returns the
learning rate (the per-step values sent every ``log_every`` steps: loss, accuracy, learning
rate, gradient norm, examples/s), so that cost is in the whole-epoch figures too. The time of an epoch is measured between two
``fit`` callbacks, so it includes everything the loop does at the epoch's end: sending the
epoch's per-step values and record to the trackers, flushing them, and the checkpoint. The first
epoch (compilation, the tracker's start) is left out. The variants run interleaved, round after
round, and each reports the median epoch over all its rounds; the overhead is the difference
to "none", per epoch and per training step. Because other load blurs a whole epoch, the
trackers' own work (``Trackers.epoch``: the values sent and flushed) is also timed alone and
given as a share of the median epoch without trackers.

    PYTHONPATH=$PWD python scripts/bench_trackers.py [--rounds 5] [--epochs 8] [--steps 64]
    PYTHONPATH=$PWD python scripts/bench_trackers.py --step-stats 40 [--steps 468]

``--step-stats N`` times only the compiled epoch (no run folder, no trackers), N interleaved
rounds: the train step as ``fit`` runs it without trackers, with the gradient norm at the
logged steps (``stats_every=10``, what ``fit`` does with trackers) and at every step.

The machine may be shared: interleaving spreads other load over the variants, and the median
keeps its peaks out, but a loaded machine still widens the spread.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import optax

import fnn
from fnn.trackers import Trackers
from fnn.train import fit

BATCH = 128
STEPS = 64  # steps per epoch (--steps)


def _variants() -> dict[str, list[str]]:
    out = {"none": [], "csv": ["csv"]}
    for name, module in (("tensorboard", "tensorboardX"), ("mlflow", "mlflow")):
        try:
            __import__(module)
            out[name] = [name]
        except ImportError:
            print(f"({name}: {module} is not installed, skipped)")
    if len(out) == 4:
        out["all three"] = ["tensorboard", "mlflow", "csv"]
    return out


def _epoch_times(trackers: list[str], epochs: int, data: dict, root: Path) -> list[float]:
    marks: list[float] = []
    net = fnn.serial(fnn.Dense(256), fnn.Relu, fnn.Dense(10))
    fit(net, fnn.losses.softmax_cross_entropy,
        optax.inject_hyperparams(optax.adam)(learning_rate=1e-3), data, epochs=epochs,
        batch_size=BATCH, mode="epoch", log=None,
        run=fnn.train.RunOptions(tempfile.mkdtemp(dir=root), trackers=trackers, log_every=10),
        callbacks=[lambda record, ts: marks.append(time.perf_counter())])
    return list(np.diff(marks))  # epochs 2..N


def _send_times(trackers: list[str], root: Path, repeats: int = 50) -> list[float]:
    """The trackers' own work per epoch, timed alone: ``Trackers.epoch`` with an epoch's
    per-step values (what fit sends: loss, accuracy, learning rate, gradient norm, examples/s)
    and its record, flush included."""
    events = Trackers(trackers, log_every=10)
    events.start(Path(tempfile.mkdtemp(dir=root)), {"seed": 0}, "summary", None)
    rng = np.random.default_rng(0)
    record = {"epoch": 1, "step": 0, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0,
              "val_accuracy": 0.5, "learning_rate": 1e-3, "seconds": 0.1,
              "examples_per_sec": 1e5}
    out = []
    for epoch in range(repeats):
        stacked = {key: rng.random(STEPS, np.float32) for key in
                   ("loss", "accuracy", "learning_rate", "grad_norm", "examples_per_sec")}
        start = time.perf_counter()
        events.epoch(epoch * STEPS, stacked, {**record, "step": (epoch + 1) * STEPS})
        out.append(time.perf_counter() - start)
    events.close()
    return out


def _step_stats(rounds: int, data: dict) -> None:
    """The compiled epoch without, and with, the per-step learning rate and gradient norm."""
    import jax

    from fnn.train.state import init_train_state
    from fnn.train.step import make_train_epoch, train_step_fn

    net = fnn.serial(fnn.Dense(256), fnn.Relu, fnn.Dense(10))
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    variants = {"none": None, "every 10": 10, "every step": 1}
    data = jax.device_put(data)
    epochs = {name: make_train_epoch(train_step_fn(
        net, fnn.losses.softmax_cross_entropy, opt, metrics={"accuracy": fnn.train.correct},
        stats_every=every), STEPS * BATCH, BATCH) for name, every in variants.items()}
    states = {name: init_train_state(net, opt, (-1, 784), jax.random.key(0))[1]
              for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):  # the first round compiles
        for name in variants:
            start = time.perf_counter()
            states[name], metrics = epochs[name](states[name], data, jax.random.key(1))
            jax.block_until_ready(metrics)
            if round_:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["none"])
    print(f"compiled epoch of {STEPS} steps, gradient norm computed: median of {rounds} rounds")
    for name in variants:
        med = statistics.median(times[name])
        print(f"  {name:12s} {med * 1e3:8.2f} ms/epoch  {100 * (med - base) / base:+6.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64, help="steps per epoch")
    parser.add_argument("--step-stats", type=int, default=0, metavar="ROUNDS",
                        help="time only the train step's gradient norm, this many rounds")
    args = parser.parse_args()
    global STEPS
    STEPS = args.steps
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(STEPS * BATCH, 784)).astype(np.float32),
            "y": rng.integers(0, 10, STEPS * BATCH).astype(np.int32)}
    if args.step_stats:
        _step_stats(args.step_stats, data)
        return
    variants = _variants()
    times: dict[str, list[float]] = {name: [] for name in variants}
    sends: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.rounds):
            for name, trackers in variants.items():
                times[name] += _epoch_times(trackers, args.epochs, data, Path(root))
                sends[name] += _send_times(trackers, Path(root))
    base = statistics.median(times["none"])
    print(f"MLP 784-256-10, batch {BATCH}, {STEPS} steps per epoch, epoch mode, log_every 10; "
          f"median of {len(times['none'])} epochs per variant ({args.rounds} rounds)")
    print("whole epochs (training included; other load on the machine shows here):")
    for name in variants:
        med = statistics.median(times[name])
        print(f"  {name:12s} {med * 1e3:8.2f} ms/epoch  {(med - base) / STEPS * 1e3:+7.3f} "
              f"ms/step  {100 * (med - base) / base:+6.2f}%")
    print("the trackers' own work per epoch, timed alone, as a share of the 'none' epoch:")
    for name in variants:
        if name != "none":
            med = statistics.median(sends[name])
            print(f"  {name:12s} {med * 1e3:8.3f} ms/epoch  {med / STEPS * 1e3:7.4f} ms/step  "
                  f"{100 * med / base:6.2f}%")


if __name__ == "__main__":
    main()
