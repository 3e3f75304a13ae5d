"""Errors carry their place as data (key path, layer kind, file and line) and the one-line
message is built from it; no caller takes fnn's own message text apart to find the place. Also
the late errors of ``fnn cv``, ``fnn sweep`` and ``fnn eval``: refused in one line before any
folder is created or any file is touched.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

import fnn
from cli_lines import error_line
from fnn.arguments import ArgumentError
from fnn.config import ConfigError, load_config, parse_config
from fnn.layers.spec import SpecError, from_spec
from fnn.optim import make_optimizer

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "configs" / "xor.yaml")
CSV_CONFIG = str(ROOT / "configs" / "csv_example.yaml")


# --------------------------------------------------------------------------- the error types

def test_config_error_builds_its_message_from_its_parts():
    e = ConfigError("training.epochs", "must be >= 1, got 0", file="run.yaml", line=4)
    assert (e.path, e.detail, e.file, e.line) == ("training.epochs", "must be >= 1, got 0",
                                                  "run.yaml", 4)
    assert str(e) == "run.yaml:4: training.epochs: must be >= 1, got 0"
    assert str(ConfigError("", "bad", file="run.yaml")) == "run.yaml: bad"
    assert str(ConfigError("seed", "bad")) == "seed: bad"
    assert isinstance(e, ValueError)


@pytest.mark.parametrize("error", [ConfigError("a.b", "bad", file="f.yaml", line=3),
                                   ArgumentError("Dense", "features must be a positive int")])
def test_errors_survive_pickling_with_their_parts(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert vars(back) == vars(error)


def test_config_file_errors_carry_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 0\nmodel: [{Dense: 2}]\nseed: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert (err.value.path, err.value.file, err.value.line) == ("", str(path), 3)
    assert err.value.detail == "duplicate key 'seed' (first at line 1)"
    path.write_text("seed: 0\nmodel: [{Dense: 2}\n")   # unclosed list
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.file == str(path) and err.value.detail.startswith("not valid YAML: ")


# --------------------------------------------------------------------------- optimizer

@pytest.mark.parametrize("config, path, detail", [
    ({"name": "adam", "learning_rat": 0.1}, "optimizer.learning_rat", "unknown key; did you mean"),
    ({"name": "adamm", "learning_rate": 0.1}, "optimizer.name", "unknown optimizer 'adamm'"),
    ({"name": "adam", "learning_rate": -1}, "optimizer.learning_rate", "must be > 0, got -1"),
    ({"name": "adam", "learning_rate": 0.1, "schedule": {"name": "cosine"}},
     "optimizer.schedule.decay_steps", "required for the 'cosine' schedule"),
    ({"name": "adam", "learning_rate": 0.1, "freeze": 5}, "optimizer.freeze",
     "expected a list of layer names"),
])
def test_optimizer_errors_carry_their_key_path(config, path, detail):
    with pytest.raises(ConfigError) as err:
        make_optimizer(config)
    assert err.value.path == path
    assert err.value.detail.startswith(detail), err.value.detail
    assert str(err.value) == f"{path}: {err.value.detail}"


def test_optimizer_errors_in_a_config_keep_their_key_path():
    raw = {"model": [{"Dense": 2}], "data": {"name": "xor"},
           "optimizer": {"name": "sgd", "learning_rate": 0.1, "momentm": 0.9}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.path == "optimizer.momentm"
    assert str(err.value).startswith("optimizer.momentm: unknown key; did you mean momentum?")


def test_freeze_of_a_missing_layer_is_named_at_its_key(capsys):
    line = error_line(capsys, ["validate", XOR, "optimizer.freeze=[dense_9]"])
    assert line.startswith("fnn validate: error: optimizer.freeze: no layer 'dense_9' in params; "
                           "did you mean"), line


def test_no_layer_error_carries_the_place():
    e = fnn.core.no_layer_error("optimizer.freeze", "dense_9", ["dense_0", "dense_1"])
    assert isinstance(e, fnn.core.LayerNameError) and e.where == "optimizer.freeze"
    assert e.detail.startswith("no layer 'dense_9' in params")


# --------------------------------------------------------------------------- layers and specs

def test_layer_argument_errors_carry_the_kind():
    with pytest.raises(ArgumentError) as err:
        fnn.Dense(0)
    assert (err.value.who, err.value.detail) == ("Dense", "features must be a positive int, got 0")
    assert str(err.value) == "Dense: features must be a positive int, got 0"
    with pytest.raises(ArgumentError) as err:
        fnn.Dropout(1.5)
    assert err.value.who == "Dropout" and err.value.detail.startswith("rate must be")
    with pytest.raises(TypeError) as err:   # a missing argument is still a TypeError
        fnn.Dense()
    assert isinstance(err.value, ArgumentError) and err.value.who == "Dense"


@pytest.mark.parametrize("spec, path, detail", [
    ([{"Dense": 0}], "model[0].Dense", "features must be a positive int, got 0"),
    (["Relu", {"Dropout": {"rate": 2.0}}], "model[1].Dropout", "rate must be a number in [0, 1), "
                                                                "got 2.0"),
    ([{"Conv2D": {"features": 4, "kernel_size": 3, "groups": 3}}], "model[0].Conv2D",
     "groups=3 must divide features=4"),
    ([{"Dense": {"use_bias": False}}], "model[0].Dense", "missing a required argument: "
                                                         "'features'"),
])
def test_spec_errors_name_the_place_once(spec, path, detail):
    with pytest.raises(SpecError) as err:
        from_spec(spec, "model")
    assert (err.value.path, err.value.detail) == (path, detail)


def test_a_custom_layer_error_is_used_by_its_data_not_its_text(private_registry):
    @fnn.layer_type("Picky")
    def Picky(size: int = 1) -> fnn.Layer:
        if size > 3:   # a plain ValueError is kept whole: nothing cuts "Picky: " off its text
            raise ValueError("Picky: size must be at most 3")
        if size < 1:   # an ArgumentError gives its kind and detail apart
            raise ArgumentError("Picky", "size must be at least 1")
        return fnn.Layer(lambda rng, s: (s, {}, {}), lambda p, s, x, **kw: (x, s))

    with pytest.raises(SpecError) as err:
        from_spec([{"Picky": 5}], "model")
    assert str(err.value) == "model[0].Picky: Picky: size must be at most 3"
    with pytest.raises(SpecError) as err:
        from_spec([{"Picky": 0}], "model")
    assert str(err.value) == "model[0].Picky: size must be at least 1"


@pytest.fixture
def private_registry(monkeypatch):
    """Register test-only kinds in a copy of the registry, restored after the test."""
    from fnn import core
    monkeypatch.setattr(core, "_KINDS", dict(core._KINDS))


# --------------------------------------------------------------------------- augment, parallel

def test_augment_errors_carry_the_config_key(capsys, tmp_path):
    from fnn.data.augment import make_augment
    with pytest.raises(ConfigError) as err:
        make_augment({"shift": -1}, where="data.augment")
    assert (err.value.path, err.value.detail) == ("data.augment",
                                                  "'shift' must be an int >= 0, got -1")
    line = error_line(capsys, ["validate", CSV_CONFIG, "data.augment={zoom: 1.5}"])
    assert line == "fnn validate: error: data.augment: 'zoom' must be a number >= 0 and < 1, got 1.5"


def test_parallel_errors_carry_the_config_key():
    from fnn.train.parallel import DataParallel
    with pytest.raises(ConfigError) as err:
        DataParallel("data")
    assert err.value.path == "parallel.mode"
    with pytest.raises(ConfigError) as err:
        DataParallel("none", 99)
    assert err.value.path == "parallel.devices"


def test_parallel_errors_from_a_config(capsys):
    line = error_line(capsys, ["train", XOR, "parallel.devices=99", "--out", "/nonexistent/x"])
    assert line.startswith("fnn train: error: parallel.devices: 99 devices asked for"), line


# --------------------------------------------------------------------------- no import circle

def _fnn_imports(path: Path) -> set[str]:
    """Every fnn module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fnn"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fnn"))
    return found


def test_checks_does_not_import_config():
    imports = _fnn_imports(ROOT / "fnn" / "checks.py")
    assert "fnn.config" not in imports and "fnn.config.ConfigError" not in imports


def test_the_error_module_imports_nothing_of_fnn():
    assert _fnn_imports(ROOT / "fnn" / "errors.py") == set()


# --------------------------------------------------------------------------- late errors

def test_cv_with_more_folds_than_examples_creates_no_folder(capsys, tmp_path):
    out = tmp_path / "cv"
    line = error_line(capsys, ["cv", XOR, "--folds", "10000", "--out", str(out)])
    assert line == "fnn cv: error: --folds: 10000 folds need at least 10000 examples, the data has 4"
    assert not out.exists()


def test_cv_with_a_metric_that_is_not_logged_creates_no_folder(capsys, tmp_path):
    out = tmp_path / "cv"
    line = error_line(capsys, ["cv", XOR, "--folds", "2", "--metric", "val_acc",
                                "--out", str(out)])
    assert line == ("fnn cv: error: --metric: 'val_acc' is not logged; choose one of "
                    "['val_accuracy', 'val_loss']")
    assert not out.exists()


def test_cv_into_a_folder_that_is_not_empty_is_refused_first(capsys, tmp_path):
    out = tmp_path / "cv"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = error_line(capsys, ["cv", XOR, "--folds", "10000", "--out", str(out)])
    assert line == (f"fnn cv: error: {out} already exists and is not empty; pass --out with a "
                    "new folder")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_sweep_with_a_trial_that_cannot_train_creates_no_folder(capsys, tmp_path):
    out = tmp_path / "sweep"
    line = error_line(capsys, ["sweep", XOR, "data.validation=1", "--grid",
                                "loss.name=mse,softmax_cross_entropy", "--out", str(out)])
    assert line.startswith("fnn sweep: error: metrics.accuracy: "), line
    assert line.endswith("(in sweep trial 1: {'loss.name': 'softmax_cross_entropy'})"), line
    assert not out.exists()


def test_sweep_with_a_metric_that_is_not_logged_creates_no_folder(capsys, tmp_path):
    out = tmp_path / "sweep"
    line = error_line(capsys, ["sweep", XOR, "data.validation=1", "--grid",
                                "optimizer.learning_rate=0.1,0.2", "--metric", "val_f1",
                                "--out", str(out)])
    assert line == ("fnn sweep: error: --metric: 'val_f1' is not logged; choose one of "
                    "['val_accuracy', 'val_loss']")
    assert not out.exists()


def _run_folder_with(tmp_path: Path, name: str, make) -> tuple[Path, Path]:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(Path(XOR).read_text())
    target = run / "checkpoints" / name
    make(target)
    return run, target


def _listing(folder: Path) -> list[tuple[str, bool]]:
    return sorted((str(p.relative_to(folder)), p.is_dir()) for p in folder.rglob("*"))


@pytest.mark.parametrize("mode", [[], ["--resume"], ["--overwrite"]],
                         ids=["plain", "resume", "overwrite"])
def test_latest_checkpoint_that_is_a_directory_is_refused_first(capsys, tmp_path, mode):
    run, target = _run_folder_with(tmp_path, "latest.safetensors", Path.mkdir)
    before = _listing(run)
    line = error_line(capsys, ["train", XOR, "--out", str(run), *mode])
    assert line == (f"fnn train: error: {target}: a directory, not a checkpoint file; move it "
                    "away (fnn keeps the run's checkpoints under this name)")
    assert _listing(run) == before


def test_eval_refuses_a_best_checkpoint_that_is_a_fifo(capsys, tmp_path):
    import os
    run, target = _run_folder_with(tmp_path, "best.safetensors", os.mkfifo)
    before = _listing(run)
    line = error_line(capsys, ["eval", str(run)])
    assert line == (f"fnn eval: error: {target}: a FIFO (named pipe), not a checkpoint file; "
                    "move it away (fnn keeps the run's checkpoints under this name)")
    assert _listing(run) == before


def test_eval_names_the_run_config_file(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(Path(XOR).read_text() + "seed: 3\n")
    line = error_line(capsys, ["eval", str(run)])
    n = len(Path(XOR).read_text().splitlines()) + 1
    assert line == (f"fnn eval: error: {run / 'config.yaml'}:{n}: duplicate key 'seed' "
                    "(first at line 4)")
