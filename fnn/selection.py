"""Model selection: k-fold cross-validation and hyper-parameter sweeps (grid and random search).

Both train models from a config (see ``fnn.config``) and judge them on **validation** data
only; the test set is never touched while choosing.

* :func:`cross_validate` divides the non-test data of a config into ``k`` folds (stratified
  with ``data.stratify``); each fold is the validation set once while a model is trained on the
  other ``k - 1``. It reports every fold's validation metrics and their mean and standard
  deviation. ``data.validation`` is ignored (each fold is the validation set), and with
  ``data.standardize`` the standardizer is fitted on each fold's training part only.
* :func:`sweep` trains one model per setting (a dict of dotted config keys, as in
  ``fnn.config.apply_overrides``), each in a normal run folder, ranks them by a validation
  metric, and only then evaluates the winner on the test set (its ``test.json``).
  :func:`grid_settings` and :func:`random_settings` make the settings.

A model's score is its validation record at the checkpoint the run keeps
(``checkpoints/best.safetensors``: the best epoch by ``training.early_stopping.monitor``, or by
``val_accuracy``/``val_loss`` without early stopping), so the winner's test metrics are those of
the very weights that were ranked.

Output folders::

    <cv folder>/cv.json  cv.csv  folds.npz  fold_1/ ... fold_K/  (metrics.jsonl, checkpoints/)
    <sweep folder>/sweep.json  sweep.csv  sweep.png  trial_00/ ... (each a run folder; test.json
                                                                   in the winner's only)

Example:
    >>> cfg = fnn.config.load_config("configs/csv_example.yaml")
    >>> cv = cross_validate(cfg, folds=5, out="runs/csv-cv")
    >>> cv.mean, cv.std                               # of val_accuracy over the 5 folds
    >>> space = {"optimizer.learning_rate": [1e-3, 1e-2], "model.0.Dense": [8, 32]}
    >>> result = sweep(cfg, grid_settings(space), out="runs/csv-sweep")
    >>> result.best.setting, result.best.score        # no test set in a CSV: result.test is None
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import itertools
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from fnn import run as fnn_run
from fnn.config import ConfigError, parse_config, parse_yaml
from fnn.data.splits import kfold
from fnn.train import checkpoint as ckpt
from fnn.train import loop, tracker

__all__ = ["SelectionError", "Choice", "Uniform", "LogUniform", "grid_settings",
           "random_settings", "parse_values", "parse_bounds", "default_metric", "metric_mode",
           "FoldResult", "CVResult", "cross_validate", "Trial", "SweepResult", "sweep",
           "choose_best", "format_table", "format_sweep_table", "plot_sweep"]

Log = Callable[[str], None] | None


class SelectionError(ValueError):
    """A bad search space, metric or selection option; the message names the option or key."""


# --------------------------------------------------------------------------- search spaces

class Choice(NamedTuple):
    """Draw one of ``values`` uniformly at random.

    Example:
        >>> Choice(("adam", "sgd")).sample(np.random.default_rng(0)) in ("adam", "sgd")
        True
    """

    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """One value (each with probability ``1 / len(values)``)."""
        return self.values[int(rng.integers(len(self.values)))]


class Uniform(NamedTuple):
    """A float drawn uniformly from ``[low, high)``.

    Example:
        >>> 0.1 <= Uniform(0.1, 0.5).sample(np.random.default_rng(0)) < 0.5
        True
    """

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One value, uniform on ``[low, high)``."""
        return float(rng.uniform(self.low, self.high))


class LogUniform(NamedTuple):
    """A float whose logarithm is uniform: ``exp(U(log low, log high))``, for scales such as
    learning rates (each decade is equally likely).

    Example:
        >>> 1e-4 <= LogUniform(1e-4, 1e-2).sample(np.random.default_rng(0)) <= 1e-2
        True
    """

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One value; ``P(value < t) = log(t / low) / log(high / low)``."""
        value = float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return min(max(value, self.low), self.high)  # exp(log(x)) may round past a bound


Distribution = Choice | Uniform | LogUniform


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise SelectionError(f"{where}: a config key is a dotted path such as "
                             f"optimizer.learning_rate, got {key!r}")
    return key


def _check_distribution(key: str, dist: Any) -> Distribution:
    if isinstance(dist, Choice):
        if not dist.values:
            raise SelectionError(f"{key}: Choice needs at least one value")
        return dist
    if isinstance(dist, (Uniform, LogUniform)):
        kind = type(dist).__name__
        low, high = dist
        for v in (low, high):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SelectionError(f"{key}: {kind} bounds must be finite numbers, got "
                                     f"({low!r}, {high!r})")
        if not low < high:
            raise SelectionError(f"{key}: {kind} needs low < high, got ({low!r}, {high!r})")
        if isinstance(dist, LogUniform) and low <= 0:
            raise SelectionError(f"{key}: LogUniform needs 0 < low < high, got ({low!r}, {high!r})")
        return type(dist)(float(low), float(high))
    if isinstance(dist, (list, tuple)):
        return _check_distribution(key, Choice(tuple(dist)))
    raise SelectionError(f"{key}: expected a list of values, Choice, Uniform or LogUniform, "
                         f"got {dist!r}")


def grid_settings(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of ``space``: the Cartesian product, in order.

    The last key varies fastest (as ``itertools.product``); an empty space gives one empty
    setting (the config as it is).

    Args:
        space: ``{dotted config key: [value, ...]}``.

    Returns:
        ``prod(len(values))`` settings ``{key: value}``.

    Example:
        >>> grid_settings({"optimizer.learning_rate": [1e-3, 1e-2],
        ...                "training.batch_size": [32, 64]})
        [{'optimizer.learning_rate': 0.001, 'training.batch_size': 32}, ... 4 settings]
    """
    keys = [_check_key(k, "grid") for k in space]
    values = []
    for key in keys:
        vals = space[key]
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
            raise SelectionError(f"{key}: a grid dimension needs a non-empty list of values, "
                                 f"got {vals!r}")
        values.append(list(vals))
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def random_settings(space: Mapping[str, Distribution | Sequence[Any]], n: int, *,
                    seed: int) -> list[dict[str, Any]]:
    """``n`` settings drawn at random from ``space``, reproducibly from ``seed``.

    Each setting draws every key independently, in the order of ``space``; a plain list is a
    :class:`Choice`. The same ``space``, ``n`` and ``seed`` give the same settings, and the
    first ``m`` settings of a larger ``n`` are the same as those of ``n = m``.

    Example:
        >>> random_settings({"optimizer.learning_rate": LogUniform(1e-4, 1e-1),
        ...                  "model.1.Dense.features": [64, 128, 256]}, 8, seed=0)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SelectionError(f"random search: the number of settings must be an int >= 1, "
                             f"got {n!r}")
    dists = {_check_key(k, "random"): _check_distribution(k, d) for k, d in space.items()}
    if not dists:
        raise SelectionError("random search needs at least one dimension to draw")
    rng = np.random.default_rng(seed)
    return [{key: dist.sample(rng) for key, dist in dists.items()} for _ in range(int(n))]


def _split_assignment(item: str, option: str) -> tuple[str, str]:
    if not isinstance(item, str) or "=" not in item:
        raise SelectionError(f"{option}: expected KEY.PATH=VALUES, e.g. "
                             f"optimizer.learning_rate=1e-4,1e-3; got {item!r}")
    key, text = item.split("=", 1)
    return _check_key(key.strip(), option), text


def parse_values(item: str, option: str = "--grid") -> tuple[str, list[Any]]:
    """Parse ``"key=v1,v2,..."`` into ``(key, [v1, v2, ...])``, values read as YAML.

    The values are read as the YAML flow list ``[v1, v2, ...]``, so numbers (``1e-4``),
    strings, ``true``/``null``, and lists or mappings in brackets (``[8, 8],{Dense: 4}``) work.

    Example:
        >>> parse_values("optimizer.learning_rate=1e-4,3e-4")
        ('optimizer.learning_rate', [0.0001, 0.0003])
    """
    key, text = _split_assignment(item, option)
    try:
        values = parse_yaml(f"[{text}]", f"{option} {key}")
    except ConfigError as e:
        raise SelectionError(f"{option} {key}: cannot read the values {text!r}: "
                             f"{e.detail}") from None
    if not values:
        raise SelectionError(f"{option} {key}: no values given")
    return key, list(values)


def parse_bounds(item: str, option: str) -> tuple[str, float, float]:
    """Parse ``"key=low,high"`` into ``(key, low, high)`` (two numbers).

    Example:
        >>> parse_bounds("optimizer.learning_rate=1e-4,1e-1", "--loguniform")
        ('optimizer.learning_rate', 0.0001, 0.1)
    """
    key, values = parse_values(item, option)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                               for v in values):
        raise SelectionError(f"{option} {key}: expected two numbers LOW,HIGH, got {values!r}")
    return key, float(values[0]), float(values[1])


# --------------------------------------------------------------------------- metrics

def default_metric(record: Mapping[str, Any]) -> str:
    """``"val_accuracy"`` when an epoch record has it (classification), else ``"val_loss"``."""
    return tracker.default_metric(record)


def metric_mode(metric: str, mode: str = "auto") -> str:
    """``"max"`` or ``"min"``: ``auto`` is max for accuracies, min otherwise (losses); the rule
    ``fit`` uses for early stopping (:func:`fnn.train.tracker.metric_mode`)."""
    try:
        return tracker.metric_mode(metric, mode)
    except ValueError:
        raise SelectionError(f"--mode: must be auto, min or max, got {mode!r}") from None


def _check_metric(metric: str | None) -> None:
    if metric is not None and not str(metric).startswith("val_"):
        raise SelectionError(f"--metric: models are chosen by validation metrics only "
                             f"(val_loss, val_accuracy, ...), got {metric!r}")


def _kept_record(result: loop.FitResult) -> dict[str, Any]:
    """The epoch record of the checkpoint a run keeps (``best``, else the last epoch)."""
    return dict(tracker.kept_record(result.history, result.best_epoch))


def _val_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if k.startswith("val_")}


# --------------------------------------------------------------------------- training

def _fresh_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists and is not empty; pass --out with a new "
                              "folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _prefixed(log: Log, prefix: str) -> Log:
    return None if log is None else (lambda line: log(f"{prefix} {line}"))


def _train_model(cfg: dict[str, Any], train: dict[str, np.ndarray],
                 val: dict[str, np.ndarray], run_dir: Path, *, log: Log) -> loop.FitResult:
    """Train one model of ``cfg`` on ``train``, validated on ``val``, into a run folder: the same
    run as ``fnn train`` except that the test set is not evaluated (selection must not see it)."""
    return fnn_run.train_model(cfg, train, val, run_dir, log=log)


# --------------------------------------------------------------------------- cross-validation

@dataclasses.dataclass
class FoldResult:
    """One fold of a cross-validation.

    Attributes:
        fold: 1-based fold number.
        train_idx, val_idx: ``int64`` indices into the cross-validated data (the config's
            non-test data), sorted and disjoint.
        epoch: the epoch whose record is reported (the kept checkpoint's).
        metrics: that epoch's validation metrics, e.g. ``{"val_loss": ..., "val_accuracy": ...}``.
        run_dir: the fold's folder (metrics.jsonl, checkpoints).
    """

    fold: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    epoch: int
    metrics: dict[str, float]
    run_dir: Path

    @property
    def train_size(self) -> int:
        """Examples the fold's model was trained on."""
        return int(len(self.train_idx))

    @property
    def val_size(self) -> int:
        """Examples it was validated on."""
        return int(len(self.val_idx))


@dataclasses.dataclass
class CVResult:
    """A cross-validation: per-fold results and their mean and standard deviation.

    Attributes:
        metric: the headline metric (``val_accuracy`` for classification, else ``val_loss``).
        folds: one :class:`FoldResult` per fold.
        summary: ``{metric: {"mean": m, "std": s}}`` for every validation metric; ``std`` is the
            sample standard deviation over folds (``ddof=1``).
        num_examples: the size of the cross-validated data (the folds' validation sets cover it).
        out_dir: the folder with ``cv.json``, ``cv.csv``, ``folds.npz`` and ``fold_<i>/``.
    """

    metric: str
    folds: list[FoldResult]
    summary: dict[str, dict[str, float]]
    num_examples: int
    out_dir: Path

    @property
    def mean(self) -> float:
        """Mean of the headline metric over folds."""
        return self.summary[self.metric]["mean"]

    @property
    def std(self) -> float:
        """Sample standard deviation (``ddof=1``) of the headline metric over folds."""
        return self.summary[self.metric]["std"]


def _stratify_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    if y.size != len(y):
        raise ConfigError("data.stratify", f"stratified folds need one label per example, got "
                                           f"targets of shape {y.shape}")
    return y.reshape(len(y))


def cross_validate(cfg: dict[str, Any], folds: int = 5, *, out: str | os.PathLike | None = None,
                   seed: int | None = None, metric: str | None = None,
                   log: Log = print) -> CVResult:
    """K-fold cross-validation of the run ``cfg`` describes; the test set is never used.

    The config's training data (with ``data.validation`` ignored, so train + validation, never
    test) is divided into ``folds`` folds (``fnn.data.splits.kfold``, stratified when
    ``data.stratify``); fold ``i``'s model is trained from the config's initialization on the
    other folds and validated on fold ``i``. Writes ``cv.json`` (per-fold sizes, epochs and
    validation metrics; mean and std), ``cv.csv`` (one row per fold, then ``mean`` and ``std``
    rows) and ``folds.npz`` (``val_<i>`` index arrays) to ``out`` (default: ``output.dir``, else
    ``runs/<name>-cv``), with each fold's run in ``fold_<i>/``.

    Args:
        cfg: a validated config (``fnn.config.load_config``).
        folds: ``K >= 2``.
        out: the output folder; it must be new or empty.
        seed: the seed of the fold assignment (default: the config's ``seed``).
        metric: the headline metric (a ``val_*`` key; default ``val_accuracy`` or ``val_loss``).
        log: where progress and the final table go (``None``: silent).

    Returns:
        A :class:`CVResult`.

    Example:
        >>> cv = cross_validate(load_config("configs/csv_example.yaml"), folds=5)
        >>> f"{cv.mean:.3f} ± {cv.std:.3f}"
    """
    _check_metric(metric)
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise SelectionError(f"--folds: must be an int >= 2, got {folds!r}")
    out_dir = _fresh_dir(out or cfg["output"]["dir"] or Path("runs") / f"{cfg['name']}-cv")
    base = copy.deepcopy(cfg)
    base["data"]["validation"] = 0
    base["data"]["standardize"] = False  # fitted per fold below, on the fold's training part
    loaded = fnn_run.load_data(base)
    x, y = loaded["train"]["x"], loaded["train"]["y"]  # "test" is left alone
    n = len(x)
    if folds > n:
        raise SelectionError(f"--folds: {folds} folds need at least {folds} examples, the data "
                             f"has {n}")
    strata = _stratify_labels(y) if cfg["data"]["stratify"] else None
    assignment = kfold(n, int(folds), seed=cfg["seed"] if seed is None else seed,
                       stratify_labels=strata)
    if log:
        log(f"cross-validation: {folds} folds of {n} examples -> {out_dir}")
    results: list[FoldResult] = []
    for i, (train_idx, val_idx) in enumerate(assignment, start=1):
        train = {"x": x[train_idx], "y": y[train_idx]}
        val = {"x": x[val_idx], "y": y[val_idx]}
        if cfg["data"]["standardize"]:
            from fnn.data.tabular import Standardizer
            scaler = Standardizer.fit(train["x"])
            train["x"], val["x"] = scaler.transform(train["x"]), scaler.transform(val["x"])
        if log:
            log(f"fold {i}/{folds}: training on {len(train_idx)}, validating on {len(val_idx)}")
        result = _train_model(cfg, train, val, out_dir / f"fold_{i}",
                              log=_prefixed(log, f"[fold {i}/{folds}]"))
        record = _kept_record(result)
        results.append(FoldResult(i, train_idx, val_idx, int(record["epoch"]),
                                  _val_metrics(record), out_dir / f"fold_{i}"))
        metric = metric or default_metric(record)
        if metric not in record:  # found out after the first fold, not the last
            raise SelectionError(f"--metric: {metric!r} is not logged; choose one of "
                                 f"{sorted(_val_metrics(record))}")
    names = [k for k in results[0].metrics if all(k in f.metrics for f in results)]
    summary = {}
    for name in names:
        values = np.array([f.metrics[name] for f in results], np.float64)
        summary[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1))}
    cv = CVResult(metric, results, summary, n, out_dir)
    _write_cv(cv, cfg)
    if log:
        log(_cv_table(cv))
        log(f"{metric}: {cv.mean:.4f} ± {cv.std:.4f} (mean ± std over {folds} folds)")
    return cv


def _cv_rows(cv: CVResult) -> tuple[list[str], list[list[Any]]]:
    names = list(cv.summary)
    header = ["fold", "train_size", "val_size", "epoch", *names]
    rows: list[list[Any]] = [[f.fold, f.train_size, f.val_size, f.epoch,
                              *(f.metrics[k] for k in names)] for f in cv.folds]
    rows.append(["mean", "", "", "", *(cv.summary[k]["mean"] for k in names)])
    rows.append(["std", "", "", "", *(cv.summary[k]["std"] for k in names)])
    return header, rows


def _cv_table(cv: CVResult) -> str:
    header, rows = _cv_rows(cv)
    return format_table(header, rows)


def _write_cv(cv: CVResult, cfg: dict[str, Any]) -> None:
    header, rows = _cv_rows(cv)
    ckpt.atomic_write(cv.out_dir / "cv.csv", _csv_bytes(header, rows))
    doc = {"metric": cv.metric, "folds": len(cv.folds), "examples": cv.num_examples,
           "summary": cv.summary,
           "per_fold": [{"fold": f.fold, "train_size": f.train_size, "val_size": f.val_size,
                         "epoch": f.epoch, **f.metrics, "run_dir": str(f.run_dir)}
                        for f in cv.folds],
           "config": cfg}
    ckpt.atomic_write(cv.out_dir / "cv.json", (json.dumps(doc, indent=2) + "\n").encode())
    buffer = io.BytesIO()
    np.savez(buffer, **{f"val_{f.fold}": f.val_idx for f in cv.folds})
    ckpt.atomic_write(cv.out_dir / "folds.npz", buffer.getvalue())


# --------------------------------------------------------------------------- sweeps

@dataclasses.dataclass
class Trial:
    """One setting of a sweep and how its model did on validation.

    Attributes:
        index: 0-based trial number (its folder is ``trial_<index>``).
        setting: ``{dotted key: value}`` applied to the base config.
        run_dir: the trial's run folder.
        score: the selection metric at the kept checkpoint (NaN if training failed).
        epoch: that checkpoint's epoch (``None`` if training failed).
        metrics: all validation metrics at that epoch.
        error: why training failed (e.g. the loss diverged), else ``None``.
    """

    index: int
    setting: dict[str, Any]
    run_dir: Path
    score: float = math.nan
    epoch: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    error: str | None = None


@dataclasses.dataclass
class SweepResult:
    """A finished sweep: every trial, the winner by validation, and the winner's test metrics.

    Attributes:
        metric, mode: what was compared (e.g. ``"val_accuracy"``, ``"max"``).
        trials: every :class:`Trial`, in order.
        best: the winning trial.
        test: the winner's test metrics (its ``test.json``), or ``None`` when the data has no
            test set or ``evaluate_test=False``.
        out_dir: the sweep folder.
    """

    metric: str
    mode: str
    trials: list[Trial]
    best: Trial
    test: dict[str, Any] | None
    out_dir: Path


def choose_best(trials: Sequence[Trial], mode: str) -> Trial:
    """The trial with the best finite score (``"max"`` or ``"min"``); ties go to the earlier one.

    Example:
        >>> choose_best(result.trials, "max").setting
    """
    finite = [t for t in trials if t.score is not None and math.isfinite(t.score)]
    if not finite:
        reasons = "; ".join(f"trial {t.index}: {t.error or 'no score'}" for t in trials)
        raise SelectionError(f"no trial finished with a finite validation score: {reasons}")
    if mode == "max":
        return max(finite, key=lambda t: (t.score, -t.index))
    return min(finite, key=lambda t: (t.score, t.index))


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings stay strings, lists stay lists


def _trial_configs(cfg: dict[str, Any], settings: Sequence[Mapping[str, Any]]
                   ) -> list[dict[str, Any]]:
    configs = []
    for i, setting in enumerate(settings):
        try:
            trial_cfg = parse_config(cfg, [_override(_check_key(k, "setting"), v)
                                           for k, v in setting.items()])
            if not trial_cfg["data"]["validation"]:
                raise ConfigError("data.validation", "a sweep chooses by validation metrics; "
                                                     "set it to a fraction or count > 0")
        except ConfigError as e:
            raise ConfigError(e.path, f"{e.detail} (in sweep trial {i}: {dict(setting)})") from None
        configs.append(trial_cfg)
    return configs


def _data_key(cfg: dict[str, Any]) -> str:
    return json.dumps({"data": cfg["data"], "seed": cfg["seed"], "loss": cfg["loss"]["name"]},
                      sort_keys=True, default=str)


def sweep(cfg: dict[str, Any], settings: Sequence[Mapping[str, Any]], *,
          metric: str | None = None, mode: str = "auto",
          out: str | os.PathLike | None = None, evaluate_test: bool = True,
          log: Log = print) -> SweepResult:
    """Train one model per setting, choose the best by a validation metric, then test it.

    Every setting is applied to ``cfg`` as overrides and validated before anything trains.
    Each trial is a run folder ``trial_<i>`` under ``out`` (default: ``output.dir``, else
    ``runs/<name>-sweep``) with config.yaml, metrics.jsonl and checkpoints, as ``fnn train``
    writes, but without test metrics. Only after all trials have trained is the winner chosen
    (``metric`` at each run's kept checkpoint; ``mode`` ``auto``: max for accuracies, min for
    losses), and only then is the winner's test set evaluated (``test.json`` in its folder; the
    other trials' test metrics are never computed). A trial whose loss diverges is recorded as
    failed and skipped. Writes ``sweep.csv`` (a row per trial; rewritten after each trial),
    ``sweep.json`` and ``sweep.png`` (the metric against each swept key).

    Args:
        cfg: the base config (validated); it needs validation data (``data.validation > 0``).
        settings: ``[{dotted key: value}, ...]``, e.g. from :func:`grid_settings`.
        metric: a ``val_*`` key (default ``val_accuracy`` for classification, else ``val_loss``).
        evaluate_test: evaluate the winner on the test set (when the data has one).

    Returns:
        A :class:`SweepResult`.

    Example:
        >>> space = {"optimizer.learning_rate": [1e-4, 3e-4, 1e-3]}
        >>> result = sweep(load_config("configs/mnist_mlp.yaml"), grid_settings(space))
        >>> result.best.setting, result.test["accuracy"]
    """
    _check_metric(metric)
    metric_mode(metric or "val_loss", mode)  # a bad mode fails before anything trains
    if not settings:
        raise SelectionError("a sweep needs at least one setting")
    if not cfg["data"]["validation"]:
        raise ConfigError("data.validation", "a sweep chooses by validation metrics; set it to a "
                                             "fraction or count > 0")
    configs = _trial_configs(cfg, settings)
    out_dir = _fresh_dir(out or cfg["output"]["dir"] or Path("runs") / f"{cfg['name']}-sweep")
    width = max(2, len(str(len(configs) - 1)))
    keys = list(dict.fromkeys(k for s in settings for k in s))
    trials = [Trial(i, dict(s), out_dir / f"trial_{i:0{width}d}") for i, s in enumerate(settings)]
    if log:
        log(f"sweep: {len(trials)} trials -> {out_dir}")
    cache: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # the last data set loaded
    has_test = False
    for trial, trial_cfg in zip(trials, configs):
        key = _data_key(trial_cfg)
        if key not in cache:
            loaded = fnn_run.load_data(trial_cfg)
            has_test = has_test or "test" in loaded
            # keep train and validation only: the test set stays out of every trial
            cache = {key: {k: loaded[k] for k in ("train", "val") if k in loaded}}
        data = cache[key]
        if log:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.setting.items())
            log(f"trial {trial.index + 1}/{len(trials)}: {shown or '(base config)'}")
        try:
            result = _train_model(trial_cfg, data["train"], data["val"], trial.run_dir,
                                  log=_prefixed(log, f"[trial {trial.index + 1}/{len(trials)}]"))
        except loop.TrainingDiverged as e:
            trial.error = f"diverged: {e}"
            if log:
                log(f"trial {trial.index + 1} failed: {trial.error}")
        else:
            record = _kept_record(result)
            metric = metric or default_metric(record)
            if metric not in record:
                raise SelectionError(f"--metric: {metric!r} is not logged; choose one of "
                                     f"{sorted(_val_metrics(record))}")
            trial.epoch, trial.metrics = int(record["epoch"]), _val_metrics(record)
            trial.score = float(record[metric])
        _write_sweep_csv(out_dir, keys, trials, metric)
    metric = metric or "val_loss"
    mode = metric_mode(metric, mode)
    best = choose_best(trials, mode)  # the choice is made here, before any test metric exists
    test = None
    if log:
        log(format_sweep_table(keys, trials, metric, best))
        log(f"best: trial {best.index} ({best.run_dir}) with {metric} {best.score:.4f}")
    if evaluate_test and has_test:
        test = fnn_run.evaluate_run(best.run_dir, log=log)
    doc = {"metric": metric, "mode": mode, "keys": keys,
           "best": _trial_doc(best), "test": test, "trials": [_trial_doc(t) for t in trials],
           "config": cfg}
    text = json.dumps(doc, indent=2, default=str) + "\n"
    ckpt.atomic_write(out_dir / "sweep.json", text.encode())
    if keys:
        plot_sweep(trials, keys, metric, out_dir / "sweep.png", best=best, title=cfg["name"])
    return SweepResult(metric, mode, trials, best, test, out_dir)


def _trial_doc(t: Trial) -> dict[str, Any]:
    return {"trial": t.index, "setting": t.setting,
            "score": None if math.isnan(t.score) else t.score, "epoch": t.epoch,
            "metrics": t.metrics, "error": t.error, "run_dir": str(t.run_dir)}


def _sweep_rows(keys: Sequence[str], trials: Sequence[Trial], metric: str | None
                ) -> tuple[list[str], list[list[Any]]]:
    names = list(dict.fromkeys(k for t in trials for k in t.metrics))
    if metric in names:  # the selection metric first
        names.remove(metric)
        names.insert(0, metric)
    header = ["trial", *keys, *names, "epoch", "status"]
    rows = []
    for t in trials:
        status = t.error or ("ok" if t.epoch is not None else "pending")
        rows.append([t.index, *(t.setting.get(k, "") for k in keys),
                     *(t.metrics.get(k, "") for k in names), "" if t.epoch is None else t.epoch,
                     status])
    return header, rows


def _write_sweep_csv(out_dir: Path, keys: Sequence[str], trials: Sequence[Trial],
                     metric: str | None) -> None:
    header, rows = _sweep_rows(keys, trials, metric)
    rows = [[json.dumps(v) if isinstance(v, (list, dict)) else v for v in row] for row in rows]
    ckpt.atomic_write(out_dir / "sweep.csv", _csv_bytes(header, rows))


def format_sweep_table(keys: Sequence[str], trials: Sequence[Trial], metric: str,
                       best: Trial | None = None) -> str:
    """The sweep's results as a text table, best trial marked with ``*``.

    Example:
        >>> print(format_sweep_table(["optimizer.learning_rate"], result.trials, "val_accuracy"))
    """
    header, rows = _sweep_rows(keys, trials, metric)
    header = ["", *header]
    rows = [["*" if best is not None and t.index == best.index else "", *row]
            for t, row in zip(trials, rows)]
    return format_table(header, rows)


# --------------------------------------------------------------------------- output helpers

def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns (floats to 4 decimals or 3 significant digits).

    Example:
        >>> print(format_table(["fold", "val_loss"], [[1, 0.25], [2, 0.5]]))
        fold  val_loss
           1    0.2500
           2    0.5000
    """
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    numeric = [all(isinstance(row[j], (int, float)) or row[j] == "" for row in rows)
               for j in range(len(header))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w)
                       for c, w, num in zip(r, widths, numeric)).rstrip() for r in cells]
    return "\n".join(lines)


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def plot_sweep(trials: Sequence[Trial], keys: Sequence[str], metric: str,
               path: str | os.PathLike, *, best: Trial | None = None, title: str = "") -> Path:
    """Write ``path`` (PNG): the validation metric of every trial against each swept key.

    One panel per key; numeric values on a log axis when they are positive and span a factor
    of 10 or more, other values (strings, lists) as categories. The best trial is a red star;
    failed trials are left out.

    Example:
        >>> plot_sweep(result.trials, ["optimizer.learning_rate"], "val_accuracy", "sweep.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if math.isfinite(t.score)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [t.setting.get(key) for t in done]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric and values:
            xs = [float(v) for v in values]
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(_fmt(v) for v in values))
            xs = [labels.index(_fmt(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
        ax.plot(xs, [t.score for t in done], "o", ms=5, alpha=0.8, label="trial")
        for x, t in zip(xs, done):
            if t is best:
                ax.plot([x], [t.score], "r*", ms=14, label="best")
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from fnn.plots import save_figure
    return save_figure(fig, path)
