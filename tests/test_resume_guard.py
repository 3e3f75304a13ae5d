"""``fnn train --resume`` resumes only the run the folder holds: any config change but the run's
length is refused with the differing keys and leaves the folder exactly as it was; a change the
user allows (``--allow-change KEY``) goes through, and a new optimizer resets the stored state
and says so. Also ``--overwrite``, and ``fnn eval`` of a folder whose config.yaml was edited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.monitoring
import pytest

from fnn import cli
from fnn.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
XOR = "configs/xor.yaml"
BASE = ["training.epochs=2", "output.plots=false"]
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, **kw: _compiles.append(name) if name == COMPILE_EVENT else None)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished two-epoch XOR run (made once, copied by each test)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli.main(["train", str(ROOT / XOR), *BASE, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(base_run, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    copy = tmp_path / "run"
    shutil.copytree(base_run, copy)
    return copy


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(run: Path, *args: str) -> int:
    return cli.main(["train", XOR, *BASE, *args, "--out", str(run)])


CHANGES = [  # (kind, overrides, a differing key the refusal must name)
    ("model", ["model.0.Dense.features=3"], "model[0].Dense.features (2 -> 3)"),
    ("optimizer-hyper-parameter", ["optimizer.learning_rate=0.1"],
     "optimizer.learning_rate (0.5 -> 0.1)"),
    ("optimizer-kind", ["optimizer={name: adam, learning_rate: 0.01}"],
     "optimizer.name ('momentum' -> 'adam')"),
    ("data", ["data.name=circles"], "data.name ('xor' -> 'circles')"),
    ("seed", ["seed=1"], "seed (0 -> 1)"),
    ("loss", ["loss.name=mse"], "loss.name ('sigmoid_binary_cross_entropy' -> 'mse')"),
    ("regularizers", ["regularizers.l2=0.01"], "regularizers.l2 (0.0 -> 0.01)"),
    ("schedule", ["optimizer.schedule={name: cosine, decay_steps: 10}"],
     "optimizer.schedule.name ((none) -> 'cosine')"),
]


@pytest.mark.parametrize("overrides, named", [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_a_resume_with_a_changed_config_is_refused_and_changes_nothing(run, capsys, overrides,
                                                                       named):
    before, compiles = _snapshot(run), len(_compiles)
    assert _train(run, *overrides, "training.epochs=4", "--resume") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fnn train: error: {run}: --resume with a config that differs")
    assert named in err and "--allow-change" in err and "Traceback" not in err
    assert "training.epochs" not in err.split("differs")[1].split(";")[0]  # run length is free
    assert _snapshot(run) == before
    assert len(_compiles) == compiles


def test_extending_the_run_needs_no_flag(run, capsys):
    assert _train(run, "training.epochs=3", "--resume") == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]
    assert "training.epochs" in capsys.readouterr().out  # the change is reported


def test_an_allowed_hyper_parameter_change_keeps_the_optimizer_state(run, capsys):
    assert _train(run, "optimizer.learning_rate=0.1", "training.epochs=3", "--resume",
                  "--allow-change", "optimizer.learning_rate") == 0
    out = capsys.readouterr().out
    assert "reset" not in out
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["learning_rate"] == 0.1


def test_an_allowed_new_optimizer_resets_the_state_and_says_so(run, capsys):
    old = set(ckpt.load_tree(run / "checkpoints" / "latest.safetensors"))
    assert _train(run, "optimizer={name: adam, learning_rate: 0.01}", "training.epochs=3",
                  "--resume", "--allow-change", "optimizer") == 0
    out = capsys.readouterr().out
    assert "optimizer.name changed ('momentum' -> 'adam')" in out
    assert "the stored optimizer state is reset" in out
    new = set(ckpt.load_tree(run / "checkpoints" / "latest.safetensors"))
    assert any("/nu/" in k for k in new) and not any("/nu/" in k for k in old)


def test_an_allowed_model_change_that_does_not_fit_the_checkpoint_is_refused(run, capsys):
    before = _snapshot(run)
    assert _train(run, "model.0.Dense.features=3", "--resume", "--allow-change", "model") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "layer 'dense_0'" in err and "in the checkpoint" in err
    assert _snapshot(run) == before


def test_resume_and_overwrite_together_are_refused(run, capsys):
    before = _snapshot(run)
    assert _train(run, "--resume", "--overwrite") == 2
    assert "give one of them" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_overwrite_replaces_the_old_run(run, capsys):
    stale_best = run / "checkpoints" / "best.safetensors"
    shutil.copy(run / "checkpoints" / "latest.safetensors", stale_best)
    assert cli.main(["train", XOR, "training.epochs=1", "output.plots=false", "--overwrite",
                     "--out", str(run)]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert not stale_best.exists()  # XOR has no validation set: no best of the old run remains


def test_stale_temporary_files_are_removed_when_the_folder_is_opened(run, capsys):
    stale = [run / "checkpoints" / ".latest.safetensors.abc123.tmp", run / ".metrics.jsonl.x.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    assert _train(run, "training.epochs=3", "--resume") == 0
    assert not any(p.exists() for p in stale)
    assert "removed 2 temporary file(s)" in capsys.readouterr().out


def test_eval_of_a_folder_whose_config_does_not_fit_the_checkpoint(run, capsys):
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("features: 2", "features: 3"))
    compiles = len(_compiles)
    assert cli.main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fnn eval: error: {cfg}: does not match latest.safetensors: "
                          "layer 'dense_0': ")
    assert "in the checkpoint, the config's network needs (3" in err
    assert len(_compiles) == compiles
    assert not (run / "test.json").read_text() == ""  # the old test.json is left as it was


def test_the_checkpoint_config_not_an_edited_config_yaml_decides(run, capsys):
    # as if a resume allowed to change the optimizer wrote config.yaml and was killed before
    # its first checkpoint: the checkpoint still holds momentum's state
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("name: momentum", "name: adam")
                   .replace("momentum: 0.9", ""))
    before = _snapshot(run)
    assert _train(run, "optimizer={name: adam, learning_rate: 0.5}", "--resume") == 2
    err = capsys.readouterr().err
    assert "differs from the run's (checkpoints/latest.safetensors)" in err
    assert "optimizer.name ('momentum' -> 'adam')" in err
    assert _snapshot(run) == before
