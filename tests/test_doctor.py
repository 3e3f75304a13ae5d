"""fnn doctor: a planted-fault suite of small runs, each with one fault that must be named, and
healthy twins that must get no warning; NaN/Inf localisation; the CLI's exit statuses."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.doctor import examine, format_findings, localize
from fnn.train.loop import TrainingDiverged

from blobs import blobs


@fnn.layer_type("DoctorLog")
def DoctorLog() -> fnn.Layer:
    """log of its input: NaN on negative inputs (forward)."""
    return fnn.Layer(lambda rng, shape: (shape, {}, {}),
                     lambda params, state, x, *, rng=None, train=False: (jnp.log(x), state))


@fnn.layer_type("DoctorSqrt")
def DoctorSqrt() -> fnn.Layer:
    """sqrt of the positive part: finite forward, infinite derivative at 0 (backward NaN)."""
    return fnn.Layer(lambda rng, shape: (shape, {}, {}),
                     lambda params, state, x, *, rng=None, train=False:
                     (jnp.sqrt(jnp.maximum(x, 0.0)), state))


def _data(n_train=384, n_val=192, seed=0, d=8, classes=4):
    x, y = blobs(n_train + n_val, d, classes, seed)
    return {"train": {"x": x[:n_train], "y": y[:n_train]},
            "val": {"x": x[n_train:], "y": y[n_train:]}}


def _run(tmp_path, net, optimizer, data, *, epochs=8, batch_size=32, diagnostics=6, **kw):
    run = tmp_path / "run"
    fnn.train.fit(net, fnn.losses.softmax_cross_entropy, optimizer, data["train"], data["val"],
                  epochs=epochs, batch_size=batch_size, log=None,
                  run=fnn.train.RunOptions(run, diagnostics=diagnostics),
                  metrics={"accuracy": fnn.train.correct}, **kw)
    return run


def _warnings(findings):
    return {f.code for f in findings if f.severity != "info"}


def _mlp(depth=2, width=32, act=fnn.Relu, classes=4, **dense):
    layers = []
    for _ in range(depth):
        layers += [fnn.Dense(width, **dense), act]
    return fnn.serial(*layers, fnn.Dense(classes))


# --------------------------------------------------------------------------- healthy twins

def test_healthy_mlp_gets_no_warning(tmp_path):
    data = _data()
    run = _run(tmp_path, _mlp(), optax.adam(3e-3), data)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    assert _warnings(findings) == set(), format_findings(findings)
    assert format_findings(findings).startswith("no problem found")


# --------------------------------------------------------------------------- planted faults

def test_vanishing_gradients_in_a_30_layer_sigmoid_mlp(tmp_path):
    data = _data()
    run = _run(tmp_path, _mlp(depth=30, width=16, act=fnn.Sigmoid), optax.adam(1e-3), data,
               epochs=3)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    assert "vanishing_gradients" in _warnings(findings), format_findings(findings)
    vanishing = next(f for f in findings if f.code == "vanishing_gradients")
    ratio = float(vanishing.evidence.split("ratio ")[1].split(",")[0])
    assert ratio < 1e-3   # sigmoid' <= 1/4 per layer: 30 layers lose many orders of magnitude


@pytest.mark.filterwarnings("error::UserWarning")  # gradflow.png of all-zero gradients draws
def test_dead_relu_units_with_biases_at_minus_5(tmp_path):
    data = _data()
    net = _mlp(b_init=fnn.initializers.constant(-5.0))
    run = _run(tmp_path, net, optax.adam(3e-3), data, epochs=3)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    dead = next(f for f in findings if f.code == "dead_relu")
    assert dead.severity == "error" and "relu_0: 100% dead" in dead.evidence
    assert findings[0].code == "dead_relu"
    assert "vanishing_gradients" not in _warnings(findings)  # zero gradients are the dead units


def test_learning_rate_too_low(tmp_path):
    data = _data()
    run = _run(tmp_path, _mlp(), optax.sgd(1e-7), data, epochs=4)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    assert "learning_rate_low" in _warnings(findings), format_findings(findings)
    assert "underfitting" not in _warnings(findings)   # the cause is named instead


def test_overfitting_names_the_epoch(tmp_path):
    rng = np.random.default_rng(1)
    data = _data(n_train=100, n_val=200)
    flip = rng.random(100) < 0.3                       # noisy labels to learn by heart
    data["train"]["y"] = np.where(flip, rng.integers(0, 4, 100), data["train"]["y"]).astype(np.int32)
    run = _run(tmp_path, _mlp(width=128), optax.adam(1e-2), data, epochs=150, batch_size=100,
               diagnostics=None)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    over = next(f for f in findings if f.code == "overfitting")
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = int(np.argmin([r["val_loss"] for r in history])) + 1
    assert f"overfitting from epoch {best + 1}" in over.title
    assert f"lowest at epoch {best} " in over.evidence


def test_batch_norm_statistics_lag(tmp_path):
    data = _data()
    for part in data.values():
        part["x"] = part["x"] * 50 + 20        # far from the running statistics' start (0, 1)
    net = fnn.serial(fnn.Dense(32), fnn.BatchNorm(momentum=0.999), fnn.Relu, fnn.Dense(4))
    run = _run(tmp_path, net, optax.adam(1e-2), data, epochs=1, diagnostics=None)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    assert "batch_norm_lag" in _warnings(findings), format_findings(findings)
    # the healthy twin: momentum 0.9 over the same steps catches up with the batch statistics
    twin = _run(tmp_path / "twin", fnn.serial(
        fnn.Dense(32), fnn.BatchNorm(momentum=0.9), fnn.Relu, fnn.Dense(4)), optax.adam(1e-2),
        data, epochs=1, diagnostics=None)
    twin_findings = examine(twin, data=data, loss=fnn.losses.softmax_cross_entropy)
    assert _warnings(twin_findings) == set(), format_findings(twin_findings)


def test_shuffled_labels_are_a_data_problem(tmp_path):
    data = _data()
    rng = np.random.default_rng(3)
    for part in data.values():
        part["y"] = rng.permutation(part["y"])
    run = _run(tmp_path, _mlp(width=128), optax.adam(1e-2), data, epochs=40, batch_size=64,
               diagnostics=None)
    findings = examine(run, data=data, loss=fnn.losses.softmax_cross_entropy)
    assert "labels_uninformative" in _warnings(findings), format_findings(findings)


# --------------------------------------------------------------------------- non-finite runs

def _diverge(tmp_path, net, optimizer, data, loss=fnn.losses.softmax_cross_entropy, epochs=3):
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as e:
        fnn.train.fit(net, loss, optimizer, data["train"], data["val"], epochs=epochs,
                      batch_size=32, run=run, log=None)
    return run, str(e.value), json.loads((run / "doctor.json").read_text())


def test_forward_nan_of_a_log_layer_is_named(tmp_path):
    data = _data()
    net = fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.serial(fnn.Dense(16), DoctorLog(), name="block"),
                     fnn.Dense(4))
    run, message, report = _diverge(tmp_path, net, optax.sgd(0.1), data)
    assert "forward NaN in layer 'block/doctor_log_0' (DoctorLog)" in message
    assert report["fault"]["layer"] == "block/doctor_log_0"
    assert report["fault"]["direction"] == "forward" and report["step"] == 1
    findings = examine(run)
    assert findings[0].code == "non_finite" and "block/doctor_log_0" in findings[0].title


def test_backward_nan_of_a_sqrt_layer_is_named(tmp_path):
    data = _data()
    net = fnn.serial(fnn.Dense(16), fnn.serial(fnn.Dense(16), DoctorSqrt(), name="block"),
                     fnn.Dense(4))
    run, message, report = _diverge(tmp_path, net, optax.sgd(0.1), data)
    # the loss of step 1 is finite; its gradient is NaN, so step 2's loss is NaN
    assert "became nan at step 2" in message
    assert "first non-finite value at step 1: backward NaN in layer 'block/doctor_sqrt_0'" in message
    assert report["fault"]["direction"] == "backward" and report["step"] == 1


def test_learning_rate_10_divergence_is_localised_to_a_layer_and_step(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 1))).astype(np.float32)
    data = {"train": {"x": x[:192], "y": y[:192]}, "val": {"x": x[192:], "y": y[192:]}}
    net = fnn.serial(fnn.Dense(32), fnn.Relu, fnn.Dense(32), fnn.Relu, fnn.Dense(1))
    run, message, report = _diverge(tmp_path, net, optax.sgd(10.0), data,
                                    loss=fnn.losses.mse)
    fault = report["fault"]
    # the outputs overflow float32 in the squared error: the loss is where Inf first appears,
    # and the layer whose output grew largest is named with it
    assert (fault["layer"], fault["direction"], fault["value"]) == ("loss", "forward", "inf")
    assert fault["detail"].startswith("largest layer output: dense_2 (max |y|")
    assert f"first non-finite value at step {report['step']}: forward Inf in the loss" in message
    top = examine(run)[0]
    assert top.severity == "error" and "optimizer.learning_rate" in top.fix


# --------------------------------------------------------------------------- localize

def _numpy_log_rows(x, w, b):
    """Rows whose Dense output (a NumPy formula) has a negative entry: log gives NaN there."""
    return tuple(np.nonzero((x @ w + b < 0).any(axis=1))[0].tolist())


def test_localize_names_the_rows_a_numpy_formula_predicts():
    net = fnn.serial(fnn.Dense(3), DoctorLog(), fnn.Dense(2))
    _, params, state = net.init(jax.random.key(1), (-1, 4))
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    fault = localize(net, params, state, {"x": x, "y": np.zeros(10, int)},
                     fnn.losses.softmax_cross_entropy)
    w, b = np.asarray(params["dense_0"]["w"]), np.asarray(params["dense_0"]["b"])
    assert (fault.layer, fault.direction) == ("doctor_log_0", "forward")
    assert fault.rows == _numpy_log_rows(x, w, b) and fault.rows


def test_localize_inside_repeat_names_the_copy():
    net = fnn.serial(fnn.Dense(4), fnn.repeat(fnn.serial(fnn.Dense(4), fnn.Tanh), 5), fnn.Dense(2))
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    params["repeat_0"]["dense_0"]["w"] = params["repeat_0"]["dense_0"]["w"].at[3].set(jnp.nan)
    x = np.ones((4, 3), np.float32)
    fault = localize(net, params, state, {"x": x, "y": np.zeros(4, int)},
                     fnn.losses.softmax_cross_entropy)
    assert fault.layer == "repeat_0/dense_0" and fault.copy == 3
    assert fault.direction == "forward" and fault.where == "params"


def test_localize_a_finite_step_and_a_bad_input():
    net = _mlp()
    _, params, state = net.init(jax.random.key(0), (-1, 8))
    x, y = blobs(16, 8, 4)
    assert localize(net, params, state, (x, y), fnn.losses.softmax_cross_entropy) is None
    x[2, 1] = np.inf
    fault = localize(net, params, state, (x, y), fnn.losses.softmax_cross_entropy)
    assert (fault.layer, fault.rows, fault.value) == ("input", (2,), "inf")


# --------------------------------------------------------------------------- the command

def test_cli_exit_statuses(tmp_path, capsys):
    from fnn.cli import main

    assert main(["doctor", str(tmp_path / "nowhere")]) == 2
    assert "fnn doctor: error:" in capsys.readouterr().err
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    (healthy / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i, "train_loss": 1 / i, "val_loss": 1 / i}) + "\n"
        for i in range(1, 6)))
    assert main(["doctor", str(healthy)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no problem found") and "training.diagnostics.every" in out
    (healthy / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i, "train_loss": 1 / i, "val_loss": 0.5 + i / 5}) + "\n"
        for i in range(1, 6)))
    assert main(["doctor", str(healthy)]) == 1
    assert "overfitting" in capsys.readouterr().out
    (healthy / "metrics.jsonl").write_text("{not json\n")
    assert main(["doctor", str(healthy)]) == 2
    assert "metrics.jsonl:1" in capsys.readouterr().err


# --------------------------------------------------------------------------- thresholds on records

def _diag_run(tmp_path, layers, depth, losses=(1.0, 0.8, 0.6, 0.5)):
    run = tmp_path / "records"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i + 1, "train_loss": v, "val_loss": v}) + "\n"
        for i, v in enumerate(losses)))
    (run / "diagnostics.jsonl").write_text(json.dumps(
        {"step": 10, "epoch": 1, "loss": 1.0, "layers": layers, "grad_norm_by_depth": depth}) + "\n")
    return examine(run)


def test_thresholds_on_written_records(tmp_path):
    def dense(name, ratio):
        return {"layer": name, "kind": "Dense", "grad_norm": 1.0, "weight_norm": 1.0,
                "update_ratio": ratio}

    healthy = [dense("dense_0", 1e-3), {"layer": "tanh_0", "kind": "Tanh", "rms": 0.5,
                                        "saturated_fraction": 0.1}, dense("dense_1", 2e-3)]
    assert _warnings(_diag_run(tmp_path / "a", healthy, [0.5, 0.4, 0.3])) == set()
    exploding = _diag_run(tmp_path / "b", healthy, [5e3, 40.0, 1.0])
    assert _warnings(exploding) == {"exploding_gradients"}
    saturated = [*healthy[:1], {**healthy[1], "saturated_fraction": {"q0": 0.5, "q25": 0.6,
                                                                     "q50": 0.7, "q75": 0.8,
                                                                     "q100": 0.9}}]
    found = _diag_run(tmp_path / "c", saturated, [0.5, 0.4, 0.3])
    assert _warnings(found) == {"saturated_units"}
    assert "tanh_0 (Tanh): 70% of outputs saturated" in found[0].evidence
    high = _diag_run(tmp_path / "d", [dense("dense_0", 0.9), dense("dense_1", 0.5)], [1, 1, 1])
    assert _warnings(high) == {"learning_rate_high"}
    for fraction, severity in ((0.6, "info"), (0.8, "warning"), (1.0, "error")):
        dead = _diag_run(tmp_path / f"e{fraction}", [{"layer": "relu_0", "kind": "Relu",
                                                      "dead_fraction": fraction}], [1, 1, 1])
        assert [f.severity for f in dead if f.code == "dead_relu"] == [severity]
    oscillating = _diag_run(tmp_path / "f", healthy, [0.5, 0.4, 0.3],
                            losses=(1.0, 0.6, 0.9, 0.5, 0.8, 0.45, 0.7))
    assert _warnings(oscillating) == {"learning_rate_high"}


def test_a_stop_the_run_trained_past_is_info(tmp_path):
    run = tmp_path / "resumed"
    run.mkdir()
    (run / "doctor.json").write_text(json.dumps(
        {"step": 5, "epoch": 1, "fault": None, "examples": [],
         "note": "the loss exploded past training.divergence.factor"}))
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 4, "train_loss": 1.0}) + "\n")
    assert [(f.code, f.severity) for f in examine(run)][:1] == [("divergence", "error")]
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": i, "step": 4 * i, "train_loss": 1.0 / i}) + "\n" for i in (1, 2)))
    assert "divergence" not in _warnings(examine(run))
