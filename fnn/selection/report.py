"""Reports of model selection: text tables, the files of a cross-validation and of a sweep
(``cv.csv``, ``cv.json``, ``folds.npz``, ``sweep.csv``, ``sweep.json``) and the sweep plot."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fnn.selection.results import CVResult, SweepResult, Trial
from fnn.train import checkpoint as ckpt

__all__ = ["format_value", "format_table", "format_cv_table", "write_cv", "format_sweep_table",
           "write_sweep_csv", "write_sweep_json", "plot_sweep"]


def format_value(value: Any) -> str:
    """A table cell: floats to 4 decimals (3 significant digits when tiny or huge), lists and
    dicts as JSON, anything else as ``str``.

    Example:
        >>> format_value(0.25), format_value(3e-5), format_value([8, 8]), format_value("adam")
        ('0.2500', '3e-05', '[8, 8]', 'adam')
    """
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
    cells = [[str(h) for h in header]] + [[format_value(v) for v in row] for row in rows]
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


# --------------------------------------------------------------------------- cross-validation

def _cv_rows(cv: CVResult) -> tuple[list[str], list[list[Any]]]:
    names = list(cv.summary)
    header = ["fold", "train_size", "val_size", "epoch", *names]
    rows: list[list[Any]] = [[f.fold, f.train_size, f.val_size, f.epoch,
                              *(f.metrics[k] for k in names)] for f in cv.folds]
    rows.append(["mean", "", "", "", *(cv.summary[k]["mean"] for k in names)])
    rows.append(["std", "", "", "", *(cv.summary[k]["std"] for k in names)])
    return header, rows


def format_cv_table(cv: CVResult) -> str:
    """A cross-validation as a text table: one row per fold, then the ``mean`` and ``std`` rows.

    Example:
        >>> import pathlib
        >>> from fnn.selection import FoldResult
        >>> folds = [FoldResult(i, np.arange(3), np.arange(1), 5, {"val_loss": loss},
        ...                     pathlib.Path(f"cv/fold_{i}")) for i, loss in [(1, 0.2), (2, 0.4)]]
        >>> cv = CVResult("val_loss", folds, {"val_loss": {"mean": 0.3, "std": 0.1414}}, 4,
        ...               pathlib.Path("cv"))
        >>> print(format_cv_table(cv))
        fold  train_size  val_size  epoch  val_loss
        1              3         1      5    0.2000
        2              3         1      5    0.4000
        mean                                 0.3000
        std                                  0.1414
    """
    header, rows = _cv_rows(cv)
    return format_table(header, rows)


def write_cv(cv: CVResult, cfg: dict[str, Any]) -> None:
    """Write ``cv.csv`` (the table of :func:`format_cv_table`), ``cv.json`` (sizes, epochs,
    metrics, summary and ``cfg``) and ``folds.npz`` (``val_<i>``: fold ``i``'s validation
    indices) to ``cv.out_dir``, each atomically.

    Example:
        >>> import pathlib, tempfile
        >>> from fnn.selection import FoldResult
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> folds = [FoldResult(1, np.array([2, 3]), np.array([0, 1]), 5, {"val_loss": 0.2},
        ...                     out / "fold_1"),
        ...          FoldResult(2, np.array([0, 1]), np.array([2, 3]), 4, {"val_loss": 0.4},
        ...                     out / "fold_2")]
        >>> write_cv(CVResult("val_loss", folds, {"val_loss": {"mean": 0.3, "std": 0.1414}}, 4,
        ...                   out), {"name": "xor"})
        >>> sorted(p.name for p in out.iterdir())
        ['cv.csv', 'cv.json', 'folds.npz']
        >>> np.load(out / "folds.npz")["val_2"]
        array([2, 3])
    """
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


def write_sweep_csv(out_dir: Path, keys: Sequence[str], trials: Sequence[Trial],
                    metric: str | None) -> None:
    """Write ``out_dir/sweep.csv``: one row per trial (setting, validation metrics with
    ``metric`` first, epoch, status ``ok``/``pending``/the error); lists and dicts as JSON.

    Example:
        >>> import pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> trials = [Trial(0, {"model.0.Dense": [8, 8]}, out / "trial_0", 0.9, 3,
        ...                 {"val_loss": 0.3, "val_accuracy": 0.9}),
        ...           Trial(1, {"model.0.Dense": [16]}, out / "trial_1")]
        >>> write_sweep_csv(out, ["model.0.Dense"], trials, "val_accuracy")
        >>> print((out / "sweep.csv").read_text())
        trial,model.0.Dense,val_accuracy,val_loss,epoch,status
        0,"[8, 8]",0.9,0.3,3,ok
        1,[16],,,,pending
    """
    header, rows = _sweep_rows(keys, trials, metric)
    rows = [[json.dumps(v) if isinstance(v, (list, dict)) else v for v in row] for row in rows]
    ckpt.atomic_write(out_dir / "sweep.csv", _csv_bytes(header, rows))


def format_sweep_table(keys: Sequence[str], trials: Sequence[Trial], metric: str,
                       best: Trial | None = None) -> str:
    """The sweep's results as a text table, best trial marked with ``*``.

    Example:
        >>> import pathlib
        >>> trials = [Trial(i, {"optimizer.learning_rate": lr}, pathlib.Path(f"trial_{i}"),
        ...                 acc, 3, {"val_accuracy": acc}) for i, (lr, acc) in
        ...           enumerate([(0.1, 0.8), (0.01, 0.9)])]
        >>> print(format_sweep_table(["optimizer.learning_rate"], trials, "val_accuracy",
        ...                          best=trials[1]))
           trial  optimizer.learning_rate  val_accuracy  epoch  status
               0                   0.1000        0.8000      3  ok
        *      1                   0.0100        0.9000      3  ok
    """
    header, rows = _sweep_rows(keys, trials, metric)
    header = ["", *header]
    rows = [["*" if best is not None and t.index == best.index else "", *row]
            for t, row in zip(trials, rows)]
    return format_table(header, rows)


def write_sweep_json(result: SweepResult, keys: Sequence[str], cfg: dict[str, Any]) -> None:
    """Write ``result.out_dir/sweep.json``: the metric and mode, the swept ``keys``, the best
    trial, the winner's test metrics, every trial and the base config ``cfg``.

    Example:
        >>> import pathlib, tempfile
        >>> out = pathlib.Path(tempfile.mkdtemp())
        >>> best = Trial(0, {"optimizer.learning_rate": 0.1}, out / "trial_0", 0.9, 3,
        ...              {"val_accuracy": 0.9})
        >>> write_sweep_json(SweepResult("val_accuracy", "max", [best], best, None, out),
        ...                  ["optimizer.learning_rate"], {"name": "xor"})
        >>> doc = json.loads((out / "sweep.json").read_text())
        >>> doc["best"]["setting"], doc["test"], sorted(doc)
        ({'optimizer.learning_rate': 0.1}, None,
         ['best', 'config', 'keys', 'metric', 'mode', 'test', 'trials'])
    """
    doc = {"metric": result.metric, "mode": result.mode, "keys": list(keys),
           "best": _trial_doc(result.best), "test": result.test,
           "trials": [_trial_doc(t) for t in result.trials], "config": cfg}
    text = json.dumps(doc, indent=2, default=str) + "\n"
    ckpt.atomic_write(result.out_dir / "sweep.json", text.encode())


def plot_sweep(trials: Sequence[Trial], keys: Sequence[str], metric: str,
               path: str | os.PathLike, *, best: Trial | None = None, title: str = "") -> Path:
    """Write ``path`` (PNG): the validation metric of every trial against each swept key.

    One panel per key; numeric values on a log axis when they are positive and span a factor
    of 10 or more, other values (strings, lists) as categories. The best trial is a red star;
    failed trials are left out.

    Example:
        >>> import pathlib, tempfile
        >>> trials = [Trial(i, {"optimizer.learning_rate": lr, "optimizer.name": name},
        ...                 pathlib.Path(f"trial_{i}"), acc) for i, (lr, name, acc) in
        ...           enumerate([(1e-3, "adam", 0.8), (1e-2, "sgd", 0.9), (1e-1, "adam", 0.7)])]
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sweep.png"
        >>> plot_sweep(trials, ["optimizer.learning_rate", "optimizer.name"], "val_accuracy",
        ...            path, best=trials[1]) == path
        True
        >>> path.read_bytes()[:4]
        b'\\x89PNG'
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
            labels = list(dict.fromkeys(format_value(v) for v in values))
            xs = [labels.index(format_value(v)) for v in values]
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
