"""Device-count invariance: dropout, batch norm and augmentation give the same losses on 1, 2
and 4 devices in every parallel mode (issue 24); fsdp shards the state and gathers it whole.

The 4-device runs need ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` before JAX
starts, so they run in a subprocess: this file, run as a script, is that worker. It trains a
CNN with batch norm, max-pooling and dropout, and an MLP with dropout on augmented images, for
``STEPS`` steps on the same global batches on 1 device (mode ``none``) and on 2 and 4 devices
(``pmap``, ``mesh``, ``fsdp``), and reports the losses. The runs are in float64
(``jax_enable_x64``, float64 params), where rounding is ~1e-16: in float32 the CNN's runs part
after 5 to 10 steps by rounding amplified by training, which would hide a real difference.
Before per-example keys, ``pmap`` drew its dropout masks and augmentations per device and its
losses differed by percents. (Before max-pooling's gradient was found by ``argmax``, float64
runs of the MNIST CNN parted after one step; tests/test_pooling.py checks that on its own.)
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
from fnn.losses import softmax_cross_entropy

DEVICES = 4
BATCH = 8
STEPS = 20
RTOL = 1e-5  # the agreement issue 24 asks for; float64 runs agree to ~1e-12
RUNS = [(1, "none")] + [(n, mode) for n in (2, 4) for mode in ("pmap", "mesh", "fsdp")]


def _nets():
    cnn = fnn.serial(fnn.Conv2D(4, 3), fnn.BatchNorm(), fnn.Relu, fnn.MaxPool2D(2),
                     fnn.Flatten(), fnn.Dense(32), fnn.Relu, fnn.Dropout(0.3), fnn.Dense(10))
    mlp = fnn.serial(fnn.Flatten(), fnn.Dropout(0.2), fnn.Dense(32), fnn.Relu,
                     fnn.Dropout(0.2), fnn.Dense(10))
    cnn, mlp = (fnn.DtypePolicy(net, params="float64") for net in (cnn, mlp))
    from fnn.data.augment import make_augment
    return {"cnn": (cnn, None, (8, 8, 1)),
            "mlp_augment": (mlp, make_augment({"shift": 2, "rotation": 10}), (8, 8))}


def _batches(shape):
    rng = np.random.default_rng(0)
    # digits on a zero background, as in MNIST: batch norm and max-pooling see ties
    x = np.zeros((STEPS, BATCH, *shape))
    x[:, :, 2:6, 3:7] = rng.random((STEPS, BATCH, 4, 4, *shape[2:]))
    return [{"x": x[i], "y": rng.integers(0, 10, size=BATCH).astype(np.int32)}
            for i in range(STEPS)]


def _run(name, dp):
    from fnn.train import init_train_state, train_step_fn

    net, augment, shape = _nets()[name]
    opt = optax.adam(1e-2)
    _, ts = init_train_state(net, opt, (-1, *shape), jax.random.key(0))
    step = dp.compile_step(train_step_fn(dp.prepare_net(net), softmax_cross_entropy, opt,
                                         augment=augment, axis_name=dp.axis_name))
    ts, losses = dp.place(ts), []
    for batch in _batches(shape):
        ts, m = step(ts, dp.put_batch(batch))
        losses.append(float(m["loss"]))
    return losses, ts


# --------------------------------------------------------------------------- the worker

def _worker(out: Path) -> None:
    from fnn.train.parallel import DataParallel
    from fnn.train.sharding import bytes_per_device

    jax.config.update("jax_enable_x64", True)
    assert jax.device_count() == DEVICES, jax.devices()
    report: dict = {"losses": {}, "shards": {}, "bytes": {}}
    for name in _nets():
        for n, mode in RUNS:
            dp = DataParallel(mode, n)
            losses, ts = _run(name, dp)
            report["losses"][f"{name} {n} {mode}"] = losses
            if name == "cnn":
                w = ts.params["dense_0"]["w"]
                report["shards"][f"{n} {mode}"] = [list(s.data.shape) for s in
                                                   w.addressable_shards]
                report["bytes"][f"{n} {mode}"] = max(bytes_per_device(
                    (ts.params, ts.opt_state)).values())
                whole = dp.gather(ts)
                fnn.save_weights(out / f"{n}_{mode}.safetensors", whole.params,
                                 whole.model_state)
    (out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
    sys.exit(0)


# --------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("agreement")
    return out, run_worker(__file__, out, DEVICES)


@pytest.mark.parametrize("name", ["cnn", "mlp_augment"])
@pytest.mark.parametrize("n,mode", RUNS[1:])
def test_losses_agree_across_device_counts_and_modes(report, name, n, mode):
    losses = report[1]["losses"]
    one = losses[f"{name} 1 none"]
    np.testing.assert_allclose(losses[f"{name} {n} {mode}"], one, rtol=RTOL)


def test_the_one_device_run_is_the_one_computed_here(report):
    # the worker's reference is this process's run: nothing depends on the device count
    from fnn.train.parallel import DataParallel
    with jax.enable_x64(True):
        for name in _nets():
            np.testing.assert_allclose(report[1]["losses"][f"{name} 1 none"],
                                       _run(name, DataParallel("none"))[0], rtol=1e-12)


def test_randomness_is_on():
    # dropout and augmentation draw something: another seed gives another loss
    from fnn.train import init_train_state, train_step_fn
    with jax.enable_x64(True):
        _draw_twice()


def _draw_twice():
    from fnn.train import init_train_state, train_step_fn
    for name, (net, augment, shape) in _nets().items():
        batch = _batches(shape)[0]
        step = jax.jit(train_step_fn(net, softmax_cross_entropy, optax.sgd(0.0), augment=augment))
        losses = []
        for seed in (0, 1):
            _, ts = init_train_state(net, optax.sgd(0.0), (-1, *shape), jax.random.key(0))
            ts = ts._replace(rng=jax.random.key(seed))
            losses.append(float(step(ts, batch)[1]["loss"]))
        assert abs(losses[0] - losses[1]) > 1e-4, name


def test_fsdp_shards_the_kernel_and_its_adam_moments(report):
    out, r = report
    # dense_0 kernel (64, 32): split along its first axis over the devices under fsdp only
    assert r["shards"]["4 fsdp"] == [[16, 32]] * 4
    assert r["shards"]["2 fsdp"] == [[32, 32]] * 2
    assert r["shards"]["4 mesh"] == [[64, 32]] * 4
    # params + Adam moments per device: the 2048-element kernel and its two moments are split
    saved = 3 * 64 * 32 * 8 * (1 - 1 / 4)  # float64
    assert r["bytes"]["4 mesh"] - r["bytes"]["4 fsdp"] == saved


@pytest.mark.parametrize("n,mode", [(2, "fsdp"), (4, "fsdp"), (4, "pmap"), (4, "mesh")])
def test_gathered_state_matches_one_device(report, n, mode):
    out, _ = report
    with jax.enable_x64(True):  # float64 files
        want_p, want_s = fnn.load_weights(out / "1_none.safetensors")
        got_p, got_s = fnn.load_weights(out / f"{n}_{mode}.safetensors")
    for got, want in ((got_p, want_p), (got_s, want_s)):
        jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-9,
                                                                       atol=1e-8), got, want)
