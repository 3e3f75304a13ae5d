"""Inference over whole data sets: ``predict`` (outputs) and ``evaluate`` (exact mean loss and metrics).

Both run the network in inference mode (dropout off, batch norm on its running statistics),
compile once for a fixed batch size, pad the last partial batch (padding is masked out or cut
off), and prefetch batches to the device while the previous one runs. Calling either again with
the same network (and, for ``evaluate``, the same loss and metric functions) reuses the compiled
function: new weights do not compile again.

Example:
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
    >>> rng = np.random.default_rng(0)
    >>> x_test = rng.normal(size=(10, 4)).astype(np.float32)
    >>> y_test = rng.integers(0, 3, size=10)
    >>> logits = fnn.train.predict(net, params, state, x_test, batch_size=4)   # (N, 3)
    >>> logits.shape
    (10, 3)
    >>> fnn.train.evaluate(net, params, state, {"x": x_test, "y": y_test},
    ...                    fnn.losses.softmax_cross_entropy, {"accuracy": fnn.train.correct})
    {'accuracy': ..., 'loss': ...}
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import Layer
from fnn.data.pipeline import prefetch_to_device
from fnn.train.data import ArraySource, batch_source, check_batch_size, num_rows, pad_batch
from fnn.train.parallel import DataParallel
from fnn.train.step import make_eval_step

__all__ = ["predict", "evaluate"]


@functools.lru_cache(maxsize=16)
def _compiled_apply(net: Layer) -> Callable:
    return jax.jit(lambda params, state, x: net.apply(params, state, x, train=False)[0])


@functools.lru_cache(maxsize=16)
def _cached_eval_step(net: Layer, loss: Callable, metrics: tuple | None) -> Callable:
    return make_eval_step(net, loss, metrics=None if metrics is None else dict(metrics))


def _eval_step(net: Layer, loss: Callable, metrics: Mapping[str, Callable] | None) -> Callable:
    """The jitted eval step of ``net``, the same one for the same network, loss and metrics, so
    that evaluating again (each epoch of a notebook loop) does not compile again."""
    key = None if metrics is None else tuple(sorted(metrics.items()))
    try:
        return _cached_eval_step(net, loss, key)
    except TypeError:  # an unhashable loss or metric: a fresh step
        return make_eval_step(net, loss, metrics=metrics)


def predict(net: Layer, params: Any, state: Any, x: Any, *, batch_size: int = 1024) -> Any:
    """The network's outputs on inputs ``x``, in inference mode, as host (numpy) arrays.

    Args:
        net, params, state: the network and its weights.
        x: inputs: an array or any pytree of arrays with one leading length ``N`` (as the
            network takes them), or an iterator (a generator, a ``Loader``) of input batches
            (or of ``{"x": ...}`` batches).
        batch_size: rows per compiled call (an int >= 1); the last batch is padded and its
            padding cut off.

    Returns:
        The outputs for exactly the ``N`` inputs, in order (the network's output pytree).

    Example:
        >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(10))
        >>> _, params, state = net.init(jax.random.key(0), (-1, 784))
        >>> predict(net, params, state, np.zeros((1001, 784)), batch_size=128).shape
        (1001, 10)
    """
    batch_size = check_batch_size(batch_size, "predict: batch_size")
    apply = _compiled_apply(net)
    if _is_arrays(x):
        source = ArraySource({"x": x}, "predict: x")
        batches: Iterable[Any] = source.padded_batches(min(batch_size, source.num_examples))
    else:  # an iterator (or Loader) of input batches, or of {"x": ...} batches
        batches = ({"x": b, "mask": np.ones(num_rows(b, "predict: a batch"), np.float32)}
                   for b in (item["x"] if isinstance(item, Mapping) else item for item in x))
    chunks = []
    for batch in prefetch_to_device(batches, 2):
        out = jax.device_get(apply(params, state, batch["x"]))
        real = int(np.asarray(batch["mask"]).sum())
        chunks.append(jax.tree_util.tree_map(lambda a: a[:real], out))
    if not chunks:
        raise ValueError("predict: x gave no batches (an empty iterable)")
    return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *chunks)


def _is_arrays(x: Any) -> bool:
    if isinstance(x, Iterator):
        return False
    leaves = jax.tree_util.tree_leaves(x)
    return bool(leaves) and all(hasattr(a, "shape") and hasattr(a, "dtype") for a in leaves)


def evaluate(model: Layer | Callable, params: Any, state: Any, data: Any,
             loss: Callable[..., jax.Array] | None = None,
             metrics: Mapping[str, Callable] | None = None, *, batch_size: int = 1024,
             parallel: DataParallel | None = None) -> dict[str, float]:
    """Exact means of the loss and each metric over ``data``, in inference mode.

    Args:
        model: the network (then ``loss`` is required), or an eval step from
            :func:`fnn.train.make_eval_step` / ``DataParallel.compile_eval`` (then ``loss`` and
            ``metrics`` are already in it).
        params, state: the weights (replicated with :meth:`DataParallel.replicate` under
            ``parallel``).
        data: a dict ``{"x", "y"}`` of arrays (any pytrees), a ``fnn.data.Loader`` or an
            iterable of batches.
        loss, metrics: a loss and named metrics, per-example or batch means
            (see :mod:`fnn.train.contract`).
        batch_size: rows per compiled call for arrays, an int >= 1 (the last batch is padded
            and masked).
        parallel: run the eval step over the devices of this ``DataParallel``; batches are
            padded to a multiple of the device count and each process takes its rows.

    Returns:
        ``{"loss": ..., <metric>: ...}``: means over every example, each counted once.

    Raises:
        ValueError: no examples (0 rows, or an iterable without batches), or a batch size
            that is not an int >= 1; one line, before anything compiles.

    Example:
        >>> net = fnn.Dense(2)
        >>> _, params, state = net.init(jax.random.key(0), (-1, 3))
        >>> params = jax.tree_util.tree_map(jnp.zeros_like, params)   # outputs are all zero
        >>> x, y = np.ones((5, 3), np.float32), np.ones((5, 2), np.float32)
        >>> evaluate(net, params, state, {"x": x, "y": y}, fnn.losses.mse)
        {'loss': 1.0}
    """
    batch_size = check_batch_size(batch_size, "evaluate: batch_size")
    if isinstance(model, Layer):
        if loss is None:
            raise ValueError("evaluate: give the loss to evaluate the network with")
        step = _eval_step(model, loss, metrics)
    else:
        if loss is not None or metrics is not None:
            raise ValueError("evaluate: an eval step has its loss and metrics already; give the "
                             "network instead of the step to choose them here")
        step = model
    source = batch_source(data, where="evaluate: data")
    if isinstance(source, ArraySource):
        size = min(batch_size, source.num_examples)
        if parallel is not None:
            size = parallel.round_batch_size(size)
        batches: Iterable[dict] = source.padded_batches(size)
    else:
        batches = source.epoch(0)
        if parallel is not None:
            batches = (pad_batch(b, parallel.round_batch_size(num_rows(b["x"], "a batch")))
                       for b in batches)
    put = None
    if parallel is not None:
        batches = map(parallel.local_part, batches)
        put = parallel.put_batch
    totals: dict[str, Any] = {}
    for batch in prefetch_to_device(batches, 2, put=put):
        sums = step(params, state, batch)
        totals = sums if not totals else jax.tree_util.tree_map(jnp.add, totals, sums)
    if not totals:
        raise ValueError("evaluate: the data gave no batches")
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    return {k: float(v) / count for k, v in totals.items()}
