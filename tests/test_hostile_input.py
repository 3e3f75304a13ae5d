"""Hostile input, as a user (or an attacker) hits it: configs with duplicate keys, binary bytes,
megabytes of YAML or alias bombs, and data paths that are devices, FIFOs or directories. Each is
refused by the ``fnn`` command with exit status 2 and exactly one line naming the file (and line
or key), before anything is read whole, compiled or written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fnn
from cli_lines import error_line
from fnn.config import (MAX_CONFIG_BYTES, MAX_YAML_VALUES, ConfigError, load_config,
                        parse_yaml)
from fnn.data.checks import MAX_DATA_FILE_BYTES, MAX_TEXT_DATA_BYTES, DataError

ROOT = Path(__file__).resolve().parent.parent
XOR = str(ROOT / "configs" / "xor.yaml")
CSV_CONFIG = str(ROOT / "configs" / "csv_example.yaml")


def _config(tmp_path: Path, text: str | bytes, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


GOOD = """\
name: dup
optimizer:
  name: sgd
  learning_rate: 0.1
model: [{Dense: 2}]
data: {name: xor}
"""


# --------------------------------------------------------------------------- duplicate keys

def test_duplicate_top_level_section_names_both_lines(capsys, tmp_path):
    path = _config(tmp_path, GOOD + "optimizer:\n  name: adam\n")   # line 7 repeats line 2
    line = error_line(capsys, ["validate", str(path)])
    assert line == f"fnn validate: error: {path}:7: duplicate key 'optimizer' (first at line 2)"


def test_duplicate_nested_key_names_its_key_path(capsys, tmp_path):
    path = _config(tmp_path, GOOD + "training:\n  epochs: 3\n  batch_size: 4\n  epochs: 5\n")
    line = error_line(capsys, ["train", str(path), "--out", str(tmp_path / "run")])
    assert line == (f"fnn train: error: {path}:10: duplicate key 'training.epochs' "
                    "(first at line 8)")
    assert not (tmp_path / "run").exists()


def test_duplicate_key_inside_a_layer_of_the_model_list(tmp_path):
    path = _config(tmp_path, "model:\n  - Dense: {features: 2, features: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:2: duplicate key 'model[0].Dense.features' (first at line 2)"
    assert (err.value.file, err.value.line) == (str(path), 2)


def test_a_key_repeated_in_different_mappings_is_fine():
    assert parse_yaml("a: {x: 1}\nb: {x: 2}\n") == {"a": {"x": 1}, "b": {"x": 2}}


def test_yaml_merge_keys_still_override_what_they_merge():
    text = "base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  y: 3\n"
    assert parse_yaml(text)["run"] == {"x": 1, "y": 3}


def test_duplicate_key_in_a_command_line_override(capsys):
    line = error_line(capsys, ["validate", XOR, "training={epochs: 2, epochs: 3}"])
    assert line == "fnn validate: error: override training: duplicate key 'training.epochs'"


# --------------------------------------------------------------------------- not text

def test_binary_config_is_one_line_not_a_unicode_traceback(capsys, tmp_path):
    path = _config(tmp_path, b"model: [\xff\xfe\x00\x01]\n")
    line = error_line(capsys, ["validate", str(path)])
    assert line == (f"fnn validate: error: {path}:1: not a text file (byte 8 is not UTF-8 "
                    "text); a config is a YAML file")


def test_nul_bytes_in_valid_utf8_are_refused_with_their_line(tmp_path):
    path = _config(tmp_path, b"name: x\nseed: 0\x00\n")
    with pytest.raises(ConfigError, match=r":2: not a text file \(byte 15 is not UTF-8"):
        load_config(path)


def test_config_that_is_a_directory_or_a_device(capsys, tmp_path):
    line = error_line(capsys, ["validate", str(tmp_path)])
    assert line == (f"fnn validate: error: {tmp_path}: not a regular file (a config is a "
                    "YAML file)")
    line = error_line(capsys, ["validate", "/dev/zero"])
    assert line == "fnn validate: error: /dev/zero: not a regular file (a config is a YAML file)"


# --------------------------------------------------------------------------- size and aliases

def test_config_over_the_size_limit_is_refused_before_it_is_read(capsys, tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)   # sparse: nothing to read if the limit holds
    line = error_line(capsys, ["validate", str(path)])
    assert line == (f"fnn validate: error: {path}: {MAX_CONFIG_BYTES + 1:,} bytes, more than a "
                    f"config holds (fnn.config.MAX_CONFIG_BYTES = {MAX_CONFIG_BYTES:,}); is it "
                    "the right file?")


def test_override_over_the_size_limit(capsys):
    line = error_line(capsys, ["validate", XOR, "name=" + "x" * (MAX_CONFIG_BYTES + 1)])
    assert line == (f"fnn validate: error: override name: {MAX_CONFIG_BYTES + 1:,} bytes of "
                    f"YAML, more than a config holds (fnn.config.MAX_CONFIG_BYTES = "
                    f"{MAX_CONFIG_BYTES:,})")


BILLION_LAUGHS = "".join(
    [f'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")])


def test_alias_bomb_is_refused_naming_the_file_and_line(capsys, tmp_path):
    # 9 lines expanding to 9**9 (387 million) strings: refused while counting, nothing built
    path = _config(tmp_path, BILLION_LAUGHS, "bomb.yaml")
    line = error_line(capsys, ["validate", str(path)])
    assert line == (f"fnn validate: error: {path}:6: the YAML expands to more than "
                    f"{MAX_YAML_VALUES:,} values (aliases of aliases: an alias bomb?); "
                    "fnn.config.MAX_YAML_VALUES is the limit")


def test_alias_bomb_in_an_override(capsys):
    bomb = "[" + ", ".join(["&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
                           + [f"&{b} [{', '.join(['*' + a] * 10)}]"
                              for a, b in zip("abcde", "bcdef")]) + "]"
    line = error_line(capsys, ["validate", XOR, f"data.options={bomb}"])
    assert line.startswith("fnn validate: error: override data.options: the YAML expands to "
                           f"more than {MAX_YAML_VALUES:,} values")


def test_aliases_within_the_limit_still_work():
    text = "sizes: &s [8, 8]\nmodel: [{Dense: {features: 4}}]\nagain: *s\n"
    assert parse_yaml(text)["again"] == [8, 8]


def test_nesting_past_the_recursion_limit_is_one_line(capsys, tmp_path):
    path = _config(tmp_path, "model: " + "[" * 5000 + "]" * 5000 + "\n", "deep.yaml")
    line = error_line(capsys, ["validate", str(path)])
    assert line == f"fnn validate: error: {path}: nested too deeply to read"


def test_override_that_is_not_utf8(capsys):
    # bytes that are not UTF-8 reach sys.argv as lone surrogates (surrogateescape)
    line = error_line(capsys, ["validate", XOR, "name=ab\udcffc"])
    assert line == "fnn validate: error: override name: not UTF-8 text"


def test_recursive_alias_is_refused(tmp_path):
    path = _config(tmp_path, "seed: 0\nmodel: &m [{Dense: 2}, *m]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}:2: model[1]: an alias refers to the value that contains it "
                              "(a recursive alias)")


def test_the_real_command_refuses_a_duplicate_key(tmp_path):
    path = _config(tmp_path, GOOD + "optimizer: {name: adam}\n")
    done = subprocess.run([sys.executable, "-m", "fnn.cli", "validate", str(path)],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr == (f"fnn validate: error: {path}:7: duplicate key 'optimizer' "
                           "(first at line 2)\n")


# --------------------------------------------------------------------------- data paths

def _data_args(name: str, path: str) -> list[str]:
    options = "{label_column: 0}" if name == "csv" else "{}"
    return [f"data.name={name}", f"data.path={path}", f"data.options={options}",
            "data.standardize=false", "data.stratify=false"]


def test_data_path_to_a_device_is_refused_before_reading(capsys, tmp_path):
    line = error_line(capsys, ["train", XOR, *_data_args("arrays", "/dev/zero"),
                                "--out", str(tmp_path / "run")])
    assert line == ("fnn train: error: data.path: /dev/zero: not a regular file but a "
                    "character device")
    assert not (tmp_path / "run").exists()


def test_data_path_to_a_fifo_is_refused_without_blocking(capsys, tmp_path):
    fifo = tmp_path / "train.npz"
    os.mkfifo(fifo)   # opening it for reading would wait for a writer forever
    line = error_line(capsys, ["validate", XOR, *_data_args("arrays", str(fifo))])
    assert line == (f"fnn validate: error: data.path: {fifo}: not a regular file but a FIFO "
                    "(named pipe)")


def test_data_path_to_a_directory(capsys, tmp_path):
    folder = tmp_path / "table.csv"
    folder.mkdir()
    line = error_line(capsys, ["validate", CSV_CONFIG, *_data_args("csv", str(folder))])
    assert line == f"fnn validate: error: data.path: {folder}: not a regular file but a directory"


def test_data_file_over_the_size_limit_is_refused_before_reading(capsys, tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "wb") as f:
        f.truncate(MAX_TEXT_DATA_BYTES + 1)   # sparse: reading it would take 2 GiB of zeros
    line = error_line(capsys, ["validate", CSV_CONFIG, *_data_args("csv", str(path))])
    assert line == (f"fnn validate: error: data.path: {path}: {MAX_TEXT_DATA_BYTES + 1:,} bytes, "
                    f"more than the {MAX_TEXT_DATA_BYTES:,} bytes fnn reads from a file of this "
                    "kind; is it the right file?")


def test_loaders_refuse_special_files_from_python(tmp_path):
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match=r"x\.npy: not a regular file but a FIFO"):
        fnn.data.load_arrays(fifo)
    with pytest.raises(DataError, match=r"^/dev/zero: not a regular file but a character device$"):
        fnn.data.load_csv("/dev/zero", label_column=0)
    with pytest.raises(DataError, match=r"not a regular file but a directory"):
        fnn.data.idx.read_raw(tmp_path)


def test_array_file_size_limit_is_checked_on_the_file(tmp_path):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as f:
        f.truncate(MAX_DATA_FILE_BYTES + 1)   # sparse; the file system may refuse
    with pytest.raises(DataError, match=f"{MAX_DATA_FILE_BYTES + 1:,} bytes, more than the "
                                        f"{MAX_DATA_FILE_BYTES:,} bytes"):
        fnn.data.load_arrays(path)


def test_pretrained_checkpoint_that_is_a_device(capsys):
    line = error_line(capsys, ["validate", XOR, "training.pretrained=/dev/zero"])
    assert line == ("fnn validate: error: training.pretrained: /dev/zero: not a regular file "
                    "but a character device")


def test_regular_data_files_still_load(tmp_path):
    path = tmp_path / "train.npz"
    np.savez(path, x=np.zeros((3, 2), np.float32), y=np.arange(3))
    x, y = fnn.data.load_arrays(path)
    assert x.shape == (3, 2) and list(y) == [0, 1, 2]
