"""Tests for fnn.data.splits: train/val/test splits and k-fold, plain and stratified."""

from __future__ import annotations

import numpy as np
import pytest

from fnn.data.splits import holdout, kfold, train_val_test_split


def imbalanced_labels(n=3000, seed=0):
    """Shuffled labels of 4 classes in proportions 0.55, 0.25, 0.15, 0.05."""
    counts = np.round(np.array([0.55, 0.25, 0.15, 0.05]) * n).astype(int)
    labels = np.repeat(np.arange(4), counts)
    return np.random.default_rng(seed).permutation(labels)


def shares(labels, idx, k=4):
    return np.bincount(labels[idx], minlength=k) / len(idx)


def assert_partition(parts, n):
    everything = np.concatenate(parts)
    assert len(everything) == n
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))  # disjoint and covering


def test_split_sizes_partition_and_sorted():
    s = train_val_test_split(1000, 0.2, 0.1, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (700, 200, 100)
    assert_partition(s, 1000)
    for part in s:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    s2 = train_val_test_split(np.zeros(10), 0.25, seed=0)  # length from an array; 2.5 -> 3
    assert (len(s2.train), len(s2.val), len(s2.test)) == (7, 3, 0)


def test_split_is_deterministic_by_seed():
    a = train_val_test_split(500, 0.2, 0.2, seed=3)
    b = train_val_test_split(500, 0.2, 0.2, seed=3)
    c = train_val_test_split(500, 0.2, 0.2, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.val, c.val)


def test_stratified_split_keeps_class_proportions():
    labels = imbalanced_labels()
    overall = shares(labels, np.arange(len(labels)))
    s = train_val_test_split(labels, 0.15, 0.1, seed=1, stratify=True)
    assert (len(s.val), len(s.test)) == (450, 300)
    assert_partition(s, len(labels))
    for part in s:
        np.testing.assert_allclose(shares(labels, part), overall, atol=0.01)
    # the same with labels given separately from n
    s2 = train_val_test_split(len(labels), 0.15, 0.1, seed=1, stratify=labels)
    for x, y in zip(s, s2):
        np.testing.assert_array_equal(x, y)


def test_stratified_split_with_tiny_classes_still_partitions():
    labels = np.array([0] * 20 + [1, 2, 3])
    s = train_val_test_split(labels, 0.3, 0.3, seed=0, stratify=True)
    assert (len(s.val), len(s.test)) == (7, 7)
    assert_partition(s, len(labels))


def test_split_errors():
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_test_split(10, 1.2, seed=0)
    with pytest.raises(ValueError, match="< 1"):
        train_val_test_split(10, 0.5, 0.5, seed=0)
    with pytest.raises(ValueError, match="stratify=True needs labels"):
        train_val_test_split(10, 0.2, seed=0, stratify=True)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        train_val_test_split(10, 0.2, seed=0, stratify=np.zeros(9))


def test_holdout_by_count_or_fraction():
    labels = imbalanced_labels(1000, seed=2)
    train, val = holdout(labels, 137, seed=0, stratify=True)
    assert len(val) == 137
    assert_partition([train, val], 1000)
    np.testing.assert_allclose(shares(labels, val), shares(labels, np.arange(1000)), atol=0.01)
    by_fraction = holdout(1000, 0.137, seed=0)
    by_count = holdout(1000, 137, seed=0)
    for a, b in zip(by_fraction, by_count):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="size"):
        holdout(10, 10, seed=0)


@pytest.mark.parametrize("n,k", [(100, 5), (103, 4), (7, 7)])
def test_kfold_folds_are_disjoint_and_cover(n, k):
    folds = kfold(n, k, seed=0)
    assert len(folds) == k
    assert_partition([val for _, val in folds], n)
    sizes = [len(val) for _, val in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert_partition([train, val], n)
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_kfold_is_deterministic_by_seed():
    a, b, c = kfold(60, 3, seed=1), kfold(60, 3, seed=1), kfold(60, 3, seed=2)
    for (ta, va), (tb, vb) in zip(a, b):
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(a[0][1], c[0][1])


def test_stratified_kfold_keeps_class_proportions():
    labels = imbalanced_labels(2000, seed=3)
    overall = shares(labels, np.arange(len(labels)))
    folds = kfold(len(labels), 5, seed=0, stratify_labels=labels)
    assert_partition([val for _, val in folds], len(labels))
    for train, val in folds:
        np.testing.assert_allclose(shares(labels, val), overall, atol=0.01)
        np.testing.assert_allclose(shares(labels, train), overall, atol=0.01)
    counts = np.array([np.bincount(labels[val], minlength=4) for _, val in folds])
    assert np.all(counts.max(0) - counts.min(0) <= 1)


def test_kfold_errors():
    with pytest.raises(ValueError, match="k must be"):
        kfold(5, 6, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        kfold(5, 1, seed=0)
    with pytest.raises(ValueError, match="stratify_labels"):
        kfold(5, 2, seed=0, stratify_labels=np.zeros(4))
