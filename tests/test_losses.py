"""Tests for fnn.losses: every loss against a NumPy formula written here, independently."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import losses

RNG = np.random.default_rng(0)
B, F, C = 6, 3, 5


def _data(shape=(B, F)):
    a = RNG.normal(size=shape).astype(np.float32)
    y = RNG.normal(size=shape).astype(np.float32)
    return a, y


def _per_example_mean(x):
    return x.reshape(x.shape[0], -1).mean(axis=1)


def _np_log_softmax(z):
    z = z.astype(np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def _np_one_hot(labels, n):
    return np.eye(n, dtype=np.float64)[labels]


# Each regression loss with its NumPy per-element formula (e = a - y).
REGRESSION = [
    ("mse", losses.mse, {}, lambda a, y: (a - y) ** 2),
    ("mae", losses.mae, {}, lambda a, y: np.abs(a - y)),
    ("lp3", losses.lp_loss, {"p": 3}, lambda a, y: np.abs(a - y) ** 3),
    ("lp1.5", losses.lp_loss, {"p": 1.5}, lambda a, y: np.abs(a - y) ** 1.5),
    ("huber", losses.huber, {"delta": 0.7},
     lambda a, y: np.where(np.abs(a - y) <= 0.7, 0.5 * (a - y) ** 2, 0.7 * (np.abs(a - y) - 0.35))),
]


@pytest.mark.parametrize("name,fn,kw,formula", REGRESSION, ids=[r[0] for r in REGRESSION])
@pytest.mark.parametrize("shape", [(B,), (B, F), (B, 2, F)])
def test_regression_losses_match_numpy(name, fn, kw, formula, shape):
    a, y = _data(shape)
    per_example = _per_example_mean(formula(a.astype(np.float64), y.astype(np.float64)))
    got_none = fn(a, y, reduction="none", **kw)
    chex.assert_shape(got_none, (B,))
    np.testing.assert_allclose(got_none, per_example, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fn(a, y, **kw), per_example.mean(), rtol=1e-5)
    np.testing.assert_allclose(fn(a, y, reduction="sum", **kw), per_example.sum(), rtol=1e-5)


def test_lp_loss_special_cases_equal_mse_and_mae():
    a, y = _data()
    np.testing.assert_allclose(losses.lp_loss(a, y, p=2), losses.mse(a, y), rtol=1e-6)
    np.testing.assert_allclose(losses.lp_loss(a, y, p=1), losses.mae(a, y), rtol=1e-6)


def test_half_squared_error_sums_over_features():
    a, y = _data((B, 2, F))
    expected = 0.5 * ((a.astype(np.float64) - y) ** 2).reshape(B, -1).sum(axis=1)
    np.testing.assert_allclose(losses.half_squared_error(a, y, reduction="none"), expected,
                               rtol=1e-5)
    np.testing.assert_allclose(losses.half_squared_error(a, y), expected.mean(), rtol=1e-5)


def test_half_squared_error_gradient_is_residual_over_batch():
    a, y = _data()
    g = jax.grad(losses.half_squared_error)(jnp.asarray(a), jnp.asarray(y))
    np.testing.assert_allclose(g, (a - y) / B, rtol=1e-5, atol=1e-7)


def test_hinge_matches_numpy_and_accepts_both_label_conventions():
    a = RNG.normal(size=(B, F)).astype(np.float32) * 2
    pm = RNG.choice([-1.0, 1.0], size=(B, F)).astype(np.float32)
    zero_one = ((pm + 1) / 2).astype(np.int32)
    expected = np.maximum(0.0, 1.0 - pm * a).mean(axis=1)
    np.testing.assert_allclose(losses.hinge(a, pm, reduction="none"), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.hinge(a, zero_one, reduction="none"), expected, rtol=1e-6)


def test_binary_cross_entropy_matches_numpy_and_clips():
    p = RNG.uniform(0.01, 0.99, size=(B, F)).astype(np.float32)
    y = RNG.uniform(size=(B, F)).astype(np.float32)  # soft targets
    p64 = p.astype(np.float64)
    expected = -(y * np.log(p64) + (1 - y) * np.log(1 - p64)).mean(axis=1)
    np.testing.assert_allclose(losses.binary_cross_entropy(p, y, reduction="none"), expected,
                               rtol=1e-5)
    # Probabilities exactly 0 and 1 stay finite (clipped to [eps, 1 - eps]).
    edge = losses.binary_cross_entropy(jnp.array([0.0, 1.0]), jnp.array([1.0, 0.0]), eps=1e-4)
    np.testing.assert_allclose(edge, -np.log(1e-4), rtol=1e-3)


def test_sigmoid_binary_cross_entropy_matches_numpy():
    z = RNG.normal(size=(B, F)).astype(np.float32) * 3
    y = RNG.uniform(size=(B, F)).astype(np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    np.testing.assert_allclose(losses.sigmoid_binary_cross_entropy(z, y, reduction="none"),
                               expected, rtol=1e-5)


def test_softmax_cross_entropy_matches_numpy_int_and_one_hot():
    z = RNG.normal(size=(B, C)).astype(np.float32) * 2
    labels = RNG.integers(0, C, size=B)
    expected = -_np_log_softmax(z)[np.arange(B), labels]
    got_int = losses.softmax_cross_entropy(z, labels.astype(np.int32), reduction="none")
    got_hot = losses.softmax_cross_entropy(z, _np_one_hot(labels, C).astype(np.float32),
                                           reduction="none")
    got_int_hot = losses.softmax_cross_entropy(z, np.eye(C, dtype=np.int32)[labels],
                                               reduction="none")
    for got in (got_int, got_hot, got_int_hot):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_softmax_cross_entropy_probabilistic_targets():
    z = RNG.normal(size=(B, C)).astype(np.float32)
    t = RNG.dirichlet(np.ones(C), size=B).astype(np.float32)
    expected = -(t * _np_log_softmax(z)).sum(axis=1)
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, t, reduction="none"), expected,
                               rtol=1e-5)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_matches_manual_numpy(smoothing):
    z = RNG.normal(size=(B, C)).astype(np.float32)
    labels = RNG.integers(0, C, size=B)
    smoothed = _np_one_hot(labels, C) * (1 - smoothing) + smoothing / C
    expected = -(smoothed * _np_log_softmax(z)).sum(axis=1).mean()
    got_int = losses.softmax_cross_entropy(z, labels.astype(np.int32), label_smoothing=smoothing)
    got_hot = losses.softmax_cross_entropy(z, _np_one_hot(labels, C).astype(np.float32),
                                           label_smoothing=smoothing)
    np.testing.assert_allclose(got_int, expected, rtol=1e-5)
    np.testing.assert_allclose(got_hot, expected, rtol=1e-5)
    probs = np.exp(_np_log_softmax(z)).astype(np.float32)
    np.testing.assert_allclose(
        losses.categorical_cross_entropy(probs, labels.astype(np.int32), label_smoothing=smoothing),
        expected, rtol=1e-4)


def test_categorical_cross_entropy_matches_numpy():
    p = RNG.dirichlet(np.ones(C), size=B).astype(np.float32)
    labels = RNG.integers(0, C, size=B)
    expected = -np.log(p.astype(np.float64)[np.arange(B), labels])
    np.testing.assert_allclose(
        losses.categorical_cross_entropy(p, labels.astype(np.int32), reduction="none"),
        expected, rtol=1e-5)
    np.testing.assert_allclose(
        losses.categorical_cross_entropy(p, _np_one_hot(labels, C), reduction="none"),
        expected, rtol=1e-5)
    # A zero probability on the true class is clipped to eps: finite.
    zero = losses.categorical_cross_entropy(jnp.array([[1.0, 0.0]]), jnp.array([1]), eps=1e-6)
    np.testing.assert_allclose(zero, -np.log(1e-6), rtol=1e-4)


def test_sequence_logits_average_over_time():
    z = RNG.normal(size=(B, 4, C)).astype(np.float32)
    labels = RNG.integers(0, C, size=(B, 4))
    lsm = _np_log_softmax(z)
    per_position = -np.take_along_axis(lsm, labels[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(z, labels.astype(np.int32), reduction="none"),
        per_position.mean(axis=1), rtol=1e-5)


# --------------------------------------------------------------------------- reductions, weights

def test_weighted_mean_and_mask():
    a, y = _data()
    per_example = ((a.astype(np.float64) - y) ** 2).mean(axis=1)
    w = RNG.uniform(0.1, 2.0, size=B).astype(np.float32)
    np.testing.assert_allclose(losses.mse(a, y, weights=w),
                               (w * per_example).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(losses.mse(a, y, weights=w, reduction="sum"),
                               (w * per_example).sum(), rtol=1e-5)
    np.testing.assert_allclose(losses.mse(a, y, weights=w, reduction="none"),
                               w * per_example, rtol=1e-5)
    mask = np.array([1, 0, 1, 1, 0, 0], np.float32)
    np.testing.assert_allclose(losses.mse(a, y, weights=mask),
                               per_example[mask == 1].mean(), rtol=1e-5)
    # A boolean mask is accepted too; a fully masked batch gives 0 and a finite gradient.
    np.testing.assert_allclose(losses.mse(a, y, weights=mask.astype(bool)),
                               per_example[mask == 1].mean(), rtol=1e-5)
    zeros = np.zeros(B, np.float32)
    value, grad = jax.value_and_grad(losses.mse)(jnp.asarray(a), jnp.asarray(y), weights=zeros)
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_weights_on_classification_loss():
    z = RNG.normal(size=(B, C)).astype(np.float32)
    labels = RNG.integers(0, C, size=B)
    per_example = -_np_log_softmax(z)[np.arange(B), labels]
    w = RNG.uniform(size=B).astype(np.float32)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(z, labels.astype(np.int32), weights=w),
        (w * per_example).sum() / w.sum(), rtol=1e-5)


def test_bad_reduction_lists_options():
    a, y = _data()
    with pytest.raises(ValueError, match=r"mse.*'mean', 'sum', 'none'.*'avg'"):
        losses.mse(a, y, reduction="avg")
    with pytest.raises(ValueError, match="'mean', 'sum', 'none'"):
        losses.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2, np.int32), reduction="batch")


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
        losses.mse(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 1\)"):
        losses.sigmoid_binary_cross_entropy(np.zeros((4, 3)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        losses.softmax_cross_entropy(np.zeros((4, 3)), np.zeros(5, np.int32))
    with pytest.raises(ValueError, match=r"weights.*\(4,\).*\(3,\)"):
        losses.mse(np.zeros((4, 2)), np.zeros((4, 2)), weights=np.ones(3))


def test_label_errors():
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="integers"):
        losses.softmax_cross_entropy(z, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        losses.softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.softmax_cross_entropy(z, np.array([0, 1]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="delta"):
        losses.huber(z, z, delta=0)
    with pytest.raises(ValueError, match="p must be"):
        losses.lp_loss(z, z, p=-1)


# --------------------------------------------------------------------------- stability, gradients

def test_extreme_logits_finite_value_and_gradient():
    z = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], jnp.float32)
    labels = jnp.array([1, 0])
    for smoothing in (0.0, 0.1):
        value, grad = jax.value_and_grad(losses.softmax_cross_entropy)(
            z, labels, label_smoothing=smoothing)
        assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))
    # The true class is 2e4 below the max: loss 2e4 per example.
    np.testing.assert_allclose(losses.softmax_cross_entropy(z, labels), 2e4, rtol=1e-6)
    # Its gradient is softmax(z) - onehot(labels), over the batch: rows (0, -1, 0) + (1, 0, 0).
    grad = jax.grad(losses.softmax_cross_entropy)(z, labels)
    np.testing.assert_allclose(grad, np.array([[1, -1, 0], [-1, 1, 0]]) / 2, atol=1e-6)

    zb = jnp.array([1e4, -1e4, 1e4, -1e4], jnp.float32)
    yb = jnp.array([1.0, 0.0, 0.0, 1.0])
    value, grad = jax.value_and_grad(losses.sigmoid_binary_cross_entropy)(zb, yb)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(value, 1e4 / 2, rtol=1e-6)  # two examples right (0), two wrong (1e4)
    np.testing.assert_allclose(grad, np.array([0, 0, 1, -1]) / 4, atol=1e-6)


def _finite_difference(f, x, h=1e-2):
    x = np.asarray(x, np.float32)
    grad = np.zeros(x.shape, np.float64)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (float(f(up)) - float(f(down))) / (2 * h)
    return grad


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "sigmoid_binary_cross_entropy",
                                  "huber", "categorical_cross_entropy"])
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(1)
    if name == "softmax_cross_entropy":
        x = rng.normal(size=(3, 4)).astype(np.float32)
        target = np.array([0, 3, 1], np.int32)
        f = lambda v: losses.softmax_cross_entropy(v, target, label_smoothing=0.1)
    elif name == "sigmoid_binary_cross_entropy":
        x = rng.normal(size=(3, 2)).astype(np.float32)
        target = rng.uniform(size=(3, 2)).astype(np.float32)
        f = lambda v: losses.sigmoid_binary_cross_entropy(v, target)
    elif name == "huber":
        x = rng.normal(size=(3, 2)).astype(np.float32) * 2
        target = np.zeros((3, 2), np.float32)
        x[np.abs(np.abs(x) - 1.0) < 0.05] += 0.2  # keep away from the kink for the difference
        f = lambda v: losses.huber(v, target)
    else:
        x = rng.dirichlet(np.ones(4), size=3).astype(np.float32)
        target = np.array([2, 0, 1], np.int32)
        f = lambda v: losses.categorical_cross_entropy(v, target)
    grad = jax.grad(f)(jnp.asarray(x))
    fd = _finite_difference(f, x, h=1e-3 if name == "categorical_cross_entropy" else 1e-2)
    np.testing.assert_allclose(grad, fd, rtol=2e-2, atol=2e-3)


def test_under_jit():
    z = RNG.normal(size=(B, C)).astype(np.float32)
    labels = RNG.integers(0, C, size=B).astype(np.int32)
    jitted = jax.jit(lambda z, l: losses.softmax_cross_entropy(z, l, label_smoothing=0.1))
    np.testing.assert_allclose(jitted(z, labels),
                               losses.softmax_cross_entropy(z, labels, label_smoothing=0.1),
                               rtol=1e-6)


# --------------------------------------------------------------------------- lookup

def test_get_and_names():
    assert {"mse", "mae", "softmax_cross_entropy", "half_squared_error", "huber", "hinge",
            "lp_loss", "binary_cross_entropy", "sigmoid_binary_cross_entropy",
            "categorical_cross_entropy"} <= set(losses.names())
    for name in losses.names():
        assert callable(losses.get(name))
    assert losses.get("MSE") is losses.mse
    assert losses.get(losses.mae) is losses.mae
    a, y = _data()
    np.testing.assert_allclose(losses.get("huber", delta=0.5)(a, y),
                               losses.huber(a, y, delta=0.5), rtol=1e-6)
    with pytest.raises(ValueError, match="did you mean softmax_cross_entropy"):
        losses.get("softmax_crossentropy")
    with pytest.raises(ValueError, match="dleta"):
        losses.get("huber", dleta=0.5)
    with pytest.raises(TypeError):
        losses.get(3)
