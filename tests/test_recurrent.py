"""Tests for fnn.layers.recurrent: cells against NumPy equations, scan against a Python loop,
masks and lengths, reverse and bidirectional runs, shapes, gradients, compile size, errors."""

from __future__ import annotations

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn.core import LayerError, registered_layers
from fnn.layers.combinators import serial
from fnn.layers.dense import Dense
from fnn.layers.recurrent import (GRU, LSTM, RNN, Bidirectional, Cell, GRUCell, LSTMCell,
                                  SimpleRNN, SimpleRNNCell, StripMask, cell_from_spec)

F, U = 3, 4  # input features, units


@pytest.fixture(autouse=True)
def _full_float32_matmuls():
    """Compare with NumPy at 1e-6 also on GPUs, where float32 products may default to TF32."""
    with jax.default_matmul_precision("highest"):
        yield


# ------------------------------------------------------------------ NumPy reference, from the maths

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_simple(p, h, x, act=np.tanh):
    h = act(x @ p["w_x"] + h @ p["w_h"] + p["b"])
    return h, h


def np_lstm(p, carry, x):
    h, c = carry
    u = h.shape[-1]
    z = x @ p["w_x"] + h @ p["w_h"] + p["b"]
    i, f = _sigmoid(z[:, :u]), _sigmoid(z[:, u:2 * u])
    g, o = np.tanh(z[:, 2 * u:3 * u]), _sigmoid(z[:, 3 * u:])
    c = f * c + i * g
    h = o * np.tanh(c)
    return (h, c), h


def np_gru(p, h, x):
    u = h.shape[-1]
    wx, wh, b = p["w_x"], p["w_h"], p["b"]
    # Written per gate, with the weight blocks [r, z, n] cut out one by one.
    r = _sigmoid(x @ wx[:, :u] + b[:u] + h @ wh[:, :u])
    z = _sigmoid(x @ wx[:, u:2 * u] + b[u:2 * u] + h @ wh[:, u:2 * u])
    n = np.tanh(x @ wx[:, 2 * u:] + b[2 * u:] + r * (h @ wh[:, 2 * u:] + p["b_hn"]))
    h = (1.0 - z) * n + z * h
    return h, h


NP_STEP = {"SimpleRNNCell": np_simple, "LSTMCell": np_lstm, "GRUCell": np_gru}
GATES = {"SimpleRNNCell": 1, "LSTMCell": 4, "GRUCell": 3}
CELLS = {"SimpleRNNCell": SimpleRNNCell, "LSTMCell": LSTMCell, "GRUCell": GRUCell}
LAYERS = {"SimpleRNNCell": SimpleRNN, "LSTMCell": LSTM, "GRUCell": GRU}


def np_params(kind, seed, features=F, units=U, scale=0.4):
    """Small random weights (float32 values, kept in float64 for the reference)."""
    rs = np.random.RandomState(seed)
    k = GATES[kind]
    p = {"w_x": rs.uniform(-scale, scale, (features, k * units)),
         "w_h": rs.uniform(-scale, scale, (units, k * units)),
         "b": rs.uniform(-scale, scale, (k * units,))}
    if kind == "GRUCell":
        p["b_hn"] = rs.uniform(-scale, scale, (units,))
    return {key: v.astype(np.float32).astype(np.float64) for key, v in p.items()}


def to_jax(p):
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def np_zero_carry(kind, n, units=U):
    z = np.zeros((n, units))
    return (z, z.copy()) if kind == "LSTMCell" else z


def np_run(kind, p, x, mask=None, carry=None, reverse=False):
    """Loop over time; a masked step keeps the carry and outputs zeros. -> (ys, y_last, carry)."""
    n, t, _ = x.shape
    carry = np_zero_carry(kind, n) if carry is None else carry
    mask = np.ones((n, t), bool) if mask is None else mask
    ys = np.zeros((n, t, U))
    y_last = np.zeros((n, U))
    for s in (range(t - 1, -1, -1) if reverse else range(t)):
        new_carry, y = NP_STEP[kind](p, carry, x[:, s])
        m = mask[:, s][:, None]
        if kind == "LSTMCell":
            carry = (np.where(m, new_carry[0], carry[0]), np.where(m, new_carry[1], carry[1]))
        else:
            carry = np.where(m, new_carry, carry)
        ys[:, s] = np.where(m, y, 0.0)
        y_last = np.where(m, y, y_last)
    return ys, y_last, carry


def _x(seed, n, t, features=F):
    return np.random.RandomState(seed).normal(size=(n, t, features)).astype(np.float32)


def _close(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=0,
                               atol=atol)


# ------------------------------------------------------------------------------------- cells

@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_step_matches_numpy_equations(kind):
    cell = CELLS[kind](U)
    p = np_params(kind, seed=1)
    rs = np.random.RandomState(2)
    x = rs.normal(size=(5, F)).astype(np.float32)
    h = rs.uniform(-0.9, 0.9, (5, U)).astype(np.float32)
    c = rs.uniform(-2, 2, (5, U)).astype(np.float32)
    carry = (h, c) if kind == "LSTMCell" else h
    new_carry, y = cell.step(to_jax(p), jax.tree.map(jnp.asarray, carry), jnp.asarray(x))
    want_carry, want_y = NP_STEP[kind](p, jax.tree.map(np.float64, carry), x.astype(np.float64))
    _close(y, want_y)
    for got, want in zip(jax.tree.leaves(new_carry), jax.tree.leaves(want_carry)):
        _close(got, want)


def test_simple_rnn_cell_other_activation():
    p = np_params("SimpleRNNCell", seed=3)
    x = np.random.RandomState(4).normal(size=(2, F)).astype(np.float32)
    h = np.full((2, U), 0.5, np.float32)
    _, y = SimpleRNNCell(U, "relu").step(to_jax(p), jnp.asarray(h), jnp.asarray(x))
    _, want = np_simple(p, h.astype(np.float64), x.astype(np.float64), lambda v: np.maximum(v, 0))
    _close(y, want)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cell_init_names_shapes_and_initializers(kind):
    k = GATES[kind]
    params = CELLS[kind](U).init(jax.random.key(0), (-1, F))
    want = {"w_x": (F, k * U), "w_h": (U, k * U), "b": (k * U,)}
    if kind == "GRUCell":
        want["b_hn"] = (U,)
    assert jax.tree.map(jnp.shape, params) == want
    # Recurrent kernel: orthogonal per gate block; input kernel: glorot uniform per block.
    wh = np.asarray(params["w_h"], np.float64)
    for g in range(k):
        block = wh[:, g * U:(g + 1) * U]
        np.testing.assert_allclose(block.T @ block, np.eye(U), atol=1e-5)
    assert np.abs(np.asarray(params["w_x"])).max() <= np.sqrt(6.0 / (F + U))
    if k > 1:  # each block drawn on its own
        assert not np.allclose(wh[:, :U], wh[:, U:2 * U])
    b = np.asarray(params["b"])
    if kind == "LSTMCell":  # gate order i, f, g, o: forget bias in the second block
        np.testing.assert_array_equal(b[U:2 * U], 1.0)
        np.testing.assert_array_equal(np.delete(b, np.s_[U:2 * U]), 0.0)
    else:
        np.testing.assert_array_equal(b, 0.0)


def test_lstm_forget_bias_and_initial_carry():
    cell = LSTMCell(U, forget_bias=2.5)
    b = np.asarray(cell.init(jax.random.key(1), (-1, F))["b"])
    np.testing.assert_array_equal(b[U:2 * U], 2.5)
    h, c = cell.initial_carry(3)
    chex.assert_trees_all_equal((h, c), (jnp.zeros((3, U)), jnp.zeros((3, U))))
    assert cell.carry_shape() == ((-1, U), (-1, U))
    assert GRUCell(U).carry_shape(5) == (5, U)


def test_cell_spec_round_trip():
    cell = LSTMCell(8, forget_bias=0.0, w_h_init="he_normal")
    assert cell.spec == {"LSTMCell": {"units": 8, "forget_bias": 0.0, "w_h_init": "he_normal"}}
    again = cell_from_spec(cell.spec)
    assert isinstance(again, Cell) and again.spec == cell.spec
    assert GRUCell(3).spec == {"GRUCell": {"units": 3}}
    with pytest.raises(ValueError, match="unknown cell kind 'LSTM'"):
        cell_from_spec({"LSTM": {"units": 3}})


# --------------------------------------------------------------------------------- the scan

def _init_apply(layer, x, *, seed=0):
    shape = jax.tree.map(lambda a: (-1, *np.shape(a)[1:]), x)
    out_shape, params, state = layer.init(jax.random.key(seed), shape)
    y, _ = layer.apply(params, state, x)
    return out_shape, params, y


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_scan_matches_python_loop_of_cell_steps(kind):
    cell = CELLS[kind](U)
    x = jnp.asarray(_x(0, 2, 6))
    _, params, (ys, final) = _init_apply(RNN(cell, return_carry=True), x, seed=3)
    carry = cell.initial_carry(2)
    outs = []
    for t in range(x.shape[1]):
        carry, y = cell.step(params, carry, x[:, t])
        outs.append(y)
    _close(ys, jnp.stack(outs, axis=1))
    chex.assert_trees_all_close(final, carry, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_layer_matches_numpy_with_a_mask_with_holes(kind):
    p = np_params(kind, seed=5)
    x = _x(6, 3, 7)
    mask = np.random.RandomState(7).uniform(size=(3, 7)) < 0.6
    mask[2] = False  # a sequence with no real step at all
    layer = LAYERS[kind](U, return_carry=True)
    (ys, m_out), carry = layer.apply(to_jax(p), {}, (jnp.asarray(x), jnp.asarray(mask)))[0]
    want_ys, _, want_carry = np_run(kind, p, x.astype(np.float64), mask)
    _close(ys, want_ys, atol=2e-6)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry)):
        _close(got, want, atol=2e-6)
    assert m_out is not None and np.array_equal(np.asarray(m_out), mask)
    np.testing.assert_array_equal(np.asarray(ys)[~mask], 0.0)  # masked steps output zeros
    last, _ = LAYERS[kind](U, return_sequences=False).apply(to_jax(p), {},
                                                            (jnp.asarray(x), jnp.asarray(mask)))
    _close(last, np_run(kind, p, x.astype(np.float64), mask)[1], atol=2e-6)
    np.testing.assert_array_equal(np.asarray(last)[2], 0.0)


def test_masked_steps_change_nothing_compared_with_unpadded_sequences():
    # Independent of any reference: a padded batch gives each sequence's own result.
    layer = LSTM(U, return_sequences=False, return_carry=True)
    lengths = np.array([5, 2, 7])
    x = _x(8, 3, 7)
    garbage = x.copy()
    for i, n in enumerate(lengths):
        garbage[i, n:] = 1e3  # whatever sits in the padding must not matter
    _, params, _ = layer.init(jax.random.key(0), (-1, 7, F))
    (last, carry), _ = layer.apply(params, {}, (jnp.asarray(garbage), jnp.asarray(lengths)))
    for i, n in enumerate(lengths):
        (last_i, carry_i), _ = layer.apply(params, {}, jnp.asarray(x[i:i + 1, :n]))
        _close(last[i], last_i[0])
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[i], carry),
                                    jax.tree.map(lambda a: a[0], carry_i), atol=1e-6)


def test_lengths_and_bool_mask_agree():
    x = jnp.asarray(_x(9, 3, 5))
    lengths = jnp.array([5, 0, 3])
    mask = jnp.arange(5)[None, :] < lengths[:, None]
    layer = GRU(U)
    _, params, _ = layer.init(jax.random.key(0), (-1, 5, F))
    (y1, _), _ = layer.apply(params, {}, (x, lengths))
    (y2, _), _ = layer.apply(params, {}, (x, mask))
    chex.assert_trees_all_equal(y1, y2)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_reverse_reads_only_the_real_part_backwards(kind):
    p = np_params(kind, seed=10)
    lengths = np.array([6, 3, 1])
    x = _x(11, 3, 6)
    layer = LAYERS[kind](U, reverse=True)
    (ys, _), _ = layer.apply(to_jax(p), {}, (jnp.asarray(x), jnp.asarray(lengths)))
    last, _ = LAYERS[kind](U, reverse=True, return_sequences=False).apply(
        to_jax(p), {}, (jnp.asarray(x), jnp.asarray(lengths)))
    for i, n in enumerate(lengths):
        # Reference: flip the real part by hand, run forwards, flip the outputs back.
        seq = x[i:i + 1, :n][:, ::-1].astype(np.float64)
        outs, final, _ = np_run(kind, p, seq)
        _close(ys[i, :n], outs[0, ::-1])
        np.testing.assert_array_equal(np.asarray(ys)[i, n:], 0.0)
        _close(last[i], final[0])


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_matches_numpy(merge):
    kind = "LSTMCell"
    pf, pb = np_params(kind, seed=12), np_params(kind, seed=13)
    lengths = np.array([5, 2])
    x = _x(14, 2, 5)
    params = {"forward": to_jax(pf), "backward": to_jax(pb)}
    inp = (jnp.asarray(x), jnp.asarray(lengths))
    (ys, _), _ = Bidirectional(LSTM(U), merge=merge).apply(params, {}, inp)
    last, _ = Bidirectional(LSTM(U, return_sequences=False), merge=merge).apply(params, {}, inp)
    for i, n in enumerate(lengths):
        seq = x[i:i + 1, :n].astype(np.float64)
        fwd, fwd_last, _ = np_run(kind, pf, seq)
        bwd, bwd_last, _ = np_run(kind, pb, seq[:, ::-1])
        fwd, bwd = fwd[0], bwd[0, ::-1]
        want = np.concatenate([fwd, bwd], -1) if merge == "concat" else fwd + bwd
        want_last = (np.concatenate([fwd_last[0], bwd_last[0]]) if merge == "concat"
                     else fwd_last[0] + bwd_last[0])
        _close(ys[i, :n], want)
        np.testing.assert_array_equal(np.asarray(ys)[i, n:], 0.0)
        _close(last[i], want_last)


def test_initial_carry_and_return_carry_encoder_decoder():
    p_enc, p_dec = np_params("LSTMCell", seed=15), np_params("LSTMCell", seed=16)
    src, tgt = _x(17, 2, 4), _x(18, 2, 3)
    encoder = LSTM(U, return_sequences=False, return_carry=True)
    decoder = LSTM(U)
    (_, carry), _ = encoder.apply(to_jax(p_enc), {}, jnp.asarray(src))
    ys, _ = decoder.apply(to_jax(p_dec), {}, (jnp.asarray(tgt), None, carry))
    _, _, np_carry = np_run("LSTMCell", p_enc, src.astype(np.float64))
    want, _, _ = np_run("LSTMCell", p_dec, tgt.astype(np.float64), carry=np_carry)
    _close(ys, want)
    # The carry may come as a list; shapes are checked at init and apply.
    ys2, _ = decoder.apply(to_jax(p_dec), {}, (jnp.asarray(tgt), None, list(carry)))
    chex.assert_trees_all_equal(ys, ys2)
    shape = decoder.init(jax.random.key(0), ((-1, 3, F), None, ((-1, U), (-1, U))))[0]
    assert shape == (-1, 3, U)


# ------------------------------------------------------------------------------- shapes, specs

SHAPE_CASES = [
    (SimpleRNN(U), "x"),
    (LSTM(U, return_sequences=False), "x"),
    (GRU(U, reverse=True), "mask"),
    (LSTM(U, return_carry=True), "lengths"),
    (GRU(U, return_sequences=False, return_carry=True), "lengths"),
    (RNN(LSTMCell(U)), "carry"),
    (Bidirectional(LSTM(U)), "lengths"),
    (Bidirectional(GRU(U, return_sequences=False), merge="sum"), "mask"),
    (serial(LSTM(U), Bidirectional(GRU(U)), StripMask(), Dense(2)), "lengths"),
    (serial(GRU(U), LSTM(U, return_sequences=False), Dense(2)), "x"),
]


@pytest.mark.parametrize("layer,inputs", SHAPE_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_init_shapes_equal_apply_shapes(layer, inputs):
    n, t = 3, 5
    x = jnp.ones((n, t, F))
    carry = (jnp.zeros((n, U)), jnp.zeros((n, U)))
    value = {"x": x, "mask": (x, jnp.ones((n, t), bool)), "lengths": (x, jnp.array([5, 1, 3])),
             "carry": (x, None, carry)}[inputs]
    shape = jax.tree.map(lambda a: (-1, *a.shape[1:]), value)
    out_shape, params, state = layer.init(jax.random.key(0), shape)
    out = jax.eval_shape(lambda p, v: layer.apply(p, state, v)[0], params, value)
    got = jax.tree.map(lambda s: tuple(s.shape), out)
    is_shape = lambda s: isinstance(s, tuple) and all(isinstance(d, int) for d in s)  # noqa: E731
    want = jax.tree.map(lambda s: tuple(n if d == -1 else d for d in s), out_shape,
                        is_leaf=is_shape)
    assert got == want, (got, want)


def test_stacked_layers_with_lengths_equal_each_unpadded_sequence():
    net = serial(LSTM(U), GRU(U, return_sequences=False), Dense(2))
    lengths = np.array([4, 6])
    x = _x(19, 2, 6)
    _, params, state = net.init(jax.random.key(2), ((-1, 6, F), (-1,)))
    apply = jax.jit(lambda p, v: net.apply(p, state, v)[0])
    y = apply(params, (jnp.asarray(x), jnp.asarray(lengths)))
    for i, n in enumerate(lengths):
        _close(y[i], apply(params, jnp.asarray(x[i:i + 1, :n]))[0])
    assert set(params) == {"lstm_0", "gru_0", "dense_0"}


def test_specs_and_registry():
    assert LSTM(128, return_sequences=False).spec == {
        "LSTM": {"units": 128, "return_sequences": False}}
    assert Bidirectional(GRU(8), merge="sum").spec == {
        "Bidirectional": {"layer": {"GRU": {"units": 8}}, "merge": "sum"}}
    assert RNN({"GRUCell": {"units": 8}}).spec == {"RNN": {"cell": {"GRUCell": {"units": 8}}}}
    kinds = registered_layers()
    for kind in ("RNN", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "StripMask"):
        assert kind in kinds
    rebuilt = kinds["LSTM"](**LSTM(16, forget_bias=0.5).spec["LSTM"])
    assert rebuilt.spec == {"LSTM": {"units": 16, "forget_bias": 0.5}}


# ----------------------------------------------------------------------- gradients, compile size

def test_lstm_gradients_flow_through_150_steps():
    layer = LSTM(U, return_sequences=False)
    x = jnp.asarray(_x(20, 2, 150))
    _, params, _ = layer.init(jax.random.key(0), (-1, 150, F))

    def loss(p, x):
        return jnp.sum(layer.apply(p, {}, x)[0] ** 2)

    g_params, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    for leaf in jax.tree.leaves((g_params, g_x)):
        assert bool(jnp.all(jnp.isfinite(leaf)))
    assert float(jnp.abs(g_x[:, 0]).max()) > 0.0  # the first step still gets a gradient
    # optax clipping works on the gradient tree as is.
    clip = optax.clip_by_global_norm(1e-3)
    clipped, _ = clip.update(g_params, clip.init(params))
    assert float(optax.tree.norm(g_params)) > 1e-3
    np.testing.assert_allclose(float(optax.tree.norm(clipped)), 1e-3, rtol=1e-5)
    chex.assert_trees_all_equal_shapes(clipped, params)


def _count_eqns(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _count_eqns(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _count_eqns(sub)
    return total


def test_program_size_does_not_grow_with_sequence_length():
    layer = Bidirectional(LSTM(U))
    _, params, _ = layer.init(jax.random.key(0), ((-1, 10, F), (-1,)))

    def loss(p, x, lengths):
        y, _ = layer.apply(p, {}, (x, lengths))[0]
        return jnp.sum(y ** 2)

    sizes = []
    for t in (10, 200):
        args = (params, jnp.zeros((2, t, F)), jnp.array([t, 3]))
        grad = jax.value_and_grad(loss)
        n_eqns = _count_eqns(jax.make_jaxpr(grad)(*args).jaxpr)
        hlo = jax.jit(grad).lower(*args).as_text()
        assert "while" in hlo  # a loop, not T copies of the step
        sizes.append((n_eqns, len(hlo.splitlines())))
    assert sizes[0] == sizes[1], sizes


def test_gradient_matches_finite_differences():
    layer = Bidirectional(GRU(U, return_sequences=False))
    _, params32, _ = layer.init(jax.random.key(3), ((-1, 4, F), (-1,)))
    rs = np.random.RandomState(21)
    x = rs.normal(size=(2, 4, F))
    w = rs.normal(size=(2, 2 * U))
    vs = [jax.tree.map(lambda a: rs.normal(size=a.shape), params32) for _ in range(3)]
    with jax.enable_x64(True):  # float64, so that central differences are accurate to ~1e-9
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params32)
        lengths = jnp.array([4, 2])

        @jax.jit
        def loss(p):
            return jnp.sum(jnp.asarray(w) * layer.apply(p, {}, (jnp.asarray(x), lengths))[0])

        g = jax.jit(jax.grad(loss))(params)
        eps = 1e-6
        for v in vs:
            plus = jax.tree.map(lambda a, d: a + eps * d, params, v)
            minus = jax.tree.map(lambda a, d: a - eps * d, params, v)
            fd = (float(loss(plus)) - float(loss(minus))) / (2 * eps)
            analytic = sum(float(np.vdot(a, b)) for a, b in
                           zip(jax.tree.leaves(g), jax.tree.leaves(v)))
            np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------------------------- errors

def test_bad_inputs_name_the_layer():
    net = serial(LSTM(U, name="enc"))
    with pytest.raises(LayerError, match=r"LSTM layer 'enc': expects inputs \(batch, time, "
                                         r"features\), got shape \(-1, 3\)"):
        net.init(jax.random.key(0), (-1, 3))
    _, params, state = net.init(jax.random.key(0), (-1, 5, F))
    with pytest.raises(LayerError, match=r"LSTM layer 'enc': expects inputs \(batch, time, "
                                         r"features\), got shape \(2, 3\)"):
        net.apply(params, state, jnp.ones((2, 3)))
    with pytest.raises(LayerError, match=r"LSTM layer 'enc': LSTMCell expects inputs with 3 "
                                         r"features on the last axis, got shape \(2, 5, 4\)"):
        net.apply(params, state, jnp.ones((2, 5, 4)))
    with pytest.raises(LayerError, match=r"GRU layer: expects a mask \(batch, time\) = \(2, 5\)"):
        GRU(U).apply(GRU(U).init(jax.random.key(0), (-1, 5, F))[1], {},
                     (jnp.ones((2, 5, F)), jnp.ones((2, 4), bool)))
    with pytest.raises(LayerError, match="GRU layer: lengths .* must be integers"):
        GRU(U).apply(GRU(U).init(jax.random.key(0), (-1, 5, F))[1], {},
                     (jnp.ones((2, 5, F)), jnp.ones((2,))))
    with pytest.raises(LayerError, match=r"LSTM layer: expects an initial carry of shapes "
                                         r"\(\(2, 4\), \(2, 4\)\) for LSTMCell"):
        LSTM(U).apply(params["enc"], {}, (jnp.ones((2, 5, F)), None, jnp.zeros((2, U))))
    with pytest.raises(LayerError, match=r"SimpleRNN layer: expects a mask"):
        SimpleRNN(U).init(jax.random.key(0), ((-1, 5, F), (-1, 6)))


def test_bad_arguments_name_the_constructor():
    with pytest.raises(ValueError, match="LSTM: units must be a positive int"):
        LSTM(0)
    with pytest.raises(ValueError, match="GRUCell: units must be a positive int"):
        GRUCell(2.5)
    with pytest.raises(ValueError, match="SimpleRNN: activation: unknown activation"):
        SimpleRNN(3, activation="tahn")
    with pytest.raises(ValueError, match="LSTM: w_h_init: unknown initializer"):
        LSTM(3, w_h_init="orthogonall")
    with pytest.raises(ValueError, match="GRU: return_sequences must be True or False"):
        GRU(3, return_sequences="yes")
    with pytest.raises(ValueError, match="RNN: a cell is a Cell or a spec"):
        RNN(3)
    with pytest.raises(ValueError, match="Bidirectional: needs a recurrent layer .* got Dense"):
        Bidirectional(Dense(3))
    with pytest.raises(ValueError, match="Bidirectional: merge must be"):
        Bidirectional(LSTM(3), merge="mean")
    with pytest.raises(ValueError, match="Bidirectional: give the forward layer"):
        Bidirectional(LSTM(3, reverse=True))
