"""Index splits: train / validation / test, and k-fold cross-validation, optionally stratified.

Every function returns sorted ``int64`` index arrays into the data set (sorted, so that
memory-mapped data is read in file order; the pipeline shuffles each epoch anyway), and is
deterministic: the same arguments and ``seed`` give the same indices.

Stratified splits keep each class's share in every part: class ``c`` with ``n_c`` examples
gets about ``fraction * n_c`` of them in the part, counts rounded by largest remainder so
that the part's size is still ``round(fraction * n)``.

Example:
    >>> labels = np.repeat(np.arange(4), 25)          # 100 examples, 4 classes
    >>> x = np.zeros((100, 3), np.float32)
    >>> split = train_val_test_split(labels, 0.1, 0.1, seed=0, stratify=True)
    >>> x_train, y_train = x[split.train], labels[split.train]
    >>> len(split.train), len(split.val), len(split.test)
    (80, 10, 10)
    >>> np.bincount(labels[split.val])                 # each class keeps its share
    array([3, 3, 2, 2])
    >>> for train_idx, val_idx in kfold(len(x), 5, seed=0):
    ...     print(len(train_idx), len(val_idx), end="; ")
    80 20; 80 20; 80 20; 80 20; 80 20;
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Split", "train_val_test_split", "holdout", "kfold"]


class Split(NamedTuple):
    """Index arrays ``train``, ``val``, ``test`` (``int64``, sorted, disjoint, covering
    ``0..n-1``); ``test`` is empty when no test fraction was asked for."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _n_and_labels(n_or_labels: Any, where: str) -> tuple[int, np.ndarray | None]:
    if isinstance(n_or_labels, (int, np.integer)) and not isinstance(n_or_labels, bool):
        n = int(n_or_labels)
        if n < 1:
            raise ValueError(f"{where}: n must be >= 1, got {n}")
        return n, None
    labels = np.asarray(n_or_labels)
    if labels.ndim != 1 or labels.shape[0] < 1:
        raise ValueError(f"{where}: expected an int n or a 1-D array of labels, got "
                         f"{type(n_or_labels).__name__} of shape {labels.shape}")
    return labels.shape[0], labels


def _stratify_labels(stratify: Any, labels: np.ndarray | None, n: int, where: str
                     ) -> np.ndarray | None:
    if stratify is None or stratify is False:
        return None
    if stratify is True:
        if labels is None:
            raise ValueError(f"{where}: stratify=True needs labels as the first argument, "
                             "not an int n")
        return labels
    strata = np.asarray(stratify)
    if strata.shape != (n,):
        raise ValueError(f"{where}: stratify labels must have shape ({n},), got {strata.shape}")
    return strata


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))  # halves up, not to even


def _largest_remainder(quota: np.ndarray, total: int, capacity: np.ndarray) -> np.ndarray:
    """Integers ``<= capacity`` near ``quota`` summing to ``total`` (as near as capacity allows)."""
    counts = np.minimum(np.floor(quota).astype(np.int64), capacity)
    short = total - int(counts.sum())
    if short > 0:
        remainder = quota - np.floor(quota)
        order = np.lexsort((np.arange(len(quota)), -remainder))  # biggest remainder first
        for i in order:
            if short == 0:
                break
            if counts[i] < capacity[i]:
                counts[i] += 1
                short -= 1
    return counts


def train_val_test_split(n_or_labels: Any, val_fraction: float, test_fraction: float = 0.0,
                         *, seed: int, stratify: Any = None) -> Split:
    """Split ``0..n-1`` at random into train, validation and test index arrays.

    Sizes: ``val`` has ``round(val_fraction * n)`` indices, ``test`` ``round(test_fraction * n)``
    (halves rounded up), ``train`` the rest.

    Args:
        n_or_labels: the number of examples, or an array of labels whose length is ``n``.
        val_fraction, test_fraction: shares of the data, each in ``[0, 1)``, summing to < 1.
        seed: the random seed (required, so a split is always reproducible).
        stratify: ``None``/``False``: plain random; ``True``: keep the class shares of the
            labels given as ``n_or_labels``; an array ``(n,)``: keep the shares of its values.

    Returns:
        ``Split(train, val, test)``: sorted ``int64`` index arrays.

    Example:
        >>> s = train_val_test_split(1000, 0.2, seed=0)
        >>> len(s.train), len(s.val), len(s.test)
        (800, 200, 0)
    """
    where = "train_val_test_split"
    n, labels = _n_and_labels(n_or_labels, where)
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float, np.floating)) or not 0 <= f < 1:
            raise ValueError(f"{where}: {name} must be in [0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"{where}: val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction}")
    strata = _stratify_labels(stratify, labels, n, where)
    n_val, n_test = _round(val_fraction * n), _round(test_fraction * n)
    if n_val + n_test >= n and (val_fraction + test_fraction) > 0:
        raise ValueError(f"{where}: {n} examples leave none for training with "
                         f"val_fraction={val_fraction}, test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(n)
        val, test = order[:n_val], order[n_val:n_val + n_test]
    else:
        classes, inverse = np.unique(strata, return_inverse=True)
        members = [np.flatnonzero(inverse == k) for k in range(len(classes))]
        sizes = np.array([len(m) for m in members], np.int64)
        val_counts = _largest_remainder(val_fraction * sizes, n_val, sizes)
        test_counts = _largest_remainder(test_fraction * sizes, n_test, sizes - val_counts)
        val_parts, test_parts = [], []
        for m, nv, nt in zip(members, val_counts, test_counts):
            m = rng.permutation(m)
            val_parts.append(m[:nv])
            test_parts.append(m[nv:nv + nt])
        val, test = np.concatenate(val_parts), np.concatenate(test_parts)
    in_train = np.ones(n, bool)
    in_train[val] = False
    in_train[test] = False
    return Split(np.flatnonzero(in_train).astype(np.int64), np.sort(val).astype(np.int64),
                 np.sort(test).astype(np.int64))


def holdout(n_or_labels: Any, size: int | float, *, seed: int, stratify: Any = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a validation set: ``(train_idx, val_idx)``, sorted ``int64``, disjoint, covering.

    ``size`` is a count of examples (an int ``>= 0``) or a fraction (a float in ``[0, 1)``);
    otherwise as ``train_val_test_split(n_or_labels, size / n, seed=seed, stratify=stratify)``
    (same indices for the same seed).

    Example:
        >>> labels = np.arange(60000) % 10
        >>> train_idx, val_idx = holdout(60000, 5000, seed=0, stratify=labels)
        >>> len(train_idx), len(val_idx)
        (55000, 5000)
        >>> np.bincount(labels[val_idx])
        array([500, 500, 500, 500, 500, 500, 500, 500, 500, 500])
        >>> [len(part) for part in holdout(1000, 0.2, seed=0)]     # a fraction
        [800, 200]
    """
    n, _ = _n_and_labels(n_or_labels, "holdout")
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if not 0 <= size < n:
            raise ValueError(f"holdout: size must be a count in [0, {n}) or a fraction in "
                             f"[0, 1), got {size!r}")
        fraction = size / n
    else:
        fraction = size
    split = train_val_test_split(n_or_labels, fraction, seed=seed, stratify=stratify)
    return split.train, split.val


def kfold(n: int, k: int, *, seed: int, stratify_labels: Any = None
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` train/validation splits in which every index is validated exactly once.

    Fold sizes differ by at most one. With ``stratify_labels`` (shape ``(n,)``) each class is
    dealt round-robin over the folds, so every fold's class counts differ by at most one
    from the others' (a class with fewer than ``k`` members is missing from some folds).

    Returns:
        ``[(train_idx, val_idx), ...]`` of length ``k``: sorted ``int64``; ``val_idx`` of the
        folds are disjoint and cover ``0..n-1``; ``train_idx`` is the complement.

    Example:
        >>> folds = kfold(100, 5, seed=0)
        >>> [len(v) for _, v in folds]
        [20, 20, 20, 20, 20]
    """
    where = "kfold"
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{where}: n must be an int >= 1, got {n!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 2 <= k <= n:
        raise ValueError(f"{where}: k must be an int in [2, n={n}], got {k!r}")
    rng = np.random.default_rng(seed)
    if stratify_labels is None:
        order = rng.permutation(n)
    else:
        strata = np.asarray(stratify_labels)
        if strata.shape != (n,):
            raise ValueError(f"{where}: stratify_labels must have shape ({n},), got "
                             f"{strata.shape}")
        _, inverse = np.unique(strata, return_inverse=True)
        # class by class, each class shuffled; dealing this sequence round-robin spreads
        # every class evenly over the folds, and the folds' sizes differ by at most one
        order = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))
                                for c in range(inverse.max() + 1)])
    fold_of = np.empty(n, np.int64)
    fold_of[order] = np.arange(n) % k
    folds = []
    for i in range(k):
        in_val = fold_of == i
        folds.append((np.flatnonzero(~in_val).astype(np.int64),
                      np.flatnonzero(in_val).astype(np.int64)))
    return folds
