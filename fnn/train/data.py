"""Where ``fit``, ``evaluate`` and ``predict`` get their batches: arrays, a ``Loader``, any iterable.

A batch is a dict ``{"x": inputs, "y": targets}`` (``"mask"`` optional); ``inputs`` and
``targets`` may each be any pytree of arrays sharing one leading (example) axis, e.g.
``x=(x1, x2)`` for a siamese net: the network receives the same pytree. Three kinds of data
are accepted, for training and validation alike:

* **arrays** -- a dict ``{"x": ..., "y": ...}`` of numpy (or memory-mapped) arrays; ``fit``
  shuffles and batches it itself (``epoch`` mode puts it on the device once, ``step`` mode
  gathers each batch on the host);
* a :class:`fnn.data.Loader` -- its batches, epoch ``e`` from ``loader.epoch(e)`` (so a resumed
  run sees the batches it would have seen); batches may also be ``(x, y)`` tuples;
* any **iterable** (a list, a generator) of such batches. An epoch is one pass over it, or
  ``steps_per_epoch`` batches taken from one stream that runs across epochs (needed for
  generators that never end, or that cannot be restarted).

Example:
    >>> rng = np.random.default_rng(0)
    >>> x1, x2 = rng.normal(size=(2, 6, 28, 28)).astype(np.float32)
    >>> y = rng.integers(0, 2, size=6)
    >>> source = batch_source({"x": (x1, x2), "y": y})
    >>> source.input_shape, source.num_examples
    (((-1, 28, 28), (-1, 28, 28)), 6)
    >>> def stream():                          # never ends
    ...     while True:
    ...         yield rng.normal(size=(4, 3)), rng.integers(0, 2, size=4)
    >>> gen = ({"x": xb, "y": yb} for xb, yb in stream())
    >>> source = batch_source(gen, steps_per_epoch=100)
    >>> source.input_shape, source.steps_per_epoch
    ((-1, 3), 100)
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np

from fnn.data.pipeline import Loader

__all__ = ["ArraySource", "IterableSource", "batch_source", "as_batch", "input_shape_of",
           "num_rows", "pad_batch", "take_rows", "fits_on_device", "check_batch_size",
           "is_one_shot"]

Batch = dict[str, Any]
_END = object()


def num_rows(tree: Any, what: str = "data") -> int:
    """The common leading length of every array of ``tree``; a clear error when they differ."""
    paths_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not paths_leaves:
        raise ValueError(f"{what}: no arrays given")
    lengths = {jax.tree_util.keystr(p): (np.shape(a)[0] if np.ndim(a) else None)
               for p, a in paths_leaves}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        listing = ", ".join(f"{p or 'x'}: {n if n is not None else 'a scalar'}"
                            for p, n in lengths.items())
        raise ValueError(f"{what}: every array needs one leading (example) length, got "
                         f"{listing}")
    return int(next(iter(lengths.values())))


def check_batch_size(value: Any, where: str = "batch_size") -> int:
    """``value`` as a batch size: an int >= 1 (not a bool, not a float).

    Example:
        >>> check_batch_size(0, "evaluate: batch_size")
        Traceback (most recent call last):
        ValueError: evaluate: batch_size must be an int >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where} must be an int >= 1, got {value!r}")
    return int(value)


def is_one_shot(data: Any) -> bool:
    """Whether ``data`` is an iterator that a second pass cannot restart (a generator); a dict
    of arrays, a list or a ``Loader`` can be read again."""
    return isinstance(data, Iterator) and not isinstance(data, (Loader, Mapping))


def input_shape_of(x: Any) -> Any:
    """The ``init`` input shape of inputs ``x``: ``(-1, *rest)`` per array, in ``x``'s structure.

    Example:
        >>> input_shape_of((np.zeros((5, 3)), np.zeros((5, 3))))
        ((-1, 3), (-1, 3))
    """
    return jax.tree_util.tree_map(lambda a: (-1, *np.shape(a)[1:]), x)


def as_batch(batch: Any, where: str = "batch") -> Batch:
    """A batch as the dict ``{"x", "y"[, "mask"]}``: a dict with ``"x"`` or an ``(x, y)`` pair."""
    if isinstance(batch, Mapping):
        if "x" not in batch:
            raise ValueError(f"{where}: a batch needs an 'x' entry (and 'y' to train), got keys "
                             f"{sorted(batch)}")
        return dict(batch)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return {"x": batch[0], "y": batch[1]}
    raise ValueError(f"{where}: a batch is a dict {{'x': ..., 'y': ...}} or an (x, y) pair, got "
                     f"{type(batch).__name__}")


def take_rows(tree: Any, index: Any) -> Any:
    """Rows ``index`` of every array of ``tree`` (memory-mapped arrays read in file order)."""
    def take(a):
        if isinstance(a, np.memmap):
            order = np.argsort(index, kind="stable")
            rows = np.asarray(a[np.asarray(index)[order]])
            out = np.empty_like(rows)
            out[order] = rows
            return out
        return np.asarray(a[index])

    return jax.tree_util.tree_map(take, tree)


def pad_batch(batch: Batch, size: int) -> Batch:
    """``batch`` padded with zero rows to ``size`` rows, and a ``"mask"`` (1 real, 0 padding).

    Losses and metrics are masked means, so a padded batch scores exactly its real rows.
    """
    n = num_rows(batch["x"], "batch")
    mask = np.asarray(batch.get("mask", np.ones(n, np.float32)), np.float32)
    out = {k: v for k, v in batch.items() if k != "mask"}
    if n < size:
        out = jax.tree_util.tree_map(
            lambda a: np.concatenate([np.asarray(a), np.zeros((size - n, *np.shape(a)[1:]),
                                                              np.asarray(a).dtype)]), out)
        mask = np.concatenate([mask, np.zeros(size - n, np.float32)])
    out["mask"] = mask
    return out


def fits_on_device(tree: Any, fraction: float = 0.25) -> bool:
    """Whether ``tree`` is in memory (no memory-mapped arrays) and takes at most ``fraction``
    of the default device's memory (4 GiB where the device does not report its size)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if any(isinstance(a, np.memmap) for a in leaves):
        return False
    size = sum(np.asarray(a).nbytes if not hasattr(a, "nbytes") else a.nbytes for a in leaves)
    try:
        limit = jax.local_devices()[0].memory_stats()["bytes_limit"]
    except Exception:  # CPU and some backends report no memory statistics
        limit = 16 * 2 ** 30
    return size <= fraction * limit


class ArraySource:
    """A data set of arrays ``{"x": pytree, "y": pytree}`` with one leading length ``n``."""

    def __init__(self, arrays: Mapping[str, Any], where: str = "data"):
        self.arrays = as_batch(arrays, where)
        self.num_examples = num_rows(self.arrays, where)
        if self.num_examples == 0:
            raise ValueError(f"{where}: no examples (the arrays have 0 rows)")
        self.input_shape = input_shape_of(self.arrays["x"])

    def first(self) -> Batch:
        """A one-row batch (for shape checks)."""
        return take_rows(self.arrays, np.arange(1))

    def rows(self, index: np.ndarray) -> Batch:
        return take_rows(self.arrays, index)

    def padded_batches(self, batch_size: int) -> Iterator[Batch]:
        """The data in order, in batches of ``batch_size``, the last one padded (with a mask)."""
        for start in range(0, self.num_examples, batch_size):
            index = np.arange(start, min(start + batch_size, self.num_examples))
            yield pad_batch(self.rows(index), batch_size)


class IterableSource:
    """Batches from a ``Loader`` or any iterable; ``steps_per_epoch`` cuts one stream into epochs.

    Without ``steps_per_epoch`` each epoch is a new pass (``iter(data)``, or ``loader.epoch(e)``);
    a one-shot iterator (a generator) then gives one epoch only. With it, one stream
    (``loader.repeat(...)`` or ``iter(data)``) is read across epochs, ``steps_per_epoch`` batches
    at a time.
    """

    def __init__(self, data: Iterable[Any], steps_per_epoch: int | None = None,
                 where: str = "data"):
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, (int, np.integer))
                                            or isinstance(steps_per_epoch, bool)
                                            or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch: must be an int >= 1, got {steps_per_epoch!r}")
        self.data = data
        self.where = where
        self.steps_per_epoch = steps_per_epoch
        self.one_shot = is_one_shot(data)
        self._stream: Iterator[Any] | None = None
        self._peeked: list[Any] = []
        self._first: Batch | None = None
        first = self.first()
        self.input_shape = input_shape_of(first["x"])
        self.num_examples = None

    def _new_stream(self, start_epoch: int) -> Iterator[Any]:
        if isinstance(self.data, Loader):
            return self.data.repeat(start_epoch=start_epoch)
        return iter(self.data)

    def first(self) -> Batch:
        """The first batch (for shapes); a one-shot stream hands it out again in epoch 1."""
        if self._first is None:
            if isinstance(self.data, Loader):
                item = next(iter(self.data.epoch(0)), _END)
            elif self.one_shot or self.steps_per_epoch:
                item = next(self._shared_stream(0), _END)
                self._peeked = [] if item is _END else [item]
            else:
                item = next(iter(self.data), _END)
            if item is _END:
                raise ValueError(f"{self.where}: the iterable gave no batches")
            self._first = as_batch(item, self.where)
        return self._first

    def _shared_stream(self, start_epoch: int) -> Iterator[Any]:
        if self._stream is None:
            self._stream = self._new_stream(start_epoch)
        return self._stream

    def epoch(self, epoch: int, start_epoch: int = 0) -> Iterator[Batch]:
        """The host batches of ``epoch`` (``start_epoch``: where a resumed run begins)."""
        if self.steps_per_epoch is not None:
            stream = itertools.chain(self._take_peeked(), self._shared_stream(start_epoch))
            return self._counted(itertools.islice(stream, self.steps_per_epoch), epoch)
        if self.one_shot:
            if epoch > start_epoch:
                raise ValueError(f"{self.where}: a generator (one-shot iterator) is used up after "
                                 "one epoch; pass steps_per_epoch=N to read N batches per epoch "
                                 "from it, or give a list or a fnn.data.Loader")
            return map(self._batch, itertools.chain(self._take_peeked(), self.data))
        if isinstance(self.data, Loader):
            return map(self._batch, self.data.epoch(epoch))
        return map(self._batch, iter(self.data))

    def _take_peeked(self) -> list[Any]:
        peeked, self._peeked = self._peeked, []
        return peeked

    def _batch(self, item: Any) -> Batch:
        return as_batch(item, self.where)

    def _counted(self, stream: Iterator[Any], epoch: int) -> Iterator[Batch]:
        count = 0
        for item in stream:
            count += 1
            yield self._batch(item)
        if count < self.steps_per_epoch:
            raise ValueError(f"{self.where}: the data ran out after {count} of the "
                             f"{self.steps_per_epoch} batches of epoch {epoch + 1} "
                             "(steps_per_epoch); give a stream that does not end, e.g. "
                             "loader.repeat() or itertools.cycle")


def batch_source(data: Any, steps_per_epoch: int | None = None,
                 where: str = "data") -> ArraySource | IterableSource:
    """An :class:`ArraySource` for a dict of arrays, else an :class:`IterableSource`.

    Example:
        >>> batch_source({"x": np.zeros((100, 784)), "y": np.zeros(100, int)}).num_examples
        100
    """
    if isinstance(data, (ArraySource, IterableSource)):
        return data
    if isinstance(data, Mapping):
        if steps_per_epoch is not None:
            raise ValueError("steps_per_epoch: only for iterables and Loaders; a dict of arrays "
                             "is one epoch per pass (choose batch_size)")
        return ArraySource(data, where)
    if isinstance(data, Loader) or (isinstance(data, Iterable)
                                    and not isinstance(data, (str, bytes, np.ndarray))):
        return IterableSource(data, steps_per_epoch, where)
    raise ValueError(f"{where}: expected a dict {{'x': ..., 'y': ...}} of arrays, a "
                     f"fnn.data.Loader or an iterable of batches, got {type(data).__name__}")
