"""Tests for fnn.metrics against NumPy counts written here."""

from __future__ import annotations

import chex
import jax
import numpy as np
import pytest

from fnn import metrics

RNG = np.random.default_rng(0)
B, C = 40, 6


def _scores_and_labels(shape=(B,)):
    scores = RNG.normal(size=shape + (C,)).astype(np.float32)
    labels = RNG.integers(0, C, size=shape)
    return scores, labels


def test_accuracy_int_and_one_hot_labels():
    scores, labels = _scores_and_labels()
    expected = np.mean(scores.argmax(axis=1) == labels)
    assert 0 < expected < 1
    np.testing.assert_allclose(metrics.accuracy(scores, labels.astype(np.int32)), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(metrics.accuracy(scores, np.eye(C)[labels]), expected, rtol=1e-6)
    # Probabilities give the same argmax as logits.
    probs = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(metrics.accuracy(probs, labels.astype(np.int32)), expected,
                               rtol=1e-6)


def test_accuracy_weights_and_mask():
    scores, labels = _scores_and_labels()
    correct = (scores.argmax(axis=1) == labels).astype(np.float64)
    w = RNG.uniform(size=B)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, weights=w),
                               (w * correct).sum() / w.sum(), rtol=1e-5)
    mask = RNG.integers(0, 2, size=B)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, weights=mask),
                               correct[mask == 1].mean(), rtol=1e-5)
    assert float(metrics.accuracy(scores, labels, weights=np.zeros(B))) == 0.0


def test_accuracy_over_time_with_position_mask():
    scores, labels = _scores_and_labels((B, 3))
    correct = scores.argmax(axis=-1) == labels
    np.testing.assert_allclose(metrics.accuracy(scores, labels), correct.mean(), rtol=1e-6)
    mask = RNG.integers(0, 2, size=(B, 3))
    np.testing.assert_allclose(metrics.accuracy(scores, labels, weights=mask),
                               correct[mask == 1].mean(), rtol=1e-6)


def test_reductions_sum_and_none():
    scores, labels = _scores_and_labels((B, 3))
    correct = (scores.argmax(axis=-1) == labels).astype(np.float64)   # (B, 3)
    per_example = correct.mean(axis=1)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, reduction="none"), per_example,
                               rtol=1e-6)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, reduction="sum"), correct.sum(),
                               rtol=1e-6)
    w = RNG.uniform(size=B)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, weights=w, reduction="none"),
                               w * per_example, rtol=1e-5)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, weights=w, reduction="sum"),
                               (w[:, None] * correct).sum(), rtol=1e-5)
    mask = RNG.integers(0, 2, size=(B, 3)).astype(np.float64)
    mask[0] = 0.0                                              # a fully masked example gives 0
    expected = (mask * correct).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
    np.testing.assert_allclose(metrics.accuracy(scores, labels, weights=mask, reduction="none"),
                               expected, rtol=1e-5)
    logits = RNG.normal(size=(B, 2)).astype(np.float32)
    targets = RNG.integers(0, 2, size=(B, 2))
    np.testing.assert_allclose(metrics.binary_accuracy(logits, targets, reduction="none"),
                               ((logits > 0) == (targets == 1)).mean(axis=1), rtol=1e-6)
    top = np.argsort(-scores[:, 0], axis=1)[:, :2]
    np.testing.assert_allclose(
        metrics.top_k_accuracy(scores[:, 0], labels[:, 0], 2, reduction="none"),
        [float(labels[i, 0] in top[i]) for i in range(B)])
    with pytest.raises(ValueError, match="'mean', 'sum', 'none'"):
        metrics.accuracy(scores, labels, reduction="avg")


def test_accuracy_errors():
    scores, labels = _scores_and_labels()
    with pytest.raises(ValueError, match=r"\(40,\).*\(40, 6\).*\(39,\)"):
        metrics.accuracy(scores, labels[:-1])
    with pytest.raises(ValueError, match="integers"):
        metrics.accuracy(scores, labels.astype(np.float32))
    with pytest.raises(ValueError, match="binary_accuracy"):
        metrics.accuracy(scores[:, :1], labels)
    with pytest.raises(ValueError, match="weights"):
        metrics.accuracy(scores, labels, weights=np.ones(3))


@pytest.mark.parametrize("k", [1, 2, 4, C])
def test_top_k_accuracy_matches_numpy(k):
    scores, labels = _scores_and_labels()
    top = np.argsort(-scores, axis=1)[:, :k]
    expected = np.mean([labels[i] in top[i] for i in range(B)])
    np.testing.assert_allclose(metrics.top_k_accuracy(scores, labels, k), expected, rtol=1e-6)
    np.testing.assert_allclose(metrics.top_k_accuracy(scores, np.eye(C)[labels], k), expected,
                               rtol=1e-6)


def test_top_k_accuracy_k_range():
    scores, labels = _scores_and_labels()
    np.testing.assert_allclose(metrics.top_k_accuracy(scores, labels, 1),
                               metrics.accuracy(scores, labels), rtol=1e-6)
    for k in (0, C + 1):
        with pytest.raises(ValueError, match="k must be"):
            metrics.top_k_accuracy(scores, labels, k)


def test_binary_accuracy():
    logits = RNG.normal(size=(B, 2)).astype(np.float32)
    targets = RNG.integers(0, 2, size=(B, 2))
    expected = np.mean((logits > 0) == (targets == 1))
    np.testing.assert_allclose(metrics.binary_accuracy(logits, targets), expected, rtol=1e-6)
    np.testing.assert_allclose(metrics.binary_accuracy(logits, 2 * targets - 1), expected,
                               rtol=1e-6)   # {-1, +1} targets
    probs = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(metrics.binary_accuracy(probs, targets, 0.5), expected, rtol=1e-6)
    # Threshold moves the decision; mask restricts the count.
    np.testing.assert_allclose(metrics.binary_accuracy(logits, targets, 0.7),
                               np.mean((logits > 0.7) == (targets == 1)), rtol=1e-6)
    mask = RNG.integers(0, 2, size=B)
    per_example = ((logits > 0) == (targets == 1)).mean(axis=1)
    np.testing.assert_allclose(metrics.binary_accuracy(logits, targets, weights=mask),
                               per_example[mask == 1].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(40, 2\).*\(40,\)"):
        metrics.binary_accuracy(logits, targets[:, 0])


def test_confusion_matrix_rows_true_columns_predicted():
    scores, labels = _scores_and_labels()
    predicted = scores.argmax(axis=1)
    expected = np.zeros((C, C), np.int64)
    for t, p in zip(labels, predicted):
        expected[t, p] += 1
    got = metrics.confusion_matrix(predicted.astype(np.int32), labels.astype(np.int32), C)
    chex.assert_shape(got, (C, C))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(metrics.confusion_matrix(scores, labels, C), expected)
    np.testing.assert_array_equal(metrics.confusion_matrix(scores, np.eye(C)[labels], C), expected)
    # Asymmetric by hand: one example of class 0 predicted as 1 sits in row 0, column 1.
    np.testing.assert_array_equal(
        metrics.confusion_matrix(np.array([1]), np.array([0]), 2), [[0, 1], [0, 0]])
    # Trace / total is the accuracy.
    np.testing.assert_allclose(np.trace(got) / got.sum(), metrics.accuracy(scores, labels),
                               rtol=1e-6)


def test_confusion_matrix_weights_and_out_of_range():
    labels = np.array([0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 2, 2, 7])   # 7 is out of range: not counted
    w = np.array([1.0, 0.5, 2.0, 1.0, 3.0])
    expected = np.zeros((3, 3))
    for t, p, wi in zip(labels, predicted, w):
        if p < 3:
            expected[t, p] += wi
    np.testing.assert_allclose(metrics.confusion_matrix(predicted, labels, 3, weights=w), expected)
    assert int(metrics.confusion_matrix(predicted, labels, 3).sum()) == 4
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(predicted, labels, 0)
    with pytest.raises(ValueError, match=r"\(5, 4\)"):
        metrics.confusion_matrix(np.zeros((5, 4), np.float32), labels, 3)


def test_metrics_under_jit():
    scores, labels = _scores_and_labels()
    labels = labels.astype(np.int32)
    np.testing.assert_allclose(jax.jit(metrics.accuracy)(scores, labels),
                               np.mean(scores.argmax(axis=1) == labels), rtol=1e-6)
    cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(scores, labels, C)
    assert int(cm.sum()) == B


def test_get_and_names():
    assert set(metrics.names()) == {"accuracy", "top_k_accuracy", "binary_accuracy", "exact_match",
                                    "bits_per_token"}
    assert metrics.get("Accuracy") is metrics.accuracy
    with pytest.raises(ValueError, match="did you mean accuracy"):
        metrics.get("acuracy")
