"""Long runs (issue 21): logs that scale, divergence measured from the start of training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fnn
from fnn import logs
from fnn.train import fit
from fnn.train import checkpoint as ckpt
from fnn.train.loop import TrainingDiverged

LOSS = fnn.losses.softmax_cross_entropy
XOR = Path(__file__).parents[1] / "configs" / "xor.yaml"


def _data(n=64, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, features)).astype(np.float32),
            "y": rng.integers(0, classes, n).astype(np.int32)}


def _net():
    return fnn.serial(fnn.Dense(8), fnn.Tanh, fnn.Dense(3))


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- logs that scale

def test_metrics_are_appended_not_rewritten(tmp_path):
    inodes = []

    def inode(record, ts):
        inodes.append(os.stat(tmp_path / "metrics.jsonl").st_ino)

    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=4, batch_size=16, run_dir=tmp_path,
        callbacks=[inode], log=None)
    assert len(inodes) == 4 and len(set(inodes)) == 1  # one file, grown in place
    assert [r["epoch"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_fresh_run_starts_its_logs_afresh(tmp_path):
    run = dict(epochs=2, batch_size=16, run_dir=tmp_path, log=None, diagnostics=2, mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), **run)
    fit(_net(), LOSS, optax.sgd(0.1), _data(), **run)  # not a resume: old lines are gone
    assert [r["epoch"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in _lines(tmp_path / "diagnostics.jsonl")] == [2, 4, 6, 8]


def test_resume_drops_a_torn_line_and_records_past_the_checkpoint(tmp_path):
    run = dict(batch_size=16, run_dir=tmp_path, log=None, diagnostics=2, mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=2, **run)  # checkpoint at step 8
    metrics, diagnostics = tmp_path / "metrics.jsonl", tmp_path / "diagnostics.jsonl"
    kept_metrics, kept_diag = metrics.read_bytes(), diagnostics.read_bytes()
    # a run killed during epoch 3 after logging past the checkpoint, in the middle of a line
    with open(metrics, "a") as f:
        f.write(json.dumps({"epoch": 3, "step": 12, "stale": True}) + "\n" + '{"epoch": 4, "st')
    with open(diagnostics, "a") as f:
        f.write(json.dumps({"step": 10, "stale": True}) + "\n" + '{"step": 12, "lay')
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3, resume=True, **run)
    assert metrics.read_bytes().startswith(kept_metrics)
    assert diagnostics.read_bytes().startswith(kept_diag)
    records = _lines(metrics)
    assert [r["step"] for r in records] == [4, 8, 12] and "stale" not in records[-1]
    diag = _lines(diagnostics)
    assert [r["step"] for r in diag] == [2, 4, 6, 8, 10, 12] and "stale" not in diag[4]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_line_is_refused_before_anything_is_touched(tmp_path):
    run = dict(batch_size=16, run_dir=tmp_path, log=None, mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=2, **run)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(logs.LogError, match=r"metrics\.jsonl: line 2: not a log record"):
        fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3, resume=True, **run)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_the_cli_refuses_a_damaged_log_in_one_line(tmp_path, capsys):
    from fnn import cli
    out = tmp_path / "xor"
    assert cli.main(["train", str(XOR), "training.epochs=2", "output.plots=false",
                     "--out", str(out)]) == 0
    (out / "metrics.jsonl").write_text('{"epoch": 1, "step": 1}\nnot json\n{"epoch": 2, '
                                       '"step": 2}\n')
    capsys.readouterr()
    status = cli.main(["train", str(XOR), "training.epochs=3", "output.plots=false",
                       "--out", str(out), "--resume"])
    err = capsys.readouterr().err.strip()
    assert status != 0 and "\n" not in err
    assert "metrics.jsonl: line 2: not a log record" in err


def test_read_records_names_file_and_line(tmp_path):
    path = tmp_path / "diagnostics.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(logs.LogError, match=r"diagnostics\.jsonl: line 2: not a log record"):
        logs.read_records(path)
    path.write_text('{"step": 1}\n{"step": "2"}\n')
    with pytest.raises(logs.LogError, match="line 2"):
        logs.read_records(path)
    path.write_text('{"step": 1}\n{"step": 2')  # torn: dropped, not refused
    assert logs.read_records(path) == [{"step": 1}]


def test_gradflow_is_redrawn_at_most_once_per_epoch_and_at_the_end(tmp_path, monkeypatch):
    import fnn.diagnostics as diagnostics
    drawn = []
    monkeypatch.setattr(diagnostics, "plot_gradient_flow",
                        lambda records, path: drawn.append(len(records)))
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3, batch_size=16, mode="step",
        run_dir=tmp_path, log=None, diagnostics=1)
    # 12 records; the first draws, then 30 s must pass (they do not here); the end draws all
    assert drawn == [1, 12]
    assert len(_lines(tmp_path / "diagnostics.jsonl")) == 12


def test_gradflow_redraws_once_per_epoch_when_time_allows(tmp_path, monkeypatch):
    import fnn.diagnostics as diagnostics
    drawn = []
    monkeypatch.setattr(diagnostics, "plot_gradient_flow",
                        lambda records, path: drawn.append(len(records)))
    net, opt = _net(), optax.sgd(0.1)
    _, ts = fnn.train.init_train_state(net, opt, (-1, 6), jax.random.key(0))
    diag = diagnostics.Diagnostics(net, LOSS, opt, every=1, run_dir=tmp_path, plot_seconds=0.0)
    for step, epoch in ((1, 1), (2, 1), (3, 2), (4, 2), (5, 3)):
        diag.record(ts, _data(), step=step, epoch=epoch)
    diag.finish()
    assert drawn == [1, 3, 5]  # the first record of each epoch; finish has nothing new


# --------------------------------------------------------------------------- divergence from the start

def _exploding():
    # x = 1, y = 0, one Dense(1) unit s = w + b: the loss is s^2 and SGD at learning rate 1 maps
    # s -> -3s, so each step's loss is 9x the one before (see tests/test_divergence.py)
    x = np.ones((4, 1), np.float32)
    return {"x": x, "y": np.zeros((4, 1), np.float32)}


def _mse(outputs, targets, *, reduction="none"):
    return fnn.losses.mse(outputs, targets, reduction=reduction)


@pytest.mark.parametrize("mode", ["step", "epoch"])
def test_a_run_diverging_inside_its_first_epoch_stops_at_its_step(tmp_path, mode):
    data = {k: np.repeat(v, 8, axis=0) for k, v in _exploding().items()}  # 8 steps an epoch
    with pytest.raises(TrainingDiverged) as info:
        fit(fnn.Dense(1), _mse, optax.sgd(1.0), data, data, epochs=3, batch_size=4,
            run_dir=tmp_path, divergence_factor=100.0, mode=mode, log=None)
    # losses l, 9l, 81l, 729l: the first step's loss is the reference until 10 steps have run
    assert "at step 4 (epoch 1)" in str(info.value)
    assert "100 x the loss at the start of training" in str(info.value)
    assert "(the first step's)" in str(info.value)
    assert not (tmp_path / "checkpoints" / "best.safetensors").exists()
    assert not (tmp_path / "checkpoints" / "latest.safetensors").exists()


def test_the_reference_is_the_median_of_the_first_steps():
    from fnn.train.divergence import START_STEPS, Divergence
    rng = np.random.default_rng(0)
    first = rng.uniform(1.0, 3.0, START_STEPS)
    first[0] = 50.0                              # a wild first batch does not set the reference
    check = Divergence(10.0)
    check.update(first, first_step=0, epoch=0)
    assert check.reference == pytest.approx(float(np.sort(first)[START_STEPS // 2 - 1:
                                                                   START_STEPS // 2 + 1].mean()))
    limit = 10.0 * check.reference
    check.update(np.array([limit * 0.99]), first_step=START_STEPS, epoch=0)
    with pytest.raises(TrainingDiverged, match=f"at step {START_STEPS + 3} .*median of the first"):
        check.update(np.array([1.0, limit * 1.01]), first_step=START_STEPS + 1, epoch=1)
    # NaN stops whatever the factor
    with pytest.raises(TrainingDiverged, match="became nan at step 2"):
        Divergence(None).update(np.array([1.0, np.nan]), first_step=0, epoch=0)


def test_a_resumed_run_keeps_the_reference_of_its_start(tmp_path):
    from fnn.train.divergence import START_STEPS
    run = dict(batch_size=16, run_dir=tmp_path, log=None, mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3, **run)     # 12 steps
    meta = ckpt.read_metadata(tmp_path / "checkpoints" / "latest.safetensors")
    stored = meta["progress"]["start_losses"]
    assert len(stored) == START_STEPS
    history = _lines(tmp_path / "metrics.jsonl")
    # the first epoch's 4 step losses average to its logged mean
    assert np.mean(stored[:4]) == pytest.approx(history[0]["train_loss"], rel=1e-5)
