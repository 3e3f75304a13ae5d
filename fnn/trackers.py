"""Trackers: a run's events sent to TensorBoard, MLflow or a CSV file while it trains.

One small event interface, :class:`RunTracker` (``start``, ``scalars``, ``flush``, ``close``),
and three
adapters over it: :class:`CSVTracker` (no dependency: ``<run>/scalars.csv``, one
``step,name,value`` row per value), :class:`TensorBoardTracker` (``tensorboardX``, no
TensorFlow: event files in ``<run>/tensorboard``) and :class:`MLflowTracker` (``mlflow-skinny``:
a local ``file:`` store ``<run>/mlruns``, or any tracking URI; the MLflow run id is kept in
``<run>/mlflow.json``, so a resumed fnn run continues the same MLflow run).

:class:`Trackers` turns what the training loop has into events, the same for every adapter:

* per-step scalars every ``log_every`` steps, ``step/<metric>`` (``step/loss``,
  ``step/accuracy``...), from the per-step values an epoch returns (written after the epoch,
  in ``epoch`` mode as in ``step`` mode);
* the epoch record at its step, ``epoch/<key>`` (``epoch/train_loss``, ``epoch/val_accuracy``,
  ``epoch/learning_rate``, ``epoch/examples_per_sec``...), the values of ``metrics.jsonl``;
* the diagnostics, when they are on: ``grad_norm/<layer>`` per layer at each diagnostic step;
* at the start of a fresh run, the resolved config (hyper-parameters) and the summary text.

A resumed run passes the step of the last epoch its checkpoint holds: every adapter drops what
it had written past it (the CSV file is cut back atomically, TensorBoard purges the later
steps, MLflow skips the steps it already has), so no step appears twice.

An adapter's library is imported only when the adapter is made; a missing one is one line
naming the ``pip install`` command, raised before training (:func:`check_available`).

Example:
    >>> import pathlib, tempfile
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> events = Trackers(["csv"], log_every=2)
    >>> events.start(run, config={"seed": 0}, summary="Dense(2)", resume_from=None)
    >>> events.epoch(0, {"loss": np.array([0.9, 0.8, 0.7, 0.6])},
    ...              {"epoch": 1, "step": 4, "train_loss": 0.75})
    >>> events.close()
    >>> print((run / "scalars.csv").read_text().strip())
    step,name,value
    2,step/loss,0.8
    4,step/loss,0.6
    4,epoch/train_loss,0.75
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from fnn.files import atomic_write

__all__ = ["RunTracker", "CSVTracker", "TensorBoardTracker", "MLflowTracker", "Trackers",
           "NAMES", "check_available", "make_tracker", "from_config", "flatten"]

NAMES = ("tensorboard", "mlflow", "csv")
_LIBRARIES = {"tensorboard": ("tensorboardX", "fnn[tensorboard]"),
              "mlflow": ("mlflow", "fnn[mlflow]")}


@runtime_checkable
class RunTracker(Protocol):
    """What a tracker does with a run's events (see the module docstring for the names).

    ``start(run_dir, config, summary, resume_from)``: ``resume_from`` is ``None`` for a fresh
    run, else the step through which earlier events are kept (later ones are dropped).
    ``scalars(step, values)``: named floats at a training step (may be buffered).
    ``flush()``: make what was sent durable (called once per epoch, before its checkpoint).
    ``close()``: flush and end.
    """

    def start(self, run_dir: Path, config: Mapping[str, Any] | None, summary: str | None,
              resume_from: int | None) -> None: ...

    def scalars(self, step: int, values: Mapping[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def check_available(name: str, where: str = "output.trackers") -> None:
    """Refuse an unknown tracker name or one whose library is missing, in one line.

    Raises:
        ValueError: ``output.trackers: 'tensorboard' needs tensorboardX: pip install
            'fnn[tensorboard]'`` (or an unknown name, with the known ones).
    """
    if name not in NAMES:
        raise ValueError(f"{where}: unknown tracker {name!r}; choose from {', '.join(NAMES)}")
    if name in _LIBRARIES:
        module, extra = _LIBRARIES[name]
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f"{where}: {name!r} needs {module}, which is not installed: "
                             f"pip install '{extra}'") from None


def make_tracker(spec: str | RunTracker, where: str = "trackers") -> RunTracker:
    """A tracker from a name in :data:`NAMES` (checked: :func:`check_available`) or as given."""
    if isinstance(spec, str):
        check_available(spec, where)
        return {"csv": CSVTracker, "tensorboard": TensorBoardTracker,
                "mlflow": MLflowTracker}[spec]()
    if not isinstance(spec, RunTracker):
        raise ValueError(f"{where}: {spec!r} is neither a tracker name ({', '.join(NAMES)}) nor "
                         "an object with start, scalars, flush and close")
    return spec


def from_config(output: Mapping[str, Any]) -> list[RunTracker]:
    """The trackers of a config's ``output`` section (``trackers``, ``mlflow``)."""
    mlflow = output.get("mlflow") or {}
    return [MLflowTracker(mlflow.get("tracking_uri"), mlflow.get("experiment"))
            if name == "mlflow" else make_tracker(name, f"output.trackers[{i}]")
            for i, name in enumerate(output.get("trackers") or [])]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys; lists and other values as they are.

    >>> flatten({"optimizer": {"name": "adam", "lr": 0.1}, "seed": 0})
    {'optimizer.name': 'adam', 'optimizer.lr': 0.1, 'seed': 0}
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Trackers:
    """The training loop's side of the trackers: what it has, turned into events for each.

    Args:
        specs: tracker names (:data:`NAMES`) or :class:`RunTracker` objects; checked here, so
            a missing library is refused before training.
        log_every: per-step scalars at every step that is a multiple of this.
    """

    def __init__(self, specs: Sequence[str | RunTracker] = (), log_every: int = 10):
        if isinstance(specs, (str, RunTracker)):
            specs = [specs]
        if isinstance(log_every, bool) or not isinstance(log_every, (int, np.integer)) \
                or log_every < 1:
            raise ValueError(f"log_every: must be an int >= 1, got {log_every!r}")
        self.trackers = [make_tracker(s, f"trackers[{i}]") for i, s in enumerate(specs)]
        self.log_every = int(log_every)

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def start(self, run_dir: Path, config: Mapping[str, Any] | None, summary: str | None,
              resume_from: int | None) -> None:
        """Open every tracker on ``run_dir`` (see :class:`RunTracker`)."""
        for t in self.trackers:
            t.start(Path(run_dir), config, summary, resume_from)

    def epoch(self, base: int, stacked: Mapping[str, np.ndarray],
              record: Mapping[str, Any]) -> None:
        """An epoch's per-step values (``stacked[k][i]`` is step ``base + i + 1``), every
        ``log_every`` steps, then its record at ``record["step"]``."""
        if not self.trackers:
            return
        n = len(next(iter(stacked.values()))) if stacked else 0
        first = (base // self.log_every + 1) * self.log_every
        for step in range(first, base + n + 1, self.log_every):
            self._send(step, {f"step/{k}": v[step - base - 1] for k, v in stacked.items()})
        self._send(int(record["step"]),
                   {f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "step")})
        for t in self.trackers:
            t.flush()

    def diagnostics(self, record: Mapping[str, Any]) -> None:
        """A :class:`fnn.diagnostics.Diagnostics` record: each layer's gradient norm."""
        self._send(int(record["step"]), {f"grad_norm/{layer['layer']}": layer.get("grad_norm")
                                         for layer in record["layers"]})

    def close(self) -> None:
        for t in self.trackers:
            t.close()

    def _send(self, step: int, values: Mapping[str, Any]) -> None:
        # a float32 value as its shortest decimal (0.1, not 0.10000000149011612)
        clean = {k: float(str(v)) if isinstance(v, np.floating) else float(v)
                 for k, v in values.items()
                 if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                 and math.isfinite(float(v))}
        if clean:
            for t in self.trackers:
                t.scalars(step, clean)


class CSVTracker:
    """Scalars as ``step,name,value`` rows of one file, appended (``<run>/scalars.csv``).

    A resumed run cuts the rows past ``resume_from`` (and a row torn by a kill) once,
    atomically, as ``metrics.jsonl`` is cut.
    """

    HEADER = "step,name,value\n"

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self.file: Any = None

    def start(self, run_dir: Path, config: Mapping[str, Any] | None, summary: str | None,
              resume_from: int | None) -> None:
        self.path = self.path or Path(run_dir) / "scalars.csv"
        if resume_from is None or not self.path.exists():
            atomic_write(self.path, self.HEADER.encode())
        else:
            atomic_write(self.path, self._kept(resume_from).encode())
        self.file = open(self.path, "a", encoding="utf-8", newline="")

    def _kept(self, last_step: int) -> str:
        """The file's whole rows up to ``last_step``; refuses a file that is not ours."""
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        lines.pop()  # "" after the last newline, or a row torn by a kill
        if not lines or lines[0] + "\n" != self.HEADER:
            raise ValueError(f"{self.path}: line 1: not fnn's scalars.csv header "
                             f"({self.HEADER.strip()!r}); move the file away to resume")
        kept = [self.HEADER]
        for number, line in enumerate(lines[1:], 2):
            try:
                step = int(line.split(",", 1)[0])
            except ValueError:
                raise ValueError(f"{self.path}: line {number}: not a step,name,value row; "
                                 "fnn only appends whole rows, so the file was edited or "
                                 "damaged") from None
            if step <= last_step:
                kept.append(line + "\n")
        return "".join(kept)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for name, value in values.items():
            writer.writerow([step, name, repr(float(value))])
        self.file.write(out.getvalue())  # whole rows: a kill tears at most the last one

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class TensorBoardTracker:
    """Event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``), via tensorboardX.

    The config is written as hyper-parameters (the HParams tab) and as text, the summary as
    text. A resumed run opens the writer with ``purge_step`` past ``resume_from``, so
    TensorBoard drops the steps the earlier run wrote after its checkpoint (a fresh run in a
    used folder purges from step 0: the old files are hidden).
    """

    def __init__(self, logdir: str | os.PathLike | None = None, flush_secs: int = 30):
        check_available("tensorboard", "TensorBoardTracker")
        self.logdir = None if logdir is None else Path(logdir)
        self.flush_secs = flush_secs
        self.writer: Any = None

    def start(self, run_dir: Path, config: Mapping[str, Any] | None, summary: str | None,
              resume_from: int | None) -> None:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        self.logdir = self.logdir or Path(run_dir) / "tensorboard"
        # TensorBoard drops the steps >= purge_step of the files written before: all of them
        # for a fresh run in a used folder, those past the checkpoint for a resumed one
        # event files are named by the second they are opened and the host: a resume within
        # the same second would write over the first run's file, so each start gets its own
        # suffix (TensorBoard reads every file in the folder, in name order)
        self.writer = SummaryWriter(str(self.logdir), flush_secs=self.flush_secs,
                                    purge_step=0 if resume_from is None else resume_from + 1,
                                    filename_suffix=f".{time.time_ns()}.{os.getpid()}")
        if resume_from is not None:
            return
        if config is not None:
            flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                    for k, v in flatten(config).items()}
            for summary_proto in hparams(flat, {}):
                self.writer.file_writer.add_summary(summary_proto)
            self.writer.add_text("config", _code(json.dumps(config, indent=2, default=str)), 0)
        if summary is not None:
            self.writer.add_text("summary", _code(summary), 0)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        # one event per step with every value (what add_scalar writes, one value at a time)
        self.writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()]),
            step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MLflowTracker:
    """An MLflow run: scalars as metrics, the config as params, summary and config as artifacts.

    Args:
        tracking_uri: where MLflow keeps runs; ``None``: a local file store ``<run>/mlruns``
            (``mlflow ui --backend-store-uri <run>/mlruns``).
        experiment: the MLflow experiment (made if missing); ``None``: ``"fnn"``.
        run_name: the MLflow run's name; ``None``: the run folder's name.

    The MLflow run id is written to ``<run>/mlflow.json``; a resumed fnn run continues that
    MLflow run and skips the steps it already holds (a resumed run recomputes them bit for bit).
    MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE=true``: for a ``file:`` URI
    this tracker sets it in the process's environment when it is not set already.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None):
        check_available("mlflow", "MLflowTracker")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # per metric: the last step the MLflow run holds
        self.pending: list[Any] = []  # metrics sent since the last flush

    def start(self, run_dir: Path, config: Mapping[str, Any] | None, summary: str | None,
              resume_from: int | None) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        uri = self.tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # mlflow >= 3 asks to opt in to its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        saved = run_dir / "mlflow.json"
        if resume_from is not None and saved.exists():
            self.run_id = _read_run_id(saved)
            self.client.update_run(self.run_id, status="RUNNING")
            for key in self.client.get_run(self.run_id).data.metrics:
                history = self.client.get_metric_history(self.run_id, key)
                self.logged[key] = max((m.step for m in history), default=-1)
            return
        name = self.experiment or "fnn"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_name or run_dir.name)
        self.run_id = run.info.run_id
        atomic_write(saved, (json.dumps({"run_id": self.run_id, "tracking_uri": uri}) + "\n")
                     .encode())
        if config is not None:
            params = [Param(k, json.dumps(v) if not isinstance(v, str) else v)
                      for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes 100 params per call
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.client.log_text(self.run_id, json.dumps(config, indent=2, default=str),
                                 "config.json")
        if summary is not None:
            self.client.log_text(self.run_id, summary, "summary.txt")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, v, now, step) for k, v in values.items()
                         if step > self.logged.get(k, -1)]

    def flush(self) -> None:
        """One ``log_batch`` call per 1000 metrics (MLflow's limit) sent since the last."""
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.flush()
            self.client.set_terminated(self.run_id)
            self.client = None


def _read_run_id(path: Path) -> str:
    try:
        run_id = json.loads(path.read_text(encoding="utf-8"))["run_id"]
        if not isinstance(run_id, str):
            raise ValueError("run_id is not a string")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not fnn's MLflow run record ({e}); delete it to start a "
                         "new MLflow run") from None
    return run_id


def _code(text: str) -> str:
    """Text shown as-is in TensorBoard's markdown (four-space indented)."""
    return "\n".join("    " + line for line in text.splitlines())
