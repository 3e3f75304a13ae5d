"""Several processes: two CPU processes on loopback train like one process on the same batches.

The two processes are this file run as a script (``jax.distributed`` over 127.0.0.1, CPU
collectives by gloo); each calls :func:`fnn.train.parallel.initialize`, feeds only its half of every
global batch, and saves its final params. The pytest process trains the same runs on one
device and compares; only process 0 may write the run folder or log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import chex
import jax
import numpy as np
import optax

import fnn
from fnn.losses import softmax_cross_entropy
from fnn.train import correct, fit

PROCESSES = 2
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
        result = _fit(name, parallel, run_dir=out / f"{name}_run_{process_id}",
                      log=lambda line: print(f"LOG {line}", flush=True))
        fnn.save_weights(out / f"{name}_{process_id}.safetensors", result.train_state.params)
        if process_id == 0:
            (out / f"{name}_val_loss.txt").write_text(repr(result.history[-1]["val_loss"]))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    sys.exit(0)


# --------------------------------------------------------------------------- the test

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_end_with_the_params_of_one(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path), str(port), str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=Path(__file__).resolve().parents[1])
             for i in range(PROCESSES)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, text) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{text[-5000:]}"

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
