"""fsdp on a 2-D mesh (``parallel: {mode: fsdp, model: M}``): the losses of one device, the
kernels split over ``"data"`` x ``"model"``, the state per device falling as 1 / N, and a
checkpoint that resumes on a 1-D layout (issue 24).

The runs need ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts, so they
run in a subprocess: this file, run as a script, is that worker. It trains an MNIST-shaped CNN
(batch norm, dropout) and a small Transformer (``fnn.TransformerBlock``) for a few steps on the
same global batches on one device and on 4 and 8 devices with model axes of 2 and 4.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import fnn
from device_worker import run_worker
from fnn.config import ConfigError
from fnn.losses import softmax_cross_entropy
from fnn.train.parallel import DataParallel

DEVICES = 8
BATCH = 16
STEPS = 3          # on the layout under test
MORE = 2           # then resumed from its gathered copy on 8 devices, fsdp without model axis
RTOL = 1e-5
RUNS = [(4, 2), (8, 4)]  # (devices, model axis)
CONFIG = {
    "name": "circles_fsdp_model", "seed": 0,
    "model": [{"Dense": 64}, "Relu", {"Dense": 32}, "Relu", {"Dense": 2}],
    "data": {"name": "circles", "options": {"n": 96, "n_test": 40}, "validation": 32},
    "training": {"epochs": 1, "batch_size": 16},
    "parallel": {"mode": "fsdp", "model": 2},
    "output": {"plots": False, "progress": False},
}


def _nets():
    cnn = fnn.serial(fnn.Conv2D(8, 3, use_bias=False), fnn.BatchNorm(), fnn.Relu,
                     fnn.MaxPool2D(2), fnn.Conv2D(16, 3), fnn.Relu, fnn.MaxPool2D(2),
                     fnn.Flatten(), fnn.Dense(64), fnn.Relu, fnn.Dropout(0.3), fnn.Dense(10))
    transformer = fnn.serial(fnn.Dense(32), fnn.TransformerBlock(4, 64, dropout=0.1),
                             fnn.GlobalAvgPool(), fnn.Dense(10))
    return {"cnn": (cnn, (28, 28, 1)), "transformer": (transformer, (8, 16))}


def _batches(shape, steps):
    rng = np.random.default_rng(0)
    return [{"x": rng.random((BATCH, *shape)).astype(np.float32),
             "y": rng.integers(0, 10, size=BATCH).astype(np.int32)} for _ in range(steps)]


def _train(dp, net, ts, batches, opt):
    from fnn.train import train_step_fn

    step = dp.compile_step(train_step_fn(dp.prepare_net(net), softmax_cross_entropy, opt,
                                         axis_name=dp.axis_name))
    ts, losses = dp.place(ts), []
    for batch in batches:
        ts, m = step(ts, dp.put_batch(batch))
        losses.append(float(m["loss"]))
    return losses, ts


def _start(name):
    from fnn.train import init_train_state

    net, shape = _nets()[name]
    opt = optax.adam(1e-2)
    _, ts = init_train_state(net, opt, (-1, *shape), jax.random.key(0))
    return net, shape, opt, ts


# --------------------------------------------------------------------------- the worker

def _worker(out: Path) -> None:
    from fnn.config import parse_config
    from fnn.run import train as train_run
    from fnn.train.sharding import bytes_per_device

    assert jax.device_count() == DEVICES, jax.devices()
    report: dict = {"losses": {}, "shards": {}, "bytes": {}, "leaves": {}}
    for name in _nets():
        net, shape, opt, ts = _start(name)
        batches = _batches(shape, STEPS + MORE)
        report["losses"][f"{name} 1"] = _train(DataParallel("none"), net, ts, batches, opt)[0]
        report["leaves"][name] = [[list(a.shape), a.dtype.itemsize] for a in
                                  jax.tree_util.tree_leaves((ts.params, ts.opt_state))]
        for n, m in RUNS:
            dp = DataParallel("fsdp", n, model=m)
            losses, placed = _train(dp, net, _start(name)[3], batches[:STEPS], opt)
            key = f"{name} {n} {m}"
            report["shards"][key] = jax.tree_util.tree_map(
                lambda a: sorted({tuple(s.data.shape) for s in a.addressable_shards}),
                placed.params)
            report["bytes"][key] = max(bytes_per_device((placed.params,
                                                         placed.opt_state)).values())
            if (n, m) == (8, 4):  # a checkpoint's whole copy, resumed on a 1-D fsdp layout
                whole = dp.gather(placed)
                losses += _train(DataParallel("fsdp", 8), net, whole, batches[STEPS:], opt)[0]
            report["losses"][key] = losses
    logged: list[str] = []
    cfg = parse_config(CONFIG, [f"output.dir={out / 'config_run'}"])
    train_run(cfg, log=logged.append)
    report["log"] = logged
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    sys.exit(0)


# --------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return run_worker(__file__, tmp_path_factory.mktemp("fsdp_model"), DEVICES)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
@pytest.mark.parametrize("n,m", RUNS)
def test_losses_on_a_2d_mesh_equal_one_device(report, name, n, m):
    one = report["losses"][f"{name} 1"]
    got = report["losses"][f"{name} {n} {m}"]
    np.testing.assert_allclose(got, one[:len(got)], rtol=RTOL)


def test_the_gathered_2d_state_resumes_on_a_1d_layout(report):
    for name in _nets():
        got = report["losses"][f"{name} 8 4"]
        assert len(got) == STEPS + MORE
        np.testing.assert_allclose(got, report["losses"][f"{name} 1"], rtol=RTOL)


def test_kernels_split_output_features_over_model_and_another_axis_over_data(report):
    cnn = report["shards"]["cnn 4 2"]  # a mesh of 2 data x 2 model devices
    assert cnn["dense_0"]["w"] == [[392, 32]]             # (784, 64): 784 / 2, 64 / 2
    assert cnn["conv2d_1"]["w"] == [[3, 3, 4, 8]]         # (3, 3, 8, 16): 8 / 2, 16 / 2
    assert cnn["conv2d_0"]["w"] == [[3, 3, 1, 8]]         # 72 elements: replicated
    assert cnn["conv2d_1"]["b"] == [[16]]                 # 1-D and small: replicated
    assert report["shards"]["cnn 8 4"]["dense_0"]["w"] == [[392, 16]]   # 2 data x 4 model
    block = report["shards"]["transformer 8 4"]["transformer_block_0"]
    assert block["attention"]["w_q"] == [[16, 8]]         # (32, 32): 32 / 2, 32 / 4
    assert block["mlp_in"]["w"] == [[16, 16]]             # (32, 64)
    assert block["mlp_out"]["w"] == [[32, 8]]             # (64, 32)


@pytest.mark.parametrize("name", ["cnn", "transformer"])
@pytest.mark.parametrize("n,m", RUNS)
def test_state_per_device_falls_as_one_over_the_device_count(report, name, n, m):
    # every leaf of 1,024 elements or more divides over both axes in these nets: 1 / n of it
    # per device; the rest (biases, norms, Adam's count) whole on every device
    want = sum(np.prod(shape, dtype=int) * size / (n if np.prod(shape) >= 1024 else 1)
               for shape, size in report["leaves"][name])
    assert report["bytes"][f"{name} {n} {m}"] == want


def test_a_config_run_logs_the_mesh_and_the_state_per_device(report):
    log = "\n".join(report["log"])
    # a batch of 16 over 4 rows of the mesh: 4 examples on each device
    assert ("data parallel: fsdp over 8 devices (mesh 4 data x 2 model), 4 examples per device "
            "per step") in log
    assert "params and optimizer state:" in log and "MiB per device (max over 8)" in log


def test_bad_model_axes_are_named():
    with pytest.raises(ConfigError, match=r"parallel.model: a model axis \(2\) needs "
                                          r"parallel.mode fsdp, got 'mesh'"):
        DataParallel("mesh", model=2)
    with pytest.raises(ConfigError, match="parallel.model: must be a positive int, got 0"):
        DataParallel("fsdp", model=0)
    n = jax.local_device_count()
    devices = "1 device" if n == 1 else f"{n} devices"
    with pytest.raises(ConfigError, match=f"parallel.model: {n + 1} does not divide the "
                                          f"{devices}; use one of 1"):
        DataParallel("fsdp", model=n + 1)
    assert DataParallel("fsdp", model=1).mesh.axis_names == ("data",)  # today's fsdp


def test_a_config_with_a_bad_model_axis_names_the_key():
    from fnn.config import parse_config
    from fnn.run import data_parallel

    with pytest.raises(ConfigError, match="parallel.model: a model axis"):
        data_parallel(parse_config({**CONFIG, "parallel": {"mode": "mesh", "model": 2}}))
