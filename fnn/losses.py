"""Losses as plain functions of arrays: ``loss(predictions, targets, *, weights=None, reduction="mean")``.

Every loss first computes a **per-example** loss of shape ``(batch,)`` (axis 0 is the batch),
then reduces it:

* ``reduction="mean"`` (default): ``mean_i l_i``; with ``weights`` of shape ``(batch,)`` the
  weighted mean ``sum_i w_i l_i / sum_i w_i`` (0/1 weights are a mask: masked examples do not
  count in the numerator nor the denominator; if every weight is 0 the loss is 0, not NaN).
* ``reduction="sum"``: ``sum_i w_i l_i`` (``w_i = 1`` without weights).
* ``reduction="none"``: the per-example losses ``w_i l_i``, shape ``(batch,)``.

Per-example losses average over the non-batch axes for the regression losses (``mse``, ``mae``,
``lp_loss``, ``huber``, ``hinge``, ``binary_cross_entropy``, ``sigmoid_binary_cross_entropy``);
``half_squared_error`` sums over them; the categorical losses sum over the class axis (the
last) and average over any other non-batch axes (e.g. time steps). With ``e = a - y``:

============================  ==================================================================
name                          per-element loss
============================  ==================================================================
mse                           ``e^2``
mae                           ``|e|``
lp_loss(p)                    ``|e|^p``
huber(delta)                  ``e^2 / 2`` if ``|e| <= delta`` else ``delta * (|e| - delta / 2)``
hinge                         ``max(0, 1 - t * a)``, ``t`` in {-1, +1} (targets 0 read as -1)
half_squared_error            ``e^2 / 2``, summed over features: ``||a - y||^2 / 2``
binary_cross_entropy          ``-(y log p + (1 - y) log(1 - p))``, ``p`` clipped to [eps, 1-eps]
sigmoid_binary_cross_entropy  the same with ``p = sigmoid(z)``, as ``-(y ls(z) + (1-y) ls(-z))``
softmax_cross_entropy         ``-sum_c y_c log_softmax(z)_c`` over the class axis
categorical_cross_entropy     ``-sum_c y_c log p_c``, ``p`` clipped to [eps, 1]
weston_watkins_hinge          ``sum_{c != y} max(0, margin + s_c - s_y)`` (alias multiclass_hinge)
crammer_singer_hinge          ``max(0, margin + max_{c != y} s_c - s_y)``
============================  ==================================================================

(``ls`` is ``log_sigmoid``.) The from-logits losses are stable: value and gradient stay
finite for logits of any float32 magnitude.

Example:
    >>> logits = jnp.array([[2.0, 0.5, -1.0]]); labels = jnp.array([0])
    >>> fnn.losses.softmax_cross_entropy(logits, labels)
    Array(0.24131..., dtype=float32)
    >>> fnn.losses.get("mse")(jnp.ones((4, 2)), jnp.zeros((4, 2)))
    Array(1., dtype=float32)
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import lookup

__all__ = ["mse", "mae", "lp_loss", "huber", "hinge", "half_squared_error",
           "binary_cross_entropy", "sigmoid_binary_cross_entropy", "softmax_cross_entropy",
           "categorical_cross_entropy", "weston_watkins_hinge", "crammer_singer_hinge",
           "sequence_cross_entropy", "get", "names", "REDUCTIONS"]

Loss = Callable[..., jax.Array]

REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- helpers

def _check_reduction(loss: str, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{loss}: reduction must be one of {', '.join(map(repr, REDUCTIONS))}, "
                         f"got {reduction!r}")


def _check_batched(loss: str, what: str, x: jax.Array) -> None:
    if x.ndim < 1:
        raise ValueError(f"{loss}: {what} need a batch axis first, got shape {x.shape}")


def _check_same_shape(loss: str, predictions: jax.Array, targets: jax.Array,
                      names: tuple[str, str] = ("predictions", "targets")) -> None:
    _check_batched(loss, names[0], predictions)
    if predictions.shape != targets.shape:
        raise ValueError(f"{loss}: {names[0]} and {names[1]} must have the same shape, got "
                         f"{names[0]} {predictions.shape} and {names[1]} {targets.shape}")


def _float(x: Any, like: jax.Array | None = None) -> jax.Array:
    """``x`` as a floating array (integer/bool targets are cast to ``like``'s float dtype)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x
    dtype = like.dtype if like is not None and jnp.issubdtype(like.dtype, jnp.floating) \
        else jnp.float32
    return x.astype(dtype)


def _mean_over_features(elementwise: jax.Array) -> jax.Array:
    """``(batch, ...) -> (batch,)`` by the mean over every non-batch axis."""
    if elementwise.ndim == 1:
        return elementwise
    return jnp.mean(elementwise.reshape(elementwise.shape[0], -1), axis=1)


def _sum_over_features(elementwise: jax.Array) -> jax.Array:
    """``(batch, ...) -> (batch,)`` by the sum over every non-batch axis."""
    if elementwise.ndim == 1:
        return elementwise
    return jnp.sum(elementwise.reshape(elementwise.shape[0], -1), axis=1)


def _reduce(loss: str, per_example: jax.Array, weights: Any, reduction: str) -> jax.Array:
    """Apply ``weights`` (shape ``(batch,)``) and ``reduction`` to per-example losses."""
    if weights is not None:
        weights = _float(weights, per_example)
        if weights.shape != per_example.shape:
            raise ValueError(f"{loss}: weights must have shape (batch,) = {per_example.shape}, "
                             f"got shape {weights.shape}")
        weighted = weights * per_example
    else:
        weighted = per_example
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return jnp.sum(weighted)
    if weights is None:
        return jnp.mean(per_example)
    total = jnp.sum(weights)
    # All-zero weights (a fully masked batch) give 0 rather than 0/0.
    return jnp.sum(weighted) / jnp.where(total == 0, jnp.ones_like(total), total)


def _regression(loss: str, predictions: Any, targets: Any, reduction: str):
    _check_reduction(loss, reduction)
    predictions = _float(predictions)
    targets = _float(targets, predictions)
    _check_same_shape(loss, predictions, targets)
    return predictions, targets


# --------------------------------------------------------------------------- regression losses

def mse(predictions: jax.Array, targets: jax.Array, *, weights: jax.Array | None = None,
        reduction: str = "mean") -> jax.Array:
    """Mean squared error: per example ``mean_j (a_j - y_j)^2`` over the non-batch axes.

    Shapes: ``predictions`` and ``targets`` ``(batch, ...)``; ``weights`` ``(batch,)``;
    returns a scalar (``reduction="none"``: ``(batch,)``).

    Example:
        >>> fnn.losses.mse(jnp.array([[1.0, 3.0]]), jnp.array([[0.0, 0.0]]))
        Array(5., dtype=float32)
    """
    a, y = _regression("mse", predictions, targets, reduction)
    return _reduce("mse", _mean_over_features(jnp.square(a - y)), weights, reduction)


def mae(predictions: jax.Array, targets: jax.Array, *, weights: jax.Array | None = None,
        reduction: str = "mean") -> jax.Array:
    """Mean absolute error: per example ``mean_j |a_j - y_j|``.

    Shapes: as :func:`mse`.

    Example:
        >>> fnn.losses.mae(jnp.array([[1.0, -3.0]]), jnp.array([[0.0, 0.0]]))
        Array(2., dtype=float32)
    """
    a, y = _regression("mae", predictions, targets, reduction)
    return _reduce("mae", _mean_over_features(jnp.abs(a - y)), weights, reduction)


def lp_loss(predictions: jax.Array, targets: jax.Array, *, p: float = 2.0,
            weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Mean p-th power error: per example ``mean_j |a_j - y_j|^p`` (``p=2``: mse, ``p=1``: mae).

    For ``p <= 1`` the gradient at ``a == y`` is not finite (``p < 1``) or undefined (``p == 1``,
    taken as 0 as for ``mae``). Shapes: as :func:`mse`.

    Example:
        >>> fnn.losses.lp_loss(jnp.array([[2.0]]), jnp.array([[0.0]]), p=3)
        Array(8., dtype=float32)
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"lp_loss: p must be a positive number, got {p!r}")
    a, y = _regression("lp_loss", predictions, targets, reduction)
    e = jnp.abs(a - y)
    elementwise = jnp.square(e) if p == 2 else e if p == 1 else e ** p
    return _reduce("lp_loss", _mean_over_features(elementwise), weights, reduction)


def huber(predictions: jax.Array, targets: jax.Array, *, delta: float = 1.0,
          weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Huber loss: quadratic near 0, linear beyond ``delta``; averaged over non-batch axes.

    Per element ``e^2 / 2`` if ``|e| <= delta`` else ``delta * (|e| - delta / 2)``, ``e = a - y``.
    Shapes: as :func:`mse`.

    Example:
        >>> fnn.losses.huber(jnp.array([[0.5, 3.0]]), jnp.zeros((1, 2)))
        Array(1.3125, dtype=float32)
    """
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not delta > 0:
        raise ValueError(f"huber: delta must be a positive number, got {delta!r}")
    a, y = _regression("huber", predictions, targets, reduction)
    e = jnp.abs(a - y)
    quadratic = jnp.minimum(e, delta)  # the optax/TF form: smooth, no branch in the gradient
    elementwise = 0.5 * jnp.square(quadratic) + delta * (e - quadratic)
    return _reduce("huber", _mean_over_features(elementwise), weights, reduction)


def hinge(predictions: jax.Array, targets: jax.Array, *, weights: jax.Array | None = None,
          reduction: str = "mean") -> jax.Array:
    """Hinge loss ``max(0, 1 - t * a)`` on raw scores ``a``, averaged over non-batch axes.

    Targets are labels in {-1, +1} or in {0, 1}: a target equal to 0 is read as -1, so both
    conventions work unchanged (elementwise, no data-dependent branch; safe under ``jit``).

    Shapes: as :func:`mse`.

    Example:
        >>> fnn.losses.hinge(jnp.array([0.5, -2.0]), jnp.array([1, 0]))
        Array(0.25, dtype=float32)
    """
    a, t = _regression("hinge", predictions, targets, reduction)
    t = jnp.where(t == 0, -jnp.ones_like(t), t)
    elementwise = jax.nn.relu(1.0 - t * a)
    return _reduce("hinge", _mean_over_features(elementwise), weights, reduction)


def half_squared_error(predictions: jax.Array, targets: jax.Array, *,
                       weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """``||a - y||^2 / 2`` per example, summed over the non-batch axes (then mean over batch).

    The textbook backpropagation loss: its gradient with respect to ``a`` is ``a - y`` for
    each example (divided by the batch size under ``reduction="mean"``). Shapes: as :func:`mse`.

    Example:
        >>> fnn.losses.half_squared_error(jnp.array([[1.0, 2.0]]), jnp.zeros((1, 2)))
        Array(2.5, dtype=float32)
    """
    a, y = _regression("half_squared_error", predictions, targets, reduction)
    per_example = 0.5 * _sum_over_features(jnp.square(a - y))
    return _reduce("half_squared_error", per_example, weights, reduction)


# --------------------------------------------------------------------------- binary classification

def binary_cross_entropy(probs: jax.Array, targets: jax.Array, *, eps: float = 1e-7,
                         weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Binary cross-entropy from probabilities: ``-(y log p + (1 - y) log(1 - p))``.

    ``p`` is clipped to ``[eps, 1 - eps]`` so the value stays finite at 0 and 1 (the gradient
    is then 0 where ``p`` was clipped). Prefer :func:`sigmoid_binary_cross_entropy` on logits.
    Targets may be soft (in [0, 1]). Averaged over non-batch axes (multi-label outputs).

    Shapes: ``probs`` and ``targets`` ``(batch, ...)``; ``weights`` ``(batch,)``.

    Example:
        >>> fnn.losses.binary_cross_entropy(jnp.array([0.9, 0.2]), jnp.array([1.0, 0.0]))
        Array(0.16425..., dtype=float32)
    """
    if not 0 < eps < 0.5:
        raise ValueError(f"binary_cross_entropy: eps must be in (0, 0.5), got {eps!r}")
    p, y = _regression("binary_cross_entropy", probs, targets, reduction)
    p = jnp.clip(p, eps, 1.0 - eps)
    elementwise = -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))
    return _reduce("binary_cross_entropy", _mean_over_features(elementwise), weights, reduction)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array, *,
                                 weights: jax.Array | None = None,
                                 reduction: str = "mean") -> jax.Array:
    """Binary cross-entropy from logits ``z``: ``-(y log_sigmoid(z) + (1 - y) log_sigmoid(-z))``.

    Stable for any logit: ``log_sigmoid`` never forms ``exp(|z|)``, and the gradient is
    ``sigmoid(z) - y``. Targets may be soft (in [0, 1]). Averaged over non-batch axes.

    Shapes: ``logits`` and ``targets`` ``(batch, ...)``; ``weights`` ``(batch,)``.

    Example:
        >>> fnn.losses.sigmoid_binary_cross_entropy(jnp.array([1e4, -1e4]), jnp.array([1.0, 0.0]))
        Array(0., dtype=float32)
    """
    z, y = _regression("sigmoid_binary_cross_entropy", logits, targets, reduction)
    elementwise = -(y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z))
    return _reduce("sigmoid_binary_cross_entropy", _mean_over_features(elementwise), weights,
                   reduction)


# --------------------------------------------------------------------------- categorical

def _class_targets(loss: str, scores: jax.Array, labels: Any, label_smoothing: float) -> jax.Array:
    """Labels as target distributions of ``scores``' shape ``(batch, ..., classes)``.

    The labels' rank decides: rank ``scores.ndim - 1`` means integer class indices
    (``(batch, ...)``), rank ``scores.ndim`` means one-hot or probabilistic targets.
    """
    if not isinstance(label_smoothing, (int, float)) or isinstance(label_smoothing, bool) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{loss}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    labels = jnp.asarray(labels)
    if scores.ndim < 2:
        raise ValueError(f"{loss}: expects scores of shape (batch, ..., classes), "
                         f"got shape {scores.shape}")
    num_classes = scores.shape[-1]
    if labels.ndim == scores.ndim - 1:
        if labels.shape != scores.shape[:-1]:
            raise ValueError(f"{loss}: integer labels must have shape {scores.shape[:-1]} for "
                             f"scores {scores.shape}, got labels {labels.shape}")
        if not jnp.issubdtype(labels.dtype, jnp.integer):
            raise ValueError(f"{loss}: labels of shape {labels.shape} (one rank below scores "
                             f"{scores.shape}) are class indices and must be integers, got "
                             f"dtype {labels.dtype}; pass one-hot targets of shape {scores.shape} "
                             f"for soft labels")
        if not isinstance(labels, jax.core.Tracer):  # eager call: catch out-of-range labels
            values = np.asarray(labels)
            if values.size and (values.min() < 0 or values.max() >= num_classes):
                raise ValueError(f"{loss}: labels must be in [0, {num_classes}) for scores "
                                 f"{scores.shape}, got values in [{values.min()}, {values.max()}]")
        targets = jax.nn.one_hot(labels, num_classes, dtype=scores.dtype)
        # under jit the values are unknown: an out-of-range label (one_hot gives all zeros,
        # a plausible loss of 0) becomes NaN targets, so the loss is NaN and training stops
        invalid = (labels < 0) | (labels >= num_classes)
        targets = jnp.where(invalid[..., None], jnp.nan, targets)
    elif labels.ndim == scores.ndim:
        if labels.shape != scores.shape:
            raise ValueError(f"{loss}: one-hot labels must have the scores' shape, got scores "
                             f"{scores.shape} and labels {labels.shape}")
        targets = _float(labels, scores)
    else:
        raise ValueError(f"{loss}: labels must be class indices of shape {scores.shape[:-1]} or "
                         f"targets of shape {scores.shape}, got scores {scores.shape} and "
                         f"labels {labels.shape}")
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes
    return targets


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0,
                          weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Cross-entropy of ``softmax(logits)`` against labels: ``-sum_c y_c log_softmax(z)_c``.

    ``labels`` are either integer class indices of shape ``(batch, ...)`` or one-hot /
    probabilistic targets of the logits' shape ``(batch, ..., classes)``; the labels' rank
    decides (one below the logits: indices, which must be integers; equal: targets).
    ``label_smoothing`` ``s`` replaces targets ``y`` by ``(1 - s) y + s / classes``.
    An integer label outside ``[0, classes)`` raises ``ValueError`` when called eagerly and
    makes the loss NaN under ``jit`` (so that training on it stops as diverged).
    Stable for any logits (``log_softmax`` subtracts the max); gradient ``softmax(z) - y``.
    Extra non-batch axes (e.g. time) are averaged into the per-example loss.

    Shapes: ``logits`` ``(batch, ..., classes)``; ``weights`` ``(batch,)``.

    Example:
        >>> fnn.losses.softmax_cross_entropy(jnp.array([[0.0, 0.0]]), jnp.array([1]))
        Array(0.6931472, dtype=float32)
    """
    loss = "softmax_cross_entropy"
    _check_reduction(loss, reduction)
    z = _float(logits)
    y = _class_targets(loss, z, labels, label_smoothing)
    per_position = -jnp.sum(y * jax.nn.log_softmax(z, axis=-1), axis=-1)
    return _reduce(loss, _mean_over_features(per_position), weights, reduction)


def categorical_cross_entropy(probs: jax.Array, labels: jax.Array, *, eps: float = 1e-7,
                              label_smoothing: float = 0.0, weights: jax.Array | None = None,
                              reduction: str = "mean") -> jax.Array:
    """Cross-entropy from class probabilities: ``-sum_c y_c log p_c``, ``p`` clipped to [eps, 1].

    ``probs`` should sum to 1 over the last axis (they are not renormalised). Labels and
    ``label_smoothing`` as in :func:`softmax_cross_entropy`, which is the stable choice when
    logits are at hand.

    Shapes: ``probs`` ``(batch, ..., classes)``; ``weights`` ``(batch,)``.

    Example:
        >>> fnn.losses.categorical_cross_entropy(jnp.array([[0.25, 0.75]]), jnp.array([1]))
        Array(0.2876821, dtype=float32)
    """
    loss = "categorical_cross_entropy"
    _check_reduction(loss, reduction)
    if not 0 < eps < 1:
        raise ValueError(f"{loss}: eps must be in (0, 1), got {eps!r}")
    p = _float(probs)
    y = _class_targets(loss, p, labels, label_smoothing)
    per_position = -jnp.sum(y * jnp.log(jnp.clip(p, eps, 1.0)), axis=-1)
    return _reduce(loss, _mean_over_features(per_position), weights, reduction)


def _multiclass_hinge(loss: str, scores: Any, labels: Any, margin: float, weights: Any,
                      reduction: str, total: str) -> jax.Array:
    _check_reduction(loss, reduction)
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not margin >= 0:
        raise ValueError(f"{loss}: margin must be a number >= 0, got {margin!r}")
    s = _float(scores)
    y = _class_targets(loss, s, labels, 0.0)
    true_score = jnp.sum(y * s, axis=-1, keepdims=True)
    wrong = y == 0
    if total == "sum":
        per_class = jnp.where(wrong, jax.nn.relu(margin + s - true_score), 0.0)
        per_position = jnp.sum(per_class, axis=-1)
    else:
        best_wrong = jnp.max(jnp.where(wrong, s, -jnp.inf), axis=-1)
        per_position = jax.nn.relu(margin + best_wrong - true_score[..., 0])
    return _reduce(loss, _mean_over_features(per_position), weights, reduction)


def weston_watkins_hinge(scores: jax.Array, labels: jax.Array, *, margin: float = 1.0,
                         weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Multi-class hinge of Weston & Watkins 1999: ``sum_{c != y} max(0, margin + s_c - s_y)``.

    Every wrong class whose score comes within ``margin`` of the true class's score adds its
    violation (the multi-class SVM loss of CS231n). ``torch.nn.MultiMarginLoss`` (``p=1``) is
    this divided by the number of classes. Registered as ``"weston_watkins_hinge"`` and
    ``"multiclass_hinge"``.

    Shapes: ``scores`` ``(batch, ..., classes)`` (raw scores, not probabilities); ``labels``
    integer classes ``(batch, ...)`` or one-hot ``(batch, ..., classes)``, as in
    :func:`softmax_cross_entropy`; ``weights`` ``(batch,)``. Extra non-batch axes are averaged.

    Example:
        >>> fnn.losses.weston_watkins_hinge(jnp.array([[2.0, 1.5, -1.0]]), jnp.array([0]))
        Array(0.5, dtype=float32)
    """
    return _multiclass_hinge("weston_watkins_hinge", scores, labels, margin, weights,
                             reduction, "sum")


def crammer_singer_hinge(scores: jax.Array, labels: jax.Array, *, margin: float = 1.0,
                         weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Multi-class hinge of Crammer & Singer 2001: ``max(0, margin + max_{c != y} s_c - s_y)``.

    Only the best-scoring wrong class counts. Keras' ``categorical_hinge`` is this except that
    it takes ``max(0, max_{c != y} s_c)`` (a wrong-class maximum below 0 counts as 0).
    Registered as ``"crammer_singer_hinge"``.

    Shapes: as :func:`weston_watkins_hinge`.

    Example:
        >>> fnn.losses.crammer_singer_hinge(jnp.array([[2.0, 1.5, 1.75]]), jnp.array([0]))
        Array(0.75, dtype=float32)
    """
    return _multiclass_hinge("crammer_singer_hinge", scores, labels, margin, weights,
                             reduction, "max")


def sequence_cross_entropy(logits: jax.Array, labels: jax.Array, *,
                           weights: jax.Array | None = None, reduction: str = "mean") -> jax.Array:
    """Cross-entropy of next-token predictions, over the scored positions of each sequence.

    ``labels`` are integer token ids of shape ``(batch, time)`` (one rank below ``logits``); a
    negative label marks a position that is not scored (a prompt, padding). An example's loss
    is the mean of ``-log_softmax(z)[label]`` over its scored positions (0 with none), in nats
    (divide by ``ln 2`` for bits per token); a label ``>= classes`` gives NaN, as in
    :func:`softmax_cross_entropy`.

    Shapes: ``logits (batch, time, classes)``, ``labels (batch, time)``; ``weights (batch,)``.

    Example:
        >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
        >>> round(float(fnn.losses.sequence_cross_entropy(logits, jnp.array([[-1, 0]]))), 4)
        0.1054
    """
    loss = "sequence_cross_entropy"
    _check_reduction(loss, reduction)
    z = _float(logits)
    labels = jnp.asarray(labels)
    if z.ndim < 2 or labels.shape != z.shape[:-1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{loss}: expects integer labels {z.shape[:-1]} (negative: not scored) "
                         f"for logits {z.shape}, got labels {labels.shape} of dtype {labels.dtype}")
    scored = labels >= 0
    picked = jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1),
                                 jnp.clip(labels, 0, z.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    per_position = jnp.where(labels >= z.shape[-1], jnp.nan, jnp.where(scored, -picked, 0.0))
    axes = tuple(range(1, labels.ndim))
    count = jnp.sum(scored, axis=axes)
    per_example = jnp.sum(per_position, axis=axes) / jnp.maximum(count, 1)
    return _reduce(loss, per_example, weights, reduction)


# --------------------------------------------------------------------------- lookup by name

_BY_NAME: dict[str, Loss] = {
    "mse": mse, "mean_squared_error": mse,
    "mae": mae, "mean_absolute_error": mae,
    "lp_loss": lp_loss, "huber": huber, "hinge": hinge,
    "half_squared_error": half_squared_error,
    "binary_cross_entropy": binary_cross_entropy,
    "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
    "softmax_cross_entropy": softmax_cross_entropy,
    "categorical_cross_entropy": categorical_cross_entropy,
    "weston_watkins_hinge": weston_watkins_hinge, "multiclass_hinge": weston_watkins_hinge,
    "crammer_singer_hinge": crammer_singer_hinge,
    "sequence_cross_entropy": sequence_cross_entropy,
}


def names() -> list[str]:
    """The loss names accepted by :func:`get` (aliases included)."""
    return sorted(_BY_NAME)


def get(name: str | Loss, **options: Any) -> Loss:
    """A loss by name (``"softmax_cross_entropy"``), or itself when already a function.

    Keyword ``options`` are bound into the returned function (``get("huber", delta=2.0)``);
    an option the loss does not take raises ``ValueError`` naming it.

    Example:
        >>> loss_fn = fnn.losses.get("huber", delta=0.5)
        >>> float(loss_fn(jnp.array([2.0]), jnp.array([0.0])))
        0.875

    Raises:
        ValueError: for an unknown name, with the closest known names.
    """
    if callable(name):
        fn = name
    elif isinstance(name, str):
        fn = lookup(_BY_NAME, name, "loss")
    else:
        raise TypeError(f"a loss is a name or a function, got {name!r}")
    if not options:
        return fn
    try:
        inspect.signature(fn).bind_partial(None, None, **options)
    except TypeError:
        params = inspect.signature(fn).parameters
        known = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY]
        bad = sorted(set(options) - set(known))
        raise ValueError(f"loss {getattr(fn, '__name__', fn)!r} takes no option(s) {bad}; "
                         f"its options: {', '.join(known)}") from None
    return functools.partial(fn, **options)
