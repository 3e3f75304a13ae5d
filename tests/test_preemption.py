"""Preemption (issue 21): a run stopped by SIGTERM, by two signals or by SIGKILL, in a child
process, resumes to the same final train state, bit for bit, as a run never stopped; no file
is torn. The children are tiny (8 steps an epoch of a 6-8-3 net)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fnn
from fnn import logs
from fnn.train import Checkpointing, RunOptions, fit
from fnn.train import checkpoint as ckpt
from fnn.train.checkpointing import PREEMPTED_STATUS

ROOT = Path(__file__).parents[1]

CHILD = textwrap.dedent('''
    import os, signal, sys, threading
    import numpy as np, optax
    import fnn
    from fnn.train import Checkpointing, Preempted, RunOptions, checkpointing, fit

    mode, run_dir, epochs, signal_at, signals = (sys.argv[1], sys.argv[2], int(sys.argv[3]),
                                                 int(sys.argv[4]), int(sys.argv[5]))
    original, calls = checkpointing.BackgroundWriter.write, [0]

    def write(self, *args, **kwargs):   # SIGTERM to itself at a known step checkpoint
        calls[0] += 1
        if calls[0] == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if signals == 2 and calls[0] == signal_at + 1:   # the second one while latest is written
            threading.Timer(0.001, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return original(self, *args, **kwargs)

    checkpointing.BackgroundWriter.write = write
    {setup}
    try:
        fit(net(), fnn.losses.softmax_cross_entropy, optax.adam(1e-2), data(), epochs=epochs,
            batch_size=8, mode=mode, seed=3, log=None,
            run=RunOptions(run_dir, checkpoint=Checkpointing(every_steps=2)))
    except Preempted as e:
        print(e)
        sys.exit({status})
''')

SETUP = '''
def data():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(64, 6)).astype(np.float32),
            "y": rng.integers(0, 3, 64).astype(np.int32)}

def net():
    return fnn.serial(fnn.Dense(8), fnn.Tanh, fnn.Dropout(0.2), fnn.Dense(3))
'''
exec(SETUP)  # the same data and net here as in the child


def _child(tmp_path, *args, wait=True):
    script = tmp_path / "child.py"
    script.write_text(CHILD.replace("{setup}", textwrap.indent(SETUP, "").strip())
                      .replace("{status}", str(PREEMPTED_STATUS)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, str(script), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _reference(mode, epochs):
    return fit(net(), fnn.losses.softmax_cross_entropy, optax.adam(1e-2), data(), epochs=epochs,
               batch_size=8, mode=mode, seed=3, log=None).train_state


def _resume(run_dir, mode, epochs):
    return fit(net(), fnn.losses.softmax_cross_entropy, optax.adam(1e-2), data(), epochs=epochs,
               batch_size=8, mode=mode, seed=3, log=None,
               run=RunOptions(run_dir, resume=True, checkpoint=Checkpointing(every_steps=2))
               ).train_state


def _assert_same(a, b):
    a, b = (t._replace(rng=jax.random.key_data(t.rng)) for t in (a, b))
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.array_equal(np.asarray(u), np.asarray(v))


def _assert_nothing_torn(run_dir):
    for path in (run_dir / "checkpoints").glob("*.safetensors"):
        ckpt.read_checkpoint(path)  # every checksum checked
    logs.check_logs(run_dir)


@pytest.mark.parametrize("mode", ["step", pytest.param("epoch", marks=pytest.mark.slow)])
def test_sigterm_stops_after_the_step_and_resumes_bit_identically(tmp_path, mode):
    run_dir = tmp_path / "run"
    # step mode: SIGTERM at the 3rd step checkpoint (step 6), stops after step 7; epoch mode
    # (scans of 2 steps): at the 2nd (step 4), stops after the next chunk (step 6)
    at, stopped = (3, 7) if mode == "step" else (2, 6)
    done = _child(tmp_path, mode, run_dir, 3, at, 1)
    assert done.returncode == PREEMPTED_STATUS, done.stderr
    assert f"stopped by SIGTERM at step {stopped}" in done.stdout
    meta = ckpt.read_metadata(run_dir / "checkpoints" / "latest.safetensors")["progress"]
    assert meta["offset"] == stopped % 8
    _assert_nothing_torn(run_dir)
    _assert_same(_resume(run_dir, mode, 3), _reference(mode, 3))


@pytest.mark.slow
def test_a_second_signal_stops_at_once_and_damages_nothing(tmp_path):
    run_dir = tmp_path / "run"
    done = _child(tmp_path, "step", run_dir, 3, 3, 2)
    assert done.returncode == -signal.SIGTERM, done.stderr
    _assert_nothing_torn(run_dir)
    _assert_same(_resume(run_dir, "step", 3), _reference("step", 3))


@pytest.mark.slow
def test_sigkill_with_writes_in_flight_resumes_bit_identically(tmp_path):
    run_dir = tmp_path / "run"
    child = _child(tmp_path, "step", run_dir, 40, 0, 0, wait=False)  # 320 steps
    try:
        for _ in range(6000):  # until the first step checkpoints are there (not a timing test)
            if len(list((run_dir / "checkpoints").glob("step-*.safetensors"))) or \
                    child.poll() is not None:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=600)
    _assert_nothing_torn(run_dir)
    _assert_same(_resume(run_dir, "step", 40), _reference("step", 40))


@pytest.mark.slow
def test_fnn_train_says_how_to_resume_and_exits_75(tmp_path):
    out = tmp_path / "xor"
    command = [sys.executable, "-m", "fnn.cli", "train", str(ROOT / "configs" / "xor.yaml"),
               "output.plots=false", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        for _ in range(6000):  # until some epochs are done (1,000 one-step epochs)
            if (out / "metrics.jsonl").exists() and \
                    len((out / "metrics.jsonl").read_text().splitlines()) >= 5:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=600)
    finally:
        child.kill()
    if child.returncode == 0:
        pytest.skip("the run ended before the signal came")
    assert child.returncode == PREEMPTED_STATUS, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("fnn train: stopped by SIGTERM at the end of epoch ")
    assert line.endswith(f"continue with: fnn train {ROOT / 'configs' / 'xor.yaml'} "
                         f"output.plots=false --out {out} --resume")
    _assert_nothing_torn(out)
