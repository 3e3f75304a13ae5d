"""What the network, the loss and the targets must agree on, checked before anything compiles.

Losses come in two forms, and both work in ``fit``, ``evaluate`` and the steps:

* **per-example**: ``loss(outputs, targets, *, reduction="none") -> (batch,)`` (all of
  ``fnn.losses``, ``fnn.metrics``), or ``loss(outputs, targets) -> (batch,)``;
* **as users write them**: ``loss(outputs, targets) -> scalar``, the mean over the batch. The
  engine makes it per-example by calling it on one example at a time (``jax.vmap`` over batches
  of one), which gives the same mean for any loss that *is* a mean over examples, and keeps
  padded batches (masks) and data-parallel splits exact. ``fit`` checks this on its first
  batch; a loss that couples the examples of a batch (e.g. in-batch negatives) is refused with
  a clear error and must be written with ``reduction=`` returning per-example values.

What a per-example loss adds over a scalar one: no ``vmap`` (a single call on the batch) and
losses that couple examples.

:func:`check_shapes` runs the network and the loss on abstract inputs (``jax.eval_shape``) and
turns any failure into one line naming the loss and the two shapes, with the fix when the
targets look like class labels for a loss that needs one-hot targets.

Example:
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(10))
    >>> check_shapes(net, fnn.losses.mse, (-1, 784), (-1,), loss_name="mse")
    Traceback (most recent call last):
    ...
    fnn.train.contract.LossContractError: loss 'mse' cannot compare the network's outputs (N, 10)
    with the targets (N,): ... one-hot them (data.one_hot: true, or fnn.data.one_hot(y, 10))
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import Layer

__all__ = ["per_example", "takes_reduction", "check_shapes", "check_loss", "check_mean_over_examples",
           "LossContractError", "name_of"]

_PROBE_BATCH = 2  # the batch size of abstract shape checks


class LossContractError(ValueError):
    """The network's outputs, the targets and the loss do not fit together (one line)."""


def name_of(fn: Callable) -> str:
    """A readable name of a loss or metric function."""
    return getattr(fn, "__name__", None) or type(fn).__name__


def takes_reduction(fn: Callable) -> bool:
    """Whether ``fn`` accepts ``reduction=`` (a named parameter or ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "reduction" or p.kind is p.VAR_KEYWORD for p in params)


def _with_batch_of_one(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[None], tree)


def per_example(fn: Callable[..., jax.Array]) -> Callable[[Any, Any], jax.Array]:
    """``fn`` as ``(outputs, targets) -> (batch,)``, whichever form it is written in.

    ``reduction="none"`` when ``fn`` takes it; else ``fn(outputs, targets)`` itself when that is
    one value per example, or a scalar (a batch mean) made per-example by ``jax.vmap`` over
    batches of one example.

    Example:
        >>> per_example(lambda o, t: jnp.mean((o - t) ** 2))(jnp.ones((3, 2)), jnp.zeros((3, 2)))
        Array([1., 1., 1.], dtype=float32)
    """
    if takes_reduction(fn):
        return lambda outputs, targets: fn(outputs, targets, reduction="none")

    def values(outputs, targets):
        n = jax.tree_util.tree_leaves(outputs)[0].shape[0]
        whole = jax.eval_shape(fn, outputs, targets)
        if getattr(whole, "shape", None) == (n,):
            return fn(outputs, targets)
        return jax.vmap(lambda o, t: jnp.reshape(fn(_with_batch_of_one(o),
                                                    _with_batch_of_one(t)), ()))(outputs, targets)

    values.__name__ = name_of(fn)
    return values


def _struct(shape: Any, dtype: Any, n: int) -> Any:
    return jax.ShapeDtypeStruct((n, *shape[1:]), dtype)


def _show(tree: Any) -> str:
    """``(N, 10)`` for one array, ``((N, 4), (N, 4))`` for a pytree of them."""
    def one(a):
        return "(N,)" if len(a.shape) == 1 else "(N, " + ", ".join(map(str, a.shape[1:])) + ")"

    leaves = jax.tree_util.tree_leaves(tree)
    if len(leaves) == 1 and not isinstance(tree, (tuple, list, dict)):
        return one(leaves[0])
    return str(jax.tree_util.tree_map(one, tree)).replace("'", "")


def check_shapes(net: Layer, loss: Callable[..., jax.Array], x: Any, y: Any, *,
                 loss_name: str | None = None, metrics: dict[str, Callable] | None = None,
                 params: Any = None, state: Any = None) -> Any:
    """Check, without data or compilation, that ``net``'s outputs on ``x`` can be scored
    against ``y`` by ``loss`` (and ``metrics``); returns the output shape-structs.

    Args:
        net: the network.
        loss: a loss in either form (see the module doc).
        x, y: example batches (arrays or ``ShapeDtypeStruct``s; any pytrees), or, for one array
            each, its shape with ``-1`` for the batch (dtype float32 for ``x``; int32 for a
            ``y`` of rank 1, else float32).
        loss_name: how errors name the loss (default: its ``__name__``; configs pass
            ``loss.name``).
        metrics: named metrics, checked the same way.
        params, state: use these instead of an abstract ``init`` (e.g. after ``transfer``).

    Raises:
        LossContractError: one line naming the loss (or metric), the network's output shape
            and the target shape, and the fix where one is known (one-hot labels).

    Example:
        >>> check_shapes(fnn.Dense(10), fnn.losses.softmax_cross_entropy, (-1, 784), (-1,))
        ShapeDtypeStruct(shape=(2, 10), dtype=float32)
    """
    xs = _as_structs(x, jnp.float32)
    ys = _as_structs(y, None)
    name = loss_name or name_of(loss)

    def forward(rng, xb):
        if params is None:
            _, p, s = net.init(rng, jax.tree_util.tree_map(lambda a: (-1, *a.shape[1:]), xb))
        else:
            p, s = params, state
        return net.apply(p, s, xb, train=False)[0]

    try:
        outputs = jax.eval_shape(forward, jax.random.key(0), xs)
    except Exception as e:  # a layer error names its layer already
        raise LossContractError(f"the network cannot take inputs {_show(xs)}: {_first_line(e)}") \
            from None
    check_loss(loss, outputs, ys, loss_name=name, metrics=metrics)
    return outputs


def check_loss(loss: Callable[..., jax.Array], outputs: Any, targets: Any, *,
               loss_name: str | None = None, metrics: dict[str, Callable] | None = None) -> None:
    """Check, under ``jax.eval_shape``, that ``loss`` (and ``metrics``) can score ``outputs``
    against ``targets`` (arrays or ``ShapeDtypeStruct``s with the batch first) with one value per
    example or a scalar mean. The second half of :func:`check_shapes`, for callers that already
    have the network's outputs (``fnn validate``).

    Raises:
        LossContractError: naming the loss (or metric), both shapes, and the fix where one is known.

    Example:
        >>> outputs = jax.ShapeDtypeStruct((4, 10), jnp.float32)
        >>> check_loss(fnn.losses.softmax_cross_entropy, outputs, jax.ShapeDtypeStruct((4,), jnp.int32))
        >>> check_loss(fnn.losses.mse, outputs, jax.ShapeDtypeStruct((4,), jnp.int32))
        Traceback (most recent call last):
        fnn.train.contract.LossContractError: loss 'mse' cannot compare the network's outputs (N, 10) with the targets (N,): ...
    """
    name = loss_name or name_of(loss)
    batch = jax.tree_util.tree_leaves(targets)[0].shape[:1]
    for what, fn in [(f"loss {name!r}", loss)] + [(f"metric {k!r}", m)
                                                  for k, m in (metrics or {}).items()]:
        try:
            out = jax.eval_shape(per_example(fn), outputs, targets)
        except Exception as e:
            raise LossContractError(f"{what} cannot compare the network's outputs "
                                    f"{_show(outputs)} with the targets {_show(targets)}: "
                                    f"{_first_line(e)}{_hint(outputs, targets)}") from None
        if not hasattr(out, "shape") or out.shape[:1] != batch:
            raise LossContractError(f"{what} must give one value per example or a scalar mean, "
                                    f"got shape {getattr(out, 'shape', out)} for outputs "
                                    f"{_show(outputs)} and targets {_show(targets)}")


def _as_structs(tree: Any, dtype: Any) -> Any:
    def is_shape(t):
        return isinstance(t, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in t)

    if is_shape(tree):  # one shape with -1 for the batch
        shape = tuple(tree)
        dt = dtype or (jnp.int32 if len(shape) == 1 else jnp.float32)
        return _struct(shape, dt, _PROBE_BATCH)
    return jax.tree_util.tree_map(
        lambda a: _struct(np.shape(a), getattr(a, "dtype", None) or np.asarray(a).dtype,
                          _PROBE_BATCH), tree)


def _hint(outputs: Any, targets: Any) -> str:
    o, t = jax.tree_util.tree_leaves(outputs), jax.tree_util.tree_leaves(targets)
    if len(o) == 1 and len(t) == 1 and len(o[0].shape) == 2 and len(t[0].shape) == 1 \
            and o[0].shape[1] > 1:
        c = o[0].shape[1]
        return (f"; if the targets are class labels, one-hot them (data.one_hot: true, or "
                f"fnn.data.one_hot(y, {c}))")
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_mean_over_examples(loss: Callable[..., jax.Array], outputs: Any, targets: Any, *,
                             loss_name: str | None = None, rtol: float = 1e-4) -> None:
    """For a loss written as ``loss(outputs, targets) -> scalar``: check on one real batch that it
    is the mean of its per-example values (what the engine relies on to mask and split batches).

    ``outputs`` may be a function returning them (called only for such a loss).

    Raises:
        LossContractError: naming the loss and the two values, and how to write it instead.
    """
    if takes_reduction(loss):
        return
    if callable(outputs):  # computed only when needed (a forward pass)
        outputs = outputs()
    whole = jnp.asarray(loss(outputs, targets))
    if whole.ndim != 0:
        return
    mean = jnp.mean(per_example(loss)(outputs, targets))
    if not np.allclose(np.asarray(whole), np.asarray(mean), rtol=rtol, atol=1e-6):
        name = loss_name or name_of(loss)
        raise LossContractError(
            f"loss {name!r} is not a mean over examples: on the first batch it gives "
            f"{float(whole):.6g}, the mean of its values example by example is "
            f"{float(mean):.6g}; give it a reduction= argument and return one value per "
            "example (reduction='none'), so that padded and split batches stay exact")
