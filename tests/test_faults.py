"""Fault injection through the real ``fnn`` command: ``kill -9`` at random moments, a full disk.

After every kill each checkpoint left in the folder loads, and ``--resume`` (as often as it
takes) ends with exactly the tensors of a run that was never stopped, with no temporary file
left behind. The quick test kills twice; the slow one twelve times. A disk that fills up during
a write names the file, leaves the earlier checkpoints intact, and the run resumes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fnn.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
RUN = ["configs/xor.yaml", "data.name=spirals", "data.validation=0.2",
       "model.0.Dense.features=16", "model.2.Dense=1", "training.batch_size=16",
       "training.mode=step", "output.plots=false", "output.progress=false"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cmd(out: Path, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fnn.cli", "train", *RUN, f"training.epochs={epochs}",
            "--out", str(out), *extra]


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return ckpt.load_tree(path)


def _check_every_checkpoint_loads(run: Path) -> None:
    for path in sorted((run / "checkpoints").glob("*.safetensors")):
        ckpt.read_metadata(path)
        assert _tensors(path), path


def _killed_run(cmd: list[str], latest: Path, delay: float) -> bool:
    """Start ``cmd``, SIGKILL it ``delay`` s after a checkpoint exists; True if it was cut."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not latest.exists():
        time.sleep(0.01)
    time.sleep(delay)
    cut = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert cut or proc.returncode == 0, err.decode()
    return cut


def _kill_and_resume(tmp_path: Path, kills: int, epochs: int, seed: int) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd(full, epochs), cwd=ROOT, env=ENV, check=True, capture_output=True)
    latest = cut / "checkpoints" / "latest.safetensors"
    rng = random.Random(seed)
    interrupted = 0
    for i in range(kills):
        extra = ["--resume"] if i else []
        interrupted += _killed_run(_cmd(cut, epochs, *extra), latest, rng.uniform(0.0, 0.4))
        _check_every_checkpoint_loads(cut)
    assert interrupted, "every run finished before it could be killed"
    done = subprocess.run(_cmd(cut, epochs, "--resume"), cwd=ROOT, env=ENV, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    for name in ("latest", "best"):
        want = _tensors(full / "checkpoints" / f"{name}.safetensors")
        got = _tensors(cut / "checkpoints" / f"{name}.safetensors")
        assert sorted(want) == sorted(got)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")
    epochs_logged = [json.loads(line)["epoch"]
                     for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert epochs_logged == list(range(1, epochs + 1))
    assert not list(cut.rglob("*.tmp")), list(cut.rglob("*.tmp"))


def test_kill_9_twice_then_resume_matches_an_uninterrupted_run(tmp_path):
    _kill_and_resume(tmp_path, kills=2, epochs=30, seed=0)


@pytest.mark.slow
def test_kill_9_at_twelve_random_moments_then_resume_matches(tmp_path):
    _kill_and_resume(tmp_path, kills=12, epochs=80, seed=1)


def test_a_full_disk_names_the_file_keeps_the_checkpoints_and_the_run_resumes(tmpfs):
    mnt = tmpfs("48k", "mnt")
    run = mnt / "run"
    xor = [sys.executable, "-m", "fnn.cli", "train", "configs/xor.yaml",
           "training.epochs=3"]
    out = ["--out", str(run)]
    # the checkpoints fit in 48 KiB, the ~45 KiB curves.png after them does not
    done = subprocess.run(xor + out, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"fnn train: error: cannot write {run}/curves.png: No space left on device; the checkpoints "
        "written before are intact: free some space and continue with --resume"]
    _check_every_checkpoint_loads(run)
    assert not list(run.rglob("*.tmp"))
    done = subprocess.run(xor + ["output.plots=false", *out, "--resume"], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "test.json").read_text())["examples"] == 4
