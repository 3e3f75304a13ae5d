"""Training engine: steps, epoch vs step mode, exact evaluation, checkpoints, resume, NaN."""

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.losses import mse, softmax_cross_entropy
from fnn.train import (EarlyStopping, TrainingDiverged, correct, evaluate, fit, init_train_state,
                       make_eval_step, make_train_epoch, make_train_step, train_step_fn)
from fnn.train import checkpoint as ckpt
from blobs import blobs


def _net():
    return fnn.serial(fnn.Dense(16), fnn.Relu, fnn.Dropout(0.1), fnn.Dense(3))


def test_train_step_matches_hand_written_sgd_update():
    net = fnn.serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(2))
    x, y = blobs(8, 3, 2)
    _, ts = init_train_state(net, optax.sgd(0.1), (-1, 3), jax.random.key(0))
    expected_grads = jax.grad(lambda p: softmax_cross_entropy(net.apply(p, {}, x)[0], y))(ts.params)
    expected = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, ts.params, expected_grads)
    step = make_train_step(net, softmax_cross_entropy, optax.sgd(0.1), donate=False)
    new_ts, metrics = step(ts, {"x": x, "y": y})
    chex.assert_trees_all_close(new_ts.params, expected, atol=1e-6)
    assert int(new_ts.step) == 1
    np.testing.assert_allclose(metrics["loss"], softmax_cross_entropy(net.apply(ts.params, {}, x)[0], y),
                               rtol=1e-6)


def test_masked_batch_gives_the_gradient_of_the_real_examples():
    net = fnn.serial(fnn.Dense(4), fnn.Tanh, fnn.Dense(3))
    x, y = blobs(10, 5)
    _, ts = init_train_state(net, optax.sgd(1.0), (-1, 5), jax.random.key(1))
    fn = train_step_fn(net, softmax_cross_entropy, optax.sgd(1.0))
    real, _ = fn(ts, {"x": x[:6], "y": y[:6]})
    padded, _ = fn(ts, {"x": np.concatenate([x[:6], np.zeros_like(x[:4])]),
                        "y": np.concatenate([y[:6], np.zeros_like(y[:4])]),
                        "mask": np.array([1] * 6 + [0] * 4, np.float32)})
    chex.assert_trees_all_close(real.params, padded.params, atol=1e-6)


def test_regularizer_and_constraint_are_applied():
    net = fnn.Dense(3)
    x, y = blobs(16, 4)
    _, ts = init_train_state(net, optax.sgd(0.5), (-1, 4), jax.random.key(0))
    step = make_train_step(net, softmax_cross_entropy, optax.sgd(0.5),
                           regularizer=lambda p: 0.1 * fnn.regularizers.l2(p),
                           constraint=lambda p: fnn.regularizers.max_norm(p, 0.3), donate=False)
    new_ts, metrics = step(ts, {"x": x, "y": y})
    norms = np.linalg.norm(np.asarray(new_ts.params["w"]), axis=0)
    assert np.all(norms <= 0.3 + 1e-6)
    np.testing.assert_allclose(metrics["objective"] - metrics["loss"],
                               0.1 * np.sum(np.asarray(ts.params["w"]) ** 2), rtol=1e-5)


def test_epoch_mode_equals_step_mode():
    x, y = blobs()
    train = {"x": x[:200], "y": y[:200]}
    results = [fit(_net(), softmax_cross_entropy, optax.adam(1e-2), train, epochs=2, batch_size=32,
                   metrics={"accuracy": correct}, mode=mode, log=None) for mode in ("epoch", "step")]
    chex.assert_trees_all_close(results[0].train_state.params, results[1].train_state.params,
                                atol=1e-6)
    assert results[0].history[-1]["train_loss"] == pytest.approx(results[1].history[-1]["train_loss"])


def test_scanned_epoch_compiles_once_per_shape():
    x, y = blobs(96, 6)
    net = _net()
    _, ts = init_train_state(net, optax.sgd(0.1), (-1, 6), jax.random.key(0))
    epoch = make_train_epoch(train_step_fn(net, softmax_cross_entropy, optax.sgd(0.1)), 96, 32)
    data = {"x": jnp.asarray(x), "y": jnp.asarray(y)}
    for e in range(3):
        ts, metrics = epoch(ts, data, jax.random.key(e))
    assert epoch._cache_size() == 1
    assert metrics["loss"].shape == (3,)
    assert int(ts.step) == 9


def test_evaluate_counts_every_example_exactly_with_one_compilation():
    x, y = blobs(103, 6)
    net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    step = make_eval_step(net, softmax_cross_entropy, metrics={"accuracy": correct})
    result = evaluate(step, params, state, {"x": x, "y": y}, batch_size=25)  # 4 full + 1 partial
    logits = net.apply(params, state, x)[0]
    np.testing.assert_allclose(result["loss"], softmax_cross_entropy(logits, y), rtol=1e-5)
    np.testing.assert_allclose(result["accuracy"], np.mean(np.argmax(logits, -1) == y), rtol=1e-6)
    assert step._cache_size() == 1


def test_checkpoint_round_trip_and_architecture(tmp_path):
    net = fnn.serial(fnn.Conv2D(4, 3), fnn.BatchNorm(), fnn.Relu, fnn.Flatten(), fnn.Dense(2))
    _, params, state = net.init(jax.random.key(0), (-1, 6, 6, 1))
    fnn.save(tmp_path / "m.safetensors", net, params, state)
    net2, params2, state2 = fnn.load(tmp_path / "m.safetensors")
    chex.assert_trees_all_equal(params, params2)
    chex.assert_trees_all_equal(state, state2)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(net.apply(params, state, x)[0], net2.apply(params2, state2, x)[0])
    fnn.save_weights(tmp_path / "w.safetensors", params, state)
    p3, s3 = fnn.load_weights(tmp_path / "w.safetensors")
    chex.assert_trees_all_equal(params, p3)
    with pytest.raises(ckpt.CheckpointError, match="weights only"):
        fnn.load(tmp_path / "w.safetensors")


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        fnn.load_weights(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(ckpt.CheckpointError, match="bad.safetensors"):
        fnn.load_weights(bad)
    with pytest.raises(ckpt.CheckpointError, match="not plain data"):
        fnn.save(tmp_path / "x.safetensors", fnn.Dense(2, w_init=lambda k, s, d: jnp.zeros(s, d)), {})


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "latest.safetensors"
    fnn.save_weights(target, {"w": jnp.ones(3)})
    before = target.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        fnn.save_weights(target, {"w": jnp.zeros(3)})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.safetensors"]


def test_resume_gives_the_same_params_bit_for_bit(tmp_path):
    x, y = blobs()
    train, val = {"x": x[:200], "y": y[:200]}, {"x": x[200:], "y": y[200:]}
    kw = dict(batch_size=32, metrics={"accuracy": correct}, log=None, seed=3)
    full = fit(_net(), softmax_cross_entropy, optax.adam(1e-2), train, val, epochs=4,
               run=tmp_path / "full", **kw)
    fit(_net(), softmax_cross_entropy, optax.adam(1e-2), train, val, epochs=2,
        run=tmp_path / "cut", **kw)  # "killed" after epoch 2
    resumed = fit(_net(), softmax_cross_entropy, optax.adam(1e-2), train, val, epochs=4,
                  run=fnn.train.RunOptions(tmp_path / "cut", resume=True), **kw)
    chex.assert_trees_all_equal(full.train_state.params, resumed.train_state.params)
    chex.assert_trees_all_equal(full.train_state.opt_state, resumed.train_state.opt_state)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    keys = json.loads(lines[0]).keys()
    for key in ("epoch", "step", "learning_rate", "train_loss", "train_accuracy", "val_loss",
                "val_accuracy", "seconds", "examples_per_sec"):
        assert key in keys


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    x, y = blobs(64, 6)
    train = {"x": x, "y": y.astype(np.float32)[:, None]}
    net = fnn.serial(fnn.Dense(4), fnn.Dense(1))
    x_bad = train["x"].copy()
    fit(net, mse, optax.sgd(1e-3), train, epochs=1, batch_size=16, run=tmp_path, log=None)
    latest = tmp_path / "checkpoints" / "latest.safetensors"
    before = latest.read_bytes()
    x_bad[40] = np.inf  # poisons the batch holding example 40 in epoch 2
    with pytest.raises(TrainingDiverged, match=r"step \d+ \(epoch 2\).*latest.safetensors"):
        fit(net, mse, optax.sgd(1e-3), {"x": x_bad, "y": train["y"]}, epochs=2, batch_size=16,
            run=fnn.train.RunOptions(tmp_path, resume=True), log=None)
    assert latest.read_bytes() == before


def test_early_stopping_restores_best(tmp_path):
    x, y = blobs()
    train, val = {"x": x[:200], "y": y[:200]}, {"x": x[200:], "y": y[200:]}
    es = EarlyStopping(monitor="val_loss", patience=2, min_delta=10.0)  # nothing beats epoch 1
    result = fit(_net(), softmax_cross_entropy, optax.adam(1e-2), train, val, epochs=10,
                 batch_size=32, early_stopping=es, run=tmp_path, log=None)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1
    best_params, _ = fnn.load_weights(tmp_path / "checkpoints" / "best.safetensors")
    chex.assert_trees_all_equal(result.train_state.params, best_params)


def test_frozen_layers_do_not_move():
    x, y = blobs(64, 6)
    net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
    opt = fnn.optim.make_optimizer({"name": "adam", "learning_rate": 1e-2, "freeze": ["dense_0"]})
    _, ts = init_train_state(net, opt, (-1, 6), jax.random.key(0))
    before = jax.device_get(ts.params)
    result = fit(net, softmax_cross_entropy, opt, {"x": x, "y": y}, epochs=2, batch_size=16,
                 init=ts, log=None)
    chex.assert_trees_all_equal(result.train_state.params["dense_0"], before["dense_0"])
    assert not np.allclose(result.train_state.params["dense_1"]["w"], before["dense_1"]["w"])
