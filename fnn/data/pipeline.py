"""A small input pipeline over in-memory or memory-mapped numpy arrays.

The data is a pytree of arrays that share their first (example) dim: one array, a tuple
``(x, y)``, or a dict ``{"x": x, "y": y}``; every batch has the same structure.

Functions (the whole pipeline is made of these):

* ``batches(arrays, batch_size, *, shuffle, seed, epoch, drop_remainder)``: one epoch of
  batches. The order of epoch ``e`` is ``epoch_permutation(n, seed=seed, epoch=e)``, drawn
  from numpy's ``Generator`` seeded with ``(seed, epoch)``: a new order every epoch, the same
  order for the same seed and epoch, so training resumes at any epoch (and, with
  ``start_batch``, at any batch) with exactly the batches it would have seen.
* ``repeat(epoch_fn, epochs, start_epoch=...)``: epochs back to back, ``epoch_fn(e)`` each.
* ``prefetch_to_device(iterator, size, sharding=...)``: a background thread moves the next
  ``size`` batches to the device (``jax.device_put``) while the current one is used.
* ``num_batches(n, batch_size, drop_remainder)``.
* For a plain iterator, Python's ``map(fn, it)`` is the map.

``Loader`` chains them for a data set, immutably (each method returns a new ``Loader``)::

    loader = Loader({"x": x, "y": y}, 128, seed=0).map(normalize).prefetch(2)
    for epoch in range(start_epoch, epochs):
        for batch in loader.epoch(epoch):      # a device-resident {"x": ..., "y": ...}
            state, metrics = step(state, batch, rng)

Memory-mapped arrays (``np.load(..., mmap_mode="r")``) are gathered with sorted indices, so
a batch reads only its own rows, in file order, and the file is never loaded whole.
Random augmentation belongs on the device, inside the jitted step (``fnn.data.augment``).
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

__all__ = ["Loader", "batches", "epoch_permutation", "num_batches", "prefetch_to_device",
           "repeat"]

Batch = Any  # an array, or a tuple / dict (any pytree) of arrays with one first dim


def num_batches(n: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches in one epoch of ``n`` examples: ``n // batch_size``, plus one for a last,
    smaller batch unless ``drop_remainder``.

    Example:
        >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=True)
        (3, 2)
    """
    _check_int("num_batches: n", n, 0)
    _check_int("num_batches: batch_size", batch_size, 1)
    full, rest = divmod(n, batch_size)
    return full + (1 if rest and not drop_remainder else 0)


def epoch_permutation(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of epoch ``epoch``: ``int64 (n,)``, a permutation of ``0..n-1``.

    Drawn by ``np.random.default_rng([seed, epoch]).permutation(n)``: depends only on
    ``(seed, epoch)``, so any epoch can be regenerated without replaying the earlier ones.

    Example:
        >>> epoch_permutation(5, seed=0, epoch=1)        # int64 (5,), the order of epoch 1
        array([1, 4, 3, 0, 2])
        >>> np.array_equal(epoch_permutation(5, seed=0, epoch=1),
        ...                epoch_permutation(5, seed=0, epoch=1))
        True
    """
    _check_int("epoch_permutation: n", n, 0)
    _check_int("epoch_permutation: seed", seed, 0)
    _check_int("epoch_permutation: epoch", epoch, 0)
    return np.random.default_rng([seed, epoch]).permutation(n).astype(np.int64)


def batches(arrays: Batch, batch_size: int, *, shuffle: bool = True, seed: int = 0,
            epoch: int = 0, drop_remainder: bool = False, start_batch: int = 0
            ) -> Iterator[Batch]:
    """One epoch of batches of ``arrays`` (a pytree of arrays with a common first dim ``n``).

    Every example appears exactly once per epoch (except the dropped remainder). Batches are
    numpy arrays of shape ``(batch_size, ...)`` in the structure of ``arrays``; the last one
    has ``n % batch_size`` examples unless ``drop_remainder``.

    Args:
        arrays: ``x``, ``(x, y)``, ``{"x": x, "y": y}``... numpy arrays or memmaps.
        batch_size: examples per batch.
        shuffle: order by ``epoch_permutation(n, seed=seed, epoch=epoch)``; else in order.
        seed, epoch: pick the permutation (ignored without ``shuffle``).
        drop_remainder: leave out the last, smaller batch.
        start_batch: skip the first ``start_batch`` batches (to resume mid-epoch).

    Example:
        >>> x, y = np.zeros((50, 2), np.float32), np.arange(50) % 3
        >>> for xb, yb in batches((x, y), 16, seed=0, epoch=3):
        ...     print(xb.shape, yb.shape)             # xb (16, ...), yb (16,); the rest last
        (16, 2) (16,)
        (16, 2) (16,)
        (16, 2) (16,)
        (2, 2) (2,)
        >>> xb, yb = next(iter(batches((x, y), 16, shuffle=False)))   # in order
        >>> yb[:5]
        array([0, 1, 2, 0, 1])
    """
    leaves, treedef, n = _leaves(arrays, "batches")
    total = num_batches(n, batch_size, drop_remainder)
    _check_int("batches: start_batch", start_batch, 0)
    if start_batch > total:
        raise ValueError(f"batches: start_batch {start_batch} is past the {total} batches of "
                         "an epoch")
    order = epoch_permutation(n, seed=seed, epoch=epoch) if shuffle else None
    return _batches(leaves, treedef, n, batch_size, order, start_batch, total)


def _batches(leaves: list[Any], treedef: Any, n: int, batch_size: int,
             order: np.ndarray | None, start_batch: int, total: int) -> Iterator[Batch]:
    for b in range(start_batch, total):
        start, stop = b * batch_size, min((b + 1) * batch_size, n)
        if order is None:
            batch = [_slice(leaf, start, stop) for leaf in leaves]
        else:
            index = order[start:stop]
            batch = [_gather(leaf, index) for leaf in leaves]
        yield jax.tree_util.tree_unflatten(treedef, batch)


def _leaves(arrays: Batch, where: str) -> tuple[list[Any], Any, int]:
    leaves, treedef = jax.tree_util.tree_flatten(arrays)
    if not leaves:
        raise ValueError(f"{where}: no arrays given")
    shapes = [np.shape(leaf) for leaf in leaves]
    if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
        paths = [jax.tree_util.keystr(p) or "arrays"
                 for p, _ in jax.tree_util.tree_flatten_with_path(arrays)[0]]
        listing = ", ".join(f"{p}: {s}" for p, s in zip(paths, shapes))
        raise ValueError(f"{where}: all arrays must share their first (example) dim, got {listing}")
    return leaves, treedef, int(shapes[0][0])


def _slice(a: Any, start: int, stop: int) -> Any:
    return np.asarray(a[start:stop]) if isinstance(a, np.memmap) else a[start:stop]


def _gather(a: Any, index: np.ndarray) -> Any:
    if isinstance(a, np.memmap):
        # Read the rows in file order (each page once), then put them in batch order.
        order = np.argsort(index, kind="stable")
        rows = np.asarray(a[index[order]])
        out = np.empty_like(rows)
        out[order] = rows
        return out
    return a[index]


def repeat(epoch_fn: Callable[[int], Iterable[Batch]], epochs: int | None = None, *,
           start_epoch: int = 0) -> Iterator[Batch]:
    """The batches of ``epoch_fn(start_epoch)``, ``epoch_fn(start_epoch + 1)``, ... back to
    back: ``epochs`` epochs, or forever when ``None``.

    Example:
        >>> x, y = np.zeros((50, 2), np.float32), np.zeros(50)
        >>> stream = repeat(lambda e: batches((x, y), 32, epoch=e), epochs=10)
        >>> sum(1 for _ in stream)                    # 10 epochs of 2 batches
        20
    """
    _check_int("repeat: start_epoch", start_epoch, 0)
    if epochs is not None:
        _check_int("repeat: epochs", epochs, 0)
    if not callable(epoch_fn):
        raise TypeError(f"repeat: epoch_fn must be a function of the epoch, got {epoch_fn!r}")
    if epochs is None:
        counter: Iterable[int] = itertools.count(start_epoch)
    else:
        counter = range(start_epoch, start_epoch + epochs)
    return itertools.chain.from_iterable(map(epoch_fn, counter))


_END = object()


def prefetch_to_device(iterator: Iterable[Batch], size: int = 2, *, sharding: Any = None,
                       device: Any = None,
                       put: Callable[[Batch], Batch] | None = None) -> Iterator[Batch]:
    """Yield the batches of ``iterator`` as device arrays, ``size`` of them moved ahead.

    A background thread pulls host batches, puts each on the device with
    ``jax.device_put(batch, sharding or device)`` and queues up to ``size`` of them (one more
    may be in transfer), so the
    transfer (and the host-side gathering) overlaps the step running on the current batch.
    Batches come out in the same order with the same values. An error in the producer is
    raised in the consumer; leaving the loop early stops the thread.

    Args:
        iterator: host batches (pytrees of numpy arrays).
        size: how many batches to keep ready on the device.
        sharding: a ``jax.sharding.Sharding`` (e.g. ``NamedSharding(mesh, P("data"))``) to
            split each batch over devices; the batch dim must divide evenly, so use
            ``drop_remainder=True``. With several processes each process's batch is its local
            part, assembled by ``jax.make_array_from_process_local_data``.
        device: a single target device (default: JAX's default device); not with ``sharding``.
        put: a function moving one host batch to its devices, instead of ``sharding``/``device``
            (e.g. ``DataParallel.put_batch``, which splits the batch for ``pmap``).

    Example:
        >>> x, y = np.ones((300, 2), np.float32), np.ones(300, np.int32)
        >>> total = 0
        >>> for xb, yb in prefetch_to_device(batches((x, y), 128, epoch=0), size=2):
        ...     total += int(jnp.sum(yb))             # xb, yb are jax arrays already on device
        >>> total
        300
    """
    _check_int("prefetch_to_device: size", size, 1)
    if sum(x is not None for x in (sharding, device, put)) > 1:
        raise ValueError("prefetch_to_device: give one of sharding, device or put")
    return _prefetch(iter(iterator), size, put or _device_putter(sharding, device))


def _device_putter(sharding: Any, device: Any) -> Callable[[Batch], Batch]:
    if sharding is None:
        return lambda batch: jax.device_put(batch, device)
    if jax.process_count() > 1:
        return lambda batch: jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return lambda batch: jax.device_put(batch, sharding)


def _prefetch(source: Iterator[Batch], size: int, put: Callable[[Batch], Batch]
              ) -> Iterator[Batch]:
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in source:
                if stop.is_set() or not offer((put(batch), None)):
                    return
            offer((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            offer((_END, e))

    thread = threading.Thread(target=produce, name="fnn-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while True:  # free the queued device buffers and unblock the producer
            try:
                ready.get_nowait()
            except queue.Empty:
                break


class Loader:
    """Batches of a data set with chained transforms: ``map``, ``prefetch``, ``epoch``, ``repeat``.

    Immutable: ``map`` and ``prefetch`` return a new ``Loader``. Transforms run on host
    batches (numpy), in order, before the batch is prefetched to the device.

    Args:
        arrays: a pytree of arrays with a common first dim (``(x, y)``, ``{"x": x, "y": y}``).
        batch_size, shuffle, seed, drop_remainder: as for ``batches``.

    Example:
        >>> x, y = np.full((1000, 4), 255, np.uint8), np.zeros(1000, np.int32)
        >>> loader = Loader({"x": x, "y": y}, 64, seed=1).map(lambda b: {**b, "x": b["x"] / 255})
        >>> len(loader)                                 # batches per epoch
        16
        >>> for batch in loader.prefetch(2).epoch(5):   # epoch 5, on device
        ...     pass
        >>> batch["x"].shape, float(batch["x"].max())   # the last, smaller batch
        ((40, 4), 1.0)
        >>> import itertools
        >>> stream = loader.repeat(start_epoch=5)       # epochs 5, 6, ... forever
        >>> len(list(itertools.islice(stream, 20)))     # here: the first 20 batches
        20
    """

    def __init__(self, arrays: Batch, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = False):
        _, _, n = _leaves(arrays, "Loader")
        self.num_batches = num_batches(n, batch_size, drop_remainder)
        _check_int("Loader: seed", seed, 0)
        self.arrays = arrays
        self.num_examples = n
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self._transforms: tuple[Callable[[Batch], Batch], ...] = ()
        self._prefetch: dict[str, Any] | None = None

    def _replace(self, **changes: Any) -> "Loader":
        new = object.__new__(Loader)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def map(self, fn: Callable[[Batch], Batch]) -> "Loader":
        """A loader whose batches are ``fn(batch)`` (after the transforms already chained)."""
        if not callable(fn):
            raise TypeError(f"Loader.map: expected a function, got {fn!r}")
        return self._replace(_transforms=self._transforms + (fn,))

    def prefetch(self, size: int = 2, *, sharding: Any = None, device: Any = None) -> "Loader":
        """A loader whose batches arrive on the device, ``size`` ahead (``prefetch_to_device``)."""
        _check_int("Loader.prefetch: size", size, 1)
        if sharding is not None and device is not None:
            raise ValueError("Loader.prefetch: give sharding or device, not both")
        return self._replace(_prefetch={"size": size, "sharding": sharding, "device": device})

    def _host_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[Batch]:
        stream = batches(self.arrays, self.batch_size, shuffle=self.shuffle, seed=self.seed,
                         epoch=epoch, drop_remainder=self.drop_remainder, start_batch=start_batch)
        for fn in self._transforms:
            stream = map(fn, stream)
        return stream

    def _finish(self, stream: Iterator[Batch]) -> Iterator[Batch]:
        if self._prefetch is None:
            return stream
        return prefetch_to_device(stream, **self._prefetch)

    def epoch(self, epoch: int = 0, *, start_batch: int = 0) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (from batch ``start_batch``, to resume mid-epoch)."""
        return self._finish(self._host_epoch(epoch, start_batch))

    def repeat(self, epochs: int | None = None, *, start_epoch: int = 0) -> Iterator[Batch]:
        """Epochs ``start_epoch, start_epoch + 1, ...`` back to back (``epochs`` of them, or
        forever), each with its own order; prefetching runs across epoch boundaries."""
        return self._finish(repeat(self._host_epoch, epochs, start_epoch=start_epoch))

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def __len__(self) -> int:
        return self.num_batches

    def __repr__(self) -> str:
        return (f"Loader(num_examples={self.num_examples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_remainder={self.drop_remainder}, transforms={len(self._transforms)}, "
                f"prefetch={self._prefetch})")


def _check_int(what: str, value: Any, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
