"""Sharded train states: how each leaf is split over a mesh axis, and what each device holds.

The layout of ``parallel.mode: fsdp`` (fully sharded data parallel, ZeRO-3): every leaf of
the params and the optimizer state with at least :data:`MIN_SHARDED_SIZE` elements is split
over the mesh's data axis along its largest dimension that the axis size divides; smaller
leaves (biases, scales, counters, keys) and leaves with no such dimension are replicated.
``jax.jit`` with these shardings as in/out shardings makes XLA all-gather each kernel where
the forward and backward passes need it and reduce-scatter its gradient, so each device keeps
``1 / N`` of the large leaves between steps.

Example:
    A ``(784, 512)`` kernel over 8 devices is split along its first axis (784 = 8 x 98), a bias
    of 512 elements is replicated, and a ``(3, 3, 1, 32)`` conv kernel (288 elements) too:

    >>> spec_for((784, 512), 8), spec_for((512,), 8), spec_for((3, 3, 1, 32), 8)
    (P('data', None), P(), P())
    >>> spec_for((10, 4096), 8)     # 10 does not divide by 8: the largest that does
    P(None, 'data')
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["spec_for", "tree_shardings", "bytes_per_device", "MIN_SHARDED_SIZE"]

MIN_SHARDED_SIZE = 1024  # elements; smaller leaves are replicated (4 KiB in float32)


def spec_for(shape: tuple[int, ...], axis_size: int, axis_name: str = "data",
             min_size: int = MIN_SHARDED_SIZE) -> P:
    """The ``PartitionSpec`` of a leaf of ``shape`` over an axis of ``axis_size`` devices.

    The largest dimension that ``axis_size`` divides is split (the first of equal ones);
    ``P()`` (replicated) for leaves under ``min_size`` elements or with no such dimension.
    """
    if axis_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    fits = [(size, -i) for i, size in enumerate(shape) if size % axis_size == 0]
    if not fits:
        return P()
    axis = -max(fits)[1]
    return P(*(axis_name if i == axis else None for i in range(len(shape))))


def tree_shardings(tree: Any, mesh: Mesh, axis_name: str = "data",
                   min_size: int = MIN_SHARDED_SIZE) -> Any:
    """A ``NamedSharding`` for every array leaf of ``tree`` (arrays or shape structs), by
    :func:`spec_for` over ``mesh``'s ``axis_name``; the same structure as ``tree``."""
    size = mesh.shape[axis_name]
    return jax.tree_util.tree_map(
        lambda a: NamedSharding(mesh, spec_for(tuple(a.shape), size, axis_name, min_size)),
        tree)


def bytes_per_device(tree: Any) -> dict[str, int]:
    """Bytes of ``tree``'s live arrays on each of this process's devices, from their shards.

    Read from ``addressable_shards`` (what each device really holds), not computed from the
    layout. Keys are ``str(device)``.

    Example:
        >>> bytes_per_device({"w": jnp.zeros((4, 8), jnp.float32)})
        {'cpu:0': 128}
    """
    out: dict[str, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.data.nbytes
    return out
