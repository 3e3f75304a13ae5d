"""Tests of fnn.selection (k-fold cross-validation, grid/random sweeps), the `fnn cv` and
`fnn sweep` commands, and the example configs csv_example.yaml and mnist_mlp_augment.yaml."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

import fnn.run
from fnn import selection
from fnn.cli import main
from fnn.config import load_config
from fnn.selection import Choice, LogUniform, Trial, Uniform
from fnn.train import loop

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny",
    "seed": 0,
    "model": [{"Dense": {"features": 8}}, "Relu", {"Dense": 2}],
    "loss": {"name": "softmax_cross_entropy"},
    "optimizer": {"name": "adam", "learning_rate": 0.03},
    "data": {"name": "circles", "options": {"n": 120, "noise": 0.1, "n_test": 60},
             "validation": 0.25},
    "training": {"epochs": 3, "batch_size": 30},
    "output": {"plots": False, "progress": False},
}


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


class _Spy(dict):
    """A data dict that records every read of its "test" entry into ``events``."""

    def __init__(self, data, events):
        super().__init__(data)
        self.events = events

    def _touch(self, key):
        if key == "test":
            self.events.append("test")

    def __getitem__(self, key):
        self._touch(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._touch(key)
        return super().get(key, default)

    def pop(self, key, *default):
        self._touch(key)
        return super().pop(key, *default)

    def items(self):
        self._touch("test" if "test" in self else None)
        return super().items()

    def values(self):
        self._touch("test" if "test" in self else None)
        return super().values()


@pytest.fixture
def events(monkeypatch):
    """Record, in order, every model trained ("fit") and every read of a test set ("test")."""
    log: list[str] = []
    real_load, real_fit = fnn.run.load_data, loop.fit

    def load_data(cfg):
        return _Spy(real_load(cfg), log)

    def fit(*args, **kwargs):
        log.append("fit")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fnn.run, "load_data", load_data)
    monkeypatch.setattr(fnn.run, "fit", fit)
    return log


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _kept_epoch(history: list[dict], monitor: str = "val_accuracy") -> dict:
    """Reference: without early stopping a run keeps the first epoch with the best accuracy."""
    i = max(range(len(history)), key=lambda j: (history[j][monitor], -j))
    return history[i]


# --------------------------------------------------------------------------- search spaces

def test_grid_settings_is_the_cartesian_product_last_key_fastest():
    space = {"optimizer.learning_rate": [1e-4, 3e-4, 1e-3], "model.1.Dense.features": [128, 256],
             "optimizer.name": ["adam", "sgd"]}
    got = selection.grid_settings(space)
    want = [{"optimizer.learning_rate": lr, "model.1.Dense.features": f, "optimizer.name": o}
            for lr in [1e-4, 3e-4, 1e-3] for f in [128, 256] for o in ["adam", "sgd"]]
    assert got == want
    assert len(got) == 3 * 2 * 2
    assert selection.grid_settings({}) == [{}]
    with pytest.raises(selection.SelectionError, match="model.1.Dense.features"):
        selection.grid_settings({"model.1.Dense.features": []})


def test_random_settings_are_seeded_reproducible_and_in_range():
    space = {"optimizer.learning_rate": LogUniform(1e-5, 1e-1), "regularizers.l2": Uniform(0, 0.5),
             "optimizer.name": Choice(("adam", "sgd", "rmsprop")), "training.batch_size": [32, 64]}
    a = selection.random_settings(space, 400, seed=3)
    assert a == selection.random_settings(space, 400, seed=3)
    assert a[:5] == selection.random_settings(space, 5, seed=3)
    assert a != selection.random_settings(space, 400, seed=4)
    lrs = np.array([s["optimizer.learning_rate"] for s in a])
    l2 = np.array([s["regularizers.l2"] for s in a])
    assert np.all((lrs >= 1e-5) & (lrs <= 1e-1)) and np.all((l2 >= 0) & (l2 < 0.5))
    assert {s["optimizer.name"] for s in a} == {"adam", "sgd", "rmsprop"}
    assert {s["training.batch_size"] for s in a} == {32, 64}
    # log-uniform: P(lr < t) = log(t / 1e-5) / log(1e-1 / 1e-5), one quarter per decade
    for t, p in ((1e-4, 0.25), (1e-3, 0.5), (1e-2, 0.75)):
        assert abs(np.mean(lrs < t) - p) < 0.07
    assert abs(np.mean(l2 < 0.25) - 0.5) < 0.07
    with pytest.raises(selection.SelectionError, match="LogUniform needs 0 < low"):
        selection.random_settings({"optimizer.learning_rate": LogUniform(0, 1)}, 2, seed=0)
    with pytest.raises(selection.SelectionError, match="low < high"):
        selection.random_settings({"regularizers.l2": Uniform(1, 1)}, 2, seed=0)
    with pytest.raises(selection.SelectionError, match=">= 1"):
        selection.random_settings(space, 0, seed=0)


def test_parse_values_and_bounds_read_yaml_and_name_the_option():
    assert selection.parse_values("optimizer.learning_rate=1e-4,3e-4") == \
        ("optimizer.learning_rate", [1e-4, 3e-4])
    assert selection.parse_values("model.1=Relu,{Dense: 4}") == ("model.1", ["Relu", {"Dense": 4}])
    assert selection.parse_values("a.b=[1, 2],[3]") == ("a.b", [[1, 2], [3]])
    assert selection.parse_bounds("optimizer.learning_rate=1e-4,1e-1", "--loguniform") == \
        ("optimizer.learning_rate", 1e-4, 0.1)
    with pytest.raises(selection.SelectionError, match="--grid: expected KEY.PATH=VALUES"):
        selection.parse_values("optimizer.learning_rate")
    with pytest.raises(selection.SelectionError, match="--uniform regularizers.l2: expected two"):
        selection.parse_bounds("regularizers.l2=0,0.1,0.2", "--uniform")


def test_choose_best_by_mode_skips_failed_trials_and_breaks_ties_by_order():
    trials = [Trial(0, {}, Path("a"), 0.5), Trial(1, {}, Path("b"), 0.9),
              Trial(2, {}, Path("c"), math.nan, error="diverged"), Trial(3, {}, Path("d"), 0.9),
              Trial(4, {}, Path("e"), 0.2)]
    assert selection.choose_best(trials, "max").index == 1
    assert selection.choose_best(trials, "min").index == 4
    assert selection.metric_mode("val_accuracy") == "max"
    assert selection.metric_mode("val_loss") == "min"
    with pytest.raises(selection.SelectionError, match="trial 2: diverged"):
        selection.choose_best([trials[2]], "max")


# --------------------------------------------------------------------------- cross-validation

def test_cv_folds_disjoint_cover_train_data_and_report_mean_std(tiny_config, tmp_path, events,
                                                                capsys):
    out = tmp_path / "cv"
    assert main(["cv", str(tiny_config), "data.stratify=true", "--folds", "3",
                 "--out", str(out)]) == 0
    assert events == ["fit"] * 3  # three models, and the test set never read
    doc = json.loads((out / "cv.json").read_text())
    n = 120  # every non-test example: data.validation is ignored, the 60 test points are not used
    assert doc["examples"] == n and doc["folds"] == 3

    folds = np.load(out / "folds.npz")
    vals = [folds[f"val_{i}"] for i in (1, 2, 3)]
    everything = np.concatenate(vals)
    assert len(everything) == n and np.array_equal(np.sort(everything), np.arange(n))
    # stratified: every fold has each class's share, counts within one of each other
    cv_cfg = load_config(tiny_config, ["data.validation=0"])
    x, y = fnn.run.load_data(cv_cfg)["train"]["x"], fnn.run.load_data(cv_cfg)["train"]["y"]
    for c in (0, 1):
        counts = [int(np.sum(y[v] == c)) for v in vals]
        assert max(counts) - min(counts) <= 1

    per_fold = doc["per_fold"]
    for fold, v in zip(per_fold, vals):
        assert fold["val_size"] == len(v) and fold["train_size"] == n - len(v)
        # the fold's model trained on the other folds: train_size // batch_size steps per epoch
        history = _history(Path(fold["run_dir"]))
        assert history[-1]["step"] == 3 * (fold["train_size"] // 30)
        kept = _kept_epoch(history)
        assert fold["epoch"] == kept["epoch"]
        assert fold["val_accuracy"] == pytest.approx(kept["val_accuracy"])

    # fold 1's reported accuracy is that of its kept weights on exactly its validation fold
    from fnn.layers.spec import from_spec
    from fnn.train.checkpoint import load_weights

    params, state = load_weights(out / "fold_1" / "checkpoints" / "best.safetensors")
    logits, _ = from_spec(cv_cfg["model"]).apply(params, state, x[vals[0]])
    accuracy = float(np.mean(np.argmax(np.asarray(logits), -1) == y[vals[0]]))
    assert per_fold[0]["val_accuracy"] == pytest.approx(accuracy)

    for name in ("val_accuracy", "val_loss"):
        values = [f[name] for f in per_fold]
        assert doc["summary"][name]["mean"] == pytest.approx(statistics.mean(values))
        assert doc["summary"][name]["std"] == pytest.approx(statistics.stdev(values))
    rows = list(csv.reader((out / "cv.csv").read_text().splitlines()))
    assert [r[0] for r in rows] == ["fold", "1", "2", "3", "mean", "std"]
    printed = capsys.readouterr().out
    assert "val_accuracy:" in printed and "±" in printed and "mean" in printed


def test_cv_standardizes_on_each_folds_training_part_only(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    table = rng.normal(50.0, 10.0, (40, 3))
    path = tmp_path / "t.csv"
    lines = ["a,b,c,label"] + [",".join(f"{v:.3f}" for v in row) + f",{i % 2}"
                               for i, row in enumerate(table)]
    path.write_text("\n".join(lines) + "\n")
    raw = {**TINY, "data": {"name": "csv", "path": str(path), "options": {"label_column": "label"},
                            "standardize": True}, "training": {"epochs": 1, "batch_size": 10}}
    seen = []
    real_fit = loop.fit

    def fit(net, loss, opt, train, val, **kw):
        seen.append((np.asarray(train["x"]), np.asarray(val["x"])))
        return real_fit(net, loss, opt, train, val, **kw)

    monkeypatch.setattr(fnn.run, "fit", fit)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    result = selection.cross_validate(cfg, 2, out=tmp_path / "cv", log=None)
    for (train_x, val_x), fold in zip(seen, result.folds):
        np.testing.assert_allclose(train_x.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(train_x.std(0), 1.0, atol=1e-5)
        raw_train = table[fold.train_idx]
        want_val = (table[fold.val_idx] - raw_train.mean(0)) / raw_train.std(0)
        np.testing.assert_allclose(val_x, want_val, atol=1e-3)


# --------------------------------------------------------------------------- sweeps

def test_grid_sweep_trains_every_setting_chooses_by_validation_then_tests_the_winner(
        tiny_config, tmp_path, events, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(tiny_config), "--grid", "optimizer.learning_rate=0.003,0.1",
                 "--grid", "model.0.Dense.features=2,8", "--out", str(out)]) == 0
    # all four models trained before the first read of a test set, and one test evaluation
    assert events[:4] == ["fit"] * 4 and "fit" not in events[4:] and "test" in events[4:]
    trials = sorted(out.glob("trial_*"))
    assert [t.name for t in trials] == ["trial_00", "trial_01", "trial_02", "trial_03"]
    settings = [(lr, f) for lr in (0.003, 0.1) for f in (2, 8)]
    scores = []
    for trial, (lr, features) in zip(trials, settings):
        cfg = yaml.safe_load((trial / "config.yaml").read_text())
        assert cfg["optimizer"]["learning_rate"] == lr
        assert cfg["model"][0]["Dense"]["features"] == features
        scores.append(_kept_epoch(_history(trial))["val_accuracy"])
    winner = max(range(4), key=lambda i: (scores[i], -i))
    assert [t.name for t in trials if (t / "test.json").exists()] == [trials[winner].name]

    doc = json.loads((out / "sweep.json").read_text())
    assert doc["metric"] == "val_accuracy" and doc["mode"] == "max"
    assert doc["best"]["trial"] == winner
    assert doc["test"] == json.loads((trials[winner] / "test.json").read_text())
    assert doc["test"]["examples"] == 60
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert [float(r["val_accuracy"]) for r in rows] == pytest.approx(scores)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"best: trial {winner}" in printed and "optimizer.learning_rate" in printed


def test_random_sweep_is_seeded_and_chooses_min_val_loss(tiny_config, tmp_path, events):
    out = tmp_path / "random"
    assert main(["sweep", str(tiny_config), "training.epochs=2", "--random", "2",
                 "--loguniform", "optimizer.learning_rate=1e-3,0.3", "--choice",
                 "model.0.Dense.features=3,5", "--seed", "5", "--metric", "val_loss",
                 "--out", str(out)]) == 0
    want = selection.random_settings({"optimizer.learning_rate": LogUniform(1e-3, 0.3),
                                      "model.0.Dense.features": Choice((3, 5))}, 2, seed=5)
    losses = []
    for trial, setting in zip(sorted(out.glob("trial_*")), want):
        cfg = yaml.safe_load((trial / "config.yaml").read_text())
        assert cfg["optimizer"]["learning_rate"] == setting["optimizer.learning_rate"]
        assert cfg["model"][0]["Dense"]["features"] == setting["model.0.Dense.features"]
        losses.append(_kept_epoch(_history(trial))["val_loss"])
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["mode"] == "min" and doc["best"]["trial"] == int(np.argmin(losses))
    assert events.index("test") == 2


def test_sweep_skips_a_diverged_trial(tiny_config, tmp_path, monkeypatch):
    real_fit = loop.fit
    calls = []

    def fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise loop.TrainingDiverged("the training loss became nan at step 3")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(fnn.run, "fit", fit)
    cfg = load_config(tiny_config, ["training.epochs=1"])
    result = selection.sweep(cfg, [{"optimizer.learning_rate": 50.0},
                                   {"optimizer.learning_rate": 0.03}],
                             out=tmp_path / "s", evaluate_test=False, log=None)
    assert result.trials[0].error.startswith("diverged") and math.isnan(result.trials[0].score)
    assert result.best.index == 1 and result.test is None
    assert not list((tmp_path / "s").glob("trial_*/test.json"))


def test_selection_commands_reject_bad_options_before_training(tiny_config, tmp_path, events,
                                                               capsys):
    out = str(tmp_path / "x")
    assert main(["sweep", str(tiny_config), "--grid", "optimizer.learning_rate=0.1",
                 "--metric", "test_accuracy", "--out", out]) == 2
    assert "validation metrics only" in capsys.readouterr().err
    assert main(["sweep", str(tiny_config), "--loguniform", "optimizer.learning_rate=1e-3,1",
                 "--out", out]) == 2
    assert "need --random N" in capsys.readouterr().err
    assert main(["sweep", str(tiny_config), "--grid", "model.7.Dense=3", "--out", out]) == 2
    assert "model.7: no list item" in capsys.readouterr().err
    assert main(["sweep", str(tiny_config), "data.validation=0", "--grid",
                 "optimizer.learning_rate=0.1", "--out", out]) == 2
    assert "data.validation" in capsys.readouterr().err
    assert main(["cv", str(tiny_config), "--folds", "1", "--out", out]) == 2
    assert "--folds: must be an int >= 2" in capsys.readouterr().err
    assert events == []  # nothing was trained, no test set read
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main(["cv", str(tiny_config), "--out", str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err


# --------------------------------------------------------------------------- example configs

def test_csv_example_config_trains(tmp_path):
    cfg = load_config(REPO / "configs" / "csv_example.yaml",
                      [f"data.path={REPO / 'configs' / 'data' / 'blobs.csv'}", "training.epochs=2",
                       "output.plots=false"])
    run_dir = fnn.run.train(cfg, tmp_path / "run", log=None)
    history = _history(run_dir)
    assert len(history) == 2
    assert history[-1]["step"] == 2 * (240 // 32)  # 300 rows, 60 held out for validation
    assert 0.0 <= history[-1]["val_accuracy"] <= 1.0 and math.isfinite(history[-1]["val_loss"])
    assert not (run_dir / "test.json").exists()  # a CSV file has no test set


def test_mnist_mlp_augment_config_trains_one_epoch_on_a_subset(tmp_path, monkeypatch):
    data_dir = os.environ.get("FNN_DATA_DIR")
    if not data_dir:
        pytest.skip("FNN_DATA_DIR is not set (the folder with the MNIST IDX files)")
    cfg = load_config(REPO / "configs" / "mnist_mlp_augment.yaml",
                      [f"data.dir={data_dir}", "training.epochs=1", "output.plots=false",
                       "output.progress=false"])
    real_load = fnn.run.load_data
    sizes = {"train": 512, "val": 256, "test": 256}
    shapes = {}

    def subset(c):
        data = real_load(c)
        shapes.update({k: v["x"].shape[1:] for k, v in data.items()})
        return {k: {"x": v["x"][:sizes[k]], "y": v["y"][:sizes[k]]} for k, v in data.items()}

    monkeypatch.setattr(fnn.run, "load_data", subset)
    exp = fnn.run.build(cfg)
    images = np.random.default_rng(0).uniform(0, 1, (4, 28, 28)).astype(np.float32)
    import jax

    moved = np.asarray(exp.augment(jax.random.key(0), images))
    assert moved.shape == images.shape and not np.allclose(moved, images)

    run_dir = fnn.run.train(cfg, tmp_path / "run", log=None)
    assert shapes == {"train": (28, 28), "val": (28, 28), "test": (28, 28)}
    (record,) = _history(run_dir)
    assert record["step"] == 512 // 128 and math.isfinite(record["train_loss"])
    assert json.loads((run_dir / "test.json").read_text())["examples"] == 256
