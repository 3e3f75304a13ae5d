"""Trackers: a run's events sent to TensorBoard, MLflow or a CSV file while it trains.

One small event interface, :class:`RunTracker` (``start``, ``scalars``, ``flush``, ``close``;
a tracker may also have ``histograms(step, {name: array})``), and three adapters over it:
:class:`CSVTracker` (no dependency: ``<run>/scalars.csv``, one ``step,name,value`` row per
value), :class:`TensorBoardTracker` (``tensorboardX``, no TensorFlow: event files in
``<run>/tensorboard``) and :class:`MLflowTracker` (``mlflow-skinny``:
a local ``file:`` store ``<run>/mlruns``, or any tracking URI; the MLflow run id is kept in
``<run>/mlflow.json``, so a resumed fnn run continues the same MLflow run).

:class:`Trackers` turns what the training loop has into events, the same for every adapter:

* per-step scalars every ``log_every`` steps, from the per-step values an epoch returns
  (written after the epoch, in ``epoch`` mode as in ``step`` mode): ``step/loss`` and
  ``step/<metric>`` (``step/accuracy``...); ``step/learning_rate``, the rate that step's update
  used, and ``step/grad_norm``, the global norm of the gradient it applied (frozen layers left
  out; see :func:`fnn.train.step.train_step_fn`'s ``stats_every``), computed in the compiled
  step, at the logged steps only, when ``fit`` has trackers; ``step/examples_per_sec``: in
  ``epoch`` mode the epoch's rate (the record's ``examples_per_sec``), in ``step`` mode the
  rate over the ``log_every`` steps up to that step, timed when its loss is ready (one wait
  per ``log_every`` steps; none for the steps a resumed epoch had trained before it stopped);
* the epoch record at its step, ``epoch/<key>`` (``epoch/train_loss``, ``epoch/val_accuracy``,
  ``epoch/learning_rate``, ``epoch/examples_per_sec``...), the values of ``metrics.jsonl``
  (which gets no per-step values);
* the diagnostics, when they are on, at each diagnostic step: to every tracker
  ``grad_norm/<layer>``, each layer's gradient norm, as a scalar; to TensorBoard also
  histograms of each layer's weights and gradients, ``weight/<layer>`` and ``grad/<layer>``
  (MLflow and CSV have no histograms: they keep the norms only);
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
import re
import socket
import struct
import time
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from fnn.files import atomic_write

__all__ = ["RunTracker", "CSVTracker", "TensorBoardTracker", "MLflowTracker", "Trackers",
           "NAMES", "check_available", "make_tracker", "from_config", "flatten", "file_uri_path"]

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

    @property
    def histograms(self) -> bool:
        """Whether a tracker takes histograms (has a ``histograms(step, values)`` method)."""
        return any(hasattr(t, "histograms") for t in self.trackers)

    def diagnostics(self, record: Mapping[str, Any], params: Any = None,
                    grads: Any = None) -> None:
        """A :class:`fnn.diagnostics.Diagnostics` record: each layer's gradient norm, to every
        tracker; and to those with a ``histograms`` method, each layer's weights
        (``weight/<layer>``) and their gradients (``grad/<layer>``) -- the leaves
        :func:`fnn.regularizers.is_weight` names, as the norms count them -- when given."""
        step = int(record["step"])
        self._send(step, {f"grad_norm/{layer['layer']}": layer.get("grad_norm")
                          for layer in record["layers"]})
        takers = [t for t in self.trackers if hasattr(t, "histograms")]
        if takers and params is not None and grads is not None:
            values = {**_by_layer(params, "weight"), **_by_layer(grads, "grad")}
            for t in takers:
                t.histograms(step, values)

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
    text; with diagnostics on, each layer's weights and gradients as histograms
    (:meth:`histograms`). A resumed run starts its event file with a restart marker at the
    step past ``resume_from`` (what tensorboardX's ``purge_step`` writes), so TensorBoard
    drops the steps the earlier run wrote after its checkpoint (a fresh run in a used folder
    purges from step 0: the old files are hidden).

    The events are framed here (TFRecord: length, data, masked CRC32C, with tensorboardX's
    protos and checksum) and appended to the file in one write per epoch, from the calling
    thread: tensorboardX's ``SummaryWriter`` puts each event through a process queue to a
    writer thread and ``fsync``s at every flush, several times the whole work of the
    events. :meth:`flush` hands the file to the system as ``metrics.jsonl`` is (a killed
    process loses nothing; no ``fsync``).
    """

    def __init__(self, logdir: str | os.PathLike | None = None):
        check_available("tensorboard", "TensorBoardTracker")
        self.logdir = None if logdir is None else Path(logdir)
        self.file: Any = None
        self.pending: list[bytes] = []  # framed events not yet written

    def start(self, run_dir: Path, config: Mapping[str, Any] | None, summary: str | None,
              resume_from: int | None) -> None:
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import hparams, text

        self.logdir = self.logdir or Path(run_dir) / "tensorboard"
        self.logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard reads every events.out.tfevents.* file of the folder, in name order: the
        # time and host as tensorboardX names them, then the nanosecond and pid, so a resume
        # within the same second gets a file of its own, after the first run's
        name = (f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
                f".{time.time_ns()}.{os.getpid()}")
        self.file = open(self.logdir / name, "ab")
        purge = 0 if resume_from is None else resume_from + 1
        self._event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self._event(Event(wall_time=time.time(), step=purge,  # later steps before it: dropped
                          session_log=SessionLog(status=SessionLog.START)))
        if resume_from is None:
            if config is not None:
                flat = {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v))
                        for k, v in flatten(config).items()}
                for summary_proto in hparams(flat, {}):
                    self._event(Event(wall_time=time.time(), summary=summary_proto))
                self._event(Event(wall_time=time.time(), summary=text(
                    "config", _code(json.dumps(config, indent=2, default=str)))))
            if summary is not None:
                self._event(Event(wall_time=time.time(), summary=text("summary", _code(summary))))
        self.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        # one event per step with every value (what add_scalar writes, one value at a time)
        self._event(Event(wall_time=time.time(), step=step, summary=Summary(
            value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])))

    def histograms(self, step: int, values: Mapping[str, np.ndarray]) -> None:
        """One histogram per name at ``step`` (``add_histogram``, with numpy's ``"auto"`` bins)."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import histogram

        for name, array in values.items():
            array = np.asarray(array)
            array = array[np.isfinite(array)]  # a NaN has no bin; an empty layer no histogram
            if array.size:
                self._event(Event(wall_time=time.time(), step=step,
                                  summary=histogram(name, array, "auto")))

    def _event(self, event: Any) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self.pending.append(b"".join((header, struct.pack("<I", masked_crc32c(header)), data,
                                      struct.pack("<I", masked_crc32c(data)))))

    def flush(self) -> None:
        self.file.write(b"".join(self.pending))  # whole records: a kill tears the last one
        self.pending = []
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.flush()
            self.file.close()
            self.file = None


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

    Metrics are sent at :meth:`flush` (once per epoch). To a local file store they are appended
    to the run's metric files (``<store>/<experiment>/<run>/metrics/<key>``, one
    ``timestamp value step`` line per value, as the store writes them) in one write per key:
    MLflow's own file store lists the experiment folders twice and opens the file once for
    every value (about 60 us a value, 15 ms an epoch of 47 logged steps). Any other tracking
    URI, or a key with characters outside MLflow's ``[A-Za-z0-9_-. /:]``, goes through
    ``log_batch`` (1000 metrics a call).
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None):
        check_available("mlflow", "MLflowTracker")
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # per metric: the last step the MLflow run holds
        self.pending: list[tuple[str, float, int, int]] = []  # (key, value, time, step) to send
        self.metrics_dir: Path | None = None  # a local file store's folder of the run's metrics
        self.made: set[Path] = set()  # folders under metrics_dir known to exist

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
            self.metrics_dir = self._metrics_dir(uri)
            return
        name = self.experiment or "fnn"
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=self.run_name or run_dir.name)
        self.run_id = run.info.run_id
        self.metrics_dir = self._metrics_dir(uri)
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

    def _metrics_dir(self, uri: str) -> Path | None:
        """The run's metrics folder of a local file store, ``None`` for any other store."""
        root = file_uri_path(uri)
        if root is None:
            return None
        experiment = self.client.get_run(self.run_id).info.experiment_id
        folder = root / experiment / self.run_id / "metrics"
        return folder if folder.is_dir() else None

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending += [(k, v, now, step) for k, v in values.items()
                         if step > self.logged.get(k, -1)]

    def flush(self) -> None:
        """Send the metrics given since the last flush (see the class docstring)."""
        from mlflow.entities import Metric

        lines: dict[str, list[str]] = {}
        batch = []
        for key, value, stamp, step in self.pending:
            if self.metrics_dir is not None and _FILE_KEY.fullmatch(key) \
                    and ".." not in key.split("/"):
                lines.setdefault(key, []).append(f"{stamp} {value} {step}\n")
            else:
                batch.append(Metric(key, value, stamp, step))
        for key, rows in lines.items():
            path = self.metrics_dir / key
            if path.parent not in self.made:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.made.add(path.parent)
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(rows))
        for i in range(0, len(batch), 1000):  # MLflow takes 1000 metrics per call
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        self.pending = []

    def close(self) -> None:
        if self.client is not None and self.run_id is not None:
            self.flush()
            self.client.set_terminated(self.run_id)
            self.client = None


def file_uri_path(uri: str) -> Path | None:
    """The local path of a ``file:`` URI (an MLflow file store), ``None`` for any other URI.

    Example:
        >>> file_uri_path("file:///tmp/run/mlruns").as_posix(), file_uri_path("http://host:5000")
        ('/tmp/run/mlruns', None)
    """
    if not uri.startswith("file:"):
        return None
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    return Path(url2pathname(urlparse(uri).path))


def _by_layer(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """``{"<prefix>/<layer path>": the values of its weight leaves, as one float64 array}``."""
    import jax

    from fnn.core import key_name
    from fnn.regularizers import is_weight

    parts: dict[str, list[np.ndarray]] = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = tuple(key_name(k) for k in keys)
        if is_weight(path):
            parts.setdefault(f"{prefix}/{'/'.join(path[:-1])}", []).append(
                np.asarray(leaf, np.float64).reshape(-1))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


_FILE_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-. /:]{0,249}")  # MLflow's metric names


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
