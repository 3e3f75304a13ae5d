"""Checkpoint integrity: checksums on every load path, damaged files, shapes, atomic writes.

Every damaged file must end in one CheckpointError naming the file (and the tensor where one is
to blame), never in a load with altered weights or another exception.
"""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
import safetensors.numpy

import fnn
from fnn.train import checkpoint as ckpt
from fnn.train import fit


def _net():
    return fnn.serial(fnn.Dense(4, name="hidden"), fnn.Relu, fnn.BatchNorm(), fnn.Dense(3))


def _saved(tmp_path, name="m.safetensors"):
    net = _net()
    _, params, state = net.init(jax.random.key(0), (-1, 5))
    path = tmp_path / name
    fnn.save(path, net, params, state, input_shape=[-1, 5])
    return path, net, params, state


def _header_span(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _tensor_spans(data: bytes) -> dict[str, tuple[int, int]]:
    start = _header_span(data)
    header = json.loads(data[8:start])
    return {k: (start + v["data_offsets"][0], start + v["data_offsets"][1])
            for k, v in header.items() if k != "__metadata__"}


def _load_paths():
    """Every public way a checkpoint is read, as (name, function of the path)."""
    return [
        ("fnn.load", lambda p: fnn.load(p)),
        ("fnn.load_weights", lambda p: fnn.load_weights(p)),
        ("load_weights(net)", lambda p: fnn.load_weights(p, _net(), input_shape=(-1, 5))),
        ("load_tree", lambda p: ckpt.load_tree(p)),
        ("read_checkpoint", lambda p: ckpt.read_checkpoint(p)),
    ]


def _refused_everywhere(path, fragment=None):
    for name, load in _load_paths():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a damaged file must not pass as an fnn 0.1 one
            with pytest.raises(ckpt.CheckpointError) as info:
                load(path)
        message = str(info.value)
        assert str(path) in message, (name, message)
        assert "\n" not in message, (name, message)
        if fragment is not None:
            assert fragment in message, (name, message)


def test_round_trip_is_verified_without_warnings(tmp_path):
    path, net, params, state = _saved(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net2, params2, state2 = fnn.load(path)
        p3, s3 = fnn.load_weights(path, net)  # the stored input_shape is used
    for got in (params2, p3):
        jax.tree.map(np.testing.assert_array_equal, params, got)
    jax.tree.map(np.testing.assert_array_equal, state, state2)
    header = json.loads(path.read_bytes()[8:_header_span(path.read_bytes())])
    sums = json.loads(header["__metadata__"]["checksums"])
    # the stored checksum is the sha256 of the tensor's little-endian bytes (independent: hashlib)
    import hashlib
    w = np.asarray(params["hidden"]["w"], "<f4")
    assert sums["params/hidden/w"] == hashlib.sha256(w.tobytes()).hexdigest()


def test_a_flipped_byte_in_any_tensor_is_refused_naming_the_tensor(tmp_path):
    path, *_ = _saved(tmp_path)
    good = path.read_bytes()
    spans = _tensor_spans(good)
    bad = tmp_path / "bad.safetensors"
    for name, (begin, end) in spans.items():
        # first, middle and last byte of each tensor, flipping a different bit each time
        for i, pos in enumerate(sorted({begin, (begin + end) // 2, end - 1})):
            data = bytearray(good)
            data[pos] ^= 1 << (i * 3 % 8)
            bad.write_bytes(bytes(data))
            _refused_everywhere(bad, f"tensor {name!r}")


def test_every_byte_of_the_tensor_data_is_covered(tmp_path):
    path, *_ = _saved(tmp_path)
    good = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for pos in range(_header_span(good), len(good)):
        data = bytearray(good)
        data[pos] ^= 0x80
        bad.write_bytes(bytes(data))
        with pytest.raises(ckpt.CheckpointError, match="does not match its sha256"):
            ckpt.load_tree(bad)


def test_a_flipped_bit_in_a_tensor_name_is_refused(tmp_path):
    path, *_ = _saved(tmp_path)
    good = path.read_bytes()
    name = b'"params/hidden/w"'
    start = good.index(name)
    bad = tmp_path / "bad.safetensors"
    for pos in range(start + 1, start + len(name) - 1):  # the characters inside the quotes
        for bit in range(8):
            data = bytearray(good)
            data[pos] ^= 1 << bit
            bad.write_bytes(bytes(data))
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with pytest.raises(ckpt.CheckpointError, match="bad.safetensors"):
                    fnn.load_weights(bad)
    # a name changed into another valid name is reported with the tensor
    data = good.replace(name, b'"params/hidden/v"')
    bad.write_bytes(data)
    _refused_everywhere(bad, "'params/hidden/v'")


def test_a_flipped_bit_anywhere_in_the_header_is_refused(tmp_path):
    path, *_ = _saved(tmp_path)
    good = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    rng = np.random.default_rng(0)
    accepted = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a damaged file must not pass as an fnn 0.1 one
        # the length prefix, names, dtypes, shapes, offsets, metadata and padding
        for pos in range(_header_span(good)):
            data = bytearray(good)
            data[pos] ^= 1 << int(rng.integers(8))
            bad.write_bytes(bytes(data))
            for load in (ckpt.read_checkpoint, ckpt.read_metadata):  # under every load path
                try:
                    load(bad)
                    accepted.append((load.__name__, pos))
                except ckpt.CheckpointError as e:
                    assert str(bad) in str(e)
    assert accepted == []


@pytest.mark.parametrize("field", ["spec", "input_shape", "checksums", "header_sha256", "kind"])
def test_altered_metadata_is_refused(tmp_path, field):
    path, *_ = _saved(tmp_path)
    data = path.read_bytes()
    start = _header_span(data)
    header = json.loads(data[8:start])
    meta = header["__metadata__"]
    value = meta[field]
    # change one character of the value, keeping valid JSON in it where it was JSON
    i = next(i for i, c in enumerate(value) if c.isalnum())
    meta[field] = value[:i] + ("1" if value[i] == "0" else "0") + value[i + 1:]
    body = json.dumps(header, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(len(body).to_bytes(8, "little") + body + data[start:])
    _refused_everywhere(bad, "bad.safetensors is damaged")


def test_fit_cleans_temporaries_and_resume_refuses_a_damaged_checkpoint(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    kw = dict(epochs=1, batch_size=20, seed=0, log=None, run=tmp_path, progress=False)
    net = fnn.serial(fnn.Dense(2))
    import optax
    stale = [tmp_path / ".metrics.jsonl.a1b2c3d4.tmp",
             tmp_path / "checkpoints" / ".latest.safetensors.k2j4x9q1.tmp"]
    stale[1].parent.mkdir()
    for p in stale:
        p.write_bytes(b"left by a killed run")
    fit(net, fnn.losses.softmax_cross_entropy, optax.sgd(0.1), {"x": x, "y": y}, **kw)
    assert not any(p.exists() for p in stale)  # fit cleans the run folder when it opens it
    latest = tmp_path / "checkpoints" / "latest.safetensors"
    data = bytearray(latest.read_bytes())
    begin, end = _tensor_spans(bytes(data))["params/dense_0/w"]
    data[begin] ^= 0x10
    latest.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="'params/dense_0/w'"):
        fit(net, fnn.losses.softmax_cross_entropy, optax.sgd(0.1), {"x": x, "y": y},
            **{**kw, "epochs": 2, "run": fnn.train.RunOptions(tmp_path, resume=True)})


def test_an_fnn_0_1_checkpoint_loads_with_one_warning(tmp_path):
    net = _net()
    _, params, state = net.init(jax.random.key(0), (-1, 5))
    # the 0.1 writer: tensors and metadata, no checksums
    tensors = {**ckpt.flatten(params, "params"), **ckpt.flatten(state, "model_state")}
    meta = {"format": ckpt.FORMAT, "kind": json.dumps("model"), "spec": json.dumps(net.spec),
            "input_shape": json.dumps([-1, 5])}
    old = tmp_path / "old.safetensors"
    old.write_bytes(safetensors.numpy.save(tensors, metadata=meta))
    for _, load in _load_paths():
        with pytest.warns(ckpt.UnverifiedCheckpointWarning) as record:
            load(old)
        assert len(record) == 1
        message = str(record[0].message)
        assert "old.safetensors" in message and "fnn 0.1" in message and "\n" not in message
    with pytest.warns(ckpt.UnverifiedCheckpointWarning):
        params2, state2 = fnn.load_weights(old)
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    jax.tree.map(np.testing.assert_array_equal, state, state2)


@pytest.mark.parametrize("content, fragment", [
    (b"", "only 0 bytes"),
    (b"\x01\x02\x03", "only 3 bytes"),
    (b"\xff" * 64, "header claims"),
    (b"\x05\x00\x00\x00\x00\x00\x00\x00{nope", "damaged or non-safetensors header"),
    (b"\x04\x00\x00\x00\x00\x00\x00\x00[1]\x20", "damaged or non-safetensors header"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "header claims"),
    (b"seed: 0\nmodel: []\n" * 4, "header claims"),
])
def test_non_checkpoint_files_are_refused_naming_the_file(tmp_path, content, fragment):
    bad = tmp_path / "not_a_checkpoint.safetensors"
    bad.write_bytes(content)
    _refused_everywhere(bad, fragment)


def test_truncated_checkpoints_are_refused(tmp_path):
    path, *_ = _saved(tmp_path)
    good = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    for size in (4, 8, 20, _header_span(good) - 1, _header_span(good), len(good) - 1):
        bad.write_bytes(good[:size])
        _refused_everywhere(bad)


def test_missing_file_and_a_directory(tmp_path):
    _refused_everywhere(tmp_path / "missing.safetensors", "no checkpoint")
    (tmp_path / "d.safetensors").mkdir()
    _refused_everywhere(tmp_path / "d.safetensors", "no checkpoint")


def test_load_weights_into_another_network_names_the_layer_and_both_shapes(tmp_path):
    def mlp(hidden, *extra):
        return fnn.serial(fnn.Dense(hidden, name="hidden"), fnn.Relu, fnn.Dense(3), *extra)

    _, params, state = mlp(4).init(jax.random.key(0), (-1, 5))
    path = tmp_path / "m.safetensors"
    fnn.save(path, mlp(4), params, state, input_shape=[-1, 5])
    with pytest.raises(ckpt.CheckpointError) as info:
        fnn.load_weights(path, mlp(8))
    assert str(info.value) == (f"{path}: layer 'dense_0' parameter 'w' has shape (4, 3) in the "
                               "checkpoint, but the network needs (8, 3)")
    with pytest.raises(ckpt.CheckpointError,
                       match=r"layer 'hidden' parameter 'w' has shape \(5, 4\) in the checkpoint, "
                             r"but the network needs \(7, 4\)"):
        fnn.load_weights(path, mlp(4), input_shape=(-1, 7))
    with pytest.raises(ckpt.CheckpointError, match=r"layer 'dense_1' parameter 'b' of shape "
                                                   r"\(2,\) is not in the checkpoint"):
        fnn.load_weights(path, mlp(4, fnn.Dense(2)))
    with pytest.raises(ckpt.CheckpointError, match=r"the checkpoint has layer 'dense_0' parameter "
                                                   r"'b' of shape \(3,\) that the network does not"):
        fnn.load_weights(path, fnn.serial(fnn.Dense(4, name="hidden")))
    with pytest.raises(ckpt.CheckpointError, match=r"layer 'batch_norm_0' parameter 'offset' of "
                                                   r"shape \(3,\) is not in the checkpoint"):
        fnn.load_weights(path, mlp(4, fnn.BatchNorm()))
    _, bn_params, _ = mlp(4, fnn.BatchNorm()).init(jax.random.key(0), (-1, 5))
    fnn.save_weights(tmp_path / "no_state.safetensors", bn_params)  # running statistics lost
    with pytest.raises(ckpt.CheckpointError, match=r"layer 'batch_norm_0' state 'mean' of shape "
                                                   r"\(3,\) is not in the checkpoint"):
        fnn.load_weights(tmp_path / "no_state.safetensors", mlp(4, fnn.BatchNorm()),
                         input_shape=(-1, 5))
    fnn.save_weights(tmp_path / "w.safetensors", params, state)
    with pytest.raises(ckpt.CheckpointError, match="pass input_shape="):
        fnn.load_weights(tmp_path / "w.safetensors", mlp(4))
    got, _ = fnn.load_weights(tmp_path / "w.safetensors", mlp(4), input_shape=(-1, 5))
    jax.tree.map(np.testing.assert_array_equal, params, got)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    (tmp_path / "src.bin").write_bytes(b"downloaded")
    old = os.umask(umask)
    try:
        ckpt.atomic_write(tmp_path / "a.txt", b"x")
        fnn.save_weights(tmp_path / "w.safetensors", {"w": np.ones(2, np.float32)})
        fnn.data.write_idx(tmp_path / "l-idx1-ubyte.gz", np.arange(3, dtype=np.uint8))
        fnn.data.fetch([(tmp_path / "src.bin").as_uri()], tmp_path / "f.bin", progress=False)
    finally:
        os.umask(old)
    for name in ("a.txt", "w.safetensors", "l-idx1-ubyte.gz", "f.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_clean_temporary_files_removes_only_fnn_temporaries(tmp_path):
    left = [".latest.safetensors.k2j4x9q1.tmp", ".metrics.jsonl.ab_cd123.tmp",
            ".train-images-idx3-ubyte.gz.x1y2z3w4.part.gz", ".labels.abcdefgh.part"]
    kept = ["latest.safetensors", "notes.tmp", ".hidden", ".a.short.tmp", "x.12345678.tmp"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"partial")
    removed = ckpt.clean_temporary_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)
    assert ckpt.clean_temporary_files(tmp_path / "absent") == []


def test_a_killed_atomic_write_leaves_a_file_that_clean_removes(tmp_path):
    # a write killed after mkstemp: the temporary name atomic_write uses
    script = ("import os, fnn.train.checkpoint as c\n"
              "os.fsync = lambda fd: os._exit(9)\n"
              f"c.atomic_write({str(tmp_path / 'latest.safetensors')!r}, b'x' * 1000)\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", script], env=env)
    assert proc.returncode == 9
    names = [p.name for p in tmp_path.iterdir()]
    assert len(names) == 1 and names[0].startswith(".latest.safetensors.")
    assert [p.name for p in ckpt.clean_temporary_files(tmp_path)] == names
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "ro" / "latest.safetensors"
    fnn.save_weights(target, {"w": np.ones(3, np.float32)})
    before = target.read_bytes()
    os.chmod(tmp_path / "ro", 0o500)
    try:
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (see the tmpfs test)")
        with pytest.raises(ckpt.WriteError, match="cannot write .*latest.safetensors"):
            fnn.save_weights(target, {"w": np.zeros(3, np.float32)})
    finally:
        os.chmod(tmp_path / "ro", 0o700)
    assert target.read_bytes() == before


@pytest.fixture
def small_tmpfs(tmpfs):
    """A 256 KiB tmpfs (root only; skipped elsewhere)."""
    return tmpfs("256k")


def test_disk_full_names_the_file_and_keeps_earlier_checkpoints(small_tmpfs):
    folder = small_tmpfs / "checkpoints"
    small = {"w": np.arange(1000, dtype=np.float32)}  # 4 KB
    fnn.save_weights(folder / "best.safetensors", small)
    fnn.save_weights(folder / "latest.safetensors", small)
    big = {"w": np.ones(200_000, np.float32)}  # 800 KB: does not fit in 256 KiB
    with pytest.raises(ckpt.WriteError) as info:
        fnn.save_weights(folder / "latest.safetensors", big)
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert str(folder / "latest.safetensors") in message and "unchanged" in message
    assert sorted(p.name for p in folder.iterdir()) == ["best.safetensors", "latest.safetensors"]
    for name in ("best", "latest"):
        params, _ = fnn.load_weights(folder / f"{name}.safetensors")
        np.testing.assert_array_equal(params["w"], small["w"])


def test_load_refuses_weights_that_do_not_fit_the_saved_architecture(tmp_path):
    net = fnn.serial(fnn.Dense(4, name="hidden"), fnn.Relu, fnn.Dense(3))
    other = fnn.serial(fnn.Dense(6, name="hidden"), fnn.Relu, fnn.Dense(3))
    _, params, state = other.init(jax.random.key(0), (-1, 5))
    fnn.save(tmp_path / "m.safetensors", net, params, state, input_shape=[-1, 5])
    with pytest.raises(ckpt.CheckpointError, match=r"m.safetensors: layer 'dense_0' parameter 'w' "
                                                   r"has shape \(6, 3\) in the checkpoint, but the "
                                                   r"network needs \(4, 3\)"):
        fnn.load(tmp_path / "m.safetensors")


def test_every_dtype_round_trips_verified(tmp_path):
    arrays = {name: np.arange(6).reshape(2, 3).astype(name)
              for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
                           "uint8", "uint16", "uint32", "uint64", "bool")}
    arrays["scalar"] = np.float32(2.5)
    arrays["big_endian"] = np.arange(3, dtype=">i4")
    ckpt.save_tree(tmp_path / "t.safetensors", {"a": arrays, "key": jax.random.key(3)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ckpt.load_tree(tmp_path / "t.safetensors")
    for name, value in arrays.items():
        np.testing.assert_array_equal(got[f"a/{name}"], value)
        assert got[f"a/{name}"].shape == np.shape(value)
    np.testing.assert_array_equal(got["key"], jax.random.key_data(jax.random.key(3)))
