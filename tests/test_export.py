"""fnn.export: StableHLO exports run in a fresh process without the network's code, equal predict.

The reference is ``fnn.train.predict`` (inference mode) in this process; the exported files are
read back in fresh processes: one that imports only jax (not fnn), reading the documented file
layout with ``jax.export.deserialize``, and one that uses ``fnn.load_exported`` without ever
building the network or reading its config.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import fnn
from fnn.export import ExportError
from fnn.train.checkpoint import save

INPUT = {"mlp": (-1, 6), "cnn": (-1, 8, 8, 2), "lstm": (-1, 5, 3), "bilstm": (-1, 5, 3),
         "gru": (-1, 5, 3)}


def _nets():
    return {
        "mlp": fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dropout(0.5), fnn.Dense(3)),
        "cnn": fnn.serial(fnn.Conv2D(4, 3), fnn.BatchNorm(), fnn.Relu, fnn.Dropout(0.3),
                          fnn.MaxPool2D(2), fnn.Flatten(), fnn.Dense(3)),
        "lstm": fnn.serial(fnn.LSTM(4, return_sequences=False), fnn.Dense(2)),
        "bilstm": fnn.serial(fnn.Bidirectional(fnn.LSTM(4)), fnn.StripMask(), fnn.Dense(2)),
        "gru": fnn.GRU(4),
    }


def _weights(net, shape, seed=0):
    """Params, and state with running statistics that are not the initial 0 and 1."""
    _, params, state = net.init(jax.random.key(seed), shape)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda a: np.asarray(rng.uniform(0.5, 1.5, a.shape), a.dtype), state)
    return params, state


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each net exported to a file, with an input batch of 5 and predict's outputs on it."""
    folder = tmp_path_factory.mktemp("exports")
    out = {}
    for name, net in _nets().items():
        params, state = _weights(net, INPUT[name])
        fnn.export(net, params, state, INPUT[name], path=folder / f"{name}.stablehlo")
        x = np.random.default_rng(1).normal(size=(5, *INPUT[name][1:])).astype(np.float32)
        np.save(folder / f"{name}.x.npy", x)
        out[name] = fnn.train.predict(net, params, state, x)
    return folder, out


def _run(script: str, folder) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: np.load(folder / f"{name}.y.npy") for name in INPUT}


def test_a_fresh_process_with_only_jax_runs_the_exports(exported):
    folder, want = exported
    got = _run("""
        import json, struct, sys
        from pathlib import Path
        import numpy as np, jax.export
        folder = Path(sys.argv[1])
        for name in ("mlp", "cnn", "lstm", "bilstm", "gru"):
            data = (folder / f"{name}.stablehlo").read_bytes()
            assert data.startswith(b"FNNEXPORT\\n")
            (size,) = struct.unpack("<Q", data[10:18])
            header = json.loads(data[18:18 + size])
            assert header["input"]["shape"][0] == "batch", header
            exp = jax.export.deserialize(bytearray(data[18 + size:]))
            np.save(folder / f"{name}.y.npy", np.asarray(exp.call(np.load(folder / f"{name}.x.npy"))))
        assert not any(m == "fnn" or m.startswith("fnn.") for m in sys.modules), "fnn was imported"
    """, folder)
    for name in INPUT:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_load_exported_runs_them_in_a_fresh_process(exported):
    """Given nothing but the files: no network, no spec, no config."""
    folder, want = exported
    got = _run("""
        import sys
        from pathlib import Path
        import numpy as np
        from fnn.export import load_exported
        folder = Path(sys.argv[1])
        for name in ("mlp", "cnn", "lstm", "bilstm", "gru"):
            model = load_exported(folder / f"{name}.stablehlo")
            np.save(folder / f"{name}.y.npy", model(np.load(folder / f"{name}.x.npy")))
    """, folder)
    for name in INPUT:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_the_header_records_the_signature_and_the_version(exported):
    folder, _ = exported
    model = fnn.load_exported(folder / "cnn.stablehlo")
    assert model.signature["input"] == {"shape": ["batch", 8, 8, 2], "dtype": "float32"}
    assert model.signature["outputs"] == [{"shape": ["batch", 3], "dtype": "float32"}]
    assert model.signature["fnn_version"] == fnn.__version__
    assert model.signature["jax_version"] == jax.__version__


def test_inference_mode_dropout_off_and_running_statistics():
    """Independent of predict: batch norm's output is (x - running mean) / sqrt(running var + eps)."""
    net = fnn.serial(fnn.Dropout(0.9), fnn.BatchNorm(use_scale=False, use_offset=False))
    params, state = _weights(net, (-1, 3))
    model = fnn.export(net, params, state, (-1, 3))
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    s = state["batch_norm_0"]
    want = (x - s["mean"]) / np.sqrt(s["var"] + 1e-5)
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)


def test_a_fixed_batch_export_takes_only_that_batch():
    net = fnn.Dense(2)
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    model = fnn.export(net, params, state, (-1, 3), batch=4)
    assert model.signature["input"]["shape"] == [4, 3]
    assert model(np.ones((4, 3), np.float32)).shape == (4, 2)
    with pytest.raises(Exception):
        model(np.ones((5, 3), np.float32))


def test_token_ids_export_with_an_integer_input():
    net = fnn.serial(fnn.Embedding(5, 3), fnn.GRU(2, return_sequences=False))
    _, params, state = net.init(jax.random.key(0), (-1, 4))
    model = fnn.export(net, params, state, (-1, 4), dtype="int32")
    ids = np.array([[0, 1, 4, 2]], np.int32)
    np.testing.assert_allclose(model(ids), fnn.train.predict(net, params, state, ids), atol=1e-6)


def test_an_export_that_differs_from_predict_is_not_written(tmp_path, monkeypatch):
    net = fnn.Dense(2)
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    predict_module = sys.modules["fnn.train.predict"]
    original = predict_module.predict
    monkeypatch.setattr(predict_module, "predict",
                        lambda *a, **k: original(*a, **k) + 1e-3)
    with pytest.raises(ExportError, match=r"at batch 1, output 0 differs from predict by 0\.001"):
        fnn.export(net, params, state, (-1, 3), path=tmp_path / "m.stablehlo")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"input_shape": (3, 4)}, r"-1 for the batch"),
    ({"input_shape": ((-1, 4), (-1, 2))}, r"one shape"),
    ({"batch": 0}, r"batch must be 'dynamic' or a positive int"),
    ({"format": "tflite"}, r"format must be 'stablehlo' or 'onnx'"),
])
def test_bad_arguments_are_one_line(kwargs, message):
    net = fnn.Dense(2)
    _, params, state = net.init(jax.random.key(0), (-1, 4))
    args = {"input_shape": (-1, 4), **kwargs}
    with pytest.raises(ExportError, match=message) as e:
        fnn.export(net, params, state, **args)
    assert "\n" not in str(e.value)


def test_a_damaged_file_is_refused_naming_it(tmp_path):
    net = fnn.Dense(2)
    _, params, state = net.init(jax.random.key(0), (-1, 4))
    path = tmp_path / "m.stablehlo"
    fnn.export(net, params, state, (-1, 4), path=path)
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"m\.stablehlo: the payload is damaged"):
        fnn.load_exported(path)
    path.write_bytes(b"not an export")
    with pytest.raises(ExportError, match="not an fnn export"):
        fnn.load_exported(path)


def test_the_cli_exports_a_checkpoint(tmp_path, capsys):
    from fnn.cli import main

    net = fnn.serial(fnn.Dense(4), fnn.BatchNorm(), fnn.Relu, fnn.Dense(2))
    params, state = _weights(net, (-1, 3))
    save(tmp_path / "model.safetensors", net, params, state, input_shape=(-1, 3))
    assert main(["export", str(tmp_path / "model.safetensors")]) == 0
    model = fnn.load_exported(tmp_path / "model.stablehlo")
    x = np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)
    np.testing.assert_allclose(model(x), fnn.train.predict(net, params, state, x), atol=1e-5)
    assert main(["export", str(tmp_path / "model.safetensors"), "--batch", "0"]) == 2
    assert "--batch: must be 'dynamic' or a positive integer" in capsys.readouterr().err
    save(tmp_path / "bare.safetensors", net, params, state)
    assert main(["export", str(tmp_path / "bare.safetensors")]) == 2
    assert "no input shape stored" in capsys.readouterr().err


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("jax2onnx", reason="ONNX export needs the fnn[onnx] extra (jax2onnx)")
    ort = pytest.importorskip("onnxruntime", reason="ONNX export is checked with onnxruntime")
    net = _nets()["cnn"]
    params, state = _weights(net, INPUT["cnn"])
    fnn.export(net, params, state, INPUT["cnn"], format="onnx", path=tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 2)).astype(np.float32)
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, fnn.train.predict(net, params, state, x), rtol=1e-5, atol=1e-5)
    meta = {p.key: p.value for p in __import__("onnx").load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["fnn"])["fnn_version"] == fnn.__version__


def test_onnx_without_its_extra_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if it were not installed
    net = fnn.Dense(2)
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    with pytest.raises(ExportError, match=r"needs jax2onnx and onnxruntime \(jax2onnx is missing\): "
                                          r"pip install 'fnn\[onnx\]'"):
        fnn.export(net, params, state, (-1, 3), format="onnx")


def test_onnx_refuses_the_kinds_that_do_not_convert_by_name():
    pytest.importorskip("jax2onnx", reason="ONNX export needs the fnn[onnx] extra (jax2onnx)")
    pytest.importorskip("onnxruntime", reason="ONNX export is checked with onnxruntime")
    net = fnn.serial(fnn.Dense(3), fnn.Bidirectional(fnn.GRU(2)))
    _, params, state = net.init(jax.random.key(0), (-1, 4, 3))
    with pytest.raises(ExportError, match=r"Bidirectional layer 'bidirectional_0' cannot be "
                                          r"exported to ONNX: .*reverse scan.*'stablehlo'"):
        fnn.export(net, params, state, (-1, 4, 3), format="onnx")
