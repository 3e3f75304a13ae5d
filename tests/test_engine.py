"""The training engine for research scripts: any batches (pytrees, Loaders, generators),
predict/evaluate, losses as users write them, freezing, transfer, one-hot labels, batch size vs
data set size."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

import fnn
from fnn.config import ConfigError, load_config
from fnn.losses import mse, softmax_cross_entropy
from fnn.train import LossContractError, correct, evaluate, fit, predict
from fnn.finetune import frozen_paths
from blobs import blobs

REPO = Path(__file__).resolve().parents[1]


def _mlp():
    return fnn.serial(fnn.Dense(16), fnn.Relu, fnn.Dense(3))


# --------------------------------------------------------------------------- data in, any shape

def contrastive(outputs, same, margin=1.0):
    """Hadsell et al. 2006, per pair: same * d^2 + (1 - same) * max(0, margin - d)^2, meaned."""
    a, b = outputs
    d = jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1) + 1e-9)
    return jnp.mean(same * d ** 2 + (1 - same) * jnp.maximum(0.0, margin - d) ** 2)


def test_siamese_contrastive_model_trains_on_a_tuple_of_inputs():
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(256, 8)).astype(np.float32)
    same = (rng.random(256) < 0.5).astype(np.float32)
    x2 = np.where(same[:, None] > 0, x1 + 0.05 * rng.normal(size=x1.shape),
                  rng.normal(size=x1.shape)).astype(np.float32)
    net = fnn.shared(fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.Dense(4), name="branch"))
    result = fit(net, contrastive, optax.adam(1e-2), x=(x1, x2), y=same, epochs=8,
                 batch_size=32, log=None)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.6 * losses[0]
    branch = fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.Dense(4)).init(jax.random.key(0), (-1, 8))[1]
    assert fnn.num_params(result.train_state.params) == fnn.num_params(branch)  # one set, shared
    a, b = predict(net, result.train_state.params, result.train_state.model_state, (x1, x2))
    d = np.linalg.norm(a - b, axis=-1)
    assert d[same > 0].mean() < d[same == 0].mean()


def test_fit_on_a_generator_with_steps_per_epoch():
    x, y = blobs(256)

    def stream():
        for epoch in itertools.count():
            order = np.random.default_rng(epoch).permutation(len(x))
            for i in range(0, len(x), 32):
                yield {"x": x[order[i:i + 32]], "y": y[order[i:i + 32]]}

    result = fit(_mlp(), softmax_cross_entropy, optax.adam(1e-2), stream(), {"x": x, "y": y},
                 epochs=3, steps_per_epoch=8, metrics={"accuracy": correct}, log=None)
    assert [r["step"] for r in result.history] == [8, 16, 24]
    assert result.history[-1]["val_loss"] < result.history[0]["val_loss"]
    with pytest.raises(ValueError, match="generator.*steps_per_epoch"):
        fit(_mlp(), softmax_cross_entropy, optax.adam(1e-2), (b for b in [{"x": x, "y": y}]),
            epochs=2, log=None)


def test_fit_on_a_loader_over_a_memory_mapped_array(tmp_path):
    x, y = blobs(300)
    np.save(tmp_path / "x.npy", x)
    big = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert not fnn.train.data.fits_on_device({"x": big})  # auto mode never loads it whole
    loader = fnn.data.Loader({"x": big, "y": y}, 50, seed=0)
    result = fit(_mlp(), softmax_cross_entropy, optax.adam(1e-2), loader, epochs=3, log=None)
    assert [r["step"] for r in result.history] == [6, 12, 18]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # the same batches, in the same order, as the loader gives them to a hand-written loop
    net, opt = _mlp(), optax.adam(1e-2)
    _, ts = fnn.train.init_train_state(net, opt, (-1, 6), jax.random.fold_in(jax.random.key(0), 0))
    step = fnn.train.make_train_step(net, softmax_cross_entropy, opt)
    for e in range(3):
        for batch in loader.epoch(e):
            ts, _ = step(ts, batch)
    chex.assert_trees_all_close(ts.params, result.train_state.params, atol=1e-6)


def test_auto_mode_scans_arrays_and_matches_explicit_epoch_mode():
    x, y = blobs()
    runs = [fit(_mlp(), softmax_cross_entropy, optax.adam(1e-2), {"x": x, "y": y}, epochs=2,
                batch_size=32, mode=m, log=None) for m in ("auto", "epoch")]
    chex.assert_trees_all_equal(runs[0].train_state.params, runs[1].train_state.params)


# --------------------------------------------------------------------------- predict / evaluate

def test_predict_pads_the_last_batch_and_returns_every_row():
    x, _ = blobs(1001)
    net = fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Relu, fnn.Dropout(0.5), fnn.Dense(3))
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    out = predict(net, params, state, x, batch_size=128)
    assert out.shape == (1001, 3)
    np.testing.assert_allclose(out, net.apply(params, state, x)[0], rtol=1e-5, atol=1e-6)


def test_evaluate_with_a_network_gives_exact_means():
    x, y = blobs(103)
    net = _mlp()
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    result = evaluate(net, params, state, {"x": x, "y": y}, softmax_cross_entropy,
                      {"accuracy": correct}, batch_size=25)
    logits = np.asarray(net.apply(params, state, x)[0], np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))  # NumPy reference
    assert result["loss"] == pytest.approx(-log_probs[np.arange(103), y].mean(), rel=1e-5)
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y), abs=1e-7)


_backend_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: _backend_compiles.append(name)
    if name == "/jax/core/compile/backend_compile_duration" else None)


def test_predict_and_evaluate_compile_once_for_repeated_calls():
    x, y = blobs(103)
    net = _mlp()
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    data, metrics = {"x": x, "y": y}, {"accuracy": correct}
    first = evaluate(net, params, state, data, softmax_cross_entropy, metrics, batch_size=25)
    predict(net, params, state, x, batch_size=25)
    params2 = jax.tree_util.tree_map(lambda a: a * 0.5, params)      # new weights, same network
    before = len(_backend_compiles)
    for p in (params, params2, params):
        again = evaluate(net, p, state, data, softmax_cross_entropy, dict(metrics), batch_size=25)
        predict(net, p, state, x, batch_size=25)
    assert len(_backend_compiles) == before                            # nothing compiled again
    assert again == first


def test_predict_and_evaluate_take_iterators_and_loaders():
    x, y = blobs(90)
    net = _mlp()
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    streamed = predict(net, params, state, (x[i:i + 40] for i in range(0, 90, 40)))
    np.testing.assert_allclose(streamed, predict(net, params, state, x), rtol=1e-5, atol=1e-6)
    loader = fnn.data.Loader({"x": x, "y": y}, 32, seed=1)
    on_loader = evaluate(net, params, state, loader, softmax_cross_entropy, {"accuracy": correct})
    on_arrays = evaluate(net, params, state, {"x": x, "y": y}, softmax_cross_entropy,
                         {"accuracy": correct})
    assert on_loader == pytest.approx(on_arrays, rel=1e-6)


# --------------------------------------------------------------------------- losses as written

def test_a_scalar_loss_as_users_write_it_trains_like_the_per_example_one():
    x, y = blobs(200)
    t = np.eye(3, dtype=np.float32)[y]

    def my_mse(outputs, targets):
        return jnp.mean((outputs - targets) ** 2)

    runs = [fit(_mlp(), loss, optax.sgd(0.1), {"x": x, "y": t}, epochs=2, batch_size=64,
                log=None) for loss in (my_mse, mse)]  # 200 = 3 x 64 + 8: padding stays exact
    chex.assert_trees_all_close(runs[0].train_state.params, runs[1].train_state.params, atol=1e-6)
    val = evaluate(_mlp(), runs[0].train_state.params, {}, {"x": x, "y": t}, my_mse,
                   batch_size=64)
    out = np.asarray(_mlp().apply(runs[0].train_state.params, {}, x)[0])
    assert val["loss"] == pytest.approx(np.mean((out - t) ** 2), rel=1e-5)


def test_a_loss_that_is_not_a_mean_over_examples_is_refused():
    x, y = blobs(64)

    def summed(outputs, targets):
        return jnp.sum((outputs - targets) ** 2)

    with pytest.raises(LossContractError, match=r"loss 'summed' is not a mean over examples.*"
                                                r"reduction="):
        fit(_mlp(), summed, optax.sgd(0.1), {"x": x, "y": np.eye(3)[y]}, epochs=1, log=None)


def test_shape_mismatch_names_the_loss_and_both_shapes_before_compiling():
    x, y = blobs(64)
    with pytest.raises(LossContractError) as e:
        fit(_mlp(), mse, optax.sgd(0.1), {"x": x, "y": y}, epochs=1, log=None)
    message = str(e.value)
    assert "\n" not in message
    assert "loss 'mse'" in message and "(N, 3)" in message and "(N,)" in message
    assert "fnn.data.one_hot(y, 3)" in message

    def broken(outputs, targets):
        return outputs.nonexistent

    with pytest.raises(LossContractError, match=r"loss 'broken' cannot compare .*AttributeError"):
        fit(_mlp(), broken, optax.sgd(0.1), {"x": x, "y": y}, epochs=1, log=None)


def test_one_hot_rows_and_errors():
    np.testing.assert_array_equal(fnn.data.one_hot(np.array([2, 0]), 3),
                                  [[0, 0, 1], [1, 0, 0]])
    with pytest.raises(ValueError, match="row 1 has class 5"):
        fnn.data.one_hot(np.array([0, 5]), 3)


# --------------------------------------------------------------------------- freezing

def _finetune_net():
    encoder = fnn.serial(fnn.Dense(8), fnn.BatchNorm(), fnn.Relu, fnn.Dropout(0.5),
                         name="encoder")
    return fnn.serial(encoder, fnn.Dense(3, name="head"))


def test_frozen_block_keeps_params_and_batch_norm_statistics_bit_for_bit():
    x, y = blobs(200)
    net = _finetune_net()
    _, params, state = net.init(jax.random.key(1), (-1, 6))
    # pretend pretraining moved the running statistics away from their init
    state = jax.tree_util.tree_map(lambda s: s + 0.5, state)
    frozen = fnn.freeze(net, "encoder")
    opt = optax.adamw(1e-2, weight_decay=0.1)  # weight decay would move frozen weights too
    result = fit(frozen, softmax_cross_entropy, opt, {"x": x, "y": y}, epochs=2, batch_size=32,
                 init=(params, state), log=None)
    ts = result.train_state
    chex.assert_trees_all_equal(ts.params["encoder"], params["encoder"])
    chex.assert_trees_all_equal(ts.model_state, state)
    assert not np.allclose(ts.params["head"]["w"], params["head"]["w"])
    opt_leaves = jax.tree_util.tree_leaves(ts.opt_state)
    assert sum(leaf.size for leaf in opt_leaves) < 3 * sum(  # no Adam moments for the encoder
        leaf.size for leaf in jax.tree_util.tree_leaves(params["head"])) + 8
    # inference mode inside training: the frozen block is the same function in both modes
    out_train, _ = frozen.apply(params, state, x, rng=jax.random.key(0), train=True)
    np.testing.assert_array_equal(out_train, frozen.apply(params, state, x)[0])

    thawed = fnn.unfreeze(frozen)
    assert thawed.spec == net.spec or "Frozen" not in json.dumps(thawed.spec)
    again = fit(thawed, softmax_cross_entropy, opt, {"x": x, "y": y}, epochs=1, batch_size=32,
                init=(ts.params, ts.model_state), log=None).train_state
    assert not np.allclose(again.params["encoder"]["dense_0"]["w"],
                           params["encoder"]["dense_0"]["w"])
    assert not np.allclose(again.model_state["encoder"]["batch_norm_0"]["mean"],
                           state["encoder"]["batch_norm_0"]["mean"])


def test_a_frozen_network_saves_and_loads_and_is_a_config_layer(tmp_path):
    frozen = fnn.freeze(_finetune_net(), "encoder")
    _, params, state = frozen.init(jax.random.key(0), (-1, 6))
    fnn.save(tmp_path / "f.safetensors", frozen, params, state)
    net, params2, _ = fnn.load(tmp_path / "f.safetensors")
    assert net.spec == frozen.spec and "Frozen" in json.dumps(net.spec)
    chex.assert_trees_all_equal(params, params2)
    from fnn.layers.spec import from_spec
    in_yaml = from_spec([{"Frozen": {"layer": {"Dense": 4}, "name": "enc"}}, {"Dense": 2}])
    assert frozen_paths(in_yaml) == [("enc",)]
    twin = fnn.freeze(fnn.shared(fnn.serial(fnn.Dense(4), name="branch")), "dense_0")
    assert frozen_paths(twin) == [("dense_0",)]  # shared keeps no key of its own


def test_freeze_names_a_missing_layer_clearly():
    with pytest.raises(ValueError, match=r"freeze: no layer 'encodr'.*did you mean encoder"):
        fnn.freeze(_finetune_net(), "encodr")
    frozen = fnn.freeze(_finetune_net(), "encoder/dense_0", input_shape=(-1, 6))
    assert "Frozen" in json.dumps(frozen.spec)


# --------------------------------------------------------------------------- transfer

def _conv_body():
    return [fnn.Conv2D(4, 3), fnn.Relu, fnn.MaxPool2D(2), fnn.Conv2D(8, 3), fnn.Relu, fnn.Flatten()]


def test_transfer_from_a_0_to_4_digit_cnn_to_a_5_to_9_head():
    rng = np.random.default_rng(0)
    x = rng.random((32, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 5, 32).astype(np.int32)  # stands in for digits 0-4
    old_net = fnn.serial(*_conv_body(), fnn.Dense(5, name="head"))
    old = fit(old_net, softmax_cross_entropy, optax.adam(1e-2), {"x": x, "y": y}, epochs=1,
              batch_size=32, log=None).train_state
    # digits 5-9: the same conv layers, a new two-layer head
    new_net = fnn.serial(*_conv_body(), fnn.Dense(16, name="head"), fnn.Relu,
                         fnn.Dense(5, name="out"))
    params, state, report = fnn.transfer(old.params, old.model_state, new_net, (-1, 12, 12, 1),
                                         jax.random.key(7))
    assert set(report.copied) == {"params/conv2d_0/w", "params/conv2d_0/b",
                                  "params/conv2d_1/w", "params/conv2d_1/b"}
    assert set(report.new) == {"params/out/w", "params/out/b"}
    assert set(report.skipped) == {("params/head/w", (288, 5), (288, 16)),
                                   ("params/head/b", (5,), (16,))}
    for layer in ("conv2d_0", "conv2d_1"):
        chex.assert_trees_all_equal(params[layer], old.params[layer])
    fresh = new_net.init(jax.random.key(7), (-1, 12, 12, 1))[1]
    chex.assert_trees_all_equal(params["out"], fresh["out"])
    chex.assert_trees_all_equal(params["head"], fresh["head"])
    assert report.one_line().startswith("copied 4 pretrained arrays, 2 new, 2 skipped")


# --------------------------------------------------------------------------- configs

def test_one_hot_config_trains_mse_sigmoid_and_fails_validation_without_it(tmp_path):
    cfg = load_config(REPO / "configs" / "mnist_mse_sigmoid.yaml", ["data.one_hot=false"])
    fake = {"train": {"x": np.zeros((4, 784), np.float32), "y": np.zeros(4, np.int32)}}
    with pytest.raises(ConfigError, match=r"loss\.name: loss 'mse' .*\(N, 10\).*\(N,\).*one_hot"):
        fnn.run.check_shapes(cfg, fake)
    # the same recipe on a small data set, from the command line
    raw = yaml.safe_load((REPO / "configs" / "mnist_mse_sigmoid.yaml").read_text())
    raw.update(data={"name": "circles", "options": {"n": 200, "noise": 0.05, "n_test": 100},
                     "one_hot": True, "validation": 0.2},
               model=[{"Dense": 16}, "Sigmoid", {"Dense": 2}, "Sigmoid"],
               training={"epochs": 40, "batch_size": 20},
               output={"plots": False, "progress": False, "dir": str(tmp_path / "run")})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    from fnn.cli import main
    assert main(["train", str(tmp_path / "c.yaml")]) == 0
    history = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert "val_accuracy" in history[-1]


@pytest.mark.slow
def test_the_course_keras_example_config_reaches_85_percent(tmp_path):
    if not os.environ.get("FNN_DATA_DIR"):
        pytest.skip("FNN_DATA_DIR is not set (point it at the MNIST files)")
    cfg = load_config(REPO / "configs" / "mnist_mse_sigmoid.yaml", ["output.progress=false"])
    run_dir = fnn.run.train(cfg, tmp_path / "run", log=None)
    assert json.loads((run_dir / "test.json").read_text())["accuracy"] >= 0.85


def test_batch_larger_than_the_data_trains_on_all_of_it_with_a_notice():
    x, y = blobs(20)
    lines = []
    result = fit(_mlp(), softmax_cross_entropy, optax.sgd(0.1), {"x": x, "y": y}, epochs=2,
                 batch_size=128, log=lines.append)
    assert "batch_size 128 is larger than the 20 training examples" in lines[0]
    assert [r["step"] for r in result.history] == [1, 2]


def test_cv_on_xor_with_two_folds_runs(tmp_path):
    from fnn.cli import main
    out = tmp_path / "cv"
    assert main(["cv", str(REPO / "configs" / "xor.yaml"), "training.epochs=5",
                 "output.plots=false", "--folds", "2", "--out", str(out)]) == 0
    doc = json.loads((out / "cv.json").read_text())
    assert doc["folds"] == 2 and [f["train_size"] for f in doc["per_fold"]] == [2, 2]


def test_config_pretrained_and_freeze_keep_the_encoder_bit_for_bit(tmp_path):
    from fnn.run import train as train_run
    raw = {"name": "enc", "seed": 0,
           "model": [{"serial": {"layers": [{"Dense": 8}, "BatchNorm", "Relu"], "name": "encoder"}},
                     {"Dense": {"features": 2, "name": "head"}}],
           "data": {"name": "circles", "options": {"n": 120, "n_test": 40}, "validation": 0.25},
           "training": {"epochs": 2, "batch_size": 30},
           "output": {"plots": False, "progress": False}}
    first = train_run(fnn.config.parse_config(raw, [f"output.dir={tmp_path / 'a'}"]), log=None)
    pre_params, pre_state = fnn.load_weights(first / "checkpoints" / "latest.safetensors")
    lines = []
    second = train_run(fnn.config.parse_config(raw, [
        f"output.dir={tmp_path / 'b'}", "training.freeze=[encoder]",
        f"training.pretrained={first / 'checkpoints' / 'latest.safetensors'}",
        "optimizer.learning_rate=0.05"]), log=lines.append)
    params, state = fnn.load_weights(second / "checkpoints" / "latest.safetensors")
    chex.assert_trees_all_equal(params["encoder"], pre_params["encoder"])
    chex.assert_trees_all_equal(state, pre_state)
    assert not np.array_equal(params["head"]["w"], pre_params["head"]["w"])
    assert any(line.startswith("init: copied 8 pretrained arrays, 0 new, 0 skipped") for line in lines)
    with pytest.raises(ConfigError, match=r"training\.freeze: .*no layer 'encodr'"):
        train_run(fnn.config.parse_config(raw, [f"output.dir={tmp_path / 'c'}",
                                                "training.freeze=[encodr]"]), log=None)


# --------------------------------------------------------------------------- several devices

def _two_input_fit(parallel):
    """Two-input net on a list of batches whose last one (7 rows) does not split over 2 devices."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 23, 5)).astype(np.float32)
    y = rng.integers(0, 3, 23).astype(np.int32)
    batches = [{"x": (x1[i:i + 8], x2[i:i + 8]), "y": y[i:i + 8]} for i in range(0, 23, 8)]
    net = fnn.serial(fnn.parallel(fnn.Dense(4), fnn.Dense(4)), fnn.fan_in_concat(), fnn.Tanh,
                     fnn.Dense(3))
    result = fit(net, softmax_cross_entropy, optax.sgd(0.5), batches, batches, epochs=2,
                 log=None, parallel=parallel)
    return result.train_state.params, result.history


def test_iterables_of_tuple_inputs_train_alike_on_one_and_two_devices(tmp_path):
    params, history = _two_input_fit(None)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, text=True,
                          capture_output=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for mode in ("pmap", "mesh"):
        got = fnn.load_weights(tmp_path / f"{mode}.safetensors")[0]
        chex.assert_trees_all_close(got, jax.device_get(params), rtol=1e-5, atol=1e-6)
        other = json.loads((tmp_path / f"{mode}.json").read_text())
        assert [r["step"] for r in other] == [r["step"] for r in history] == [3, 6]
        for g, w in zip(other, history):
            assert g["train_loss"] == pytest.approx(w["train_loss"], rel=1e-5)
            assert g["val_loss"] == pytest.approx(w["val_loss"], rel=1e-5)


if __name__ == "__main__":  # the two-device worker of the test above
    out = Path(sys.argv[1])
    assert jax.device_count() == 2, jax.devices()
    for mode in ("pmap", "mesh"):
        params, history = _two_input_fit(mode)
        fnn.save_weights(out / f"{mode}.safetensors", params)
        (out / f"{mode}.json").write_text(json.dumps(history))
