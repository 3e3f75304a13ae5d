"""One run per folder (issue 19), as a user hits it with ``fnn train``.

* a run holds its folder's lock file (pid, host, start); a second ``fnn train`` on the same
  ``--out`` is refused in one line naming the holder, and the lock of a run that was killed is
  taken over with a note;
* ``--overwrite`` goes through every check first, keeps the old run aside until the new run's
  first epoch is saved (and puts it back when the new run fails before), removes only what fnn
  wrote, lists what else is kept, and refuses when the config reads from inside the folder;
* ``name`` stays one folder name inside ``runs/``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fnn import cli, rundir

ROOT = Path(__file__).resolve().parent.parent
XOR = "configs/xor.yaml"
BASE = ["training.epochs=2", "output.plots=false"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _train(capsys, out: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["train", XOR, *BASE, *args, "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line(err: str, *fragments: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fnn "), err
    for fragment in fragments:
        assert fragment in lines[0], err
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _wait_for(predicate, proc: subprocess.Popen, what: str, limit: float = 240.0) -> None:
    """Poll until ``predicate()``; fails (with the process's output) if it exits or never does.
    A bound against hanging, not a timing assertion."""
    end = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the holder exited ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"no {what} after {limit:.0f} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """A finished two-epoch XOR run with gradient-flow diagnostics (made once, copied)."""
    out = tmp_path_factory.mktemp("old") / "run"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli.main(["train", XOR, *BASE, "training.diagnostics.every=1", "--out",
                         str(out)]) == 0
    finally:
        os.chdir(cwd)
    assert {"diagnostics.jsonl", "gradflow.png"} <= {p.name for p in out.iterdir()}
    return out


@pytest.fixture
def run(old_run, tmp_path):
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(old_run, copy)
    return copy


# --------------------------------------------------------------------------- the lock

def test_a_second_train_on_a_running_folder_is_refused_then_the_killed_runs_lock_is_taken_over(
        tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-m", "fnn.cli", "train", XOR, "training.epochs=1000000",
         "output.plots=false", "--out", str(out)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "checkpoints" / "latest.safetensors").exists(), holder,
                  "first checkpoint")
        lock = json.loads((out / rundir.LOCK).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname()

        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, err = _train(capsys, out, *extra)
            assert code == 2
            _one_line(err, f"{out}: another run is using this folder (pid {holder.pid} on "
                           f"{socket.gethostname()} since {lock['since']})", "--out")
        assert holder.poll() is None  # the holder runs on, untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    assert json.loads((out / rundir.LOCK).read_text()) == lock  # a killed run leaves its lock

    code, stdout, err = _train(capsys, out, "--overwrite")
    assert code == 0, err
    assert f"took over the lock of a run that is gone (pid {holder.pid} on" in stdout
    assert not (out / rundir.LOCK).exists()  # released at the end
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # the new run's epochs


def test_a_terminated_run_releases_its_lock(tmp_path, capsys, monkeypatch):
    """``kill`` (SIGTERM, as schedulers preempt) during training: fit finishes the step, writes
    ``latest`` and fnn train exits 75 (preempted, with the resume command); the lock goes, so
    the requeued run, maybe on another host, can --resume."""
    import fnn.run
    out = tmp_path / "run"
    real_fit = fnn.run.fit

    def kill_me(record, train_state):
        os.kill(os.getpid(), signal.SIGTERM)  # during epoch 1's callbacks

    monkeypatch.setattr(fnn.run, "fit", lambda *a, **kw: real_fit(
        *a, **{**kw, "callbacks": [kill_me, *kw.get("callbacks", ())]}))
    def not_handled(signum, frame):  # were fnn's handler missing, fail here, not kill pytest
        raise AssertionError("fnn train did not handle SIGTERM")

    previous = signal.signal(signal.SIGTERM, not_handled)
    try:
        code, _, err = _train(capsys, out)
        assert signal.getsignal(signal.SIGTERM) is not_handled  # fnn's handlers are gone
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 75, err
    assert "--resume" in err
    assert not (out / rundir.LOCK).exists()
    assert (out / "checkpoints" / "latest.safetensors").is_file()  # --resume continues it


def test_the_lock_is_held_while_the_run_trains_and_released_after_an_error(tmp_path, capsys,
                                                                           monkeypatch):
    out = tmp_path / "run"
    seen = []

    def check_lock(record, train_state):
        seen.append(rundir.lock_holder(out))

    import fnn.run
    real_fit = fnn.run.fit
    monkeypatch.setattr(fnn.run, "fit", lambda *a, **kw: real_fit(
        *a, **{**kw, "callbacks": [check_lock, *kw.get("callbacks", ())]}))
    code, _, err = _train(capsys, out)
    assert code == 0, err
    assert [h.pid for h in seen] == [os.getpid()] * 2
    assert rundir.lock_holder(out) is None

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fnn.run, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["train", XOR, *BASE, "--out", str(tmp_path / "other")])
    assert rundir.lock_holder(tmp_path / "other") is None


def test_a_lock_of_another_host_is_refused_naming_it_and_how_to_clear_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7",
                                               "since": "2026-12-04 20:00:00 UTC"}))
    code, _, err = _train(capsys, out)
    assert code == 2
    _one_line(err, "another run is using this folder (pid 4242 on gpu-node-7 since "
                   "2026-12-04 20:00:00 UTC)", f"remove {out / rundir.LOCK}")
    assert [p.name for p in out.iterdir()] == [rundir.LOCK]


def test_a_lock_whose_pid_now_belongs_to_a_later_process_is_stale(tmp_path, capsys):
    """After a reboot or a long time, the dead run's pid may be some other process's."""
    out = tmp_path / "run"
    out.mkdir()
    with open(f"/proc/{os.getpid()}/stat") as f:
        ticks = int(f.read().rpartition(")")[2].split()[19])  # this process's start
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01 00:00:00 UTC",
            "ticks": ticks - 1}  # written by a process that started earlier under this pid
    (out / rundir.LOCK).write_text(json.dumps(lock))
    code, stdout, err = _train(capsys, out)
    assert code == 0, err
    assert f"took over the lock of a run that is gone (pid {os.getpid()} on" in stdout
    (out / rundir.LOCK).write_text(json.dumps({**lock, "ticks": ticks}))  # this very process
    code, _, err = _train(capsys, out, "training.epochs=3", "--resume")
    assert code == 2
    _one_line(err, f"another run is using this folder (pid {os.getpid()} on")


def test_an_unreadable_lock_file_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK).write_bytes(b"\x00\xff not json")
    code, _, err = _train(capsys, out)
    assert code == 2
    _one_line(err, f"{out}: its lock file {rundir.LOCK} is unreadable", "remove")


def test_of_several_processes_taking_a_lock_at_once_one_gets_it(tmp_path):
    probe = ("import importlib.util, sys\n"  # rundir alone: no JAX to import, a quick start
             f"spec = importlib.util.spec_from_file_location('rundir', {str(rundir.__file__)!r})\n"
             "r = sys.modules['rundir'] = importlib.util.module_from_spec(spec)\n"
             "spec.loader.exec_module(r)\n"
             "try:\n    r.take_lock(sys.argv[1]); print('got', flush=True)\n"
             "except r.RunFolderError as e:\n    print('refused', flush=True)\n"
             "sys.stdin.read()\n")  # alive (holding) until the test has every answer
    procs = [subprocess.Popen([sys.executable, "-c", probe, str(tmp_path / "run")], cwd=ROOT,
                              env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    answers = sorted(p.stdout.readline().strip() for p in procs)
    holder = rundir.lock_holder(tmp_path / "run")
    for p in procs:
        p.communicate("")
    assert answers == ["got", "refused", "refused", "refused"]
    assert holder.pid in [p.pid for p in procs]
    assert rundir.lock_holder(tmp_path / "run").is_stale()  # exited without releasing it


# --------------------------------------------------------------------------- --overwrite

def test_overwrite_checks_everything_before_touching_the_folder(run, capsys):
    before = _snapshot(run)
    for bad, key in ((["training.freeze=[dense_9]"], "training.freeze"),
                     (["model.0.Dense.features=0"], "model"),
                     (["data.name=csv"], "data.")):
        code, _, err = _train(capsys, run, *bad, "--overwrite")
        assert code == 2
        _one_line(err, key)
        assert _snapshot(run) == before, bad
    assert not any(p.name.startswith(rundir.OLD_RUN) for p in run.iterdir())


def test_overwrite_removes_only_what_fnn_wrote_and_lists_the_rest(run, capsys):
    (run / "notes.txt").write_text("mine")
    (run / "checkpoints" / "README").write_text("mine too")
    old_latest = (run / "checkpoints" / "latest.safetensors").read_bytes()
    code, stdout, err = _train(capsys, run, "seed=1", "--overwrite")
    assert code == 0, err
    assert "kept (not written by fnn): notes.txt, checkpoints/README" in stdout
    names = sorted(p.name for p in run.iterdir())
    assert names == ["checkpoints", "config.yaml", "metrics.jsonl", "notes.txt", "summary.txt",
                     "test.json"]  # the old diagnostics.jsonl and gradflow.png are gone
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "checkpoints" / "README").read_text() == "mine too"
    assert (run / "checkpoints" / "latest.safetensors").read_bytes() != old_latest
    assert "seed: 1" in (run / "config.yaml").read_text()


@pytest.mark.parametrize("failure", [KeyboardInterrupt, MemoryError])
def test_overwrite_puts_the_old_run_back_when_the_new_one_fails_before_its_first_epoch(
        run, capsys, monkeypatch, failure):
    import fnn.run
    before = _snapshot(run)

    def fails_in_epoch_1(*args, **kwargs):  # Ctrl-C, or out of memory, during the first epoch
        assert not (run / "diagnostics.jsonl").exists()  # the old run is aside
        (run / "config.yaml").write_text("seed: 1\n")  # as if the new run had begun writing
        (run / "metrics.jsonl").write_text("")
        raise failure
    monkeypatch.setattr(fnn.run, "fit", fails_in_epoch_1)
    with pytest.raises(failure):
        _train(capsys, run, "--overwrite")
    assert _snapshot(run) == before
    assert sorted(p.name for p in run.iterdir()) == sorted(
        {p.split("/")[0] for p in before})  # no .fnn-old-*, no lock


def test_overwrite_is_refused_when_the_config_reads_from_inside_the_folder(run, capsys):
    before = _snapshot(run)
    latest = run / "checkpoints" / "latest.safetensors"
    code, _, err = _train(capsys, run, f"training.pretrained={latest}", "--overwrite")
    assert code == 2
    _one_line(err, f"training.pretrained ({latest}) is inside the folder", "--out")

    assert _snapshot(run) == before


def test_overwrite_is_refused_when_the_data_file_is_inside_the_folder(run, capsys):
    data = run / "blobs.csv"
    data.write_bytes((ROOT / "configs" / "data" / "blobs.csv").read_bytes())
    before = _snapshot(run)
    assert cli.main(["train", "configs/csv_example.yaml", f"data.path={data}", "--out", str(run),
                     "--overwrite"]) == 2
    _one_line(capsys.readouterr().err, f"data.path ({data}) is inside the folder")
    assert _snapshot(run) == before


# --------------------------------------------------------------------------- run names

@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "a/b", "..", "", "a\\b"])
@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_run_name_that_leaves_the_runs_folder_is_refused(tmp_path, capsys, monkeypatch,
                                                           command, name):
    work = tmp_path / "work" / "deeper"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config = work / "xor.yaml"
    config.write_text((ROOT / XOR).read_text())
    code = cli.main([command, str(config), *BASE, f"name={json.dumps(name)}"])
    assert code == 2
    _one_line(capsys.readouterr().err, f"fnn {command}: error: name: {name!r} is not a folder "
                                       "name")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deeper", "work", "xor.yaml"]


def test_a_plain_name_is_the_folder_under_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", str(ROOT / XOR), *BASE, "name=xor-v2.1_a"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "runs" / "xor-v2.1_a" / "config.yaml").is_file()


def test_overwrite_removes_the_old_run_once_the_first_epoch_is_saved(run, capsys, monkeypatch):
    import fnn.run
    aside = []

    def watch(record, train_state):
        aside.append(sorted(p.name for p in run.iterdir() if p.name.startswith(rundir.OLD_RUN)))
        if record["epoch"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first epoch was saved

    real_fit = fnn.run.fit
    monkeypatch.setattr(fnn.run, "fit", lambda *a, **kw: real_fit(
        *a, **{**kw, "callbacks": [watch, *kw.get("callbacks", ())]}))
    with pytest.raises(KeyboardInterrupt):
        _train(capsys, run, "seed=1", "--overwrite")
    assert len(aside[0]) == 1 and aside[1] == []  # kept during epoch 1, removed after it
    assert "seed: 1" in (run / "config.yaml").read_text()  # the new run stays: --resume it
    assert not (run / "diagnostics.jsonl").exists() and rundir.lock_holder(run) is None


# --------------------------------------------------------------------------- run folders (issue 22)

def _foreign_lock(folder: Path) -> None:
    """A lock held by a run on another host: never stale, so always refused."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / rundir.LOCK).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7",
                                                  "since": "2026-12-04 20:00:00 UTC"}))


def _tracker_folders(run: Path) -> None:
    """What the trackers, --profile and an MLflow store the config names leave in a folder."""
    for name in ("tensorboard/events.out.tfevents.1.host", "mlruns/0/meta.yaml",
                 "profile/plugins/trace.json.gz", "store/1/meta.yaml"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("old")


def test_overwrite_moves_the_trackers_and_profile_folders_aside_too(run, capsys):
    _tracker_folders(run)
    code, stdout, err = _train(capsys, run, f"output.mlflow.tracking_uri=file:{run / 'store'}",
                               "--overwrite")
    assert code == 0, err
    assert "kept (not written by fnn)" not in stdout
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml",
                                                      "metrics.jsonl", "summary.txt",
                                                      "test.json"]


def test_overwrite_puts_the_old_folders_back_when_the_new_run_fails(run, capsys, monkeypatch):
    import fnn.run
    _tracker_folders(run)
    before = _snapshot(run)

    def fails_in_epoch_1(*args, **kwargs):
        assert not (run / "tensorboard").exists() and not (run / "store").exists()
        (run / "tensorboard").mkdir()  # the new run's events
        (run / "tensorboard" / "events.out.tfevents.2.host").write_text("new")
        raise KeyboardInterrupt
    monkeypatch.setattr(fnn.run, "fit", fails_in_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        _train(capsys, run, f"output.mlflow.tracking_uri=file:{run / 'store'}", "--overwrite")
    assert _snapshot(run) == before


def test_eval_takes_the_run_lock(run, capsys):
    assert cli.main(["eval", str(run)]) == 0
    assert rundir.lock_holder(run) is None  # released
    capsys.readouterr()
    before = _snapshot(run)
    _foreign_lock(run)
    assert cli.main(["eval", str(run)]) == 2
    _one_line(capsys.readouterr().err, "fnn eval: error:",
              "another run is using this folder (pid 4242 on gpu-node-7")
    assert {k: v for k, v in _snapshot(run).items() if k != rundir.LOCK} == before


@pytest.mark.parametrize("command", [["cv", XOR, *BASE, "--folds", "2"],
                                     ["sweep", XOR, *BASE, "data.validation=1",
                                      "--grid", "seed=0,1"]])
def test_cv_and_sweep_refuse_an_output_folder_another_run_holds(tmp_path, capsys, command):
    out = tmp_path / "out"
    _foreign_lock(out)
    assert cli.main([*command, "--out", str(out)]) == 2
    _one_line(capsys.readouterr().err, f"fnn {command[0]}: error:",
              "another run is using this folder (pid 4242 on gpu-node-7")
    assert [p.name for p in out.iterdir()] == [rundir.LOCK]


def test_cv_holds_its_folder_and_each_folds_run_folder_locked(tmp_path, capsys, monkeypatch):
    import fnn.run
    out, seen = tmp_path / "out", []

    def train_model(cfg, train, val, run_dir, *, log):
        seen.append((rundir.lock_holder(out).pid, rundir.lock_holder(run_dir).pid))
        raise KeyboardInterrupt
    monkeypatch.setattr(fnn.run, "train_model", train_model)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["cv", XOR, *BASE, "--folds", "2", "--out", str(out)])
    assert seen == [(os.getpid(), os.getpid())]
    assert rundir.lock_holder(out) is None and rundir.lock_holder(out / "fold_1") is None


def test_export_takes_the_run_lock(run, capsys):
    out = run.parent / "model.stablehlo"
    assert cli.main(["export", str(run), "--out", str(out)]) == 0
    assert out.is_file() and rundir.lock_holder(run) is None  # released
    out.unlink()
    capsys.readouterr()
    before = _snapshot(run)
    _foreign_lock(run)
    assert cli.main(["export", str(run), "--out", str(out)]) == 2
    _one_line(capsys.readouterr().err, "fnn export: error:",
              "another run is using this folder (pid 4242 on gpu-node-7")
    assert {k: v for k, v in _snapshot(run).items() if k != rundir.LOCK} == before
    assert not out.exists()
