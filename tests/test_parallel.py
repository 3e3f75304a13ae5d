"""fnn.train.parallel: pmap and mesh data parallelism on 8 simulated CPU devices equal one device.

The 8-device runs need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX
starts, so they run in a subprocess: this file, run as a script, is that worker. The pytest
process (one device) computes the reference run, then compares the worker's losses, params and
batch-norm statistics with it, and resumes the worker's 8-device checkpoint on one device.

The worker also runs 128 steps back to back (results read only at the end): more than the 32
computations XLA lets a CPU device have in flight, which without ``DataParallel`` waiting for
each call deadlocks XLA's CPU client and aborts the process (issue 12,
``scripts/repro_cpu_allreduce.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import optax
import pytest

import fnn
from fnn.config import load_config
from fnn.losses import softmax_cross_entropy
from fnn.train.parallel import DataParallel, initialize, with_batch_norm_axis
from fnn.train import checkpoint as ckpt
from fnn.train import correct, fit, init_train_state, train_step_fn

DEVICES = 8
BATCH = 16  # global batch: 2 examples per device
EPOCHS = 5  # 64 examples / 16 = 4 steps per epoch: 20 steps
LONG_STEPS = 128  # >> 32, XLA's limit of computations in flight per CPU device
RTOL, ATOL = 1e-5, 1e-6


CONFIG = {  # a config-file run in mesh mode (the test set is evaluated by process 0)
    "name": "circles_mesh", "seed": 0,
    "model": [{"Dense": 8}, "BatchNorm", "Relu", {"Dense": 2}],
    "data": {"name": "circles", "options": {"n": 96, "n_test": 40}, "validation": 32},
    "training": {"epochs": 2, "batch_size": 16},
    "parallel": {"mode": "mesh"},
    "output": {"plots": False, "progress": False},
}


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=80).astype(np.int32)
    return {"x": x[:64], "y": y[:64]}, {"x": x[64:], "y": y[64:]}


def _net():
    # No conv bias before batch norm: its gradient is zero up to rounding, which Adam would
    # blow up into steps of size lr, different on every device count.
    return fnn.serial(fnn.Conv2D(4, 3, use_bias=False), fnn.BatchNorm(), fnn.Relu,
                      fnn.MaxPool2D(2), fnn.Flatten(), fnn.Dense(10))


def _fit(parallel, *, epochs=EPOCHS, val=True, **kw):
    train, val_data = _data()
    return fit(_net(), softmax_cross_entropy, optax.adam(1e-2), train,
               val_data if val else None, epochs=epochs, batch_size=BATCH, seed=0,
               metrics={"accuracy": correct}, log=None, parallel=parallel, **kw)


def _dropout_fit(parallel):
    train, _ = _data()
    net = fnn.serial(fnn.Flatten(), fnn.Dense(16), fnn.Relu, fnn.Dropout(0.3), fnn.Dense(10))
    return fit(net, softmax_cross_entropy, optax.sgd(0.1), train, epochs=2, batch_size=BATCH,
               mode="step", log=None, parallel=parallel)


def _step_batches(steps: int = 4 * EPOCHS):
    train, _ = _data()
    rng = np.random.default_rng(1)
    for _ in range(steps):
        idx = rng.choice(len(train["x"]), BATCH, replace=False)
        yield {k: v[idx] for k, v in train.items()}


def _steps(dp: DataParallel, steps: int = 4 * EPOCHS):
    """Losses of ``steps`` steps on fixed global batches and the final state, one copy.

    The batches are put on the devices first, then the steps are dispatched back to back and
    the losses read only after the last one: the host runs ahead of the devices.
    """
    train, _ = _data()
    _, ts = init_train_state(_net(), optax.adam(1e-2), (-1, *train["x"].shape[1:]),
                             jax.random.key(0))
    step = dp.compile_step(train_step_fn(dp.prepare_net(_net()), softmax_cross_entropy,
                                         optax.adam(1e-2), axis_name=dp.axis_name))
    ts = dp.replicate(ts)
    metrics = []
    for batch in [dp.put_batch(b) for b in _step_batches(steps)]:
        ts, m = step(ts, batch)
        metrics.append(m)
    return [float(m["loss"]) for m in metrics], dp.unreplicate(ts)


def _returns_computed_results(dp: DataParallel) -> bool:
    """Whether one compiled step returns arrays that are already computed."""
    train, _ = _data()
    _, ts = init_train_state(_net(), optax.adam(1e-2), (-1, *train["x"].shape[1:]),
                             jax.random.key(0))
    step = dp.compile_step(train_step_fn(dp.prepare_net(_net()), softmax_cross_entropy,
                                         optax.adam(1e-2), axis_name=dp.axis_name))
    ts, metrics = step(dp.replicate(ts), dp.put_batch(next(_step_batches(1))))
    return all(leaf.is_ready() for leaf in jax.tree_util.tree_leaves((ts.params, metrics)))


def _save(path, ts):
    ckpt.save_weights(path, ts.params, ts.model_state)


def _history(result):
    keys = ("epoch", "step", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
    return [{k: r[k] for k in keys if k in r} for r in result.history]


# --------------------------------------------------------------------------- the 8-device worker

def _worker(out: Path) -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    report: dict = {}
    for mode in ("pmap", "mesh"):  # 20 steps on fixed batches, step by step
        losses, ts = _steps(DataParallel(mode))
        report[f"steps_{mode}"] = losses
        _save(out / f"steps_{mode}.safetensors", ts)

    for mode in ("pmap", "mesh"):  # more steps back to back than a CPU device has in flight
        dp = DataParallel(mode)
        report[f"waits_{mode}"] = [dp.waits_for_each_call, _returns_computed_results(dp)]
        losses, ts = _steps(dp, LONG_STEPS)
        report[f"long_{mode}"] = losses
        _save(out / f"long_{mode}.safetensors", ts)

    pmap8 = _fit("pmap", epochs=3, run=out / "pmap8")  # epoch mode; resumed on 1 later
    report["fit_pmap_epoch"] = _history(pmap8)
    _save(out / "fit_pmap_epoch.safetensors", pmap8.train_state)

    resumed = out / "resumed8"  # a 1-device checkpoint of epoch 2, continued on 8 in mesh mode
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "one_epoch2.safetensors", resumed / "checkpoints" / "latest.safetensors")
    mesh8 = _fit("mesh", mode="step", run=fnn.train.RunOptions(resumed, resume=True))
    report["fit_mesh_step_resumed"] = _history(mesh8)
    _save(out / "fit_mesh_step_resumed.safetensors", mesh8.train_state)

    for parallel, mode in (("mesh", "epoch"), ("pmap", "step")):
        result = _fit(parallel, mode=mode, val=False)
        report[f"fit_{parallel}_{mode}"] = _history(result)
        _save(out / f"fit_{parallel}_{mode}.safetensors", result.train_state)

    _save(out / "dropout_mesh.safetensors", _dropout_fit("mesh").train_state)

    train, _ = _data()
    try:
        fit(_net(), softmax_cross_entropy, optax.sgd(0.1), train, epochs=1, batch_size=12,
            parallel="pmap", log=None)
    except ValueError as e:
        report["bad_batch"] = str(e)

    from fnn.config import ConfigError, parse_config
    from fnn.run import data_parallel, train as train_run

    cfg = parse_config(CONFIG, ["parallel.devices=4", f"output.dir={out / 'config_run'}"])
    report["config_run"] = str(train_run(cfg, log=None))
    try:
        data_parallel(parse_config(CONFIG, ["training.batch_size=20"]))
    except ConfigError as e:
        report["config_bad_batch"] = [e.path, e.detail]
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    sys.exit(0)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The one-device reference (in this process) and the 8-device worker's report."""
    out = tmp_path_factory.mktemp("parallel")

    def keep_epoch2(record, ts):
        if record["epoch"] == 2:
            shutil.copy(out / "one" / "checkpoints" / "latest.safetensors",
                        out / "one_epoch2.safetensors")

    one = _fit(None, run=out / "one", callbacks=[keep_epoch2])
    one_steps, one_steps_ts = _steps(DataParallel(None))
    one_long, one_long_ts = _steps(DataParallel(None), LONG_STEPS)
    # a deadlock aborts the worker after 30 s instead of XLA's default 40 s
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES} "
                        "--xla_cpu_collective_call_terminate_timeout_seconds=30"}
    proc = subprocess.run([sys.executable, __file__, str(out)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    report = json.loads((out / "report.json").read_text())
    return {"out": out, "one": one, "one_steps": one_steps, "one_steps_ts": one_steps_ts,
            "one_long": one_long, "one_long_ts": one_long_ts, "report": report}


def _assert_same_state(path, ts):
    params, state = fnn.load_weights(path)
    chex.assert_trees_all_close(params, jax.device_get(ts.params), rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(state, jax.device_get(ts.model_state), rtol=RTOL, atol=ATOL)


def _assert_same_history(got, want):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        for key in w:
            if key in g and key not in ("epoch", "step"):
                np.testing.assert_allclose(g[key], w[key], rtol=RTOL, atol=ATOL, err_msg=key)


# --------------------------------------------------------------------------- 8 devices == 1

@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_twenty_steps_give_the_losses_and_params_of_one_device(runs, mode):
    np.testing.assert_allclose(runs["report"][f"steps_{mode}"], runs["one_steps"], rtol=RTOL)
    _assert_same_state(runs["out"] / f"steps_{mode}.safetensors", runs["one_steps_ts"])


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_steps_dispatched_back_to_back_on_cpu_devices_finish_with_the_losses_of_one_device(
        runs, mode):
    # 128 steps of a CNN with batch norm without reading a result in between: the worker would
    # abort in XLA's all-reduce if the compiled step did not wait for each call (issue 12)
    assert runs["report"][f"waits_{mode}"] == [True, True]  # and returns computed arrays
    np.testing.assert_allclose(runs["report"][f"long_{mode}"], runs["one_long"], rtol=RTOL)
    _assert_same_state(runs["out"] / f"long_{mode}.safetensors", runs["one_long_ts"])


@pytest.mark.parametrize("parallel,mode", [("pmap", "epoch"), ("mesh", "epoch"),
                                           ("pmap", "step")])
def test_fit_on_eight_devices_equals_one_device(runs, parallel, mode):
    got = runs["report"][f"fit_{parallel}_{mode}"]
    want = _history(runs["one"])[:len(got)]
    _assert_same_history(got, want)
    if len(got) == EPOCHS:
        _assert_same_state(runs["out"] / f"fit_{parallel}_{mode}.safetensors",
                           runs["one"].train_state)


def test_mesh_mode_draws_the_dropout_masks_of_one_device(runs):
    # JAX's partitionable threefry: random bits of a sharded array do not depend on the sharding
    _assert_same_state(runs["out"] / "dropout_mesh.safetensors", _dropout_fit(None).train_state)


def test_one_device_checkpoint_resumes_on_eight_devices(runs):
    got = runs["report"]["fit_mesh_step_resumed"]
    _assert_same_history(got, _history(runs["one"]))  # epochs 1-2 from the checkpoint
    _assert_same_state(runs["out"] / "fit_mesh_step_resumed.safetensors",
                       runs["one"].train_state)


def test_eight_device_checkpoint_resumes_on_one_device(runs):
    run_dir = runs["out"] / "pmap8"
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "latest.safetensors")
    assert meta["progress"]["epoch"] == 2  # three epochs done on 8 devices
    arrays = ckpt.load_tree(run_dir / "checkpoints" / "latest.safetensors")
    assert arrays["params/dense_0/w"].shape == (64, 10)  # one copy, no device axis
    resumed = _fit(None, run=fnn.train.RunOptions(run_dir, resume=True))
    _assert_same_history(_history(resumed), _history(runs["one"]))
    chex.assert_trees_all_close(resumed.train_state.params, runs["one"].train_state.params,
                                rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(resumed.train_state.opt_state, runs["one"].train_state.opt_state,
                                rtol=RTOL, atol=ATOL)


def test_batch_that_does_not_split_over_the_devices_is_refused(runs):
    message = runs["report"]["bad_batch"]
    assert message == ("batch_size: 12 does not split evenly over 8 devices in pmap mode; "
                       "use a multiple of 8, e.g. 8 or 16")


def test_a_config_run_in_mesh_mode_writes_its_run_folder(runs):
    run_dir = Path(runs["report"]["config_run"])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((run_dir / "test.json").read_text())["examples"] == 40
    saved = load_config(run_dir / "config.yaml")["parallel"]
    assert (saved["mode"], saved["devices"]) == ("mesh", 4)


def test_config_batch_size_that_does_not_split_names_the_key(runs):
    path, detail = runs["report"]["config_bad_batch"]
    assert path == "training.batch_size"
    assert detail.startswith("20 does not split evenly over 8 devices in mesh mode")


# --------------------------------------------------------------------------- in this process

def test_batch_norm_gets_the_axis_name_and_keeps_its_params():
    net = fnn.serial(fnn.Dense(4), fnn.residual(fnn.BatchNorm(), fnn.Relu),
                     fnn.BatchNorm(name="bn"), fnn.Dense(2))
    synced = with_batch_norm_axis(net, "batch")
    spec = json.dumps(synced.spec)
    assert spec.count('"axis_name": "batch"') == 2
    assert "axis_name" not in json.dumps(net.spec)  # the original is left alone
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    _, params2, state2 = synced.init(jax.random.key(0), (-1, 3))
    chex.assert_trees_all_equal(params, params2)
    chex.assert_trees_all_equal(state, state2)
    assert with_batch_norm_axis(synced, None).spec == net.spec
    plain = fnn.serial(fnn.Dense(4), fnn.Relu)
    assert with_batch_norm_axis(plain, "batch") is plain


def test_synced_batch_norm_under_vmap_uses_the_whole_batch():
    # The same rebuilt layer under a mapped axis: statistics of all 6 rows, from NumPy.
    x = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    bn = with_batch_norm_axis(fnn.serial(fnn.BatchNorm()), "batch")
    _, params, state = bn.init(jax.random.key(0), (-1, 4))
    y, _ = jax.vmap(lambda xs: bn.apply(params, state, xs, train=True), axis_name="batch")(x)
    flat = x.reshape(6, 4).astype(np.float64)
    want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(6, 4), want, rtol=1e-4, atol=1e-5)


def test_modes_run_on_a_single_device_and_bad_settings_are_named():
    for mode in ("pmap", "mesh"):
        dp = DataParallel(mode)
        assert dp.num_devices == jax.local_device_count() and dp.check_batch_size(5) == 5
    assert DataParallel("pmap").axis_name == "batch" and DataParallel("mesh").axis_name is None
    assert not DataParallel("mesh", devices=1).waits_for_each_call  # one device: asynchronous
    with pytest.raises(ValueError, match="parallel.mode: must be one of none, pmap, mesh"):
        DataParallel("pmpa")
    with pytest.raises(ValueError, match="parallel.devices: 99 devices"):
        DataParallel("mesh", devices=99)


def test_initialize_is_a_no_op_for_one_process(monkeypatch):
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(var, raising=False)
    assert initialize() is False
    assert initialize(num_processes=1) is False
    with pytest.raises(ValueError, match="parallel.coordinator_address: not set"):
        initialize(num_processes=2, process_id=0)
    with pytest.raises(ValueError, match=r"parallel.process_id: must be an int in \[0, 2\)"):
        initialize("127.0.0.1:1", num_processes=2, process_id=2)
