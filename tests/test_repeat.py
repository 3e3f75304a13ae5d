"""Tests for fnn.layers.repeated: a scanned stack equals the unrolled ``serial`` of its copies.

The reference for every check is the unrolled network: ``serial`` of ``n`` copies of the same
layer, given copy ``i``'s params sliced out of the stacked ones, and (for randomness) the key
``jax.random.split(rng, n)[i]``, which is the key ``serial`` gives its ``i``-th child.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fnn
from fnn.core import LayerError

N = 4


def _slice(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def _unrolled(block, n, stacked):
    """``serial`` of ``n`` copies of ``block`` and its params/state built from stacked ones."""
    net = fnn.serial(*[block] * n)
    keys = [f"{fnn.core.snake_case(block.kind)}_{i}" for i in range(n)]
    per_copy = {k: _slice(stacked, i) for i, k in enumerate(keys)}
    return net, {k: v for k, v in per_copy.items() if v}


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_params_are_stacked_from_distinct_keys():
    net = fnn.repeat(fnn.serial(fnn.Dense(5), fnn.Tanh), N)
    out_shape, params, state = net.init(jax.random.key(0), (-1, 5))
    assert out_shape == (-1, 5) and state == {}
    assert params["dense_0"]["w"].shape == (N, 5, 5)
    assert params["dense_0"]["b"].shape == (N, 5)
    # copy i is the child's own init with key split(rng, N)[i]
    for i, k in enumerate(jax.random.split(jax.random.key(0), N)):
        _, p, _ = fnn.serial(fnn.Dense(5), fnn.Tanh).init(k, (-1, 5))
        np.testing.assert_array_equal(params["dense_0"]["w"][i], p["dense_0"]["w"])


def test_output_and_gradients_equal_unrolled_serial():
    block = fnn.serial(fnn.Dense(6), fnn.Tanh)
    net = fnn.repeat(block, N)
    _, params, state = net.init(jax.random.key(1), (-1, 6))
    ref, ref_params = _unrolled(block, N, params)
    x = _x((3, 6))

    def loss(apply, p):
        return jnp.sum(apply(p, {}, x)[0] ** 2)

    y, _ = net.apply(params, state, x)
    y_ref, _ = ref.apply(ref_params, {}, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda p: loss(net.apply, p))(params)
    g_ref = jax.grad(lambda p: loss(ref.apply, p))(ref_params)
    for i in range(N):
        for leaf in ("w", "b"):
            np.testing.assert_allclose(g["dense_0"][leaf][i], g_ref[f"serial_{i}"]["dense_0"][leaf],
                                       rtol=1e-5, atol=1e-6)


def test_batch_norm_state_is_stacked_and_updated_per_copy():
    block = fnn.serial(fnn.Dense(4), fnn.BatchNorm(momentum=0.5), fnn.Relu)
    net = fnn.repeat(block, 3)
    _, params, state = net.init(jax.random.key(2), (-1, 4))
    assert state["batch_norm_0"]["mean"].shape == (3, 4)
    ref, ref_params = _unrolled(block, 3, params)
    ref_state = {f"serial_{i}": _slice(state, i) for i in range(3)}
    x = _x((8, 4), 1)
    y, new_state = net.apply(params, state, x, train=True)
    y_ref, new_ref = ref.apply(ref_params, ref_state, x, train=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    for i in range(3):
        for stat in ("mean", "var"):
            np.testing.assert_allclose(new_state["batch_norm_0"][stat][i],
                                       new_ref[f"serial_{i}"]["batch_norm_0"][stat], rtol=1e-6)
    # the copies saw different inputs, so their statistics differ
    assert not np.allclose(new_state["batch_norm_0"]["mean"][0], new_state["batch_norm_0"]["mean"][1])
    # eval mode uses the running statistics and leaves them alone
    y_eval, same = net.apply(params, new_state, x, train=False)
    y_eval_ref, _ = ref.apply(ref_params, new_ref, x, train=False)
    np.testing.assert_allclose(y_eval, y_eval_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(same["batch_norm_0"]["mean"], new_state["batch_norm_0"]["mean"])


def test_dropout_copy_i_uses_key_i_of_split():
    block = fnn.serial(fnn.Dense(16), fnn.Dropout(0.5))
    net = fnn.repeat(block, N)
    _, params, state = net.init(jax.random.key(3), (-1, 16))
    x = _x((5, 16), 2)
    rng = jax.random.key(7)
    y, _ = net.apply(params, state, x, rng=rng, train=True)
    # by hand: copy i gets split(rng, N)[i]
    h = x
    for i, k in enumerate(jax.random.split(rng, N)):
        h, _ = block.apply(_slice(params, i), {}, h, rng=k, train=True)
    np.testing.assert_allclose(y, h, rtol=1e-6, atol=1e-6)
    # which is also what the unrolled serial does with the same rng
    ref, ref_params = _unrolled(block, N, params)
    y_ref, _ = ref.apply(ref_params, {}, x, rng=rng, train=True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    # distinct masks per copy: the zero patterns of two copies of Dropout on ones differ
    drop = fnn.repeat(fnn.Dropout(0.5), 2)
    masks = [fnn.Dropout(0.5).apply({}, {}, jnp.ones((64,)), rng=k, train=True)[0] > 0
             for k in jax.random.split(rng, 2)]
    assert not np.array_equal(masks[0], masks[1])
    z, _ = drop.apply({}, {}, jnp.ones((64,)), rng=rng, train=True)
    np.testing.assert_array_equal(np.asarray(z) > 0, masks[0] & masks[1])
    # without train, dropout is the identity and needs no rng
    np.testing.assert_allclose(net.apply(params, state, x)[0], ref.apply(ref_params, {}, x)[0],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options", [{"unroll": 3}, {"remat": True}, {"unroll": 2, "remat": True}])
def test_unroll_and_remat_do_not_change_results(options):
    block = fnn.serial(fnn.Dense(6), fnn.Tanh)
    plain = fnn.repeat(block, 5)
    other = fnn.repeat(block, 5, **options)
    _, params, _ = plain.init(jax.random.key(4), (-1, 6))
    x = _x((2, 6), 3)
    f = lambda net: jax.value_and_grad(lambda p: jnp.sum(net.apply(p, {}, x)[0] ** 2))(params)
    (v, g), (v2, g2) = f(plain), f(other)
    np.testing.assert_allclose(v, v2, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g, g2)


def test_remat_rematerialises_each_copy():
    net = fnn.repeat(fnn.serial(fnn.Dense(6), fnn.Tanh), 3, remat=True)
    _, params, _ = net.init(jax.random.key(0), (-1, 6))
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: jnp.sum(net.apply(p, {}, jnp.ones((2, 6)))[0])))(params))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_summary_has_one_row_with_the_count():
    net = fnn.serial(fnn.Dense(8), fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Tanh), 100))
    s = fnn.summary(net, (-1, 8))
    row = next(r for r in s.rows if r.kind == "Repeat x100")
    assert row.params == 100 * (8 * 8 + 8)
    # the repeated block adds no level: its path (and its layers') is the params path
    block = next(r for r in s.rows if r.kind == "serial" and r.path == row.path)
    assert block.params == 8 * 8 + 8   # one copy
    assert [r.name for r in s.rows if r.kind == "Dense"] == ["serial/dense_0",
                                                             "serial/repeat_0/dense_0"]
    assert s.trainable_params == 40 * 0 + (8 * 8 + 8) * 101
    assert "Repeat x100" in str(s)


def test_spec_config_and_save_load_roundtrip(tmp_path):
    spec = [{"Dense": 8},
            {"Repeat": {"times": 6, "layer": [{"Dense": 8}, "Tanh"], "unroll": 2}},
            {"Dense": 2}]
    net = fnn.from_spec(spec)
    _, params, state = net.init(jax.random.key(5), (-1, 3))
    assert params["repeat_0"]["dense_0"]["w"].shape == (6, 8, 8)
    assert fnn.from_spec(net.spec).spec == net.spec
    x = _x((4, 3), 4)
    fnn.save(tmp_path / "deep.safetensors", net, params, state)
    net2, params2, state2 = fnn.load(tmp_path / "deep.safetensors")
    np.testing.assert_array_equal(net.apply(params, state, x)[0], net2.apply(params2, state2, x)[0])


def test_weights_only_l2_covers_every_stacked_kernel():
    net = fnn.repeat(fnn.serial(fnn.Dense(4), fnn.Tanh), 7)
    _, params, _ = net.init(jax.random.key(6), (-1, 4))
    params = jax.tree_util.tree_map(lambda a: a + 0.5, params)   # nonzero biases
    w = np.asarray(params["dense_0"]["w"], np.float64)
    np.testing.assert_allclose(fnn.regularizers.l2(params), np.sum(w ** 2), rtol=1e-5)
    np.testing.assert_allclose(fnn.regularizers.l2(params, select=["dense_0"]), np.sum(w ** 2),
                               rtol=1e-5)


def test_freezing_a_repeated_block_by_name():
    net = fnn.serial(fnn.repeat(fnn.Dense(4), 3, name="trunk"), fnn.Dense(2, name="head"))
    _, params, _ = net.init(jax.random.key(0), (-1, 4))
    opt = fnn.optim.make_optimizer({"name": "sgd", "learning_rate": 0.1, "freeze": ["trunk"]},
                                   params=params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    assert all(np.all(u == 0) for u in jax.tree_util.tree_leaves(updates["trunk"]))
    assert np.all(updates["head"]["w"] != 0)


def test_errors_name_the_place():
    with pytest.raises(LayerError, match=r"Repeat layer 'repeat_0'.*must keep the shape"):
        fnn.serial(fnn.repeat(fnn.Dense(3), 2)).init(jax.random.key(0), (-1, 4))
    net = fnn.serial(fnn.repeat(fnn.serial(fnn.Dense(3), fnn.Tanh), 2))
    _, params, state = net.init(jax.random.key(0), (-1, 3))
    with pytest.raises(LayerError, match=r"Dense layer 'repeat_0/dense_0'"):
        net.apply(params, state, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="times must be an int >= 1"):
        fnn.repeat(fnn.Dense(3), 0)
    with pytest.raises(ValueError, match="unroll"):
        fnn.repeat(fnn.Dense(3), 2, unroll=0)
    with pytest.raises(fnn.SpecError, match=r"model\[0\]\.Repeat\.tims: unknown argument; did you mean 'times'"):
        fnn.from_spec([{"Repeat": {"tims": 3, "layer": "Tanh"}}])


def test_layers_without_params_and_nested_repeats():
    net = fnn.repeat(fnn.Tanh, 3)
    _, params, state = net.init(jax.random.key(0), (-1, 4))
    x = _x((2, 4), 6)
    np.testing.assert_allclose(net.apply(params, state, x)[0], np.tanh(np.tanh(np.tanh(x))),
                               rtol=1e-6)
    nested = fnn.repeat(fnn.repeat(fnn.serial(fnn.Dense(4), fnn.Tanh), 3), 2)
    _, params, state = nested.init(jax.random.key(1), (-1, 4))
    assert params["dense_0"]["w"].shape == (2, 3, 4, 4)
    h = x
    for i in range(2):
        for j in range(3):
            h = np.tanh(h @ params["dense_0"]["w"][i, j] + params["dense_0"]["b"][i, j])
    np.testing.assert_allclose(nested.apply(params, state, x)[0], h, rtol=1e-5, atol=1e-6)
    assert fnn.summary(nested, (-1, 4)).trainable_params == 6 * (16 + 4)


def test_dtype_of_the_carry_follows_the_layer():
    net = fnn.repeat(fnn.Dense(3), 2)
    _, params, _ = net.init(jax.random.key(0), (-1, 3))
    y, _ = net.apply(params, {}, jnp.ones((2, 3), jnp.int32))
    assert y.dtype == jnp.float32


def test_trains_inside_a_train_step():
    net = fnn.serial(fnn.repeat(fnn.serial(fnn.Dense(8), fnn.Tanh), 10), fnn.Dense(1))
    ts = fnn.train.init_train_state(net, optax.adam(1e-2), (-1, 8), jax.random.key(0))[1]
    step = jax.jit(fnn.train.train_step_fn(net, fnn.losses.mse, optax.adam(1e-2)))
    x = _x((32, 8), 5)
    batch = {"x": x, "y": jnp.sum(x, axis=1, keepdims=True) * 0.1}
    first = None
    for _ in range(30):
        ts, m = step(ts, batch)
        first = float(m["loss"]) if first is None else first
    assert float(m["loss"]) < 0.5 * first


def test_compile_time_at_10_and_1000_copies(capsys):
    """Prints the compile time of a train-step gradient at n=10 and n=1000 (no timed assertion)."""
    times = {}
    for n in (10, 1000):
        net = fnn.repeat(fnn.serial(fnn.Dense(16), fnn.Tanh), n)
        _, params, _ = net.init(jax.random.key(0), (-1, 16))
        grad = jax.jit(jax.grad(lambda p: jnp.sum(net.apply(p, {}, jnp.ones((4, 16)))[0] ** 2)))
        start = time.perf_counter()
        grad.lower(params).compile()
        times[n] = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nrepeat compile time (trace + XLA): n=10 {times[10]:.2f}s, n=1000 {times[1000]:.2f}s")
