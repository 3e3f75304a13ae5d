"""Regularizers as plain functions of params pytrees: penalties to add to a loss, and projections.

Params are nested dicts keyed by layer names, with readable leaf names. By default only
**weights** are regularized: a leaf is a weight when its own key (the last in its path) is
``"w"`` or starts with ``"w_"`` (recurrent kernels such as ``"w_ih"``); see :func:`is_weight`.
Biases (``b``), normalization ``scale``/``offset``, activation ``alpha``/``beta`` and
embeddings are left alone unless selected explicitly.

``select`` chooses the leaves, in every function here:

* ``None``: :func:`is_weight` (weights only);
* a predicate ``select(path, leaf) -> bool``, ``path`` the tuple of string keys from the root
  to the leaf, e.g. ``("serial", "dense_2", "w")``; helpers :func:`weights_only`,
  :func:`layers`, :func:`all_params`;
* a layer name or a list of names: shorthand for ``layers(*names)``, the **weights** under
  those layer keys (a name ``"a/b"`` matches the consecutive keys ``a``, ``b``). A name found
  nowhere in the params is an error, not a silent zero.

Penalties (scalars, added to the loss by the user)::

    l1(params)  = sum |w|
    l2(params)  = sum w^2        (plain sum of squares, no 1/2 factor)
    elastic_net(params, l1_coef, l2_coef) = l1_coef * l1 + l2_coef * l2

Projection (applied to params after an optimizer step): :func:`max_norm`.

Example:
    >>> params = {"dense_0": {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}}
    >>> fnn.regularizers.l2(params)   # the bias is not counted
    Array(6., dtype=float32)
    >>> data_loss = lambda p: jnp.sum(p["dense_0"]["b"] ** 2)       # stand-in data term
    >>> loss = lambda p: data_loss(p) + 1e-4 * fnn.regularizers.l2(p)
    >>> grads = jax.grad(loss)(params)
    >>> np.allclose(grads["dense_0"]["w"], 2e-4)                    # d(1e-4 * w^2)/dw = 2e-4 w
    True
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import check_layer_names, key_name, lookup, under_layer

__all__ = ["is_weight", "weights_only", "all_params", "layers", "l1", "l2", "elastic_net",
           "max_norm", "get", "names"]

Path = tuple[str, ...]
Predicate = Callable[[Path, Any], bool]
Select = Predicate | str | Sequence[str] | None


# --------------------------------------------------------------------------- selection

def is_weight(path: Path, leaf: Any = None) -> bool:
    """True for weight leaves: the last key of ``path`` is ``"w"`` or starts with ``"w_"``.

    Example:
        >>> is_weight(("dense_0", "w")), is_weight(("lstm", "w_hh")), is_weight(("dense_0", "b"))
        (True, True, False)
    """
    return bool(path) and (path[-1] == "w" or path[-1].startswith("w_"))


weights_only: Predicate = is_weight
"""The default selection: weights (kernels) only; see :func:`is_weight`."""


def all_params(path: Path, leaf: Any = None) -> bool:
    """Select every leaf (weights, biases, normalization and activation params alike)."""
    return True


class _Layers:
    """Predicate: the leaf lies under one of the named layer keys (and is a weight if asked)."""

    def __init__(self, names: Sequence[str], only_weights: bool):
        self.names = tuple(names)
        self.parts = tuple(tuple(n.split("/")) for n in self.names)
        self.only_weights = only_weights

    def matches(self, name_parts: Path, path: Path) -> bool:
        return under_layer(name_parts, path[:-1])  # layer keys exclude the leaf's own name

    def __call__(self, path: Path, leaf: Any = None) -> bool:
        if self.only_weights and not is_weight(path, leaf):
            return False
        return any(self.matches(parts, path) for parts in self.parts)

    def __repr__(self) -> str:
        return f"layers({', '.join(map(repr, self.names))}, only_weights={self.only_weights})"


def layers(*names: str, only_weights: bool = True) -> Predicate:
    """Predicate selecting the leaves under the given layer keys (weights only by default).

    A name matches any key on the path to a leaf (``"dense_2"`` matches
    ``("serial", "dense_2", "w")``); ``"block/dense_0"`` matches those two consecutive keys.
    ``only_weights=False`` also takes biases and every other leaf under those layers.

    Example:
        >>> params = {"dense_1": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
        ...           "dense_2": {"w": jnp.ones((2, 1)), "b": jnp.ones(1)}}
        >>> fnn.regularizers.l2(params, select=fnn.regularizers.layers("dense_2"))
        Array(2., dtype=float32)
        >>> fnn.regularizers.l2(params, select=fnn.regularizers.layers("dense_2", only_weights=False))
        Array(3., dtype=float32)
    """
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"layers: expects one or more non-empty layer names, got {names!r}")
    return _Layers(names, only_weights)


def _predicate(select: Select, where: str) -> Predicate:
    if select is None:
        return is_weight
    if isinstance(select, str):
        return layers(select)
    if isinstance(select, (list, tuple)):
        return layers(*select)
    if callable(select):
        return select
    raise TypeError(f"{where}: select must be None, a predicate (path, leaf) -> bool, a layer "
                    f"name or a list of names, got {select!r}")


def _path(keypath: Sequence[Any]) -> Path:
    return tuple(key_name(k) for k in keypath)


def _check_names_found(pred: Predicate, paths: list[Path], where: str) -> None:
    if not isinstance(pred, _Layers):
        return
    check_layer_names(pred.names, [p[:-1] for p in paths], where)  # layer keys: no leaf name


def _selected(params: Any, select: Select, where: str) -> list[tuple[Path, jax.Array]]:
    pred = _predicate(select, where)
    leaves = [(_path(kp), leaf)
              for kp, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    _check_names_found(pred, [p for p, _ in leaves], where)
    return [(p, leaf) for p, leaf in leaves if pred(p, leaf)]


# --------------------------------------------------------------------------- penalties

def _wide(leaf: jax.Array) -> jax.Array:
    """Sum low-precision leaves (bfloat16, float16) in float32."""
    leaf = jnp.asarray(leaf)
    return leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))


def l1(params: Any, *, select: Select = None) -> jax.Array:
    """L1 penalty: ``sum |x|`` over the selected leaves (weights by default). A float32 scalar.

    Example:
        >>> fnn.regularizers.l1({"d": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.ones(2)}})
        Array(3., dtype=float32)
    """
    total = jnp.zeros((), jnp.float32)
    for _, leaf in _selected(params, select, "l1"):
        total = total + jnp.sum(jnp.abs(_wide(leaf)))
    return total


def l2(params: Any, *, select: Select = None) -> jax.Array:
    """L2 penalty: ``sum x^2`` over the selected leaves (weights by default), no 1/2 factor.

    Its gradient is ``2 w`` on selected leaves and 0 elsewhere. A float32 scalar.

    Example:
        >>> fnn.regularizers.l2({"d": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.ones(2)}})
        Array(5., dtype=float32)
    """
    total = jnp.zeros((), jnp.float32)
    for _, leaf in _selected(params, select, "l2"):
        total = total + jnp.sum(jnp.square(_wide(leaf)))
    return total


def elastic_net(params: Any, l1_coef: float = 0.5, l2_coef: float = 0.5, *,
                select: Select = None) -> jax.Array:
    """Elastic net: ``l1_coef * sum |x| + l2_coef * sum x^2`` over the selected leaves.

    Example:
        >>> fnn.regularizers.elastic_net({"d": {"w": jnp.array([[1.0, -2.0]])}}, 1.0, 0.1)
        Array(3.5, dtype=float32)
    """
    for label, coef in (("l1_coef", l1_coef), ("l2_coef", l2_coef)):
        if isinstance(coef, bool) or not isinstance(coef, (int, float)) or coef < 0:
            raise ValueError(f"elastic_net: {label} must be a number >= 0, got {coef!r}")
    total = jnp.zeros((), jnp.float32)
    for _, leaf in _selected(params, select, "elastic_net"):
        leaf = _wide(leaf)
        total = total + l1_coef * jnp.sum(jnp.abs(leaf)) + l2_coef * jnp.sum(jnp.square(leaf))
    return total


# --------------------------------------------------------------------------- projection

def _norm_axes(path: Path, leaf: jax.Array, axis: int | Sequence[int] | None) -> tuple[int, ...]:
    ndim = leaf.ndim
    if axis is None:
        return tuple(range(ndim - 1)) if ndim >= 2 else tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    bad = [a for a in axes if not -ndim <= int(a) < ndim]
    if bad:
        raise ValueError(f"max_norm: axis {axis!r} is out of range for leaf "
                         f"{'/'.join(path)!r} of shape {leaf.shape}")
    return tuple(sorted({int(a) % ndim for a in axes}))


def max_norm(params: Any, max_value: float, *, axis: int | Sequence[int] | None = None,
             select: Select = None) -> Any:
    """Project params so each unit's incoming weight vector has norm ``<= max_value``.

    A projection, not a penalty: call it on the params after each optimizer step. For a Dense
    ``w`` of shape ``(in, out)`` the incoming vector of unit ``j`` is ``w[:, j]``; by default
    (``axis=None``) the norm is over all axes but the last, so conv kernels ``(*window, in,
    out)`` work the same way (rank-1 leaves are taken as one vector). Vectors with norm above
    ``max_value`` are rescaled to norm ``max_value`` (direction kept); the others are returned
    unchanged, exactly. ``axis`` overrides the norm axes; ``select`` as in :func:`l2`
    (weights by default). Returns params of the same structure; unselected leaves untouched.

    Example:
        >>> p = fnn.regularizers.max_norm({"d": {"w": jnp.array([[3.0], [4.0]])}}, 1.0)
        >>> p["d"]["w"].ravel()
        Array([0.6, 0.8], dtype=float32)
    """
    if isinstance(max_value, bool) or not isinstance(max_value, (int, float)) or not max_value > 0:
        raise ValueError(f"max_norm: max_value must be a positive number, got {max_value!r}")
    pred = _predicate(select, "max_norm")
    _check_names_found(pred, [_path(kp) for kp, _ in
                              jax.tree_util.tree_flatten_with_path(params)[0]], "max_norm")

    def project(keypath, leaf):
        path = _path(keypath)
        if not pred(path, leaf):
            return leaf
        axes = _norm_axes(path, leaf, axis)
        norms = jnp.sqrt(jnp.sum(jnp.square(leaf), axis=axes, keepdims=True))
        over = norms > max_value
        scale = jnp.where(over, max_value / jnp.where(over, norms, 1.0), 1.0)
        return leaf * scale.astype(leaf.dtype)  # scale is exactly 1 inside the ball

    return jax.tree_util.tree_map_with_path(project, params)


# --------------------------------------------------------------------------- lookup by name

_BY_NAME: dict[str, Callable[..., jax.Array]] = {"l1": l1, "l2": l2, "elastic_net": elastic_net}


def names() -> list[str]:
    """The penalty names accepted by :func:`get` (``max_norm`` is a projection, not listed)."""
    return sorted(_BY_NAME)


def get(name: str | Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """A penalty by name (``"l2"``), or itself when already a function.

    Raises:
        ValueError: for an unknown name, with the closest known names.

    Example:
        >>> fnn.regularizers.get("l2") is fnn.regularizers.l2
        True
    """
    if callable(name):
        return name
    return lookup(_BY_NAME, name, "regularizer")
