"""A run stopped inside an epoch on one device resumes on four (issue 21): a step checkpoint
holds one whole copy of the train state and the position in the epoch, so ``pmap`` and
``mesh`` over 4 simulated devices continue at the next step and end with the params of an
uninterrupted one-device run, to float tolerance.

The 4-device runs need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX
starts, so they run in a subprocess: this file, run as a script, is that worker. The pytest
process (one device) trains the uninterrupted run with step checkpoints; its checkpoint of
step 6 (2 steps into epoch 2 of 3) becomes ``latest`` of the folders the worker resumes.

Tolerance: ``rtol=1e-5, atol=1e-6``. Four devices sum each batch's gradient in another order
(per-device partial sums, then an all-reduce) than one device, so the params differ by float32
rounding (about 1e-7 relative per step) that Adam carries over the 6 resumed steps; a resume
at a wrong step or with a wrong data order differs by far more (one step of this run moves
the params by up to 1e-2, 10^4 times the tolerance).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import optax

import fnn
from fnn.losses import softmax_cross_entropy

DEVICES = 4
BATCH = 16  # 4 examples per device; 64 examples: 4 steps an epoch, 12 in 3 epochs
EPOCHS = 3
CUT = 6  # the step checkpoint resumed from: 2 steps into epoch 2
RTOL, ATOL = 1e-5, 1e-6
RESUMES = {"mesh": "step", "pmap": "epoch"}  # parallel mode: fit mode of the resumed run


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    return {"x": x, "y": (x[:, 0] + x[:, 1] > 0).astype(np.int32) + (x[:, 2] > 1)}


def _fit(run, parallel=None, mode="step"):
    net = fnn.serial(fnn.Dense(16), fnn.Tanh, fnn.Dense(16), fnn.Tanh, fnn.Dense(3))
    return fnn.train.fit(net, softmax_cross_entropy, optax.adam(1e-2), _data(), epochs=EPOCHS,
                         batch_size=BATCH, seed=3, mode=mode, parallel=parallel, run=run,
                         log=None)


def _flat(params) -> np.ndarray:
    return np.asarray(jax.flatten_util.ravel_pytree(jax.device_get(params))[0])


def _worker(out: Path) -> None:
    assert jax.device_count() == DEVICES, jax.devices()
    report = {}
    for parallel, mode in RESUMES.items():
        result = _fit(fnn.train.RunOptions(out / parallel, resume=True), parallel, mode)
        report[parallel] = {"step": int(result.train_state.step),
                            "params": _flat(result.train_state.params).tolist(),
                            "losses": [r["train_loss"] for r in result.history]}
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    sys.exit(0)


def test_a_one_device_step_checkpoint_resumes_on_four_devices(tmp_path):
    full = _fit(fnn.train.RunOptions(tmp_path / "one", checkpoint=fnn.train.Checkpointing(
        every_steps=2, keep=10)))
    cut = tmp_path / "one" / "checkpoints" / f"step-{CUT}.safetensors"
    assert fnn.train.read_metadata(cut)["progress"]["offset"] == CUT % (64 // BATCH)
    for parallel in RESUMES:
        (tmp_path / parallel / "checkpoints").mkdir(parents=True)
        shutil.copy(cut, tmp_path / parallel / "checkpoints" / "latest.safetensors")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(root),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    want = _flat(full.train_state.params)
    for parallel in RESUMES:
        got = report[parallel]
        assert got["step"] == EPOCHS * 64 // BATCH, parallel
        np.testing.assert_allclose(got["params"], want, rtol=RTOL, atol=ATOL, err_msg=parallel)
        np.testing.assert_allclose(got["losses"], [r["train_loss"] for r in full.history],
                                   rtol=RTOL, err_msg=parallel)
