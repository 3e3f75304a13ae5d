"""Long runs (issue 21): logs that scale, divergence measured from the start of training."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn import logs
from fnn.train import RunOptions, fit
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

    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=4, batch_size=16, run=tmp_path,
        callbacks=[inode], log=None)
    assert len(inodes) == 4 and len(set(inodes)) == 1  # one file, grown in place
    assert [r["epoch"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_fresh_run_starts_its_logs_afresh(tmp_path):
    run = dict(epochs=2, batch_size=16, run=RunOptions(tmp_path, diagnostics=2), log=None,
               mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), **run)
    fit(_net(), LOSS, optax.sgd(0.1), _data(), **run)  # not a resume: old lines are gone
    assert [r["epoch"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert [r["step"] for r in _lines(tmp_path / "diagnostics.jsonl")] == [2, 4, 6, 8]


def test_resume_drops_a_torn_line_and_records_past_the_checkpoint(tmp_path):
    run = dict(batch_size=16, log=None, mode="step")
    folder = RunOptions(tmp_path, diagnostics=2)
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=2, run=folder, **run)  # checkpoint: step 8
    metrics, diagnostics = tmp_path / "metrics.jsonl", tmp_path / "diagnostics.jsonl"
    kept_metrics, kept_diag = metrics.read_bytes(), diagnostics.read_bytes()
    # a run killed during epoch 3 after logging past the checkpoint, in the middle of a line
    with open(metrics, "a") as f:
        f.write(json.dumps({"epoch": 3, "step": 12, "stale": True}) + "\n" + '{"epoch": 4, "st')
    with open(diagnostics, "a") as f:
        f.write(json.dumps({"step": 10, "stale": True}) + "\n" + '{"step": 12, "lay')
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3,
        run=dataclasses.replace(folder, resume=True), **run)
    assert metrics.read_bytes().startswith(kept_metrics)
    assert diagnostics.read_bytes().startswith(kept_diag)
    records = _lines(metrics)
    assert [r["step"] for r in records] == [4, 8, 12] and "stale" not in records[-1]
    diag = _lines(diagnostics)
    assert [r["step"] for r in diag] == [2, 4, 6, 8, 10, 12] and "stale" not in diag[4]
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_line_is_refused_before_anything_is_touched(tmp_path):
    run = dict(batch_size=16, log=None, mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=2, run=tmp_path, **run)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text(lines[0] + "\n{oops\n" + lines[1] + "\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(logs.LogError, match=r"metrics\.jsonl: line 2: not a log record"):
        fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3,
            run=RunOptions(tmp_path, resume=True), **run)
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
        run=RunOptions(tmp_path, diagnostics=1), log=None)
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
            run=tmp_path, divergence_factor=100.0, mode=mode, log=None)
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
    run = dict(batch_size=16, run=tmp_path, log=None, mode="step")
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=3, **run)     # 12 steps
    meta = ckpt.read_metadata(tmp_path / "checkpoints" / "latest.safetensors")
    stored = meta["progress"]["start_losses"]
    assert len(stored) == START_STEPS
    history = _lines(tmp_path / "metrics.jsonl")
    # the first epoch's 4 step losses average to its logged mean
    assert np.mean(stored[:4]) == pytest.approx(history[0]["train_loss"], rel=1e-5)


# --------------------------------------------------------------------------- step checkpoints, exact resume

def _dropout_net():
    return fnn.serial(fnn.Dense(8), fnn.Tanh, fnn.Dropout(0.2), fnn.Dense(3))


def _same(a, b):
    if isinstance(a, fnn.train.TrainState):
        a, b = (t._replace(rng=jax.random.key_data(t.rng)) for t in (a, b))
    return jax.tree_util.tree_all(jax.tree_util.tree_map(
        lambda u, v: bool(np.array_equal(np.asarray(u), np.asarray(v))), a, b))


@pytest.mark.parametrize("mode", ["step", "epoch"])
def test_resume_from_inside_an_epoch_is_bit_identical(tmp_path, mode):
    from fnn.train.checkpointing import step_checkpoints
    run = dict(epochs=3, batch_size=8, mode=mode, log=None, seed=3)  # 8 steps an epoch
    full = fit(_dropout_net(), LOSS, optax.adam(1e-2), _data(), **run, run=RunOptions(
        tmp_path / "full", checkpoint=fnn.train.Checkpointing(every_steps=3, keep=100)))
    files = step_checkpoints(tmp_path / "full" / "checkpoints")
    # steps 3, 6, then 11, 14 (epoch ends reset the count at 8, 16), 19, 22
    assert [int(p.stem.split("-")[1]) for p in files] == [3, 6, 11, 14, 19, 22]
    plain = fit(_dropout_net(), LOSS, optax.adam(1e-2), _data(), **run)  # no checkpoints at all
    assert _same(full.train_state.params, plain.train_state.params)
    for cut in (files[1], files[3]):  # inside epoch 1 (step 6) and epoch 2 (step 14)
        resumed_dir = tmp_path / cut.stem
        (resumed_dir / "checkpoints").mkdir(parents=True)
        (resumed_dir / "checkpoints" / "latest.safetensors").write_bytes(cut.read_bytes())
        meta = ckpt.read_metadata(cut)["progress"]
        assert meta["offset"] == int(cut.stem.split("-")[1]) % 8
        resumed = fit(_dropout_net(), LOSS, optax.adam(1e-2), _data(), **run, run=RunOptions(
            resumed_dir, resume=True, checkpoint=fnn.train.Checkpointing(every_steps=3)))
        assert _same(resumed.train_state, full.train_state)
        assert [r["train_loss"] for r in resumed.history] == \
            [r["train_loss"] for r in full.history]  # the partial epoch's steps are kept


def test_a_step_checkpoint_resumes_in_the_other_mode(tmp_path):
    run = dict(epochs=2, batch_size=8, log=None)
    full = fit(_net(), LOSS, optax.sgd(0.1), _data(), mode="step", **run, run=RunOptions(
        tmp_path / "a", checkpoint=fnn.train.Checkpointing(every_steps=5, keep=5)))
    cut = tmp_path / "a" / "checkpoints" / "step-5.safetensors"
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    (tmp_path / "b" / "checkpoints" / "latest.safetensors").write_bytes(cut.read_bytes())
    resumed = fit(_net(), LOSS, optax.sgd(0.1), _data(), mode="epoch",
                  run=RunOptions(tmp_path / "b", resume=True), **run)  # last 3 steps: one scan
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(resumed.train_state.params)[0],
                               jax.flatten_util.ravel_pytree(full.train_state.params)[0],
                               rtol=1e-6, atol=1e-7)


def test_keep_and_latest(tmp_path):
    fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=1, batch_size=4, mode="step",
        run=RunOptions(tmp_path, checkpoint=fnn.train.Checkpointing(every_steps=2, keep=3)),
        log=None)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [
        "latest.safetensors", "step-10.safetensors", "step-12.safetensors",
        "step-14.safetensors"]  # 16 steps: the 3 newest step checkpoints; latest: the epoch's end
    assert ckpt.read_metadata(folder / "step-14.safetensors")["progress"]["offset"] == 14
    with pytest.raises(ValueError, match=r"training\.checkpoint\.keep: must be an int >= 1"):
        fnn.train.Checkpointing(every_steps=2, keep=0)


def test_config_checks_checkpoint_keys():
    from fnn.config import ConfigError, parse_config
    base = {"model": [{"Dense": 3}], "data": {"name": "xor"}}
    cfg = parse_config({**base, "training": {"checkpoint": {"every_steps": 50, "keep": 2}}})
    assert cfg["training"]["checkpoint"] == {"every_steps": 50, "every_minutes": None, "keep": 2}
    for key, value, message in (("every_steps", 0, "must be >= 1"),
                                ("every_minutes", 0, "must be > 0"), ("keep", 0, "must be >= 1")):
        with pytest.raises(ConfigError, match=rf"training\.checkpoint\.{key}: {message}"):
            parse_config({**base, "training": {"checkpoint": {key: value}}})


# --------------------------------------------------------------------------- gradient accumulation

@pytest.mark.parametrize("mode", ["step", "epoch"])
def test_accumulation_equals_the_large_batch(mode):
    net = fnn.serial(fnn.Dense(8), fnn.Tanh, fnn.Dense(3))
    l2 = lambda params: 1e-3 * fnn.regularizers.l2(params)   # added once per update
    run = dict(epochs=2, batch_size=16, mode=mode, log=None, regularizer=l2,
               metrics={"accuracy": fnn.train.correct})
    large = fit(net, LOSS, optax.adam(1e-2), _data(), **run)
    micro = fit(net, LOSS, optax.adam(1e-2), _data(), accumulate=4, **run)
    flat = lambda r: jax.flatten_util.ravel_pytree(r.train_state.params)[0]
    np.testing.assert_allclose(flat(micro), flat(large), rtol=2e-5, atol=1e-6)
    for key in ("train_loss", "train_objective", "train_accuracy"):
        assert micro.history[-1][key] == pytest.approx(large.history[-1][key], rel=1e-5)


def test_accumulation_draws_the_large_batchs_dropout_masks():
    """Each example keeps its key of the large batch in its micro-batch: with dropout, K
    micro-batches make the large batch's update (the draws are per example, not per batch)."""
    net = fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.Dropout(0.5), fnn.Dense(3))
    run = dict(epochs=2, batch_size=16, mode="step", log=None)
    large = fit(net, LOSS, optax.sgd(0.1), _data(), **run)
    micro = fit(net, LOSS, optax.sgd(0.1), _data(), accumulate=4, **run)
    flat = lambda r: jax.flatten_util.ravel_pytree(r.train_state.params)[0]
    np.testing.assert_allclose(flat(micro), flat(large), rtol=2e-5, atol=1e-6)
    assert micro.history[-1]["train_loss"] == pytest.approx(large.history[-1]["train_loss"],
                                                            rel=1e-5)


def test_accumulated_gradient_matches_a_numpy_reference():
    # one update of plain SGD on a linear least-squares model: w' = w - lr * X^T (X w - y) * 2 / n
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(size=(12, 1)).astype(np.float32)
    net = fnn.Dense(1, use_bias=False)
    seen = []

    def mse(outputs, targets, *, reduction="none"):   # records the (micro-)batch it scores
        seen.append(outputs.shape[0])
        return fnn.losses.mse(outputs, targets, reduction=reduction)

    step = jax.jit(fnn.train.train_step_fn(net, mse, optax.sgd(0.1), accumulate=3))
    _, ts = fnn.train.init_train_state(net, optax.sgd(0.1), (-1, 3), jax.random.key(0))
    w = np.asarray(ts.params["w"], np.float64)
    ts, out = step(ts, {"x": x, "y": y})
    residual = x.astype(np.float64) @ w - y
    expected = w - 0.1 * 2 * x.T @ residual / len(x)
    np.testing.assert_allclose(np.asarray(ts.params["w"]), expected, rtol=1e-5)
    assert float(out["loss"]) == pytest.approx(float(np.mean(residual ** 2)), rel=1e-5)
    assert set(seen) == {4}  # three micro-batches of 4 rows, never the 12 at once


def test_accumulation_that_does_not_divide_the_batch_is_refused():
    with pytest.raises(ValueError, match=r"training\.accumulate: a batch of 16 examples does not "
                                         r"split into 3 micro-batches"):
        fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=1, batch_size=16, accumulate=3,
            log=None)
    from fnn.config import ConfigError, parse_config
    with pytest.raises(ConfigError, match=r"training\.accumulate: must be >= 1 and divide"):
        parse_config({"model": [{"Dense": 3}], "data": {"name": "xor"},
                      "training": {"batch_size": 16, "accumulate": 3}})


def test_accumulation_needs_the_memory_of_one_micro_batch():
    """XLA's temporaries (activations and their gradients) of the compiled step: a batch of 4096
    in 4 micro-batches needs about what one batch of 1024 does, far less than 4096 at once (an
    MLP whose activations dominate: 4096 x 256 floats a layer vs 0.2 M params). Measured here
    at 7.9, 7.3 and 24.6 MiB (``scripts/accumulate_memory.py`` prints the MNIST CNN's)."""
    net = fnn.serial(fnn.Dense(256), fnn.Relu, fnn.Dense(256), fnn.Relu, fnn.Dense(256),
                     fnn.Relu, fnn.Dense(10))
    opt = optax.adam(1e-3)
    state = jax.eval_shape(lambda: fnn.train.init_train_state(net, opt, (-1, 64),
                                                              jax.random.key(0))[1])

    def temp(rows, k):
        batch = {"x": jax.ShapeDtypeStruct((rows, 64), jnp.float32),
                 "y": jax.ShapeDtypeStruct((rows,), jnp.int32)}
        step = jax.jit(fnn.train.train_step_fn(net, LOSS, opt, accumulate=k), donate_argnums=0)
        return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

    accumulated, micro, whole = temp(4096, 4), temp(1024, 1), temp(4096, 1)
    assert accumulated <= 1.2 * micro, (accumulated, micro)
    assert accumulated <= 0.4 * whole, (accumulated, whole)


# --------------------------------------------------------------------------- moving average of weights

def test_ema_matches_a_numpy_average_of_the_params():
    from fnn.train.ema import averaged, with_ema
    net, decay = _net(), 0.9
    opt = with_ema(optax.adam(1e-2), decay)
    _, ts = fnn.train.init_train_state(net, opt, (-1, 6), jax.random.key(0))
    step = jax.jit(fnn.train.train_step_fn(net, LOSS, opt))
    flat = lambda p: np.asarray(jax.flatten_util.ravel_pytree(p)[0], np.float64)
    average = flat(ts.params)                        # starts at the initial params
    data = _data()
    for i in range(6):
        ts, _ = step(ts, {k: v[8 * i:8 * i + 8] for k, v in data.items()})
        average = decay * average + (1 - decay) * flat(ts.params)
    np.testing.assert_allclose(flat(averaged(ts.opt_state)), average, rtol=1e-5, atol=1e-7)
    assert not np.allclose(average, flat(ts.params))  # the average is not the last params


def test_ema_validates_saves_and_loads_the_averaged_weights(tmp_path):
    from fnn.train.ema import averaged
    data, val = _data(), _data(seed=1)
    result = fit(_net(), LOSS, optax.adam(1e-2), data, val, epochs=2, batch_size=16,
                 run=tmp_path, ema=0.9, log=None)
    ts = result.train_state
    weights, _ = fnn.load_weights(tmp_path / "checkpoints" / "latest.safetensors")
    assert _same(weights, jax.device_get(averaged(ts.opt_state)))
    # validation scored the averaged weights, not the params
    scores = fnn.train.evaluate(fnn.train.make_eval_step(_net(), LOSS), averaged(ts.opt_state),
                                ts.model_state, val)
    assert result.history[-1]["val_loss"] == pytest.approx(scores["loss"], rel=1e-6)
    # and a resume restores the average bit for bit
    again = fit(_net(), LOSS, optax.adam(1e-2), data, val, epochs=2, batch_size=16,
                run=RunOptions(tmp_path, resume=True), ema=0.9, log=None)
    assert _same(averaged(again.train_state.opt_state), averaged(ts.opt_state))


def test_a_config_with_ema_evaluates_and_resumes_with_the_average(tmp_path, capsys):
    from fnn import cli
    out = tmp_path / "xor"
    args = ["train", str(XOR), "training.epochs=3", "output.plots=false",
            "training.ema.decay=0.5", "--out", str(out)]
    assert cli.main(args) == 0
    arrays = ckpt.load_tree(out / "checkpoints" / "latest.safetensors")
    weights, _ = fnn.load_weights(out / "checkpoints" / "latest.safetensors")
    assert np.array_equal(weights["dense_0"]["w"], arrays["opt_state/ema/dense_0/w"])
    assert not np.array_equal(weights["dense_0"]["w"], arrays["params/dense_0/w"])
    assert cli.main(["train", str(XOR), "training.epochs=4", "output.plots=false",
                     "training.ema.decay=0.5", "--out", str(out), "--resume"]) == 0
    assert [r["epoch"] for r in _lines(out / "metrics.jsonl")] == [1, 2, 3, 4]
    assert "reset" not in capsys.readouterr().out  # the stored average is resumed, not reset


# --------------------------------------------------------------------------- plateau schedule

def _plateau_optimizer(patience=1, factor=0.5):
    return fnn.optim.make_optimizer({"name": "sgd", "learning_rate": 0.1, "schedule": {
        "name": "plateau", "patience": patience, "factor": factor, "monitor": "val_loss"}})


def test_plateau_lowers_the_rate_as_pytorch_with_one_less_patience():
    torch = pytest.importorskip("torch", reason="PyTorch's ReduceLROnPlateau is the reference")
    from fnn.train.plateau import Plateau
    losses = [1.0, 0.8, 0.85, 0.9, 0.7, 0.75, 0.76, 0.77, 0.6, 0.61, 0.62, 0.63]
    opt_state = _plateau_optimizer().init({"w": jnp.zeros(2)})
    plateau = Plateau(factor=0.5, patience=2, monitor="val_loss")
    w = torch.nn.Parameter(torch.zeros(2))
    sgd = torch.optim.SGD([w], lr=0.1)
    reference = torch.optim.lr_scheduler.ReduceLROnPlateau(sgd, mode="min", factor=0.5,
                                                           patience=1, threshold=0.0)
    for epoch, loss in enumerate(losses, 1):
        opt_state, _ = plateau.update({"val_loss": loss}, epoch, opt_state)
        reference.step(loss)
        assert float(fnn.optim.learning_rate_of(opt_state)) == pytest.approx(
            sgd.param_groups[0]["lr"], rel=1e-6), epoch


def test_plateau_state_is_checkpointed_and_resumed(tmp_path):
    from fnn.train.plateau import Plateau
    data, val = _data(), _data(seed=7)
    run = dict(batch_size=16, log=None, mode="step")
    # "max" of a falling training loss: no epoch after the first improves on it
    plateau = lambda: Plateau(factor=0.5, patience=2, monitor="train_loss", mode="max")
    full = fit(_net(), LOSS, _plateau_optimizer(), data, val, epochs=6, plateau=plateau(), **run)
    rates = [r["learning_rate"] for r in full.history]
    best, waited, expected, lr = None, 0, [], 0.1   # Keras's rule, replayed on the log
    for r in full.history:
        expected.append(lr)
        if best is None or r["train_loss"] > best:
            best, waited = r["train_loss"], 0
        else:
            waited += 1
            if waited >= 2:
                lr, waited = lr * 0.5, 0
    assert rates == pytest.approx(expected, rel=1e-6)
    assert rates[-1] == pytest.approx(0.025)         # lowered after epochs 3 and 5
    fit(_net(), LOSS, _plateau_optimizer(), data, val, epochs=4, run=tmp_path,
        plateau=plateau(), **run)                    # stopped after the first lowering...
    resumed = fit(_net(), LOSS, _plateau_optimizer(), data, val, epochs=6,
                  run=RunOptions(tmp_path, resume=True), plateau=plateau(), **run)  # ...and its
    # counter resumed
    assert [r["learning_rate"] for r in resumed.history] == rates
    assert _same(resumed.train_state.params, full.train_state.params)


# --------------------------------------------------------------------------- compilation cache

@pytest.mark.slow
def test_a_second_identical_run_hits_the_compile_cache(tmp_path):
    import subprocess
    import sys
    cache = tmp_path / "cache"
    env = {**os.environ, "FNN_COMPILE_CACHE": str(cache), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(XOR.parents[1])}

    def run(name):
        done = subprocess.run([sys.executable, "-m", "fnn.cli", "train", str(XOR),
                               "training.epochs=2", "output.plots=false", "--out",
                               str(tmp_path / name)],
                              env=env, check=True, capture_output=True, text=True, timeout=600)
        compiled = [line for line in done.stdout.splitlines() if line.startswith("compile: ")]
        return sorted(p.name for p in cache.iterdir()), compiled

    first, compiled = run("a")
    assert first                         # the compiled programs were stored
    assert any(line.startswith("compile: train_epoch ") for line in compiled)
    assert not any("(cached)" in line for line in compiled)
    again, compiled = run("b")
    assert again == first                # the same run: every program found, none added
    assert all(line.endswith(" s (cached)") for line in compiled) and compiled
    off = {**env, "FNN_COMPILE_CACHE": "0"}
    subprocess.run([sys.executable, "-m", "fnn.cli", "train", str(XOR), "training.epochs=2",
                    "output.plots=false", "training.batch_size=2", "--out", str(tmp_path / "c")],
                   env=off, check=True, capture_output=True, timeout=600)
    assert sorted(p.name for p in cache.iterdir()) == first   # off: nothing written


def test_profile_writes_a_trace_into_the_run_folder(tmp_path, capsys):
    from fnn import cli
    out = tmp_path / "xor"
    assert cli.main(["train", str(XOR), "training.epochs=5", "output.plots=false",
                     "--out", str(out), "--profile", "3"]) == 0
    assert list((out / "profile").rglob("*.xplane.pb"))
    assert "profile: 3 steps traced to" in capsys.readouterr().out
    assert cli.main(["train", str(XOR), "--out", str(tmp_path / "b"), "--profile", "0"]) == 2
    assert "--profile: must be a number of steps >= 1" in capsys.readouterr().err


def test_each_compiled_function_logs_its_compile_time_once():
    lines = []
    fit(_net(), LOSS, optax.sgd(0.1), _data(), _data(seed=1), epochs=2, batch_size=16,
        mode="step", log=lines.append)
    compiled = [line for line in lines if line.startswith("compile: ")]
    assert [line.split()[1] for line in compiled] == ["train_step", "eval_step"]
    assert all(line.endswith(" s") for line in compiled)    # no cache in tests: compiled
