"""Which parameters an optimizer option applies to: the weight-decay mask and frozen layers.

Both label the leaves of a params pytree by the keys on their path (``{"dense_0": {"w": ...}}``:
the leaf ``w`` of layer ``dense_0``).

Example:
    >>> w, b = jnp.ones((3, 2)), jnp.zeros(2)
    >>> weights_only({"dense_0": {"w": w, "b": b}})
    {'dense_0': {'b': False, 'w': True}}
    >>> frozen_labels({"enc": {"w": w}, "head": {"w": w}}, (("enc",),), "optimizer.freeze")
    {'enc': {'w': 'frozen'}, 'head': {'w': 'trainable'}}
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import optax

from fnn.core import check_layer_names, leaf_layer_paths, under_layer
from fnn.errors import ConfigError

__all__ = ["weights_only", "frozen_labels", "freeze_list"]


def weights_only(params: optax.Params) -> Any:
    """Weight-decay mask: ``True`` for weights (leaf key ``"w"`` or starting with ``"w_"``).

    Biases, normalization ``scale``/``offset`` and other leaves are ``False``, as is a leaf not
    held under a dict key. Shapes: a pytree of bools with the structure of ``params``.

    Example:
        >>> w, b, w2 = jnp.ones((3, 2)), jnp.zeros(2), jnp.ones((2, 8))
        >>> weights_only({"dense_0": {"w": w, "b": b}, "lstm": {"w_ih": w2}})
        {'dense_0': {'b': False, 'w': True}, 'lstm': {'w_ih': True}}
    """
    from fnn.regularizers import is_weight

    def mask(keypath, _):
        if not keypath or not isinstance(keypath[-1], jax.tree_util.DictKey):
            return False
        return is_weight((str(keypath[-1].key),))

    return jax.tree_util.tree_map_with_path(mask, params)


def frozen_labels(params: optax.Params, freeze: Sequence[tuple[str, ...]], where: str) -> Any:
    """Label each leaf ``"frozen"`` (under a named layer) or ``"trainable"``; every name must
    match. A name's parts match consecutive keys on the leaf's path, its own name excluded.

    Raises:
        ValueError: ``"<where>: no layer 'x' in params; did you mean ...?"``.
    """
    layer_paths = leaf_layer_paths(params)
    check_layer_names(["/".join(parts) for parts in freeze], layer_paths, where)
    labels = ["frozen" if any(under_layer(p, keys) for p in freeze) else "trainable"
              for keys in layer_paths]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), labels)


def freeze_list(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    """The ``freeze`` config value as name paths: ``["enc", "block/dense_0"]`` ->
    ``(("enc",), ("block", "dense_0"))``; ``None`` -> ``()``."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v and all(v.split("/")) for v in value):
        raise ConfigError(where, f"expected a list of layer names such as ['dense_0', "
                                 f"'block/dense_1'], got {value!r}")
    return tuple(tuple(v.split("/")) for v in value)
