"""Layer kinds of the user's own in the CLI: the config key ``imports`` and ``--import MODULE``
load the module that registers them before the config is checked; a failing import is one
line naming the module and the key or option; ``fnn.load`` of a network whose kind was defined
in a script says so and how to make it importable.

Each test writes its module to ``tmp_path`` under a name of its own (kinds are registered once
per process, by module).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import fnn
from fnn import cli
from fnn.config import ConfigError, parse_config
from fnn.core import SpecError

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "configs" / "xor.yaml")

MODULE = '''
import fnn

@fnn.layer_type("{kind}")
def {kind}(shift: float = 1.0) -> fnn.Layer:
    """Adds ``shift`` to its input; no params."""
    init = lambda rng, shape: (shape, {{}}, {{}})
    apply = lambda params, state, x, *, rng=None, train=False: (x + shift, state)
    return fnn.Layer(init, apply)
'''


def write_module(folder: Path, module: str, kind: str) -> None:
    (folder / f"{module}.py").write_text(MODULE.format(kind=kind))


def xor_config(kind: str, imports=None) -> dict:
    cfg = {"name": "xor", "model": [{"Dense": 2}, {kind: {"shift": 0.5}}, "Sigmoid",
                                     {"Dense": 1}],
           "loss": {"name": "sigmoid_binary_cross_entropy"},
           "data": {"name": "xor", "validation": 0},
           "training": {"epochs": 2, "batch_size": 4},
           "output": {"plots": False, "progress": False}}
    if imports is not None:
        cfg["imports"] = imports
    return cfg


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_config_without_the_import_names_the_unknown_layer(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "userkinds_missing", "AddShiftMissing")
    code, _, err = run_cli(capsys, "validate", write_config(tmp_path / "c.yaml",
                                                            xor_config("AddShiftMissing")))
    assert code == 2 and "unknown layer 'AddShiftMissing'" in err and err.count("\n") == 1


def test_the_imports_key_makes_a_user_kind_usable(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "userkinds_key", "AddShiftKey")
    config = write_config(tmp_path / "c.yaml", xor_config("AddShiftKey", ["userkinds_key"]))
    code, out, err = run_cli(capsys, "validate", config)
    assert code == 0, err
    assert "imports: [userkinds_key]" in out and "AddShiftKey" in out
    code, out, err = run_cli(capsys, "summary", config)
    assert code == 0 and "add_shift_key" in out, err


def test_the_import_option_makes_a_user_kind_usable_in_every_command(capsys, tmp_path,
                                                                     monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_module(tmp_path, "userkinds_option", "AddShiftOption")
    config = write_config(tmp_path / "c.yaml", xor_config("AddShiftOption"))
    for command in ("validate", "summary"):
        code, _, err = run_cli(capsys, command, config, "--import", "userkinds_option")
        assert code == 0, err
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", config, "--out", str(run), "--import",
                           "userkinds_option")
    assert code == 0, err
    code, _, err = run_cli(capsys, "eval", str(run), "--import", "userkinds_option")
    assert code == 0, err


@pytest.mark.parametrize("how", ["option", "key"])
def test_a_module_that_is_not_found_is_one_line_naming_the_key_or_option(capsys, tmp_path, how):
    if how == "option":
        args = ("validate", XOR, "--import", "no_such_userkinds")
        where = "--import no_such_userkinds: cannot import module 'no_such_userkinds'"
    else:
        cfg = {**yaml.safe_load((ROOT / "configs/xor.yaml").read_text()),
               "imports": ["json", "no_such_userkinds"]}
        args = ("validate", write_config(tmp_path / "c.yaml", cfg))
        where = "imports[1]: cannot import module 'no_such_userkinds'"
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert err.startswith("fnn validate: error: ") and err.count("\n") == 1
    assert where in err and "PYTHONPATH" in err


def test_a_module_that_fails_while_importing_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "userkinds_broken.py").write_text("import json\nraise RuntimeError('boom\\nsecond line')\n")
    (tmp_path / "userkinds_needs.py").write_text("import no_such_dependency_xyz\n")
    code, _, err = run_cli(capsys, "validate", XOR, "--import", "userkinds_broken")
    assert code == 2 and err.count("\n") == 1
    assert "--import userkinds_broken: importing module 'userkinds_broken' failed: " \
           "RuntimeError: boom second line" in err
    # a module that is found but imports a missing one: the missing one is named
    code, _, err = run_cli(capsys, "validate", XOR, "--import", "userkinds_needs")
    assert code == 2 and "No module named 'no_such_dependency_xyz'" in err


@pytest.mark.parametrize("value", ["not a module", 3, ""])
def test_an_imports_entry_that_is_not_a_module_name(value):
    with pytest.raises(ConfigError, match=r"^imports\[0\]: expected a module name"):
        parse_config({**xor_config("Relu"), "imports": [value]})


def test_imports_must_be_a_list():
    with pytest.raises(ConfigError, match=r"^imports: expected a list"):
        parse_config({**xor_config("Relu"), "imports": "mylayers"})


def _python(code: str, cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (ROOT, pythonpath) if p is not None)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_loading_a_kind_defined_in_a_script_says_how_to_make_it_importable(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(MODULE.format(kind="AddShiftScript") + textwrap.dedent("""
        import jax
        net = fnn.serial(fnn.Dense(2), AddShiftScript(0.5))
        _, params, state = net.init(jax.random.key(0), (-1, 3))
        fnn.save("net.safetensors", net, params, state)
    """))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    with pytest.raises(SpecError) as info:
        fnn.load(tmp_path / "net.safetensors")
    message = str(info.value)
    assert "\n" not in message
    for words in ("unknown layer 'AddShiftScript'", "defined in a script (module __main__)",
                  "move its @fnn.layer_type definition into a module", "--import"):
        assert words in message, message


def test_loading_a_kind_from_a_module_in_a_fresh_process_names_the_import(tmp_path):
    write_module(tmp_path, "userkinds_saved", "AddShiftSaved")
    save = textwrap.dedent("""
        import jax, fnn, userkinds_saved
        net = fnn.serial(fnn.Dense(2), userkinds_saved.AddShiftSaved(0.5))
        _, params, state = net.init(jax.random.key(0), (-1, 3))
        fnn.save("net.safetensors", net, params, state)
    """)
    assert _python(save, tmp_path, tmp_path).returncode == 0
    load = "import fnn; fnn.load('net.safetensors')"
    missing = _python(load, tmp_path)  # importable from the folder, but not imported
    assert "it was registered by module 'userkinds_saved'" in missing.stderr
    assert "--import userkinds_saved" in missing.stderr
    loaded = _python("import userkinds_saved; " + load + "; print('ok')", tmp_path, tmp_path)
    assert loaded.stdout.strip() == "ok", loaded.stderr
