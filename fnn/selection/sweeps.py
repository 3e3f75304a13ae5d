"""Hyper-parameter sweeps: one run per setting, the winner chosen by validation, then tested."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fnn import run as fnn_run
from fnn.config import ConfigError, parse_config
from fnn.selection.errors import SelectionError
from fnn.selection.ranking import (check_metric, choose_best, default_metric, kept_record,
                                   metric_mode, val_metrics)
from fnn.selection.report import (format_sweep_table, format_value, plot_sweep, write_sweep_csv,
                                  write_sweep_json)
from fnn.selection.results import SweepResult, Trial
from fnn.selection.spaces import check_key
from fnn.selection.training import (Log, check_fresh_dir, check_trial, locked_fresh_dir,
                                    prefixed_log, train_model)
from fnn.train import loop

__all__ = ["sweep"]


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings stay strings, lists stay lists


def _trial_configs(cfg: dict[str, Any], settings: Sequence[Mapping[str, Any]]
                   ) -> list[dict[str, Any]]:
    configs = []
    for i, setting in enumerate(settings):
        try:
            trial_cfg = parse_config(cfg, [_override(check_key(k, "setting"), v)
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


def _trial_data(cfg: dict[str, Any], cache: dict[str, Any], has_test: bool
                ) -> tuple[dict[str, dict[str, np.ndarray]], bool]:
    """A trial's train and validation data, from ``cache`` (the last data set loaded, replaced
    when ``cfg`` needs another), and whether any data set loaded so far has a test split."""
    key = _data_key(cfg)
    if key not in cache:
        loaded = fnn_run.load_data(cfg)
        has_test = has_test or "test" in loaded
        # keep train and validation only: the test set stays out of every trial
        cache.clear()
        cache[key] = {k: loaded[k] for k in ("train", "val") if k in loaded}
    return cache[key], has_test


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

    Example (two learning rates on XOR, one point held out for validation, two epochs each; a
    few seconds):
        >>> import pathlib, tempfile
        >>> from fnn.selection import grid_settings
        >>> xor = pathlib.Path(fnn.__file__).parents[1] / "configs" / "xor.yaml"
        >>> cfg = fnn.config.load_config(xor, ["training.epochs=2", "output.plots=false",
        ...                                    "data.validation=1"])
        >>> space = {"optimizer.learning_rate": [0.1, 0.5]}
        >>> result = sweep(cfg, grid_settings(space), out=tempfile.mkdtemp(), log=None)
        >>> result.metric, result.mode, len(result.trials)
        ('val_accuracy', 'max', 2)
        >>> result.best in result.trials, sorted(result.test)   # the winner's test metrics
        (True, ['accuracy', 'checkpoint', 'examples', 'loss'])
        >>> sorted(p.name for p in result.out_dir.iterdir())
        ['sweep.csv', 'sweep.json', 'sweep.png', 'trial_00', 'trial_01']
        >>> [(p.parent.name, p.name) for p in result.out_dir.glob("trial_*/test.json")] == \\
        ...     [(result.best.run_dir.name, "test.json")]      # only the winner was tested
        True
    """
    check_metric(metric)
    metric_mode(metric or "val_loss", mode)  # a bad mode fails before anything trains
    if not settings:
        raise SelectionError("a sweep needs at least one setting")
    if not cfg["data"]["validation"]:
        raise ConfigError("data.validation", "a sweep chooses by validation metrics; set it to a "
                                             "fraction or count > 0")
    configs = _trial_configs(cfg, settings)
    out_dir = check_fresh_dir(out or cfg["output"]["dir"] or Path("runs") / f"{cfg['name']}-sweep")
    cache: dict[str, dict[str, dict[str, np.ndarray]]] = {}  # the last data set loaded
    has_test = False
    for i, (setting, trial_cfg) in enumerate(zip(settings, configs)):  # all checks first
        data, has_test = _trial_data(trial_cfg, cache, has_test)
        try:
            check_trial(trial_cfg, data, metric)
        except ConfigError as e:
            raise ConfigError(e.path, f"{e.detail} (in sweep trial {i}: {dict(setting)})") from None
    out_dir, lock = locked_fresh_dir(out_dir)  # only now: every trial checked
    with lock:
        width = max(2, len(str(len(configs) - 1)))
        keys = list(dict.fromkeys(k for s in settings for k in s))
        trials = [Trial(i, dict(s), out_dir / f"trial_{i:0{width}d}")
                  for i, s in enumerate(settings)]
        if log:
            log(f"sweep: {len(trials)} trials -> {out_dir}")
        for trial, trial_cfg in zip(trials, configs):
            data, has_test = _trial_data(trial_cfg, cache, has_test)
            if log:
                shown = ", ".join(f"{k}={format_value(v)}" for k, v in trial.setting.items())
                log(f"trial {trial.index + 1}/{len(trials)}: {shown or '(base config)'}")
            try:
                result = train_model(
                    trial_cfg, data["train"], data["val"], trial.run_dir,
                    log=prefixed_log(log, f"[trial {trial.index + 1}/{len(trials)}]"))
            except loop.TrainingDiverged as e:
                trial.error = f"diverged: {e}"
                if log:
                    log(f"trial {trial.index + 1} failed: {trial.error}")
            else:
                record = kept_record(result)
                metric = metric or default_metric(record)
                if metric not in record:
                    raise SelectionError(f"--metric: {metric!r} is not logged; choose one of "
                                         f"{sorted(val_metrics(record))}")
                trial.epoch, trial.metrics = int(record["epoch"]), val_metrics(record)
                trial.score = float(record[metric])
            write_sweep_csv(out_dir, keys, trials, metric)
        metric = metric or "val_loss"
        mode = metric_mode(metric, mode)
        best = choose_best(trials, mode)  # the choice is made here, before any test metric exists
        test = None
        if log:
            log(format_sweep_table(keys, trials, metric, best))
            log(f"best: trial {best.index} ({best.run_dir}) with {metric} {best.score:.4f}")
        if evaluate_test and has_test:
            test = fnn_run.evaluate_run(best.run_dir, log=log)
        swept = SweepResult(metric, mode, trials, best, test, out_dir)
        write_sweep_json(swept, keys, cfg)
        if keys:
            plot_sweep(trials, keys, metric, out_dir / "sweep.png", best=best, title=cfg["name"])
        return swept
