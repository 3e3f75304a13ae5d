"""Sharded train states: how each leaf is split over a mesh axis, and what each device holds.

The layout of ``parallel.mode: fsdp`` (fully sharded data parallel, ZeRO-3): every leaf of
the params and the optimizer state with at least :data:`MIN_SHARDED_SIZE` elements is split
over the mesh's data axis along its largest dimension that the axis size divides; smaller
leaves (biases, scales, counters, keys) and leaves with no such dimension are replicated.
``jax.jit`` with these shardings as in/out shardings makes XLA all-gather each kernel where
the forward and backward passes need it and reduce-scatter its gradient, so each device keeps
``1 / N`` of the large leaves between steps.

With a second, ``"model"`` mesh axis of ``M`` devices (``parallel: {mode: fsdp, model: M}``),
the kernels (leaves of two or more dimensions) also split their last axis -- the output
features of a Dense, Conv or attention kernel -- over ``"model"`` when ``M`` divides it, and
their largest other dividing dimension over ``"data"`` as before.

Example:
    A ``(784, 512)`` kernel over 8 devices is split along its first axis (784 = 8 x 98), a bias
    of 512 elements is replicated, and a ``(3, 3, 1, 32)`` conv kernel (288 elements) too:

    >>> spec_for((784, 512), 8), spec_for((512,), 8), spec_for((3, 3, 1, 32), 8)
    (P('data', None), P(), P())
    >>> spec_for((10, 4096), 8)     # 10 does not divide by 8: the largest that does
    P(None, 'data')

    On a mesh of 4 ``"data"`` x 2 ``"model"`` devices the kernel's output features go to
    ``"model"``; a conv kernel's input channels to ``"data"``; a 1-D leaf only to ``"data"``:

    >>> spec_for((784, 512), 4, model_size=2), spec_for((3, 3, 32, 64), 4, model_size=2)
    (P('data', 'model'), P(None, None, 'data', 'model'))
    >>> spec_for((4096,), 4, model_size=2), spec_for((4096, 3), 4, model_size=2)
    (P('data',), P('data', None))
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = ["spec_for", "tree_shardings", "bytes_per_device", "MIN_SHARDED_SIZE"]

MIN_SHARDED_SIZE = 1024  # elements; smaller leaves are replicated (4 KiB in float32)


def spec_for(shape: tuple[int, ...], axis_size: int, axis_name: str = "data",
             min_size: int = MIN_SHARDED_SIZE, *, model_size: int = 1,
             model_axis: str = "model") -> P:
    """The ``PartitionSpec`` of a leaf of ``shape`` over an axis of ``axis_size`` devices
    (and a model axis of ``model_size`` devices).

    With ``model_size > 1``, a leaf of two or more dimensions whose last dimension
    ``model_size`` divides splits that dimension over ``model_axis``. Of the remaining
    dimensions, the largest that ``axis_size`` divides is split over ``axis_name`` (the first of
    equal ones). ``P()`` (replicated) for leaves under ``min_size`` elements or with no such
    dimension.
    """
    if int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    names: list[str | None] = [None] * len(shape)
    if model_size > 1 and len(shape) >= 2 and shape[-1] % model_size == 0:
        names[-1] = model_axis
    if axis_size > 1:
        fits = [(size, -i) for i, size in enumerate(shape)
                if names[i] is None and size % axis_size == 0]
        if fits:
            names[-max(fits)[1]] = axis_name
    return P(*names) if any(names) else P()


def tree_shardings(tree: Any, mesh: Mesh, axis_name: str = "data",
                   min_size: int = MIN_SHARDED_SIZE, model_axis: str = "model") -> Any:
    """A ``NamedSharding`` for every array leaf of ``tree`` (arrays or shape structs), by
    :func:`spec_for` over ``mesh``'s ``axis_name`` (and its ``model_axis``, if it has one);
    the same structure as ``tree``."""
    size, model = mesh.shape[axis_name], mesh.shape.get(model_axis, 1)
    return jax.tree_util.tree_map(
        lambda a: NamedSharding(mesh, spec_for(tuple(a.shape), size, axis_name, min_size,
                                               model_size=model, model_axis=model_axis)),
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
