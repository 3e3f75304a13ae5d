"""Several processes: two CPU processes on loopback train like one process on the same batches.

The two processes are this file run as a script (``jax.distributed`` over 127.0.0.1, CPU
collectives by gloo); each calls :func:`fnn.train.parallel.initialize`, feeds only its half of every
global batch, and saves its final params. The pytest process trains the same runs on one
device and compares; only process 0 may write the run folder or log.

The ``slow`` test runs the CLI: two processes of 4 simulated devices each train a CNN with
batch norm and dropout in ``fsdp`` mode, are killed mid-run, resume from the checkpoint
(gathered to process 0), and end with the params of one process on one device.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import optax
import pytest

import fnn
from fnn.losses import softmax_cross_entropy
from fnn.train import RunOptions, correct, fit

PROCESSES = 2
DIAGNOSTICS_EVERY = 4
RTOL, ATOL = 1e-5, 1e-6
RUNS = {  # name: (parallel, fit mode, epochs); 512 examples / batch 32 = 16 steps an epoch
    "mesh_epoch": ("mesh", "epoch", 13),  # 208 steps
    "pmap_step": ("pmap", "step", 5),  # 80 steps, batches prefetched per process
}


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(560, 5)).astype(np.float32)
    y = (x @ rng.normal(size=(5, 3))).argmax(-1).astype(np.int32)
    return {"x": x[:512], "y": y[:512]}, {"x": x[512:], "y": y[512:]}


def _fit(name: str, parallel, **kw):
    _, mode, epochs = RUNS[name]
    train, val = _data()
    net = fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.Dense(3))
    return fit(net, softmax_cross_entropy, optax.adam(3e-3), train, val, epochs=epochs,
               batch_size=32, seed=0, metrics={"accuracy": correct}, mode=mode,
               parallel=parallel, **kw)


# --------------------------------------------------------------------------- one process of two

def _worker(out: Path, port: int, process_id: int) -> None:
    from fnn.train.parallel import initialize

    assert initialize(f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=process_id)
    assert jax.process_count() == PROCESSES and jax.device_count() == PROCESSES
    for name, (parallel, _, _) in RUNS.items():
        result = _fit(name, parallel, run=out / f"{name}_run_{process_id}",
                      log=lambda line: print(f"LOG {line}", flush=True))
        fnn.save_weights(out / f"{name}_{process_id}.safetensors", result.train_state.params)
        if process_id == 0:
            (out / f"{name}_val_loss.txt").write_text(repr(result.history[-1]["val_loss"]))


def _diagnostics_fit(parallel, run_dir: Path, log=None):
    """fsdp with gradient-flow diagnostics every 4 of 16 steps; Dense(256)'s (5, 256) kernel
    is sharded, so gathering the state for a record is a collective of every process."""
    train, _ = _data()
    net = fnn.serial(fnn.Dense(256), fnn.Tanh, fnn.Dense(3))
    return fit(net, softmax_cross_entropy, optax.adam(3e-3), train, epochs=1, batch_size=32,
               seed=0, mode="step", parallel=parallel,
               run=RunOptions(run_dir, diagnostics=DIAGNOSTICS_EVERY), progress=False, log=log)


def _diagnostics_worker(out: Path, port: int, process_id: int) -> None:
    from fnn.train.parallel import initialize

    assert initialize(f"127.0.0.1:{port}", num_processes=PROCESSES, process_id=process_id)
    _diagnostics_fit("fsdp", out / f"diag_run_{process_id}")


if __name__ == "__main__":
    work = _diagnostics_worker if sys.argv[4:] == ["diagnostics"] else _worker
    work(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    sys.exit(0)


# --------------------------------------------------------------------------- the test

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_processes(tmp_path: Path, *args: str, timeout: float = 240) -> list[str]:
    """This file as ``PROCESSES`` worker processes on loopback; their outputs, once all
    exited 0."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path), str(port), str(i),
                               *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=Path(__file__).resolve().parents[1])
             for i in range(PROCESSES)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{text[-5000:]}"
    return outputs


def test_two_processes_end_with_the_params_of_one(tmp_path):
    outputs = _run_processes(tmp_path)

    for name in RUNS:
        one = _fit(name, None, log=None)
        want = jax.device_get(one.train_state.params)
        for i in range(PROCESSES):
            got, _ = fnn.load_weights(tmp_path / f"{name}_{i}.safetensors")
            chex.assert_trees_all_close(got, want, rtol=RTOL, atol=ATOL)
        val_loss = float((tmp_path / f"{name}_val_loss.txt").read_text())
        np.testing.assert_allclose(val_loss, one.history[-1]["val_loss"], rtol=RTOL)
        # process 0 alone writes the run folder and logs
        assert (tmp_path / f"{name}_run_0" / "checkpoints" / "latest.safetensors").exists()
        assert (tmp_path / f"{name}_run_0" / "metrics.jsonl").exists()
        assert not (tmp_path / f"{name}_run_1").exists()
    assert "LOG epoch 13/13" in outputs[0] and "LOG epoch 5/5" in outputs[0]
    assert "LOG " not in outputs[1]


def test_diagnostics_with_two_fsdp_processes_record_what_one_process_does(tmp_path):
    # every process takes part in gathering the sharded state; process 0 alone writes
    _run_processes(tmp_path, "diagnostics", timeout=120)
    one = tmp_path / "one"
    _diagnostics_fit(None, one)

    def records(run):
        return [json.loads(line) for line in (run / "diagnostics.jsonl").read_text().splitlines()]

    got, want = records(tmp_path / "diag_run_0"), records(one)
    assert [r["step"] for r in got] == [4, 8, 12, 16] == [r["step"] for r in want]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=RTOL)
    np.testing.assert_allclose([r["grad_norm_by_depth"] for r in got],
                               [r["grad_norm_by_depth"] for r in want], rtol=1e-4)
    assert not (tmp_path / "diag_run_1").exists()


# --------------------------------------------------------------------------- fsdp, killed, resumed

CNN_EPOCHS = 6


def _cnn_config(data_path: Path, mode: str) -> dict:
    return {
        "name": "cnn_fsdp", "seed": 0,
        "model": [{"Conv2D": {"features": 4, "kernel_size": 3, "use_bias": False}}, "BatchNorm",
                  "Relu", {"MaxPool2D": 2}, "Flatten", {"Dense": 32}, "Relu",
                  {"Dropout": 0.3}, {"Dense": 10}],
        "optimizer": {"name": "sgd", "learning_rate": 0.05},
        "data": {"name": "arrays", "path": str(data_path), "validation": 32},
        "training": {"epochs": CNN_EPOCHS, "batch_size": 16, "mode": "step"},
        "parallel": {"mode": mode},
        "output": {"plots": False, "progress": False},
    }


def _launch(config: Path, out: Path, port: int, resume: bool) -> list[subprocess.Popen]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(PROCESSES))
    return [subprocess.Popen([sys.executable, "-m", "fnn.cli", "train", str(config), "--out",
                              str(out), *(["--resume"] if resume else [])],
                             env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             cwd=Path(__file__).resolve().parents[1])
            for i in range(PROCESSES)]


def _epochs_done(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


@pytest.mark.slow
def test_two_fsdp_processes_killed_and_resumed_from_the_cli_end_like_one(tmp_path):
    import signal
    import time

    import yaml

    from fnn.config import parse_config
    from fnn.run import train as train_run

    rng = np.random.default_rng(0)
    data = tmp_path / "images.npz"
    np.savez(data, x=rng.random((288, 8, 8, 1)).astype(np.float32),
             y=rng.integers(0, 10, size=288).astype(np.int32))
    config = tmp_path / "cnn_fsdp.yaml"
    config.write_text(yaml.safe_dump(_cnn_config(data, "fsdp")))
    out = tmp_path / "two"

    procs = _launch(config, out, _free_port(), resume=False)  # 2 processes x 4 devices
    deadline = time.monotonic() + 600
    while _epochs_done(out) < 2 and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
    first = [p.communicate()[0] for p in procs]
    killed_at = _epochs_done(out)
    assert 2 <= killed_at < CNN_EPOCHS, (f"not killed mid-run ({killed_at} epochs):\n"
                                         f"{first[0][-3000:]}")

    procs = _launch(config, out, _free_port(), resume=True)
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for i, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{text[-5000:]}"
    assert "resumed from" in outputs[0] and "fsdp" in outputs[0]
    assert _epochs_done(out) == CNN_EPOCHS

    one = train_run(parse_config(_cnn_config(data, "none"), [f"output.dir={tmp_path / 'one'}"]),
                    log=None)
    got, got_state = fnn.load_weights(out / "checkpoints" / "latest.safetensors")
    want, want_state = fnn.load_weights(Path(one) / "checkpoints" / "latest.safetensors")
    chex.assert_trees_all_close((got, got_state), (want, want_state), rtol=1e-4, atol=1e-5)
