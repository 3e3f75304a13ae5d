"""Tests for fnn.diagnostics: activation statistics on layers built to be dead / saturated,
gradient and weight norms against direct computations on the unrolled network, run logging."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.diagnostics import Diagnostics, gradient_flow

LOSS = fnn.losses.softmax_cross_entropy


def _data(n=16, d=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(np.arange(n) % classes)


@pytest.mark.parametrize("bias,dead", [(-1.0, 1.0), (1.0, 0.0)])
def test_dead_relu_fraction(bias, dead):
    # zero weights: every pre-activation equals the bias, all negative or all positive
    net = fnn.serial(fnn.Dense(5, w_init="zeros", b_init=bias), fnn.Relu, fnn.Dense(3))
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    flow = gradient_flow(net, params, state, _data(), LOSS)
    assert float(flow["relu_0"].stats["dead_fraction"]) == dead


def test_dead_relu_counts_units_dead_for_the_whole_batch():
    # units 0 and 1 get a positive bias, 2..4 a negative one: 3 of 5 units are dead
    net = fnn.serial(fnn.Dense(5, w_init="zeros", b_init=0.0), fnn.Relu, fnn.Dense(3))
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    params["dense_0"]["b"] = jnp.array([1.0, 0.5, -1.0, -0.5, -2.0])
    flow = gradient_flow(net, params, state, _data(), LOSS)
    np.testing.assert_allclose(flow["relu_0"].stats["dead_fraction"], 3 / 5, rtol=1e-6)


@pytest.mark.parametrize("act,bias,saturated", [("Tanh", 5.0, 1.0), ("Tanh", 0.0, 0.0),
                                                ("Sigmoid", -8.0, 1.0), ("Sigmoid", 0.0, 0.0)])
def test_saturated_fraction(act, bias, saturated):
    net = fnn.serial(fnn.Dense(5, w_init="zeros", b_init=bias), getattr(fnn, act), fnn.Dense(3))
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    flow = gradient_flow(net, params, state, _data(), LOSS)
    assert float(flow[f"{act.lower()}_0"].stats["saturated_fraction"]) == saturated


def test_norms_per_copy_match_the_unrolled_network():
    block = fnn.serial(fnn.Dense(6), fnn.Tanh)
    net = fnn.serial(fnn.repeat(block, 5), fnn.Dense(3))
    _, params, state = net.init(jax.random.key(1), (-1, 6))
    x, y = _data()
    flow = gradient_flow(net, params, state, (x, y), LOSS, lr=0.1)

    # reference: the unrolled serial with copy i's params, differentiated directly
    unrolled = fnn.serial(*[block] * 5, fnn.Dense(3))
    ref_params = {f"serial_{i}": jax.tree_util.tree_map(lambda a: a[i], params["repeat_0"])
                  for i in range(5)}
    ref_params["dense_0"] = params["dense_0"]
    grads = jax.grad(lambda p: LOSS(unrolled.apply(p, {}, x)[0], y))(ref_params)
    g_ref = np.array([np.linalg.norm(grads[f"serial_{i}"]["dense_0"]["w"]) for i in range(5)])
    w_ref = np.array([np.linalg.norm(ref_params[f"serial_{i}"]["dense_0"]["w"]) for i in range(5)])
    rep = flow["repeat_0/dense_0"]
    assert rep.copies == (5,) and rep.kind == "Dense"
    np.testing.assert_allclose(rep.stats["grad_norm"], g_ref, rtol=1e-4)
    np.testing.assert_allclose(rep.stats["weight_norm"], w_ref, rtol=1e-5)
    np.testing.assert_allclose(rep.stats["update_ratio"], 0.1 * g_ref / w_ref, rtol=1e-4)
    np.testing.assert_allclose(flow["dense_0"].stats["grad_norm"],
                               np.linalg.norm(grads["dense_0"]["w"]), rtol=1e-4)
    # depth profile: the 5 copies in order, then the head
    np.testing.assert_allclose(flow.profile("grad_norm"),
                               [*g_ref, np.linalg.norm(grads["dense_0"]["w"])], rtol=1e-4)
    # the walk reproduces the forward pass: the last layer's rms is the output's
    out = net.apply(params, state, x)[0]
    np.testing.assert_allclose(flow["dense_0"].stats["rms"], np.sqrt(np.mean(np.square(out))),
                               rtol=1e-5)
    # JSON records summarise copies as quantiles over depth
    record = next(r for r in flow.records() if r["layer"] == "repeat_0/dense_0")
    assert record["copies"] == 5
    np.testing.assert_allclose(record["grad_norm"]["q0"], g_ref.min(), rtol=1e-4)
    np.testing.assert_allclose(record["grad_norm"]["q100"], g_ref.max(), rtol=1e-4)
    np.testing.assert_allclose(record["grad_norm"]["q50"], np.median(g_ref), rtol=1e-4)


def test_update_ratio_from_the_optimizer_update():
    net = fnn.serial(fnn.Dense(4), fnn.Relu, fnn.Dense(3))
    _, params, state = net.init(jax.random.key(2), (-1, 6))
    opt = optax.sgd(0.05)
    flow_opt = fnn.diagnostics.make_gradient_flow(net, LOSS, optimizer=opt)(
        params, state, _data(), opt_state=opt.init(params))
    flow_lr = gradient_flow(net, params, state, _data(), LOSS, lr=0.05)
    for layer in ("dense_0", "dense_1"):
        np.testing.assert_allclose(flow_opt[layer].stats["update_ratio"],
                                   flow_lr[layer].stats["update_ratio"], rtol=1e-5)


def test_diagnostics_in_a_run_write_jsonl_and_figure(tmp_path):
    net = fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Tanh), 4), fnn.Dense(3))
    opt = optax.adam(1e-2)
    _, ts = fnn.train.init_train_state(net, opt, (-1, 6), jax.random.key(0))
    diag = Diagnostics(net, LOSS, opt, every=2, run_dir=tmp_path)
    x, y = _data()
    step = jax.jit(fnn.train.train_step_fn(net, LOSS, opt))
    logged = []
    for i in range(1, 6):
        ts, _ = step(ts, {"x": x, "y": y})
        if diag.due(i):
            logged.append(i)
            diag.record(ts, {"x": x, "y": y}, step=i, epoch=1)
    assert logged == [2, 4]
    assert diag.due(10, steps_done=3) and not diag.due(11, steps_done=1)   # epoch-sized calls
    lines = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 4]
    rec = lines[-1]
    assert set(rec) == {"step", "epoch", "loss", "layers", "grad_norm_by_depth"}
    assert len(rec["grad_norm_by_depth"]) == 1 + 4 + 1
    rep = next(r for r in rec["layers"] if r["layer"] == "repeat_0/dense_0")
    assert {"grad_norm", "weight_norm", "update_ratio", "rms"} <= set(rep)
    assert set(rep["grad_norm"]) == {"q0", "q25", "q50", "q75", "q100"}
    tanh = next(r for r in rec["layers"] if r["layer"] == "repeat_0/tanh_0")
    assert "saturated_fraction" in tanh
    assert (tmp_path / "gradflow.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="every must be a positive int"):
        Diagnostics(net, LOSS, opt, every=0, run_dir=None)


def test_printed_table_names_every_layer():
    net = fnn.serial(fnn.Dense(4), fnn.Relu, fnn.repeat(fnn.Dense(4), 3), fnn.Dense(3))
    _, params, state = net.init(jax.random.key(0), (-1, 6))
    text = str(gradient_flow(net, params, state, _data(), LOSS))
    for name in ("dense_0", "relu_0", "repeat_0", "dense_1", "loss"):
        assert name in text


def test_fit_writes_diagnostics_every_n_steps(tmp_path):
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 6)).astype(np.float32), "y": rng.integers(0, 3, 64)}
    net = fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Relu), 3), fnn.Dense(3))
    for mode, expected in (("step", [3, 6]), ("epoch", [4, 8])):
        out = tmp_path / mode
        fnn.train.fit(net, LOSS, optax.sgd(0.1), data, epochs=2, batch_size=16, mode=mode,
                      run=fnn.train.RunOptions(out, diagnostics=3), log=None)
        lines = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
        # step mode: at steps 3 and 6; epoch mode (4 steps an epoch): after epochs holding 3, 6
        assert [r["step"] for r in lines] == expected
        assert (out / "gradflow.png").exists()


def test_resumed_run_keeps_earlier_records_once(tmp_path):
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(64, 6)).astype(np.float32), "y": rng.integers(0, 3, 64)}
    net = fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Tanh), 3), fnn.Dense(3))
    run = dict(batch_size=16, mode="step", log=None)
    folder = fnn.train.RunOptions(tmp_path, diagnostics=3)
    resumed = fnn.train.RunOptions(tmp_path, diagnostics=3, resume=True)
    fnn.train.fit(net, LOSS, optax.sgd(0.1), data, epochs=2, run=folder, **run)  # checkpoint: step 8
    path = tmp_path / "diagnostics.jsonl"
    first = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in first] == [3, 6]
    # a record logged after the checkpoint by a run that was then killed
    path.write_text("\n".join(first + [json.dumps({"step": 9, "stale": True})]) + "\n")
    fnn.train.fit(net, LOSS, optax.sgd(0.1), data, epochs=3, run=resumed, **run)
    lines = path.read_text().splitlines()
    assert lines[:2] == first                                             # kept byte for byte
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [3, 6, 9, 12]
    assert "stale" not in records[2]
    assert not list(tmp_path.glob(".diagnostics.jsonl.*"))                # no temporary left
    path.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(ValueError, match=r"diagnostics\.jsonl: line 2: not a log record"):
        fnn.train.fit(net, LOSS, optax.sgd(0.1), data, epochs=4, run=resumed, **run)


def test_config_checks_diagnostics_every():
    from fnn.config import ConfigError, parse_config
    base = {"model": [{"Dense": 3}], "data": {"name": "xor"}}
    cfg = parse_config({**base, "training": {"diagnostics": {"every": 50}}})
    assert cfg["training"]["diagnostics"]["every"] == 50
    assert parse_config(base)["training"]["diagnostics"]["every"] is None
    with pytest.raises(ConfigError, match=r"training\.diagnostics\.every: must be >= 1"):
        parse_config({**base, "training": {"diagnostics": {"every": 0}}})
    with pytest.raises(ConfigError, match=r"training\.diagnostics\.evry"):
        parse_config({**base, "training": {"diagnostics": {"evry": 5}}})
