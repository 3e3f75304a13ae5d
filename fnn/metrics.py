"""Metrics as plain functions of arrays: accuracies and the confusion matrix.

Class scores (logits or probabilities, the argmax is the same) have shape
``(batch, ..., classes)``; labels are either integer class indices ``(batch, ...)`` or one-hot /
probabilistic targets of the scores' shape (the labels' rank decides, as in
:func:`fnn.losses.softmax_cross_entropy`; soft targets count their argmax as the true class).

``weights`` (optional) are of shape ``(batch,)`` (one weight per example) or of the labels'
index shape ``(batch, ...)`` (one per position, e.g. a padding mask over time steps).
``reduction`` is as in :mod:`fnn.losses`:

* ``"mean"`` (default): ``sum(w * correct) / sum(w)`` over every position (0 when every
  weight is 0); without weights the plain mean.
* ``"sum"``: ``sum(w * correct)``, the weighted count of correct positions.
* ``"none"``: one value per example, shape ``(batch,)``: the fraction of its positions that
  are correct (per-position weights: their weighted mean), times its weight for ``(batch,)``
  weights. Summing these against a 0/1 mask is how a training step counts padded batches.

Example:
    >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.0]])
    >>> fnn.metrics.accuracy(logits, jnp.array([0, 2]))
    Array(0.5, dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from fnn.arguments import positive_int
from fnn.core import lookup
from fnn.losses import sequence_cross_entropy

__all__ = ["accuracy", "top_k_accuracy", "binary_accuracy", "confusion_matrix", "correct",
           "binary_correct", "exact_match", "bits_per_token", "get", "names",
           "REDUCTIONS"]

Metric = Callable[..., jax.Array]


def _label_indices(metric: str, labels: Any, index_shape: tuple[int, ...],
                   num_classes: int) -> jax.Array:
    """Integer class indices of shape ``index_shape`` from indices or one-hot labels."""
    labels = jnp.asarray(labels)
    if labels.shape == index_shape:
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"{metric}: labels of shape {labels.shape} are class indices and "
                             f"must be integers, got dtype {labels.dtype}")
        return labels
    if labels.shape == index_shape + (num_classes,):
        return jnp.argmax(labels, axis=-1)
    raise ValueError(f"{metric}: labels must be class indices of shape {index_shape} or one-hot "
                     f"of shape {index_shape + (num_classes,)}, got labels {labels.shape}")


def _check_scores(metric: str, scores: Any) -> jax.Array:
    scores = jnp.asarray(scores)
    if scores.ndim < 2:
        raise ValueError(f"{metric}: expects scores of shape (batch, ..., classes), "
                         f"got shape {scores.shape}")
    if scores.shape[-1] < 2:
        raise ValueError(f"{metric}: scores have a single class, shape {scores.shape}; "
                         f"use binary_accuracy for one sigmoid output")
    return scores


REDUCTIONS = ("mean", "sum", "none")


def _reduce(metric: str, values: jax.Array, weights: Any, reduction: str) -> jax.Array:
    """Reduce per-position values ``(batch, ...)`` with optional weights (see the module doc)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"{metric}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")
    values = values.astype(jnp.float32)
    flat = values.reshape(values.shape[0], -1)
    if weights is None:
        if reduction == "none":
            return jnp.mean(flat, axis=1)
        return jnp.mean(values) if reduction == "mean" else jnp.sum(values)
    weights = jnp.asarray(weights, jnp.float32)
    if weights.shape == values.shape[:1]:
        if reduction == "none":
            return weights * jnp.mean(flat, axis=1)
        w = jnp.broadcast_to(weights[:, None], flat.shape)
    elif weights.shape == values.shape:
        w = weights.reshape(flat.shape)
    else:
        raise ValueError(f"{metric}: weights must have shape {values.shape[:1]} (per example) or "
                         f"{values.shape} (per position), got shape {weights.shape}")
    axis = 1 if reduction == "none" else None
    total = jnp.sum(w * flat, axis=axis)
    if reduction == "sum":
        return total
    count = jnp.sum(w, axis=axis)
    return total / jnp.where(count == 0, 1.0, count)


def accuracy(scores: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None,
             reduction: str = "mean") -> jax.Array:
    """Fraction of positions whose argmax class equals the label (ties: the lowest index wins).

    Shapes: ``scores`` (logits or probabilities) ``(batch, ..., classes)``; ``labels``
    ``(batch, ...)`` integers or ``(batch, ..., classes)`` one-hot; ``weights`` ``(batch,)`` or
    ``(batch, ...)``. Returns a float32 scalar in [0, 1] (``reduction="none"``: ``(batch,)``).

    Example:
        >>> fnn.metrics.accuracy(jnp.array([[0.1, 0.9], [0.8, 0.2]]), jnp.array([[0, 1], [0, 1]]))
        Array(0.5, dtype=float32)
    """
    scores = _check_scores("accuracy", scores)
    index_shape = scores.shape[:-1]
    true = _label_indices("accuracy", labels, index_shape, scores.shape[-1])
    correct = jnp.argmax(scores, axis=-1) == true
    return _reduce("accuracy", correct, weights, reduction)


def top_k_accuracy(scores: jax.Array, labels: jax.Array, k: int = 5, *,
                   weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Fraction of positions whose true class is among the ``k`` highest scores.

    The true class counts as in the top ``k`` when fewer than ``k`` classes score strictly
    higher (so a tie at the k-th place counts as correct). ``k=1`` is :func:`accuracy` up to
    ties. Shapes, ``weights`` and ``reduction`` as :func:`accuracy`; ``1 <= k <= classes``.

    Example:
        >>> fnn.metrics.top_k_accuracy(jnp.array([[0.5, 0.3, 0.2]]), jnp.array([1]), k=2)
        Array(1., dtype=float32)
    """
    scores = _check_scores("top_k_accuracy", scores)
    num_classes = scores.shape[-1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"top_k_accuracy: k must be an int in [1, {num_classes}] for scores "
                         f"{scores.shape}, got {k!r}")
    true = _label_indices("top_k_accuracy", labels, scores.shape[:-1], num_classes)
    true_score = jnp.take_along_axis(scores, true[..., None], axis=-1)
    higher = jnp.sum(scores > true_score, axis=-1)
    return _reduce("top_k_accuracy", higher < k, weights, reduction)


def binary_accuracy(logits: jax.Array, targets: jax.Array, threshold: float = 0.0, *,
                    weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Accuracy of binary (sigmoid) outputs: predicted positive when ``logits > threshold``.

    The default ``threshold=0.0`` is for logits (``sigmoid(z) > 0.5``); pass ``threshold=0.5``
    for probabilities. A target counts as positive when it is ``> 0.5``, so {0, 1}, {-1, +1}
    and boolean targets all work. Every element counts (multi-label outputs too).

    Shapes: ``logits`` and ``targets`` ``(batch, ...)``, the same; ``weights`` ``(batch,)`` or
    ``(batch, ...)``. Returns a float32 scalar (``reduction="none"``: ``(batch,)``).

    Example:
        >>> fnn.metrics.binary_accuracy(jnp.array([2.0, -1.0, 0.3]), jnp.array([1, 1, 0]))
        Array(0.33333334, dtype=float32)
    """
    logits, targets = jnp.asarray(logits), jnp.asarray(targets)
    if logits.ndim < 1 or logits.shape != targets.shape:
        raise ValueError(f"binary_accuracy: logits and targets must have the same shape "
                         f"(batch, ...), got logits {logits.shape} and targets {targets.shape}")
    correct = (logits > threshold) == (targets.astype(jnp.float32) > 0.5)
    return _reduce("binary_accuracy", correct, weights, reduction)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int, *,
                     weights: jax.Array | None = None) -> jax.Array:
    """Counts ``M[i, j]`` of positions with **true class i** (row) and **predicted class j** (column).

    ``predictions`` are either integer class indices ``(batch, ...)`` or float scores
    ``(batch, ..., num_classes)`` (their argmax is taken): the dtype decides. ``labels`` are
    indices of the predictions' index shape or one-hot. Indices outside ``[0, num_classes)``
    are not counted. Without weights an int32 matrix (its sum is the number of positions); with
    ``weights`` (``(batch,)`` or ``(batch, ...)``) a float32 matrix of summed weights.

    Shapes: returns ``(num_classes, num_classes)``.

    Example:
        >>> fnn.metrics.confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), 2)
        Array([[1, 1],
               [0, 1]], dtype=int32)
    """
    num_classes = positive_int("confusion_matrix", "num_classes", num_classes)
    predictions = jnp.asarray(predictions)
    if jnp.issubdtype(predictions.dtype, jnp.integer):
        predicted = predictions
    else:
        if predictions.ndim < 2 or predictions.shape[-1] != num_classes:
            raise ValueError(f"confusion_matrix: float predictions are scores of shape (batch, "
                             f"..., {num_classes}), got shape {predictions.shape}; pass integer "
                             f"predictions for class indices")
        predicted = jnp.argmax(predictions, axis=-1)
    if predicted.ndim < 1:
        raise ValueError(f"confusion_matrix: predictions need a batch axis, got shape "
                         f"{predictions.shape}")
    true = _label_indices("confusion_matrix", labels, predicted.shape, num_classes)
    dtype = jnp.int32 if weights is None else jnp.float32
    true_1h = jax.nn.one_hot(true.reshape(-1), num_classes, dtype=dtype)  # out of range: all 0
    pred_1h = jax.nn.one_hot(predicted.reshape(-1), num_classes, dtype=dtype)
    if weights is not None:
        w = jnp.asarray(weights, jnp.float32)
        if w.shape == predicted.shape[:1]:
            w = jnp.broadcast_to(w.reshape(w.shape + (1,) * (predicted.ndim - 1)), predicted.shape)
        elif w.shape != predicted.shape:
            raise ValueError(f"confusion_matrix: weights must have shape {predicted.shape[:1]} or "
                             f"{predicted.shape}, got shape {w.shape}")
        true_1h = true_1h * w.reshape(-1, 1)
    return true_1h.T @ pred_1h


def exact_match(scores: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None,
                reduction: str = "mean") -> jax.Array:
    """Fraction of sequences whose every scored position is right (arg-max = label).

    Labels are integer ids ``(batch, time)``; negative labels are not scored (as in
    :func:`fnn.losses.sequence_cross_entropy`): e.g. only the answer of an addition problem.
    A sequence with no scored position counts as right. ``weights`` ``(batch,)``.

    Example:
        >>> scores = jnp.array([[[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
        >>> fnn.metrics.exact_match(scores, jnp.array([[-1, 0], [1, 0]]))   # right, wrong
        Array(0.5, dtype=float32)
    """
    scores = _check_scores("exact_match", scores)
    labels = jnp.asarray(labels)
    if labels.shape != scores.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"exact_match: expects integer labels {scores.shape[:-1]} for scores "
                         f"{scores.shape}, got labels {labels.shape} of dtype {labels.dtype}")
    ok = (jnp.argmax(scores, axis=-1) == labels) | (labels < 0)
    right = jnp.all(ok.reshape(ok.shape[0], -1), axis=1)
    return _reduce("exact_match", right, weights, reduction)


def bits_per_token(logits: jax.Array, labels: jax.Array, *, weights: jax.Array | None = None,
                   reduction: str = "mean") -> jax.Array:
    """Cross-entropy in bits of next-token predictions: ``sequence_cross_entropy / ln 2``.

    Per sequence, the mean over its scored positions (negative labels are not scored); for a
    character-level model, bits per character.

    Example:
        >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.25, 0.75]]]))
        >>> fnn.metrics.bits_per_token(logits, jnp.array([[0, 0]]))   # (1 + 2) / 2
        Array(1.5, dtype=float32)
    """
    nats = sequence_cross_entropy(logits, labels, reduction="none")
    return _reduce("bits_per_token", nats / jnp.log(2.0), weights, reduction)


# --------------------------------------------------------------------------- lookup by name

_BY_NAME: dict[str, Metric] = {
    "accuracy": accuracy, "top_k_accuracy": top_k_accuracy, "binary_accuracy": binary_accuracy,
    "exact_match": exact_match, "bits_per_token": bits_per_token,
}


def names() -> list[str]:
    """The metric names accepted by :func:`get` (scalar metrics; not ``confusion_matrix``)."""
    return sorted(_BY_NAME)


def get(name: str | Metric) -> Metric:
    """A scalar metric by name (``"accuracy"``), or itself when already a function.

    Raises:
        ValueError: for an unknown name, with the closest known names.

    Example:
        >>> fnn.metrics.get("accuracy") is fnn.metrics.accuracy
        True
    """
    if callable(name):
        return name
    return lookup(_BY_NAME, name, "metric")


def correct(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example 1.0/0.0: is the arg-max class right? Targets are ids ``(B,)`` or one-hot ``(B, C)``.

    :func:`accuracy` with ``reduction="none"``: the per-example metric ``fit`` averages exactly.

    Example:
        >>> correct(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0]))
        Array([1., 0.], dtype=float32)
    """
    return accuracy(outputs, targets, reduction="none")


def binary_correct(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example fraction right for sigmoid logits: predicted positive where ``logit > 0``.

    Works for outputs ``(B,)`` or ``(B, 1)`` of logits; targets are 0/1 (or -1/+1).
    :func:`binary_accuracy` with ``reduction="none"``.

    Example:
        >>> binary_correct(jnp.array([2.0, -1.0]), jnp.array([1, 1]))
        Array([1., 0.], dtype=float32)
    """
    n = outputs.shape[0]
    return binary_accuracy(outputs.reshape(n, -1), targets.reshape(n, -1),
                                       reduction="none")
