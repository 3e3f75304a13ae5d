"""Per-example random keys: randomness that does not depend on how a batch is split.

The training step draws every example's randomness (dropout masks, augmentation) from a key
folded from the example's index in the *global* batch: ``fold_in(step_key, index)``. Under
``pmap`` a device holding rows ``[d * n, (d + 1) * n)`` of the batch folds in those indices,
so its examples get the keys they would get on one device; under ``jit`` over a mesh the
batch is one global array and the indices are ``0 .. batch - 1`` anyway. The same config then
gives the same masks, augmentations and losses on 1, 2 or 8 devices in every mode.

Example:
    The keys of rows 2-3 of a batch of 4, computed on a "device" that holds them, equal rows
    2-3 of the keys of the whole batch:

    >>> key = jax.random.key(0)
    >>> whole = example_keys(key, 4)
    >>> half = jax.vmap(lambda _: example_keys(key, 2, "batch"), axis_name="batch")(jnp.zeros(2))
    >>> bool((jax.random.key_data(half[1]) == jax.random.key_data(whole[2:])).all())
    True
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["example_keys", "augment_per_example"]


def example_keys(key: jax.Array, rows: int, axis_name: str | None = None) -> jax.Array:
    """One key per example, shape ``(rows,)``: ``fold_in(key, global index)``.

    ``rows`` is the number of examples this device holds; under a mapped axis ``axis_name``
    (``pmap``) this device holds rows ``axis_index * rows`` onward of the global batch.
    """
    first = 0 if axis_name is None else lax.axis_index(axis_name) * rows
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(first + jnp.arange(rows))


def augment_per_example(augment: Callable[[jax.Array, Any], Any], keys: jax.Array,
                        x: Any) -> Any:
    """``augment(key, images)`` applied to each example alone, with that example's key.

    ``x`` is a batch (any pytree of arrays with ``len(keys)`` rows); example ``b`` becomes
    ``augment(keys[b], x[b:b+1])[0]``, so its augmentation does not depend on the other rows.

    Example:
        >>> flip = lambda key, images: jnp.where(jax.random.bernoulli(key), images[:, ::-1], images)
        >>> keys = example_keys(jax.random.key(0), 3)
        >>> x = jnp.arange(6.0).reshape(3, 2)
        >>> out = augment_per_example(flip, keys, x)
        >>> bool((out[1] == flip(keys[1], x[1:2])[0]).all())
        True
    """
    def one(k, example):
        batch_of_one = jax.tree_util.tree_map(lambda a: a[None], example)
        return jax.tree_util.tree_map(lambda a: a[0], augment(k, batch_of_one))

    return jax.vmap(one)(keys, x)
