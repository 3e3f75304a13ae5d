"""Trackers (issue 22): a run's events read back from TensorBoard, MLflow and CSV."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fnn
from fnn.config import ConfigError, parse_config
from fnn.trackers import Trackers
from fnn.train import fit
from tests.blobs import blobs

LOSS = fnn.losses.softmax_cross_entropy
CONFIG = {"name": "t", "optimizer": {"name": "sgd", "learning_rate": 0.1}}
STEPS_PER_EPOCH = 4  # 64 examples in batches of 16


def _data(n=64, seed=0):
    x, y = blobs(n, d=6, classes=3, seed=seed)
    return {"x": x, "y": y}


def _net():
    return fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))


def _fit(run_dir, trackers, epochs, **kw):
    """``kw``: fit's keywords and RunOptions' (resume, checkpoint, diagnostics, log_every)."""
    kw = {"batch_size": 16, "log": None, "mode": "epoch", "log_every": 3, **kw}
    run = fnn.train.RunOptions(run_dir, trackers=trackers, metadata={"config": CONFIG},
                               **{k: kw.pop(k) for k in ("resume", "checkpoint", "diagnostics",
                                                         "log_every") if k in kw})
    return fit(_net(), LOSS, optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), _data(),
               _data(32, seed=1), epochs=epochs, run=run,
               metrics={"accuracy": fnn.train.correct}, **kw)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _csv(run_dir):
    """{name: [(step, value), ...]} in the file's order."""
    out = defaultdict(list)
    with open(run_dir / "scalars.csv", newline="") as f:
        for row in csv.DictReader(f):
            out[row["name"]].append((int(row["step"]), float(row["value"])))
    return out


def _tensorboard(run_dir):
    """As TensorBoard reads the folder (purged steps dropped): {tag: [(step, value), ...]}."""
    pytest.importorskip("tensorboard", reason="reading event files back needs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(run_dir):
    """{key: [(step, value), ...]} of the MLflow run named in mlflow.json, and its params."""
    from mlflow.tracking import MlflowClient

    saved = json.loads((run_dir / "mlflow.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    run = client.get_run(saved["run_id"])
    history = {key: sorted((m.step, m.value) for m in
                           client.get_metric_history(saved["run_id"], key))
               for key in run.data.metrics}
    return history, run.data.params


def _readers(names):
    out = {"csv": _csv}
    if "tensorboard" in names:
        out["tensorboard"] = _tensorboard
    if "mlflow" in names:
        out["mlflow"] = lambda d: _mlflow(d)[0]
    return out


def _optional():
    """The trackers whose libraries are installed (the others are covered by the csv one)."""
    names = ["csv"]
    for name, module in (("tensorboard", "tensorboardX"), ("mlflow", "mlflow")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            pass
    return names


def _check_against_metrics(events, records, log_every, last_step):
    """Every epoch value equals metrics.jsonl, at its step, once; per-step values every
    ``log_every`` steps, each step once, in order."""
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "learning_rate"):
        got = events[f"epoch/{key}"]
        assert [s for s, _ in got] == [r["step"] for r in records], key
        np.testing.assert_allclose([v for _, v in got], [r[key] for r in records], rtol=1e-6)
    for key in ("step/loss", "step/accuracy"):
        assert [s for s, _ in events[key]] == list(range(log_every, last_step + 1, log_every))


# --------------------------------------------------------------------------- read back

def test_every_tracker_holds_the_values_of_metrics_jsonl(tmp_path):
    names = _optional()
    _fit(tmp_path, names, epochs=3)
    records = _metrics(tmp_path)
    for name, read in _readers(names).items():
        _check_against_metrics(read(tmp_path), records, 3, 3 * STEPS_PER_EPOCH)


def test_per_step_values_average_to_the_epoch_loss_in_both_modes(tmp_path):
    """With log_every 1 each epoch's step losses are all there: their mean is the epoch's
    train_loss, and the scanned epoch gives the same steps as the per-step loop."""
    per_mode = {}
    for mode in ("epoch", "step"):
        _fit(tmp_path / mode, ["csv"], epochs=2, mode=mode, log_every=1)
        steps = _csv(tmp_path / mode)["step/loss"]
        assert [s for s, _ in steps] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
        losses = np.array([v for _, v in steps]).reshape(2, STEPS_PER_EPOCH)
        np.testing.assert_allclose(losses.mean(1),
                                   [r["train_loss"] for r in _metrics(tmp_path / mode)],
                                   rtol=1e-6)
        per_mode[mode] = losses
    np.testing.assert_allclose(per_mode["epoch"], per_mode["step"], rtol=1e-5)


def test_diagnostics_are_sent_as_per_layer_gradient_norms(tmp_path):
    _fit(tmp_path, ["csv"], epochs=2, mode="step", diagnostics=2)
    diag = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    events = _csv(tmp_path)
    for layer in ("dense_0", "dense_1"):
        want = [(r["step"], l["grad_norm"]) for r in diag for l in r["layers"]
                if l["layer"] == layer]
        assert len(want) == 4
        got = events[f"grad_norm/{layer}"]
        assert [s for s, _ in got] == [s for s, _ in want]
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)


def test_config_and_summary_are_sent(tmp_path):
    pytest.importorskip("mlflow", reason="the MLflow tracker needs the fnn[mlflow] extra")
    _fit(tmp_path, ["mlflow"], epochs=1)
    _, params = _mlflow(tmp_path)
    assert params["optimizer.name"] == "sgd" and params["optimizer.learning_rate"] == "0.1"
    saved = json.loads((tmp_path / "mlflow.json").read_text())
    artifacts = Path(saved["tracking_uri"][len("file://"):])
    assert "dense_0" in next(artifacts.rglob("summary.txt")).read_text()


def test_tensorboard_holds_the_config_and_summary_as_text(tmp_path):
    pytest.importorskip("tensorboardX", reason="the TensorBoard tracker needs fnn[tensorboard]")
    pytest.importorskip("tensorboard", reason="reading event files back needs tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _fit(tmp_path, ["tensorboard"], epochs=1)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    text = acc.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "dense_0" in text and str(fnn.summary(_net(), (-1, 6))).splitlines()[-1] in text


# --------------------------------------------------------------------------- resume

def test_a_resumed_run_continues_without_a_duplicated_step(tmp_path):
    """Stopped after 2 epochs, then a run killed after sending epochs 3-4 but before their
    checkpoint: resuming from epoch 2 drops those events and sends them again, once."""
    names = _optional()
    _fit(tmp_path, names, epochs=2)
    kept = tmp_path.parent / "kept"
    shutil.copytree(tmp_path / "checkpoints", kept)
    _fit(tmp_path, names, epochs=4, resume=True)      # events of epochs 3 and 4 sent ...
    shutil.rmtree(tmp_path / "checkpoints")           # ... but their checkpoints lost
    shutil.copytree(kept, tmp_path / "checkpoints")
    with open(tmp_path / "scalars.csv", "a") as f:    # and a row torn by the kill
        f.write("17,step/lo")
    _fit(tmp_path, names, epochs=5, resume=True)
    records = _metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    for name, read in _readers(names).items():
        events = read(tmp_path)
        for key, points in events.items():
            steps = [s for s, _ in points]
            assert steps == sorted(set(steps)), (name, key)   # monotone, each step once
        _check_against_metrics(events, records, 3, 5 * STEPS_PER_EPOCH)


@pytest.mark.parametrize("log_every, sent", [(1, [1, 2, 3, 4]), (3, [3])])
def test_a_run_resumed_inside_an_epoch_sends_that_epoch_whole(tmp_path, monkeypatch, log_every,
                                                              sent):
    """SIGTERM 1 step into epoch 2: latest holds step 6 and the events end at epoch 1; the
    resumed run sends epoch 2 whole, and its per-step values equal an unstopped run's (with
    log_every 3 the checkpoint's partial epoch holds NaN gradient norms of unlogged steps)."""
    import os
    import signal

    from fnn.train import Checkpointing, Preempted, checkpointing

    original, calls = checkpointing.BackgroundWriter.write, [0]

    def write(self, *args, **kwargs):  # step checkpoints at steps 1, 2, 3, 5, ...
        calls[0] += 1
        if calls[0] == 4:  # at step 5: the loop stops after step 6
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    run = dict(checkpoint=Checkpointing(every_steps=1), log_every=log_every)
    monkeypatch.setattr(checkpointing.BackgroundWriter, "write", write)
    with pytest.raises(Preempted, match="at step 6"):
        _fit(tmp_path / "stopped", ["csv"], epochs=3, **run)
    assert [s for s, _ in _csv(tmp_path / "stopped")["step/loss"]] == sent
    monkeypatch.setattr(checkpointing.BackgroundWriter, "write", original)
    _fit(tmp_path / "stopped", ["csv"], epochs=3, resume=True, **run)
    _fit(tmp_path / "straight", ["csv"], epochs=3, **run)
    events = _csv(tmp_path / "stopped")
    _check_against_metrics(events, _metrics(tmp_path / "stopped"), log_every,
                           3 * STEPS_PER_EPOCH)
    straight = _csv(tmp_path / "straight")
    for key in ("step/loss", "step/grad_norm", "step/learning_rate"):
        assert events[key] == straight[key], key


def test_a_fresh_run_in_a_used_folder_starts_its_events_afresh(tmp_path):
    names = _optional()
    _fit(tmp_path, names, epochs=2)
    _fit(tmp_path, names, epochs=1)  # not a resume
    records = _metrics(tmp_path)
    for name, read in _readers(names).items():
        _check_against_metrics(read(tmp_path), records, 3, STEPS_PER_EPOCH)


def test_a_damaged_csv_is_refused_on_resume_in_one_line(tmp_path):
    _fit(tmp_path, ["csv"], epochs=1)
    (tmp_path / "scalars.csv").write_text("step,name,value\nnot a row\n4,step/loss,1.0\n")
    with pytest.raises(ValueError, match=r"scalars.csv: line 2: not a step,name,value row"):
        _fit(tmp_path, ["csv"], epochs=2, resume=True)


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("name, module, extra", [("tensorboard", "tensorboardX", "tensorboard"),
                                                 ("mlflow", "mlflow", "mlflow")])
def test_a_missing_extra_is_one_line_before_training(tmp_path, monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ConfigError) as e:
        parse_config({"model": [{"Dense": 2}], "output": {"trackers": ["csv", name]}})
    assert str(e.value) == (f"output.trackers[1]: {name!r} needs {module}, which is not "
                            f"installed: pip install 'fnn[{extra}]'")
    compiled = []
    with pytest.raises(ValueError, match=rf"^trackers\[0\]: .*pip install 'fnn\[{extra}\]'$"):
        fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=1, log=None,
            run=fnn.train.RunOptions(tmp_path, trackers=[name]),
            callbacks=[lambda r, ts: compiled.append(r)])
    assert not compiled and not any(tmp_path.iterdir())


@pytest.mark.parametrize("trackers, log_every, message", [
    (["wandb"], 10, "output.trackers[0]: unknown tracker 'wandb'; choose from tensorboard, "
                    "mlflow, csv"),
    (["csv", "csv"], 10, "output.trackers[1]: 'csv' is listed twice"),
    ([{"csv": 1}], 10, "output.trackers[0]: must be a tracker name"),
    (["csv"], 0, "output.log_every: must be >= 1, got 0"),
])
def test_bad_tracker_keys_are_one_line(trackers, log_every, message):
    with pytest.raises(ConfigError) as e:
        parse_config({"model": [{"Dense": 2}],
                      "output": {"trackers": trackers, "log_every": log_every}})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_trackers_need_a_run_folder():
    with pytest.raises(ValueError, match=r"^RunOptions.dir: must be a folder \(a str or Path\), "
                                         "got None"):
        fnn.train.RunOptions(None, trackers=["csv"])
    with pytest.raises(TypeError, match="trackers"):   # no longer a keyword of fit
        fit(_net(), LOSS, optax.sgd(0.1), _data(), epochs=1, log=None, trackers=["csv"])


def test_a_tracker_object_gets_the_events():
    class Recorder:
        def __init__(self):
            self.events = []

        def start(self, run_dir, config, summary, resume_from):
            self.events.append(("start", resume_from))

        def scalars(self, step, values):
            self.events.append((step, sorted(values)))

        def flush(self):
            self.events.append("flush")

        def close(self):
            self.events.append("close")

    rec = Recorder()
    events = Trackers([rec], log_every=2)
    events.start(Path("."), None, None, resume_from=None)
    events.epoch(3, {"loss": np.array([1.0, 2.0, 3.0])}, {"epoch": 2, "step": 6, "val_loss": 1.0})
    events.close()
    assert rec.events == [("start", None), (4, ["step/loss"]), (6, ["step/loss"]),
                          (6, ["epoch/val_loss"]), "flush", "close"]
    with pytest.raises(ValueError, match=r"trackers\[0\]: 3 is neither a tracker name"):
        Trackers([3])


def test_a_config_run_and_its_resume_fill_the_same_trackers(tmp_path):
    """``fnn train`` with output.trackers, then ``--resume`` for more epochs: one MLflow run,
    one CSV file, TensorBoard steps once each, all equal to metrics.jsonl."""
    names = _optional()
    xor = Path(__file__).parents[1] / "configs" / "xor.yaml"
    overrides = ["output.plots=false", f"output.trackers={json.dumps(names)}",
                 "output.log_every=1", "output.mlflow.experiment=xor-test"]
    run_dir = tmp_path / "xor"
    fnn.run.train(fnn.config.load_config(xor, ["training.epochs=3", *overrides]), run_dir,
                  log=None)
    first_run = (run_dir / "mlflow.json").read_text() if "mlflow" in names else None
    fnn.run.train(fnn.config.load_config(xor, ["training.epochs=5", *overrides]), run_dir,
                  resume=True, log=None)
    records = _metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]  # one full batch per epoch
    for name, read in _readers(names).items():
        events = read(run_dir)
        for key in ("epoch/train_loss", "epoch/learning_rate", "step/loss"):
            assert [s for s, _ in events[key]] == [1, 2, 3, 4, 5], (name, key)
        np.testing.assert_allclose([v for _, v in events["epoch/train_loss"]],
                                   [r["train_loss"] for r in records], rtol=1e-6)
    if first_run is not None:
        assert (run_dir / "mlflow.json").read_text() == first_run
        _, params = _mlflow(run_dir)
        assert params["name"] == "xor" and params["optimizer.name"] == "momentum"
        from mlflow.tracking import MlflowClient

        saved = json.loads(first_run)
        client = MlflowClient(tracking_uri=saved["tracking_uri"])
        experiment = client.get_run(saved["run_id"]).info.experiment_id
        assert client.get_experiment(experiment).name == "xor-test"


# --------------------------------------------------------------------------- per-step values

def _steps_fit(run_dir, mode, trackers=("csv",), net=None, **kw):
    """One full batch per epoch (64 examples), so each epoch's callback sees each step's params."""
    schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    params = []
    result = fit(net or _net(), LOSS, optax.inject_hyperparams(optax.sgd)(learning_rate=schedule),
                 _data(), _data(32, seed=1), epochs=4, batch_size=64, mode=mode, log=None,
                 run=fnn.train.RunOptions(run_dir, trackers=list(trackers), log_every=1),
                 metrics={"accuracy": fnn.train.correct},
                 callbacks=[lambda r, ts: params.append(ts.params)], **kw)
    return result, params


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a, np.float64))
                           for a in jax.tree_util.tree_leaves(tree)])


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_per_step_learning_rate_and_gradient_norm_match_the_updates(tmp_path, mode):
    """Plain SGD: step k moves the params by lr_k * grad_k, so the gradient norm is
    |p_k - p_(k-1)| / lr_k (a finite difference of the params), and lr_k = 0.1 * 0.5**(k-1)."""
    from fnn.train.state import init_train_state

    net = _net()
    _, start = init_train_state(net, optax.sgd(0.1), (-1, 6),
                                jax.random.fold_in(jax.random.key(0), 0))  # fit's init
    _, params = _steps_fit(tmp_path, mode, net=net)
    events = _csv(tmp_path)
    lrs = 0.1 * 0.5 ** np.arange(4)
    assert [s for s, _ in events["step/learning_rate"]] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in events["step/learning_rate"]], lrs, rtol=1e-6)
    moved = [_flat(b) - _flat(a) for a, b in zip([start.params] + params[:-1], params)]
    np.testing.assert_allclose([v for _, v in events["step/grad_norm"]],
                               [np.linalg.norm(d) / lr for d, lr in zip(moved, lrs)], rtol=1e-4)
    rates = events["step/examples_per_sec"]
    assert [s for s, _ in rates] == [1, 2, 3, 4] and all(v > 0 for _, v in rates)
    if mode == "epoch":  # the epoch's own rate
        np.testing.assert_allclose([v for _, v in rates],
                                   [r["examples_per_sec"] for r in _metrics(tmp_path)], rtol=1e-6)


def test_the_gradient_norm_leaves_frozen_layers_out(tmp_path):
    """An L2 penalty gives the frozen layer a gradient the optimizer never applies: the norm
    is still that of the params' move (frozen params do not move)."""
    net = fnn.freeze(_net(), "dense_0")
    _, params = _steps_fit(tmp_path, "epoch", net=net,
                           regularizer=lambda p: 0.1 * fnn.regularizers.l2(p))
    from fnn.train.state import init_train_state

    _, start = init_train_state(net, optax.sgd(0.1), (-1, 6),
                                jax.random.fold_in(jax.random.key(0), 0))
    lrs = 0.1 * 0.5 ** np.arange(4)
    moved = [_flat(b) - _flat(a) for a, b in zip([start.params] + params[:-1], params)]
    assert np.all(_flat(params[-1]["dense_0"]) == _flat(start.params["dense_0"]))
    np.testing.assert_allclose([v for _, v in _csv(tmp_path)["step/grad_norm"]],
                               [np.linalg.norm(d) / lr for d, lr in zip(moved, lrs)], rtol=1e-4)


def test_step_mode_examples_per_sec_every_log_every_steps(tmp_path):
    _fit(tmp_path, ["csv"], epochs=2, mode="step", log_every=2)
    rates = _csv(tmp_path)["step/examples_per_sec"]
    assert [s for s, _ in rates] == [2, 4, 6, 8] and all(v > 0 for _, v in rates)


@pytest.mark.parametrize("mode", ["epoch", "step"])
def test_per_step_values_change_neither_the_params_nor_metrics_jsonl(tmp_path, mode):
    """The step with trackers computes more; the params it produces are the same, bit for bit,
    and metrics.jsonl keeps its keys (learning_rate from the optimizer state, no grad_norm)."""
    with_events, _ = _steps_fit(tmp_path / "with", mode)
    without, _ = _steps_fit(tmp_path / "without", mode, trackers=())
    for a, b in zip(jax.tree_util.tree_leaves(with_events.train_state.params),
                    jax.tree_util.tree_leaves(without.train_state.params)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    records = [_metrics(tmp_path / "with"), _metrics(tmp_path / "without")]
    assert [sorted(r) for r in records[0]] == [sorted(r) for r in records[1]]
    assert "learning_rate" in records[0][0] and "train_grad_norm" not in records[0][0]


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # tbparse 0.0.9 under pandas 3
def test_tensorboard_gets_each_layers_weights_and_gradients_as_histograms(tmp_path):
    """Read back with tbparse: at every diagnostic step, one histogram per layer of its weights
    (the final params at the last step) and of their gradients (whose norm is the one
    diagnostics.jsonl holds); the csv tracker keeps the norms as scalars only."""
    pytest.importorskip("tensorboardX", reason="the TensorBoard tracker needs fnn[tensorboard]")
    tbparse = pytest.importorskip("tbparse", reason="reading histograms back needs tbparse")
    result = _fit(tmp_path, ["tensorboard", "csv"], epochs=2, mode="step", diagnostics=2)
    frame = tbparse.SummaryReader(str(tmp_path / "tensorboard"),
                                  extra_columns={"min", "max", "num", "sum_squares"}).histograms
    diag = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    params = result.train_state.params
    for layer in ("dense_0", "dense_1"):
        weights = frame[frame.tag == f"weight/{layer}"]
        grads = frame[frame.tag == f"grad/{layer}"]
        assert list(weights.step) == list(grads.step) == [2, 4, 6, 8]
        last = weights[weights.step == 8].iloc[0]
        w = np.asarray(params[layer]["w"])
        assert (last["num"], last["min"], last["max"]) == (w.size, w.min(), w.max())
        assert sum(last["counts"]) == w.size
        norms = [l["grad_norm"] for r in diag for l in r["layers"] if l["layer"] == layer]
        np.testing.assert_allclose(np.sqrt(grads["sum_squares"].to_numpy()), norms, rtol=1e-5)
    assert not any(name.startswith(("weight/", "grad/")) for name in _csv(tmp_path))
