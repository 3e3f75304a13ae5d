"""Tests for fnn.regularizers: penalties and max-norm against NumPy sums written here."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import regularizers as reg
from fnn.layers.combinators import serial
from fnn.layers.dense import Dense


def _params():
    """A params tree with every kind of leaf name the layers use."""
    rng = np.random.default_rng(0)
    n = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
    return {
        "dense_0": {"w": n(4, 5), "b": n(5)},
        "batch_norm_0": {"scale": n(5), "offset": n(5)},
        "prelu_0": {"alpha": n(5)},
        "conv2d_0": {"w": n(3, 3, 2, 4), "b": n(4)},
        "lstm_0": {"w_ih": n(5, 12), "w_hh": n(3, 12), "b": n(12)},
        "embedding_0": {"embedding": n(7, 5)},
        "block": {"dense_2": {"w": n(5, 2), "b": n(2)}},
    }


WEIGHT_PATHS = [("dense_0", "w"), ("conv2d_0", "w"), ("lstm_0", "w_ih"), ("lstm_0", "w_hh"),
                ("block", "dense_2", "w")]


def _leaf(params, path):
    for key in path:
        params = params[key]
    return np.asarray(params, np.float64)


def test_is_weight_rule():
    assert reg.is_weight(("dense_0", "w"), None)
    assert reg.is_weight(("lstm", "w_hh"), None)
    for path in [("dense_0", "b"), ("bn", "scale"), ("bn", "offset"), ("prelu", "alpha"),
                 ("emb", "embedding"), ("x", "weight"), ()]:
        assert not reg.is_weight(path, None), path
    assert reg.weights_only is reg.is_weight


def test_l2_is_sum_of_squares_of_weight_matrices_only():
    params = _params()
    expected = sum((_leaf(params, p) ** 2).sum() for p in WEIGHT_PATHS)
    np.testing.assert_allclose(reg.l2(params), expected, rtol=1e-5)
    # Biases, BN scale/offset, PReLU alpha and embeddings do not count: changing them is free.
    other = jax.tree_util.tree_map_with_path(
        lambda kp, x: x if reg.is_weight(tuple(k.key for k in kp), x) else x + 100.0, params)
    np.testing.assert_allclose(reg.l2(other), expected, rtol=1e-5)


def test_l2_on_a_real_network():
    _, params, _ = serial(Dense(8), Dense(3)).init(jax.random.key(0), (-1, 4))
    expected = sum((np.asarray(params[k]["w"], np.float64) ** 2).sum() for k in params)
    np.testing.assert_allclose(reg.l2(params), expected, rtol=1e-5)


def test_l1_is_sum_of_absolute_weights_only():
    params = _params()
    expected = sum(np.abs(_leaf(params, p)).sum() for p in WEIGHT_PATHS)
    np.testing.assert_allclose(reg.l1(params), expected, rtol=1e-5)


def test_elastic_net_combines_coefficients():
    params = _params()
    l1 = sum(np.abs(_leaf(params, p)).sum() for p in WEIGHT_PATHS)
    l2 = sum((_leaf(params, p) ** 2).sum() for p in WEIGHT_PATHS)
    np.testing.assert_allclose(reg.elastic_net(params, 0.3, 0.01), 0.3 * l1 + 0.01 * l2,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="l1_coef"):
        reg.elastic_net(params, -1.0, 0.1)


def test_select_by_layer_name():
    params = _params()
    np.testing.assert_allclose(reg.l2(params, select="dense_2"),
                               (_leaf(params, ("block", "dense_2", "w")) ** 2).sum(), rtol=1e-5)
    np.testing.assert_allclose(
        reg.l2(params, select=["dense_0", "lstm_0"]),
        sum((_leaf(params, p) ** 2).sum()
            for p in [("dense_0", "w"), ("lstm_0", "w_ih"), ("lstm_0", "w_hh")]), rtol=1e-5)
    # A nested "block/dense_2" path, and layers(..., only_weights=False) taking the bias too.
    np.testing.assert_allclose(reg.l1(params, select="block/dense_2"),
                               np.abs(_leaf(params, ("block", "dense_2", "w"))).sum(), rtol=1e-5)
    both = sum((_leaf(params, ("block", "dense_2", k)) ** 2).sum() for k in ("w", "b"))
    np.testing.assert_allclose(reg.l2(params, select=reg.layers("dense_2", only_weights=False)),
                               both, rtol=1e-5)


def test_unknown_layer_name_is_an_error():
    with pytest.raises(ValueError, match="no layer 'dense_3'.*did you mean"):
        reg.l2(_params(), select="dense_3")
    with pytest.raises(ValueError, match="no layer 'nothing'"):
        reg.max_norm(_params(), 1.0, select=["dense_0", "nothing"])


def test_select_by_predicate():
    params = _params()
    bn_scale = lambda path, leaf: path[-1] == "scale"
    np.testing.assert_allclose(reg.l2(params, select=bn_scale),
                               (_leaf(params, ("batch_norm_0", "scale")) ** 2).sum(), rtol=1e-5)
    everything = sum((np.asarray(x, np.float64) ** 2).sum()
                     for x in jax.tree_util.tree_leaves(params))
    np.testing.assert_allclose(reg.l2(params, select=reg.all_params), everything, rtol=1e-5)
    assert float(reg.l1(params, select=lambda path, leaf: False)) == 0.0


def test_grad_of_l2_is_two_w_on_weights_and_zero_elsewhere():
    params = _params()
    grads = jax.grad(reg.l2)(params)
    chex.assert_trees_all_equal_shapes(grads, params)

    def check(keypath, g, p):
        path = tuple(k.key for k in keypath)
        expected = 2 * np.asarray(p) if path in WEIGHT_PATHS else np.zeros(p.shape)
        np.testing.assert_allclose(g, expected, rtol=1e-6, err_msg=str(path))

    jax.tree_util.tree_map_with_path(check, grads, params)


def test_penalties_under_jit():
    params = _params()
    np.testing.assert_allclose(jax.jit(reg.l2)(params), reg.l2(params), rtol=1e-6)


# --------------------------------------------------------------------------- max_norm

def _column_norms(w):
    w = np.asarray(w, np.float64)
    return np.sqrt((w.reshape(-1, w.shape[-1]) ** 2).sum(axis=0))


def test_max_norm_clips_incoming_vectors_and_keeps_direction():
    params = _params()
    r = 1.5
    out = reg.max_norm(params, r)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
    for path in WEIGHT_PATHS:
        before, after = _leaf(params, path), _leaf(out, path)
        norms_before, norms_after = _column_norms(before), _column_norms(after)
        assert np.all(norms_after <= r * (1 + 1e-6)), path
        flat_b = before.reshape(-1, before.shape[-1])
        flat_a = after.reshape(-1, after.shape[-1])
        for j in range(before.shape[-1]):
            if norms_before[j] > r:   # rescaled to norm r along the same direction
                np.testing.assert_allclose(norms_after[j], r, rtol=1e-5)
                np.testing.assert_allclose(flat_a[:, j], flat_b[:, j] * r / norms_before[j],
                                           rtol=1e-5, atol=1e-7)
            else:                     # already inside: unchanged, exactly
                np.testing.assert_array_equal(flat_a[:, j], flat_b[:, j])
    # Make sure the check covered both cases.
    all_norms = np.concatenate([_column_norms(_leaf(params, p)) for p in WEIGHT_PATHS])
    assert (all_norms > r).any() and (all_norms <= r).any()


def test_max_norm_leaves_non_weights_untouched():
    params = _params()
    out = reg.max_norm(params, 0.1)
    for path in [("dense_0", "b"), ("batch_norm_0", "scale"), ("prelu_0", "alpha"),
                 ("embedding_0", "embedding")]:
        np.testing.assert_array_equal(_leaf(out, path), _leaf(params, path))


def test_max_norm_dense_columns_by_hand():
    w = jnp.array([[3.0, 0.1], [4.0, 0.2]])   # column norms 5 and ~0.22
    out = reg.max_norm({"d": {"w": w, "b": jnp.array([9.0, 9.0])}}, 1.0)
    np.testing.assert_allclose(out["d"]["w"], [[0.6, 0.1], [0.8, 0.2]], rtol=1e-6)
    np.testing.assert_array_equal(out["d"]["b"], [9.0, 9.0])


def test_max_norm_select_and_axis():
    params = _params()
    out = reg.max_norm(params, 0.5, select="dense_0")
    assert np.all(_column_norms(_leaf(out, ("dense_0", "w"))) <= 0.5 * (1 + 1e-6))
    np.testing.assert_array_equal(_leaf(out, ("conv2d_0", "w")), _leaf(params, ("conv2d_0", "w")))
    # axis=1 on a (4, 5) matrix: row norms (outgoing vectors) are clipped instead.
    rows = reg.max_norm(params, 0.5, axis=1, select="dense_0")
    row_norms = np.sqrt((_leaf(rows, ("dense_0", "w")) ** 2).sum(axis=1))
    assert np.all(row_norms <= 0.5 * (1 + 1e-6))
    with pytest.raises(ValueError, match="out of range.*dense_0/w.*\\(4, 5\\)"):
        reg.max_norm(params, 0.5, axis=2, select="dense_0")
    with pytest.raises(ValueError, match="max_value"):
        reg.max_norm(params, 0.0)


def test_get_and_names():
    assert reg.names() == ["elastic_net", "l1", "l2"]
    assert reg.get("L2") is reg.l2
    with pytest.raises(ValueError, match="did you mean l2"):
        reg.get("l22")
    with pytest.raises(TypeError, match="select"):
        reg.l2(_params(), select=3)
