"""fnn.interop: PyTorch and Keras weights give the originals' outputs; fnn -> torch -> fnn is exact.

References: the PyTorch modules themselves (randomly initialised here, running statistics
randomised), and Keras models built in a subprocess with the JAX backend. The Keras file layout
is also written by hand with h5py (``layers/<name>/vars/<i>``, Keras 3's documented
``.weights.h5`` structure), so the reader is checked without Keras too.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import fnn
from fnn.interop import InteropError, from_keras, from_torch, to_torch_state_dict

torch = pytest.importorskip("torch", reason="the PyTorch references need torch (fnn[torch])")


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def _pairs():
    """(name, torch model, fnn net, fnn input shape, input batch (torch layout), to fnn layout)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    nchw = lambda x: x.transpose(0, 2, 3, 1)  # noqa: E731
    same = lambda x: x  # noqa: E731
    return [
        ("mlp", torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)),
         fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3)), (-1, 6),
         rng.normal(size=(4, 6)), same),
        ("cnn", _randomise_bn(torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.Conv2d(4, 3, 3, bias=False), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))),
         fnn.serial(fnn.Conv2D(4, 3, padding="VALID"), fnn.BatchNorm(), fnn.Relu,
                    fnn.Conv2D(3, 3, padding="VALID", use_bias=False), fnn.Flatten(), fnn.Dense(5)),
         (-1, 8, 8, 2), rng.normal(size=(3, 2, 8, 8)), nchw),
        ("lstm", torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True),
         fnn.serial(fnn.Bidirectional(fnn.LSTM(4)), fnn.Bidirectional(fnn.LSTM(4))), (-1, 5, 3),
         rng.normal(size=(2, 5, 3)), same),
        ("gru", torch.nn.GRU(3, 4, batch_first=True),
         fnn.GRU(4), (-1, 5, 3), rng.normal(size=(2, 5, 3)), same),
    ]


def _torch_out(model, x):
    with torch.no_grad():
        y = model(torch.from_numpy(x))
    return (y[0] if isinstance(y, tuple) else y).numpy()


@pytest.mark.parametrize("case", range(4), ids=["mlp", "cnn", "lstm", "gru"])
def test_torch_models_give_torchs_outputs(case):
    name, model, net, shape, x, layout = _pairs()[case]
    x = x.astype(np.float32)
    params, state, report = from_torch(net, model.state_dict(), shape)
    assert not report.new and not report.did_not_fit and not report.unused, str(report)
    y, _ = net.apply(params, state, layout(x))
    np.testing.assert_allclose(np.asarray(y), _torch_out(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a fresh process importing torch and jax: ~40 s on a loaded machine
def test_float64_to_1e_10_in_an_x64_process():
    script = textwrap.dedent("""
        import jax
        jax.config.update("jax_enable_x64", True)
        import numpy as np, torch
        import fnn
        sys_path_tests = __import__("sys").argv[1]
        __import__("sys").path.insert(0, sys_path_tests)
        import test_interop as t
        for name, model, net, shape, x, layout in t._pairs():
            model = model.double()
            params, state, _ = fnn.interop.from_torch(net, model.state_dict(), shape)
            assert all(a.dtype == np.float64 for a in jax.tree.leaves((params, state))), name
            y, _ = net.apply(params, state, layout(x))
            np.testing.assert_allclose(np.asarray(y), t._torch_out(model, x), rtol=1e-10, atol=1e-10,
                                       err_msg=name)
        print("ok")
    """)
    tests = str(__import__("pathlib").Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", script, tests], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("case", range(4), ids=["mlp", "cnn", "lstm", "gru"])
def test_fnn_to_torch_to_fnn_is_bit_exact_and_torch_runs_it(case):
    name, model, net, shape, x, layout = _pairs()[case]
    _, params, state = net.init(jax.random.key(3), shape)
    if state:
        state = jax.tree.map(lambda a: a + 0.25, state)
    sd = to_torch_state_dict(net, params, state, shape)
    back_p, back_s, report = from_torch(net, sd, shape)
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((back_p, back_s))):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    # the same modules in the same order load it (keys renamed in order) and agree with fnn
    assert [tuple(v.shape) for v in sd.values()] == [tuple(v.shape) for v in model.state_dict().values()]
    model.load_state_dict(dict(zip(model.state_dict(), sd.values())))
    x = x.astype(np.float32)
    y, _ = net.apply(params, state, layout(x))
    np.testing.assert_allclose(_torch_out(model.eval(), x), np.asarray(y), rtol=1e-5, atol=1e-5)


def test_safetensors_and_pt_files(tmp_path):
    from safetensors.numpy import save_file

    name, model, net, shape, x, layout = _pairs()[0]
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    want, _, _ = from_torch(net, model.state_dict(), shape)
    for path in (tmp_path / "m.safetensors", tmp_path / "m.pt"):
        got, _, report = from_torch(net, path, shape)
        assert len(report.copied) == 4
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(InteropError, match=r"m\.txt: expected a \.safetensors or \.pt file"):
        from_torch(net, tmp_path / "m.txt", shape)


def test_the_report_names_what_did_not_fit_what_is_new_and_what_is_unused():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 10),
                                torch.nn.Linear(10, 2))
    net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3, name="head"))
    params, _, report = from_torch(net, model.state_dict(), (-1, 6))
    assert [p for p, _ in report.copied] == ["params/dense_0/w", "params/dense_0/b"]
    assert report.did_not_fit == (("params/head/w", (8, 10), (8, 3)), ("params/head/b", (10,), (3,)))
    assert report.unused == ("3",)
    fresh = net.init(jax.random.key(0), (-1, 6))[1]
    assert np.array_equal(params["head"]["w"], fresh["head"]["w"])
    assert report.one_line() == ("copied 2 arrays from 1 source layers, 0 new, 2 did not fit: "
                                 "params/head/w, params/head/b; unused: 3")
    bigger = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(10), fnn.Dense(2), fnn.Dense(4))
    assert from_torch(bigger, model.state_dict(), (-1, 6))[2].new == ("params/dense_3/w",
                                                                      "params/dense_3/b")


def test_frozen_layers_and_dtype_policies_take_their_weights():
    model = _pairs()[0][1]
    net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
    want, _, _ = from_torch(net, model.state_dict(), (-1, 6))
    for wrapped in (fnn.freeze(net, "dense_0"), fnn.DtypePolicy(net, compute="float32")):
        got, _, report = from_torch(wrapped, model.state_dict(), (-1, 6))
        assert len(report.copied) == 4 and not report.did_not_fit, str(report)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)))


def test_a_layer_that_cannot_match_is_one_line_naming_both(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3))
    net = fnn.serial(fnn.Flatten(), fnn.Dense(4))
    with pytest.raises(InteropError) as e:
        from_torch(net, model.state_dict(), (-1, 8, 8, 2))
    assert str(e.value) == ("Dense layer 'dense_0' cannot take 0 (weight (4, 2, 3, 3), bias (4,)): "
                            "weight has 4 dimensions, 2 needed")
    with pytest.raises(InteropError, match=r"LSTM layer 'lstm' cannot take l0 .*4 gate blocks"):
        from_torch(fnn.serial(fnn.LSTM(4, name="lstm")), torch.nn.GRU(3, 4).state_dict(), (-1, 5, 3))
    with pytest.raises(InteropError, match=r"PRelu layer 'prelu_0' has no PyTorch counterpart"):
        from_torch(fnn.serial(fnn.PRelu()), {}, (-1, 3))
    with pytest.raises(InteropError, match=r"GRU\(reset_after=False\) layer 'gru_0' has no Keras"):
        h5py = pytest.importorskip("h5py", reason="Keras weight files are read with h5py")
        h5py.File(tmp_path / "empty.weights.h5", "w").close()
        from_keras(fnn.serial(fnn.GRU(2, reset_after=False)), tmp_path / "empty.weights.h5",
                   (-1, 4, 3))


# ------------------------------------------------------------------------------------- Keras

def test_a_weights_h5_written_by_hand_in_keras_layout(tmp_path):
    h5py = pytest.importorskip("h5py", reason="Keras weight files are read with h5py (fnn[keras])")
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(4, 3)), rng.normal(size=3)
    gamma, beta, mean, var = (rng.uniform(0.5, 1.5, size=3) for _ in range(4))
    kernel_1 = rng.normal(size=(3, 2))
    with h5py.File(tmp_path / "m.weights.h5", "w") as f:  # Keras 3's layers/<name>/vars/<i>
        for name, arrays in (("dense", [kernel, bias]), ("dense_1", [kernel_1]),
                             ("batch_normalization", [gamma, beta, mean, var])):
            group = f.create_group(f"layers/{name}/vars")
            for i, a in enumerate(arrays):
                group.create_dataset(str(i), data=a.astype(np.float32))
    net = fnn.serial(fnn.Dense(3), fnn.BatchNorm(), fnn.Dense(2, use_bias=False))
    params, state, report = from_keras(net, tmp_path / "m.weights.h5", (-1, 4))
    assert not report.new and not report.did_not_fit
    np.testing.assert_array_equal(params["dense_0"]["w"], kernel.astype(np.float32))
    np.testing.assert_array_equal(params["dense_1"]["w"], kernel_1.astype(np.float32))
    np.testing.assert_array_equal(state["batch_norm_0"]["var"], var.astype(np.float32))
    x = rng.normal(size=(2, 4)).astype(np.float32)
    h = x @ kernel + bias
    h = gamma * (h - mean) / np.sqrt(var + 1e-3) + beta  # Keras' epsilon is 1e-3
    y, _ = fnn.serial(fnn.Dense(3), fnn.BatchNorm(epsilon=1e-3), fnn.Dense(2, use_bias=False)).apply(
        params, state, x)
    np.testing.assert_allclose(np.asarray(y), h @ kernel_1, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a fresh process importing keras: ~1 min on a loaded machine
def test_keras_models_give_keras_outputs(tmp_path):
    if importlib.util.find_spec("keras") is None:  # imported in the subprocess, JAX backend
        pytest.skip("the Keras references need keras (test extra)")
    pytest.importorskip("h5py", reason="Keras weight files are read with h5py (fnn[keras])")
    script = textwrap.dedent("""
        import os, sys
        os.environ["KERAS_BACKEND"] = "jax"
        import keras, numpy as np
        out = sys.argv[1]
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        L = keras.layers
        mlp = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu"),
                                L.BatchNormalization(epsilon=1e-5), L.Dense(3)])
        bn = mlp.layers[1]
        bn.moving_mean.assign(rng.uniform(-1, 1, 8)); bn.moving_variance.assign(rng.uniform(0.5, 2, 8))
        seq = keras.Sequential([keras.Input((5, 3)), L.Conv1D(4, 2), L.LayerNormalization(epsilon=1e-5),
                                L.LSTM(4, return_sequences=True),
                                L.Bidirectional(L.GRU(3, return_sequences=True)), L.GRU(2)])
        for name, model, shape in (("mlp", mlp, (4, 6)), ("seq", seq, (2, 5, 3))):
            x = rng.normal(size=shape).astype("float32")
            np.save(f"{out}/{name}.x.npy", x)
            np.save(f"{out}/{name}.y.npy", np.asarray(model(x, training=False)))
            model.save_weights(f"{out}/{name}.weights.h5")
            model.save(f"{out}/{name}.keras")
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    nets = {"mlp": (fnn.serial(fnn.Dense(8), fnn.Relu, fnn.BatchNorm(), fnn.Dense(3)), (-1, 6)),
            "seq": (fnn.serial(fnn.Conv1D(4, 2, padding="VALID"), fnn.LayerNorm(), fnn.LSTM(4),
                               fnn.Bidirectional(fnn.GRU(3)), fnn.GRU(2, return_sequences=False)),
                    (-1, 5, 3))}
    for name, (net, shape) in nets.items():
        x, want = np.load(tmp_path / f"{name}.x.npy"), np.load(tmp_path / f"{name}.y.npy")
        for suffix in (".weights.h5", ".keras"):
            params, state, report = from_keras(net, tmp_path / f"{name}{suffix}", shape)
            assert not report.new and not report.did_not_fit and not report.unused, str(report)
            y, _ = net.apply(params, state, x)
            np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}{suffix}")
