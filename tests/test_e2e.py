"""End-to-end runs from the shipped configs. The MNIST/RNN accuracy runs are marked slow
(``pytest -m slow``); they need ``$FNN_DATA_DIR`` pointing at the MNIST files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fnn
from fnn.config import load_config
from fnn.run import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _mnist_available():
    if not os.environ.get("FNN_DATA_DIR"):
        pytest.skip("FNN_DATA_DIR is not set (point it at the MNIST files)")


def _run(name, tmp_path, *overrides):
    cfg = load_config(CONFIGS / name, ["output.progress=false", *overrides])
    run_dir = train(cfg, tmp_path / cfg["name"], log=None)
    return run_dir, json.loads((run_dir / "test.json").read_text())


def test_xor_classifies_all_four_points(tmp_path):
    run_dir, test = _run("xor.yaml", tmp_path)
    assert test["accuracy"] == 1.0 and test["examples"] == 4
    for name in ("config.yaml", "metrics.jsonl", "curves.png", "summary.txt",
                 "checkpoints/latest.safetensors"):
        assert (run_dir / name).is_file(), name
    net, params, state = fnn.load(run_dir / "checkpoints" / "latest.safetensors")
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    logits, _ = net.apply(params, state, x)
    np.testing.assert_array_equal(np.asarray(logits[:, 0] > 0), [False, True, True, False])


@pytest.mark.slow
def test_dropout_reduces_overfitting_on_ten_points(tmp_path):
    _, overfit = _run("regression_overfit.yaml", tmp_path)
    _, dropout = _run("regression_dropout.yaml", tmp_path)
    assert dropout["loss"] < overfit["loss"]


@pytest.mark.slow
def test_mnist_mlp_reaches_98_2_percent(tmp_path):
    _mnist_available()
    _, test = _run("mnist_mlp.yaml", tmp_path)
    assert test["accuracy"] >= 0.982


@pytest.mark.slow
def test_mnist_cnn_reaches_99_percent(tmp_path):
    _mnist_available()
    _, test = _run("mnist_cnn.yaml", tmp_path)
    assert test["accuracy"] >= 0.990


@pytest.mark.slow
def test_mnist_rows_lstm_reaches_97_5_percent(tmp_path):
    _mnist_available()
    _, test = _run("mnist_rows_lstm.yaml", tmp_path)
    assert test["accuracy"] >= 0.975


@pytest.mark.slow
def test_lstm_solves_the_adding_problem_where_the_rnn_does_not(tmp_path):
    _, lstm = _run("adding_lstm.yaml", tmp_path)
    _, rnn = _run("adding_rnn.yaml", tmp_path)
    assert lstm["loss"] < 0.05 < 0.1 < rnn["loss"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    args = ["configs/xor.yaml", "data.name=spirals", "data.validation=0.2",
            "model.0.Dense.features=32", "model.2.Dense=1", "training.epochs=40",
            "training.batch_size=16", "training.mode=step", "output.plots=false"]
    cli = [sys.executable, "-m", "fnn.cli", "train"]
    root = CONFIGS.parent
    subprocess.run(cli + args + ["--out", str(tmp_path / "full")], cwd=root, check=True,
                   capture_output=True)
    latest = tmp_path / "cut" / "checkpoints" / "latest.safetensors"
    proc = subprocess.Popen(cli + args + ["--out", str(tmp_path / "cut")], cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not latest.exists():
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()[-1])["epoch"]
    assert done < 40, "the run finished before it could be killed"
    subprocess.run(cli + args + ["--out", str(tmp_path / "cut"), "--resume"], cwd=root,
                   check=True, capture_output=True)
    full, _ = fnn.load_weights(tmp_path / "full" / "checkpoints" / "latest.safetensors")
    resumed, _ = fnn.load_weights(latest)
    for layer in full:
        for leaf in full[layer]:
            np.testing.assert_array_equal(full[layer][leaf], resumed[layer][leaf])
