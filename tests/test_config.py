"""Config validation: key paths, did-you-mean hints, types, overrides; all before compiling."""

import jax
import pytest

from fnn.config import ConfigError, apply_overrides, load_config, parse_config, parse_yaml
from fnn.cli import main

BASE = {"model": [{"Dense": 8}, "Relu", {"Dense": 2}], "data": {"name": "xor", "validation": 0}}


@pytest.fixture(autouse=True)
def no_compilation(monkeypatch):
    """Validation must fail before anything is compiled: make compiling an error here."""
    def refuse(*args, **kwargs):
        raise AssertionError("config validation must not compile anything")
    monkeypatch.setattr(jax, "jit", refuse)


@pytest.mark.parametrize("overrides, path, hint", [
    (["training.epohcs=3"], "training.epohcs", "did you mean 'epochs'"),
    (["trainig.epochs=3"], "trainig", "did you mean 'training'"),
    (["training.batch_size=big"], "training.batch_size", "expected an int"),
    (["training.mode=scan"], "training.mode", "must be one of epoch, step"),
    (["model.1=Rleu"], "model[1]", "did you mean 'Relu'"),
    (["model.0.Dense.feature=3"], "model[0].Dense.feature", "did you mean 'features'"),
    (["model.0.Dense=-4"], "model[0].Dense", "positive int"),
    (["loss.name=softmax_crossentropy"], "loss.name", "did you mean"),
    (["optimizer.name=adma"], "optimizer", "adam"),
    (["optimizer.betta1=0.9"], "optimizer.betta1", ""),
    (["data.name=mnsit"], "data.name", "did you mean 'mnist'"),
    (["training.epochs=0"], "training.epochs", ">= 1"),
])
def test_bad_configs_name_the_key_path(overrides, path, hint):
    with pytest.raises(ConfigError) as err:
        parse_config(BASE, overrides)
    assert str(err.value).startswith(path), str(err.value)
    assert hint in str(err.value)


def test_defaults_are_filled_and_overrides_apply():
    cfg = parse_config(BASE, ["optimizer.learning_rate=3e-4", "training.epochs=5",
                              "model.0.Dense.features=16"])
    assert cfg["optimizer"]["learning_rate"] == pytest.approx(3e-4)
    assert isinstance(cfg["optimizer"]["learning_rate"], float)
    assert cfg["training"]["epochs"] == 5 and cfg["training"]["batch_size"] == 128
    assert cfg["model"][0] == {"Dense": {"features": 16}}
    assert cfg["parallel"]["mode"] == "none"


def test_yaml_reads_exponent_numbers_as_floats():
    assert parse_yaml("a: 1e-3\nb: 3\nc: 2.5E2\nd: version1") == {"a": 1e-3, "b": 3, "c": 250.0,
                                                                 "d": "version1"}


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        apply_overrides(BASE, ["training.epochs"])
    with pytest.raises(ConfigError, match="model.7"):
        apply_overrides(BASE, ["model.7=Relu"])


def test_shipped_configs_validate():
    import pathlib
    configs = sorted(pathlib.Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_errors_with_exit_status_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [{Dense: 2}]\ntraining: {epohcs: 3}\n")
    assert main(["train", str(path)]) == 2
    assert "training.epohcs: unknown key; did you mean 'epochs'?" in capsys.readouterr().err
