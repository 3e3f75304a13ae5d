"""Bad input ends in one line ``fnn <command>: error: <where>: <what>``, exit status 2, no
traceback, nothing compiled and no run folder created.

Every row of ``CASES`` is a user mistake: (command, config, overrides and options, a fragment
the message must hold). All rows run in this process through ``fnn.cli.main`` (counting XLA
compilations with a ``jax.monitoring`` listener); a handful also run through the real ``fnn``
command in a subprocess (``SUBPROCESS_CASES``), which proves the contract end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.monitoring
import numpy as np
import pytest

from fnn import cli

ROOT = Path(__file__).resolve().parent.parent
XOR = "configs/xor.yaml"
CSV = "configs/csv_example.yaml"
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: _compiles.append(name) if name == COMPILE_EVENT else None)

HUGE = "model=[{Dense: 1000000}, {Dense: 1000000}, {Dense: 3}]"  # 1e12 params: 4 TB

# (id, command, config, arguments, message fragment, exit status)
CASES = [
    ("nan-anywhere", "validate", XOR, ["seed=.nan"], "seed: expected a finite number, got nan", 2),
    ("inf-in-optimizer", "validate", XOR, ["optimizer.learning_rate=.inf"],
     "optimizer.learning_rate: expected a finite number, got inf", 2),
    ("nan-in-layer", "validate", XOR, ["model.0.Dense.features=.nan"],
     "model[0].Dense.features", 2),
    ("seed-negative", "validate", XOR, ["seed=-1"], "seed: must be in [0, 2**32 - 1]", 2),
    ("seed-too-large", "validate", XOR, ["seed=4294967296"], "got 4294967296", 2),
    ("empty-model", "validate", XOR, ["model=[]"], "model: empty", 2),
    ("divergence-factor", "validate", XOR, ["training.divergence.factor=0.5"],
     "training.divergence.factor: must be > 1", 2),
    ("csv-option-misspelt", "validate", CSV, ["data.options.label_colum=species"],
     "data.options.label_colum: unknown option of the csv loader; did you mean 'label_column'?", 2),
    ("csv-column-misspelt", "train", CSV, ["data.options.label_column=specis"],
     "blobs.csv: no column named 'specis'", 2),
    ("synthetic-option", "validate", XOR, ["data.options.n=10"],
     "data.options.n: unknown option of the xor loader", 2),
    ("loss-option-misspelt", "validate", CSV, ["loss.options.label_smothing=0.1"],
     "did you mean 'label_smoothing'?", 2),
    ("loss-option-type", "train", CSV, ["loss.options.label_smoothing=big"],
     "loss.options.label_smoothing: expected a number, got 'big'", 2),
    ("loss-option-value", "validate", CSV, ["loss.options.label_smoothing=2.0"],
     "label_smoothing must be in [0, 1]", 2),
    ("loss-option-reserved", "validate", CSV, ["loss.options.reduction=sum"],
     "loss.options.reduction: is set by fnn itself", 2),
    ("augment-unknown-key", "validate", CSV, ["data.augment={shfit: 2}"],
     "data.augment: unknown key 'shfit'", 2),
    ("augment-on-a-table", "train", CSV, ["data.augment={shift: 2}"],
     "data.augment: augment: images must be", 2),
    ("monitor-misspelt", "train", CSV,
     ["training.early_stopping.enabled=true", "training.early_stopping.monitor=val_acc"],
     "did you mean 'val_accuracy'?", 2),
    ("monitor-without-validation", "validate", XOR, ["training.early_stopping.enabled=true"],
     "(data.validation is 0: no val_ keys)", 2),
    ("freeze-unknown-layer", "train", CSV, ["optimizer.freeze=[dense_9]"],
     "optimizer.freeze", 2),
    ("regularized-unknown-layer", "validate", CSV,
     ["regularizers.l2=0.1", "regularizers.layers=[dense_7]"],
     "regularizers.layers[0]: no layer 'dense_7' in params; did you mean", 2),
    ("regularizer-layers-without-penalty", "validate", CSV, ["regularizers.layers=[dense_0]"],
     "regularizers.layers: set, but no penalty is on", 2),
    ("mse-on-class-ids", "validate", CSV, ["loss.name=mse"],
     "one-hot them (data.one_hot: true", 2),
    ("labels-outside-outputs", "train", CSV, ["model.2.Dense=2"],
     "labels hold 80 value(s) outside [0, 2)", 2),
    ("layer-vs-data-shape", "validate", CSV,
     ["model=[{Conv2D: {features: 3, kernel_size: 3}}]"], "Conv2D layer 'conv2d_0'", 2),
    ("params-do-not-fit-memory", "train", CSV, [HUGE], "of memory is available", 2),
    ("image-key-on-a-table", "validate", CSV, ["data.flatten=true"],
     "data.flatten: applies to image datasets only", 2),
    ("dir-on-a-table", "validate", CSV, ["data.dir=somewhere"], "data.dir: applies to image", 2),
    ("path-on-synthetic", "validate", XOR, ["data.path=x.csv"],
     "data.path: applies to the file", 2),
    ("data-file-missing", "train", CSV, ["data.path=nope.csv"], "data.path: file not found", 2),
    ("pretrained-missing", "train", XOR, ["training.pretrained=nope.safetensors"],
     "training.pretrained: file not found: nope.safetensors", 2),
    ("cv-seed", "cv", CSV, ["--seed", "-1"], "--seed: must be in [0, 4294967295]", 2),
    ("config-missing", "validate", "nope.yaml", [], "config file not found: nope.yaml", 2),
    ("override-without-value", "train", XOR, ["training.epochs"],
     "an override is KEY.PATH=VALUE", 2),
    ("unknown-key", "train", XOR, ["training.epohcs=3"], "did you mean 'epochs'?", 2),
]


def _run_in_process(capsys, args):
    before = len(_compiles)
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.err, len(_compiles) - before


def _assert_one_line(command, err, fragment):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fnn {command}: error: "), err
    assert fragment in lines[0], err


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("command, config, args, fragment, status", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_before_compiling(capsys, tmp_path, in_root, command, config,
                                                args, fragment, status):
    out = tmp_path / "run"
    argv = [command, config, *args] + (["--out", str(out)] if command == "train" else [])
    code, err, compiles = _run_in_process(capsys, argv)
    assert code == status
    _assert_one_line(command, err, fragment)
    assert compiles == 0
    assert not out.exists()


DATA_FILES = [  # (id, file name, contents, loader options): the message must name the file
    ("csv-missing-value", "t.csv", "a,b,label\n1,2,0\n3,,1\n", {"label_column": "label"}),
    ("csv-non-numeric", "t.csv", "a,b,label\n1,2,0\n3,x,1\n", {"label_column": "label"}),
    ("csv-ragged-row", "t.csv", "a,b,label\n1,2,0\n3,1\n", {"label_column": "label"}),
    ("csv-header-only", "t.csv", "a,b,label\n", {"label_column": "label"}),
    ("npz-missing-y", "t.npz", None, {}),
]


@pytest.mark.parametrize("name, contents, options", [d[1:4] for d in DATA_FILES],
                         ids=[d[0] for d in DATA_FILES])
def test_bad_data_file_is_one_line_naming_the_file(capsys, tmp_path, in_root, name, contents,
                                                   options):
    path = tmp_path / name
    if contents is None:
        np.savez(path, x=np.zeros((4, 2), np.float32))
    else:
        path.write_text(contents)
    kind = "csv" if name.endswith(".csv") else "arrays"
    overrides = [f"data.name={kind}", f"data.path={path}", "data.validation=0",
                 "data.standardize=false", "data.stratify=false",
                 f"data.options={json.dumps(options)}"]
    out = tmp_path / "run"
    code, err, compiles = _run_in_process(capsys, ["train", CSV, *overrides, "--out", str(out)])
    assert code == 2
    _assert_one_line("train", err, str(path))
    assert compiles == 0
    assert not out.exists()


def test_output_folder_under_a_file_is_refused(capsys, tmp_path, in_root):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err, compiles = _run_in_process(
        capsys, ["train", XOR, "training.epochs=1", "--out", str(blocker / "run")])
    assert code == 2
    _assert_one_line("train", err, "is a file, not a folder")
    assert compiles == 0


def test_folder_holding_another_run_is_refused_and_left_alone(capsys, tmp_path, in_root):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: other\n")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, err, compiles = _run_in_process(capsys, ["train", XOR, "--out", str(run)])
    assert code == 2
    _assert_one_line("train", err, "already holds a run (config.yaml, metrics.jsonl)")
    assert "--overwrite" in err and compiles == 0
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_eval_of_a_folder_that_is_not_a_run(capsys, tmp_path, in_root):
    code, err, _ = _run_in_process(capsys, ["eval", str(tmp_path)])
    assert code == 2
    _assert_one_line("eval", err, "is not a run folder (no config.yaml)")


def _root_mount(tmp_path: Path, options: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    return mnt


def test_read_only_file_system_is_refused(capsys, tmp_path, in_root):
    mnt = _root_mount(tmp_path, "ro,size=64k")
    try:
        code, err, compiles = _run_in_process(capsys, ["train", XOR, "--out", str(mnt / "run")])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert code == 2
    _assert_one_line("train", err, "is on a read-only file system")
    assert compiles == 0


def test_a_folder_without_write_permission_is_refused(capsys, tmp_path, in_root, monkeypatch):
    # root may write anywhere, so the permission bits are simulated by os.access's answer
    real_access = os.access
    parent = tmp_path / "locked"
    parent.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == parent
                        else real_access(p, mode, **kw))
    code, err, compiles = _run_in_process(capsys, ["train", XOR, "--out", str(parent / "run")])
    assert code == 2
    _assert_one_line("train", err, f"{parent} is not writable (Permission denied)")
    assert compiles == 0 and list(parent.iterdir()) == []


def test_another_users_run_folder_is_refused(capsys, tmp_path, in_root):
    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    run = tmp_path / "theirs"
    run.mkdir()
    os.chown(run, 65534, 65534)
    code, err, compiles = _run_in_process(capsys, ["train", XOR, "--out", str(run)])
    assert code == 2
    _assert_one_line("train", err, "the folder belongs to")
    assert compiles == 0 and list(run.iterdir()) == []


def test_a_batch_larger_than_the_training_set_trains_one_smaller_batch(capsys, tmp_path,
                                                                     in_root):
    out = tmp_path / "run"
    assert cli.main(["train", XOR, "training.epochs=2", "training.batch_size=100",
                     "output.plots=false", "--out", str(out)]) == 0
    assert ("training.batch_size 100 is larger than the 4 training examples: training on one "
            "batch of 4 per epoch") in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_debug_shows_the_traceback(tmp_path, in_root):
    from fnn.config import ConfigError

    with pytest.raises(ConfigError, match="seed"):
        cli.main(["validate", XOR, "seed=-1", "--debug"])


def test_fnn_debug_variable_shows_the_traceback(tmp_path, in_root, monkeypatch):
    from fnn.config import ConfigError

    monkeypatch.setenv("FNN_DEBUG", "1")
    with pytest.raises(ConfigError, match="model: empty"):
        cli.main(["validate", XOR, "model=[]"])


def test_a_bug_keeps_its_traceback(tmp_path, in_root, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in fnn")

    monkeypatch.setattr("fnn.checks.check_run", broken)
    with pytest.raises(RuntimeError, match="a bug in fnn"):
        cli.main(["validate", XOR])


# --------------------------------------------------------------------------- real command

PROBE = """
import atexit, runpy, sys
import jax.monitoring
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: compiles.append(name) if name == "%s" else None)
atexit.register(lambda: print("COMPILES", len(compiles)))
sys.argv = ["fnn", *sys.argv[1:]]
runpy.run_module("fnn.cli", run_name="__main__")
""" % COMPILE_EVENT

SUBPROCESS_CASES = ["nan-anywhere", "csv-column-misspelt", "mse-on-class-ids",
                    "freeze-unknown-layer", "params-do-not-fit-memory"]


def _fnn(args, cwd=ROOT, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in SUBPROCESS_CASES],
                         ids=lambda c: c[0])
def test_real_fnn_command(tmp_path, case):
    _, command, config, args, fragment, status = case
    out = tmp_path / "run"
    argv = [command, config, *args] + (["--out", str(out)] if command == "train" else [])
    done = _fnn(argv)
    assert done.returncode == status, done.stderr
    _assert_one_line(command, done.stderr, fragment)
    assert done.stdout.strip().splitlines()[-1] == "COMPILES 0"
    assert not out.exists()


def test_real_fnn_command_with_fnn_debug_prints_the_traceback(tmp_path):
    done = _fnn(["validate", XOR, "seed=.nan"], env={"FNN_DEBUG": "1"})
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "ConfigError: seed" in done.stderr


@pytest.fixture
def no_mnist_here(tmp_path, monkeypatch):
    """No MNIST files anywhere fnn looks, and any download attempt fails the test."""
    from fnn.data import datasets

    monkeypatch.delenv("FNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def no_download(*args, **kwargs):
        raise AssertionError("fnn validate must not download")

    monkeypatch.setattr(datasets, "fetch", no_download)


def test_validate_without_the_mnist_files_checks_the_data_sets_shapes(no_mnist_here, in_root,
                                                                      capsys):
    code, err, compiled = _run_in_process(capsys, ["validate", "configs/mnist_mlp.yaml"])
    assert code == 0 and compiled == 0, err
    assert err.strip().splitlines() == [
        "fnn validate: note: the mnist files are not on this machine; checked against the data "
        "set's shapes and classes (fnn train downloads them)"]
    # what the shapes and classes decide is still refused
    code, err, _ = _run_in_process(capsys, ["validate", "configs/mnist_mlp.yaml",
                                            "model.7.Dense=5"])
    assert code == 2
    assert "labels hold" in err and "outside [0, 5)" in err, err


def test_overrides_may_follow_the_options(capsys, tmp_path, in_root):
    out = tmp_path / "run"
    code = cli.main(["train", XOR, "training.epochs=1", "--out", str(out), "output.plots=false",
                     "seed=3"])
    assert code == 0, capsys.readouterr().err
    saved = (out / "config.yaml").read_text()
    assert "epochs: 1" in saved and "plots: false" in saved and "seed: 3" in saved
    with pytest.raises(SystemExit) as e:  # argparse's exit, as for any unknown argument
        cli.main(["train", XOR, "--out", str(tmp_path / "other"), "stray"])
    assert e.value.code == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err
