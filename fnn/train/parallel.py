"""Data parallelism: one training step spread over devices and processes, one object per mode.

Every mode is a small class behind one interface, :class:`DataParallel`: it places the train
state (:meth:`~DataParallel.place`), splits a batch over the devices
(:meth:`~DataParallel.put_batch`), compiles the step, the evaluation and a scanned epoch
(:meth:`~DataParallel.compile_step`, ...), and gathers one whole copy of the state for a
checkpoint (:meth:`~DataParallel.gather`). ``DataParallel(mode)`` returns the mode's object;
the training loop calls the interface and never asks which mode it has.

* ``"none"`` (:class:`OneDevice`) -- one device, ``jax.jit``.
* ``"pmap"`` (:class:`PmapParallel`) -- ``jax.pmap`` over the local devices with axis name
  ``"batch"`` (:data:`PMAP_AXIS`). The train state is stacked ``[devices, ...]``, each batch
  is split into ``[devices, batch / devices, ...]``, gradients, losses and metrics are summed
  over exact global counts with ``lax.psum``, and every ``BatchNorm`` of the network is rebuilt
  with ``axis_name="batch"`` so its statistics are those of the global batch (``lax.pmean``).
* ``"mesh"`` (:class:`MeshParallel`) -- ``jax.jit`` over a ``jax.sharding.Mesh`` with one
  ``"data"`` axis (:data:`MESH_AXIS`): the batch is sharded ``P("data")``, the train state
  replicated ``P()``, and XLA inserts the collectives. The step sees one global batch, so
  batch norm computes global statistics by itself.
* ``"fsdp"`` (:class:`FsdpParallel`) -- the mesh mode with the params and the optimizer state
  sharded over the ``"data"`` axis too (:mod:`fnn.train.sharding`: the largest dimension that
  divides, small leaves replicated); ``jax.jit`` in/out shardings make XLA all-gather the
  kernels and reduce-scatter their gradients. Each device holds ``1 / N`` of the large leaves.
  ``DataParallel("fsdp", model=M)`` adds a ``"model"`` axis (:data:`MODEL_AXIS`): a mesh of
  ``N / M`` x ``M`` devices, the batch split over ``"data"`` only, and each kernel's output
  features (its last axis) split over ``"model"`` as well.

Randomness does not depend on the mode or the device count: the step draws every example's
dropout mask and augmentation from a key folded from its index in the global batch
(:mod:`fnn.train.keys`), so the same config gives the same losses on 1, 2 or 8 devices in
every mode (``docs/DISTRIBUTED.md``, "Device-count invariance").

Across several processes (hosts), call :func:`fnn.train.distributed.initialize` first; each
process then feeds only its own slice of every global batch (:meth:`DataParallel.local_slice`).

On CPU devices (``--xla_force_host_platform_device_count``) every compiled call returns only
once its results are computed (:attr:`DataParallel.waits_for_each_call`): XLA's CPU client
deadlocks when the host runs 32 steps with collectives ahead of the devices (see
``docs/DISTRIBUTED.md``, "Simulated CPU devices"); on GPUs and TPUs dispatch stays asynchronous.

Example:
    Three steps of a small network with batch norm, data-parallel over all local devices
    (global batches of 8 rows; 8 must divide by the device count):

    >>> from fnn.train import init_train_state, train_step_fn
    >>> dp = DataParallel("mesh")                     # all local devices
    >>> net = dp.prepare_net(fnn.serial(fnn.Dense(16), fnn.BatchNorm(), fnn.Relu, fnn.Dense(3)))
    >>> opt = optax.sgd(0.1)
    >>> _, train_state = init_train_state(net, opt, (-1, 4), jax.random.key(0))
    >>> step = dp.compile_step(train_step_fn(net, fnn.losses.softmax_cross_entropy, opt,
    ...                                      axis_name=dp.axis_name))
    >>> ts = dp.place(train_state)                    # the step donates it: use ts from here on
    >>> rng = np.random.default_rng(0)
    >>> batches = [{"x": rng.normal(size=(8, 4)).astype(np.float32),
    ...             "y": rng.integers(0, 3, size=8)} for _ in range(3)]
    >>> for host_batch in batches:
    ...     ts, metrics = step(ts, dp.put_batch(dp.local_part(host_batch)))
    >>> {name: value.shape for name, value in metrics.items()}   # whole-batch means
    {'loss': (), 'objective': ()}
    >>> one = dp.gather(ts)                           # one whole copy, for checkpoints
    >>> int(one.step), one.params["dense_0"]["w"].shape
    (3, (4, 16))
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fnn.core import Layer, map_layers
from fnn.errors import ConfigError
from fnn.train.distributed import initialize, synchronize
from fnn.train.sharding import bytes_per_device, tree_shardings

__all__ = ["DataParallel", "OneDevice", "PmapParallel", "MeshParallel", "FsdpParallel",
           "as_data_parallel", "initialize", "synchronize", "wait_for_results",
           "with_batch_norm_axis", "MODES", "PMAP_AXIS", "MESH_AXIS", "MODEL_AXIS"]

MODES = ("none", "pmap", "mesh", "fsdp")
PMAP_AXIS = "batch"
MESH_AXIS = "data"
MODEL_AXIS = "model"

# --------------------------------------------------------------------------- networks

def with_batch_norm_axis(net: Layer, axis_name: str | None) -> Layer:
    """``net`` with every ``BatchNorm`` inside it rebuilt with ``axis_name``.

    Combinators holding a changed layer are rebuilt with the same arguments, so the params
    and state keep their structure and names; layers without batch norm are returned as they
    are. ``pmap`` mode uses ``axis_name="batch"`` (synchronized statistics over the global
    batch); ``mesh`` mode uses ``None`` (the batch is one global array there).

    Example:
        >>> net = fnn.serial(fnn.BatchNorm(), fnn.Relu)
        >>> with_batch_norm_axis(net, "batch").spec
        {'serial': {'layers': [{'BatchNorm': {'axis_name': 'batch'}}, 'Relu']}}
    """
    def swap(layer: Layer) -> Layer:
        if layer.kind == "BatchNorm" and layer.record.args.get("axis_name") != axis_name:
            return layer.replace(axis_name=axis_name)
        return layer

    return map_layers(swap, net)


# --------------------------------------------------------------------------- the interface

def _local_devices(devices: int | Sequence[Any] | None, mode: str) -> list[Any]:
    local = jax.local_devices()
    single = mode == "none"
    if devices is None:
        return [local[0]] if single else local
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ConfigError("parallel.devices",
                              f"{devices} devices asked for, this process has {len(local)} "
                              f"({local[0].platform}); use 1 to {len(local)}")
        if single and devices != 1:
            raise ConfigError("parallel.devices", f"{devices} devices need parallel.mode pmap, "
                                                  "mesh or fsdp (mode none runs on one device)")
        return local[:int(devices)]
    chosen = list(devices)
    if not chosen or any(d not in local for d in chosen) or len(set(chosen)) != len(chosen):
        raise ConfigError("parallel.devices", "expected distinct local devices of this process "
                                              f"({local}), got {chosen}")
    if single and len(chosen) != 1:
        raise ConfigError("parallel.devices", "several devices need parallel.mode pmap, mesh or "
                                              "fsdp")
    return chosen


class DataParallel:
    """Where and how a training step runs; ``DataParallel(mode)`` is that mode's object.

    Args:
        mode: ``"none"`` (or ``None``), ``"pmap"``, ``"mesh"`` or ``"fsdp"`` (module doc).
        devices: the local devices to use: a count (the first ``devices`` of each process)
            or a list of this process's devices; ``None``: all (one for ``"none"``).
            Several processes need a count, the same on every process.
        model: devices along the ``"model"`` axis of a 2-D mesh (``"fsdp"`` only); it must
            divide the device count (and each process's, with several processes). ``1``: no
            model axis.

    Attributes:
        mode: the mode.
        local_devices: this process's devices taking part.
        devices: the devices of all processes, process by process (the order of the batch).
        num_devices: ``len(devices)``; global batches must divide by it.
        process_index, process_count: this process and how many there are.
        axis_name: the axis name to give ``train_step_fn``/``eval_step_fn``: ``"batch"``
            under ``pmap``, else ``None``.
        mesh: the ``Mesh`` of the ``mesh`` and ``fsdp`` modes (``None`` otherwise): axes
            ``("data",)``, or ``("data", "model")`` with a model axis.
        model: the size of the model axis (1 without one).
        waits_for_each_call: whether the compiled step, evaluation and epoch return only once
            their results are computed; ``True`` on several CPU devices (where XLA deadlocks
            when dispatch runs 32 steps ahead, see :func:`wait_for_results`), else ``False``.

    Example:
        >>> dp = DataParallel("pmap", devices=1)     # the first local device
        >>> dp, type(dp).__name__, dp.axis_name, dp.waits_for_each_call
        (DataParallel(mode='pmap', devices=1), 'PmapParallel', 'batch', False)
        >>> dp.check_batch_size(128)       # the per-process part of a global batch
        128
        >>> DataParallel("mesh").mesh.axis_names
        ('data',)
        >>> DataParallel("mesh", model=2)
        Traceback (most recent call last):
        fnn.errors.ConfigError: parallel.model: a model axis (2) needs parallel.mode fsdp, got 'mesh'
        >>> DataParallel("data")
        Traceback (most recent call last):
        fnn.errors.ConfigError: parallel.mode: must be one of none, pmap, mesh, fsdp, got 'data'
    """

    mode = ""
    axis_name: str | None = None
    takes_model_axis = False  # whether the mode can split kernels over a "model" axis

    def __new__(cls, mode: str | None = None, devices: int | Sequence[Any] | None = None,
                model: int = 1):
        if cls is DataParallel:  # the mode's class
            mode = "none" if mode is None else mode
            if mode not in _BY_MODE:
                raise ConfigError("parallel.mode", f"must be one of {', '.join(MODES)}, "
                                                   f"got {mode!r}")
            cls = _BY_MODE[mode]
        return super().__new__(cls)

    def __init__(self, mode: str | None = None, devices: int | Sequence[Any] | None = None,
                 model: int = 1):
        if mode not in (None, self.mode):
            raise ConfigError("parallel.mode", f"{type(self).__name__} runs mode {self.mode!r}, "
                                               f"got {mode!r}")
        self.process_index = jax.process_index()
        self.process_count = jax.process_count()
        self.local_devices = tuple(_local_devices(devices, self.mode))
        per_process = len(self.local_devices)
        if self.process_count > 1:
            if not (devices is None or isinstance(devices, (int, np.integer))):
                raise ConfigError("parallel.devices", "with several processes give a count of "
                                                      "devices per process, not a list")
            self.devices = tuple(d for p in range(self.process_count)
                                 for d in jax.local_devices(process_index=p)[:per_process])
        else:
            self.devices = self.local_devices
        self.num_devices = len(self.devices)
        self.model = _model_axis(model, self.mode if not self.takes_model_axis else None,
                                 per_process, self.process_count)
        self.waits_for_each_call = (len(self.local_devices) > 1
                                    and self.local_devices[0].platform == "cpu")
        self.mesh: Mesh | None = None

    def __repr__(self) -> str:
        procs = f", processes={self.process_count}" if self.process_count > 1 else ""
        model = f", model={self.model}" if self.model > 1 else ""
        return f"DataParallel(mode={self.mode!r}, devices={self.num_devices}{model}{procs})"

    @property
    def is_main(self) -> bool:
        """Whether this is process 0 (the one that writes checkpoints, logs and plots)."""
        return self.process_index == 0

    # ---------------------------------------------------------------- batches (all modes)

    def check_batch_size(self, batch_size: int, key: str = "batch_size") -> int:
        """Check that a global batch splits evenly over the devices; returns this process's part.

        Raises:
            ValueError: ``"{key}: 12 does not split evenly over 8 devices ..."``.
        """
        n = self.num_devices
        if batch_size % n:
            lower, upper = batch_size // n * n, (batch_size // n + 1) * n
            hint = f"{lower} or {upper}" if lower else f"{upper}"
            where = (f"{n} devices ({self.process_count} processes x {n // self.process_count})"
                     if self.process_count > 1 else f"{n} devices")
            raise ConfigError(key, f"{batch_size} does not split evenly over {where} in "
                                   f"{self.mode} mode; use a multiple of {n}, e.g. {hint}")
        return batch_size // self.process_count

    def round_batch_size(self, batch_size: int) -> int:
        """``batch_size`` rounded up to a multiple of the device count (for padded evaluation)."""
        n = self.num_devices
        return -(-batch_size // n) * n

    def local_slice(self, batch_size: int) -> slice:
        """The rows of a global batch of ``batch_size`` that this process feeds."""
        part = self.check_batch_size(batch_size)
        return slice(self.process_index * part, (self.process_index + 1) * part)

    def local_part(self, batch: Any) -> Any:
        """This process's rows of a global host batch (the whole batch with one process)."""
        if self.process_count == 1:
            return batch
        n = len(jax.tree_util.tree_leaves(batch)[0])
        rows = self.local_slice(n)
        return jax.tree_util.tree_map(lambda a: a[rows], batch)

    # ---------------------------------------------------------------- the mode's part

    def prepare_net(self, net: Layer) -> Layer:
        """The network to train in this mode (``BatchNorm`` axis names set, see
        :func:`with_batch_norm_axis`)."""
        return with_batch_norm_axis(net, self.axis_name)

    def put_batch(self, batch: Any) -> Any:
        """Put this process's part of a global batch on its devices, split for the mode."""
        raise NotImplementedError

    def put_data(self, data: Any) -> Any:
        """A whole data set on every device (epoch mode scans over it)."""
        raise NotImplementedError

    def place(self, tree: Any) -> Any:
        """The train state (or any tree) laid out on the devices as the compiled step takes it."""
        raise NotImplementedError

    def gather(self, tree: Any) -> Any:
        """One whole copy of a placed ``tree`` on one local device: what a checkpoint saves.

        The inverse of :meth:`place`; the result does not depend on the mode or device count.
        Every process must call it (under ``fsdp`` it is a collective).
        """
        raise NotImplementedError

    def compile_step(self, step_fn: Callable, donate: bool = True) -> Callable:
        """Compile ``step_fn(train_state, batch) -> (train_state, metrics)`` for the mode.

        ``step_fn`` must be built with ``axis_name=self.axis_name``. Takes a state from
        :meth:`place` and a batch from :meth:`put_batch`; the metrics come back as plain
        (unreplicated) scalars.
        """
        raise NotImplementedError

    def compile_eval(self, eval_fn: Callable) -> Callable:
        """Compile ``eval_fn(params, model_state, batch) -> sums`` (from ``eval_step_fn`` with
        ``axis_name=self.axis_name``); the sums over the global batch come back unreplicated."""
        raise NotImplementedError

    def compile_epoch(self, step_fn: Callable, num_examples: int, batch_size: int, *,
                      shuffle: bool = True, donate: bool = True,
                      chunk: int | None = None) -> Callable:
        """A whole epoch as one compiled ``lax.scan``, like :func:`fnn.train.make_train_epoch`.

        ``epoch(train_state, data, epoch_key) -> (train_state, metrics)`` with ``data`` from
        :meth:`put_data` (every device holds the training set) and metrics stacked over the
        epoch's ``num_examples // batch_size`` steps: the same batches, in the same order, as
        one device. ``chunk``: ``epoch(train_state, data, epoch_key, first_step)`` runs
        ``chunk`` steps from ``first_step`` (:func:`fnn.train.step.epoch_fn`), so that a run
        with step checkpoints can stop and save between chunks.
        """
        raise NotImplementedError

    def memory(self, tree: Any) -> str:
        """One line: bytes of ``tree``'s live arrays per local device (max and total), read
        from the arrays' shards (:func:`fnn.train.sharding.bytes_per_device`)."""
        per = bytes_per_device(tree)
        most = max(per.values(), default=0)
        return (f"{most / 2**20:.2f} MiB per device (max over {len(per)}), "
                f"{sum(per.values()) / 2**20:.2f} MiB on this process's devices")

    # ---------------------------------------------------------------- the former names

    def replicate(self, tree: Any) -> Any:
        """The same as :meth:`place` (its name before the state could be sharded)."""
        return self.place(tree)

    def unreplicate(self, tree: Any) -> Any:
        """The same as :meth:`gather` (its name before the state could be sharded)."""
        return self.gather(tree)

    def _paced(self, compiled: Callable) -> Callable:
        return wait_for_results(compiled) if self.waits_for_each_call else compiled


# --------------------------------------------------------------------------- the modes

class OneDevice(DataParallel):
    """Mode ``none``: ``jax.jit`` on one device; the network as given."""

    mode = "none"

    def __init__(self, mode: str | None = None, devices: int | Sequence[Any] | None = None,
                 model: int = 1):
        super().__init__(mode, devices, model)
        if self.process_count > 1:
            raise ConfigError("parallel.mode", f"{self.process_count} processes are running; "
                                               "choose pmap, mesh or fsdp (mode none trains on "
                                               "one device)")

    def prepare_net(self, net: Layer) -> Layer:
        return net

    def put_batch(self, batch: Any) -> Any:
        return jax.device_put(batch, self.local_devices[0])

    put_data = place = put_batch

    def gather(self, tree: Any) -> Any:
        return tree

    def compile_step(self, step_fn: Callable, donate: bool = True) -> Callable:
        return jax.jit(step_fn, donate_argnums=(0,) if donate else ())

    def compile_eval(self, eval_fn: Callable) -> Callable:
        return jax.jit(eval_fn)

    def compile_epoch(self, step_fn: Callable, num_examples: int, batch_size: int, *,
                      shuffle: bool = True, donate: bool = True,
                      chunk: int | None = None) -> Callable:
        from fnn.train.step import make_train_epoch
        return make_train_epoch(step_fn, num_examples, batch_size, shuffle=shuffle,
                                donate=donate, chunk=chunk)


class PmapParallel(DataParallel):
    """Mode ``pmap``: ``jax.pmap`` over the local devices, the state stacked ``[devices, ...]``."""

    mode = "pmap"
    axis_name = PMAP_AXIS

    def __init__(self, mode: str | None = None, devices: int | Sequence[Any] | None = None,
                 model: int = 1):
        super().__init__(mode, devices, model)
        local_mesh = Mesh(np.array(self.local_devices), (PMAP_AXIS,))
        self._stacked = NamedSharding(local_mesh, P(PMAP_AXIS))
        self._local_replicated = NamedSharding(local_mesh, P())

    def put_batch(self, batch: Any) -> Any:
        """Each leaf ``(b, ...)`` becomes ``(devices, b / devices, ...)``, a slice per device."""
        d = len(self.local_devices)

        def split(a):
            a = np.asarray(a)
            if a.shape[0] % d:
                raise ValueError(f"a batch of {a.shape[0]} rows does not split over {d} devices")
            return jax.device_put(a.reshape(d, a.shape[0] // d, *a.shape[1:]), self._stacked)

        return jax.tree_util.tree_map(split, batch)

    def put_data(self, data: Any) -> Any:
        return jax.device_put(data, self._local_replicated)

    def place(self, tree: Any) -> Any:
        d = len(self.local_devices)
        return jax.tree_util.tree_map(
            lambda a: jax.device_put(jnp.stack([jnp.asarray(a)] * d), self._stacked), tree)

    def gather(self, tree: Any) -> Any:
        def first(a):
            if not isinstance(a, jax.Array):
                return a
            shard = a.addressable_shards[0].data
            return shard.reshape(shard.shape[1:])

        return jax.tree_util.tree_map(first, tree)

    def compile_step(self, step_fn: Callable, donate: bool = True) -> Callable:
        return self._paced(jax.pmap(step_fn, axis_name=PMAP_AXIS, out_axes=(0, None),
                                    donate_argnums=(0,) if donate else (), devices=self.devices))

    def compile_eval(self, eval_fn: Callable) -> Callable:
        return self._paced(jax.pmap(eval_fn, axis_name=PMAP_AXIS, out_axes=None,
                                    devices=self.devices))

    def compile_epoch(self, step_fn: Callable, num_examples: int, batch_size: int, *,
                      shuffle: bool = True, donate: bool = True,
                      chunk: int | None = None) -> Callable:
        from fnn.train.step import epoch_fn

        self.check_batch_size(batch_size)
        size = batch_size // self.num_devices  # each device takes its rows by its axis index
        epoch = epoch_fn(step_fn, num_examples, batch_size, shuffle=shuffle, rows=size,
                         first_row=lambda: lax.axis_index(PMAP_AXIS) * size, chunk=chunk)
        rest = (None, None) if chunk is None else (None, None, None)  # data, key[, first step]
        return self._paced(jax.pmap(epoch, axis_name=PMAP_AXIS, in_axes=(0, *rest),
                                    out_axes=(0, None), donate_argnums=(0,) if donate else (),
                                    devices=self.devices))


class MeshParallel(DataParallel):
    """Mode ``mesh``: ``jax.jit`` over a one-axis ``Mesh``; batch ``P("data")``, state ``P()``."""

    mode = "mesh"

    def __init__(self, mode: str | None = None, devices: int | Sequence[Any] | None = None,
                 model: int = 1):
        super().__init__(mode, devices, model)
        self.mesh = (Mesh(np.array(self.devices), (MESH_AXIS,)) if self.model == 1 else
                     Mesh(np.array(self.devices).reshape(-1, self.model),
                          (MESH_AXIS, MODEL_AXIS)))
        self._replicated = NamedSharding(self.mesh, P())
        self._sharded = NamedSharding(self.mesh, P(MESH_AXIS))

    def state_sharding(self, tree: Any) -> Any:
        """The sharding of a placed state (a tree of them, or one for the whole tree)."""
        return self._replicated

    def put_batch(self, batch: Any) -> Any:
        """One global array sharded over ``"data"`` (each process gives its rows)."""
        self.check_batch_size(len(jax.tree_util.tree_leaves(batch)[0]) * self.process_count,
                              "the batch size")
        if self.process_count > 1:
            return jax.tree_util.tree_map(
                lambda a: jax.make_array_from_process_local_data(self._sharded, np.asarray(a)),
                batch)
        return jax.device_put(batch, self._sharded)

    def put_data(self, data: Any) -> Any:
        return self._put(data, self._replicated)

    def place(self, tree: Any) -> Any:
        return self._put(tree, self.state_sharding(tree))

    def _put(self, tree: Any, sharding: Any) -> Any:
        if self.process_count == 1:
            return jax.device_put(tree, sharding)
        shardings = (jax.tree_util.tree_map(lambda _: sharding, tree)
                     if isinstance(sharding, NamedSharding) else sharding)

        def put(a, s):
            if s.is_fully_replicated:
                return jax.make_array_from_process_local_data(s, a)
            host = np.asarray(a)
            return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

        return jax.tree_util.tree_map(put, tree, shardings)

    def gather(self, tree: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda a: a.addressable_shards[0].data if isinstance(a, jax.Array) else a, tree)

    def _jit_per_state(self, fn: Callable, in_rest: tuple, out_rest: tuple,
                       donate: bool) -> Callable:
        """``fn(state, *rest)`` jitted with the state's shardings in and out (compiled once
        for the first state's layout; the mesh mode's is ``P()`` whatever the tree)."""
        compiled: dict[Any, Callable] = {}

        def call(state, *rest):
            layout = jax.tree_util.tree_structure(state)
            if layout not in compiled:
                s = self.state_sharding(state)
                compiled[layout] = jax.jit(fn, in_shardings=(s, *in_rest),
                                           out_shardings=(s, *out_rest),
                                           donate_argnums=(0,) if donate else ())
            return compiled[layout](state, *rest)

        return self._paced(call)

    def compile_step(self, step_fn: Callable, donate: bool = True) -> Callable:
        return self._jit_per_state(step_fn, (self._sharded,), (self._replicated,), donate)

    def compile_eval(self, eval_fn: Callable) -> Callable:
        # params and model state keep the layout they were placed with
        return self._paced(jax.jit(eval_fn, out_shardings=self._replicated))

    def compile_epoch(self, step_fn: Callable, num_examples: int, batch_size: int, *,
                      shuffle: bool = True, donate: bool = True,
                      chunk: int | None = None) -> Callable:
        from fnn.train.step import epoch_fn

        self.check_batch_size(batch_size)
        # the gathered global batch is constrained to the data sharding: each device its rows
        epoch = epoch_fn(step_fn, num_examples, batch_size, shuffle=shuffle,
                         constrain=lambda batch: lax.with_sharding_constraint(batch,
                                                                              self._sharded),
                         chunk=chunk)
        rep = self._replicated
        rest = (rep, rep) if chunk is None else (rep, rep, rep)  # data, key[, first step]
        return self._jit_per_state(epoch, rest, (rep,), donate)


class FsdpParallel(MeshParallel):
    """Mode ``fsdp``: the mesh mode with params and optimizer state sharded over ``"data"``.

    Each leaf of at least :data:`fnn.train.sharding.MIN_SHARDED_SIZE` elements is split along
    its largest dimension that the device count divides (:func:`fnn.train.sharding.spec_for`);
    the rest is replicated. Losses equal the mesh mode's to float rounding.

    With ``model=M`` the mesh is ``N / M`` (``"data"``) x ``M`` (``"model"``) devices: batches
    are split over ``"data"`` only, and each kernel (a leaf of 2+ dimensions) splits its last
    axis over ``"model"`` when ``M`` divides it and its largest other dividing axis over
    ``"data"``; every large leaf still ends up in ``1 / N`` parts when the axes divide.

    Example:
        >>> dp = DataParallel("fsdp")
        >>> n = dp.num_devices
        >>> ts = dp.place({"w": jnp.ones((n * 256, 4)), "b": jnp.ones(4)})
        >>> [s.data.shape for s in ts["w"].addressable_shards] == [(256, 4)] * n  # 1/N each
        True
        >>> [s.data.shape for s in ts["b"].addressable_shards] == [(4,)] * n      # small: all
        True
        >>> dp.gather(ts)["w"].shape == (n * 256, 4)          # one whole copy
        True

        A model axis of 2 (on 2, 4, 6 or 8 devices; a count it does not divide is refused):

        >>> if n % 2 == 0:
        ...     dp2 = DataParallel("fsdp", model=2)
        ...     ts = dp2.place({"w": jnp.ones((n * 256, 4))})
        ...     assert dp2.mesh.shape == {"data": n // 2, "model": 2}
        ...     assert [s.data.shape for s in ts["w"].addressable_shards] == [(512, 2)] * n
    """

    mode = "fsdp"
    takes_model_axis = True

    def state_sharding(self, tree: Any) -> Any:
        return tree_shardings(tree, self.mesh, MESH_AXIS)

    def gather(self, tree: Any) -> Any:
        whole = jax.jit(lambda t: t, out_shardings=self._replicated)(tree)
        return super().gather(whole)


_BY_MODE: dict[str, type] = {cls.mode: cls for cls in (OneDevice, PmapParallel, MeshParallel,
                                                       FsdpParallel)}


def _model_axis(model: Any, refusing_mode: str | None, per_process: int,
                processes: int) -> int:
    """``model`` checked: a positive int dividing each process's devices; ``refusing_mode``:
    the mode when it has no model axis."""
    if isinstance(model, bool) or not isinstance(model, (int, np.integer)) or model < 1:
        raise ConfigError("parallel.model", f"must be a positive int, got {model!r}")
    model = int(model)
    if model == 1:
        return 1
    if refusing_mode is not None:
        raise ConfigError("parallel.model", f"a model axis ({model}) needs parallel.mode fsdp, "
                                            f"got {refusing_mode!r}")
    if per_process % model:
        counts = [m for m in range(1, per_process + 1) if per_process % m == 0]
        where = (f"the {per_process} devices of each of {processes} processes" if processes > 1
                 else f"the {per_process} device{'s' if per_process > 1 else ''}")
        raise ConfigError("parallel.model", f"{model} does not divide {where}; use one of "
                                            f"{', '.join(map(str, counts))}")
    return model


def wait_for_results(compiled: Callable) -> Callable:
    """``compiled`` made to return only once its outputs are computed (no dispatch ahead).

    The remedy for a deadlock in XLA's CPU client, which runs the launches and the executions
    of all devices on one pool of ``max(cores, devices)`` threads. When the host is 32
    computations ahead of a device (XLA's limit of computations in flight per device), the
    launch of the next one holds a pool thread until that device finishes one; the other
    threads wait inside an all-reduce for partner executions queued behind them, and no thread
    is left to run those. After 40 seconds XLA aborts the process ("Expected N threads to join
    the rendezvous, but only N-1 of them arrived"). Waiting for each call keeps one step in
    flight; on CPU the devices compute while the host waits anyway, so steps take no longer
    (docs/DISTRIBUTED.md). ``scripts/repro_cpu_allreduce.py`` reproduces it without fnn.

    Example:
        >>> total = wait_for_results(jax.pmap(lambda x: jax.lax.psum(x, "batch"),
        ...                                   axis_name="batch"))
        >>> n = jax.local_device_count()
        >>> out = total(jnp.ones((n, 3)))            # computed when it returns
        >>> out.is_ready(), bool((out == n).all())
        (True, True)
    """

    @functools.wraps(compiled)
    def call(*args: Any, **kwargs: Any) -> Any:
        return jax.block_until_ready(compiled(*args, **kwargs))

    return call


def as_data_parallel(parallel: "str | DataParallel | None") -> DataParallel:
    """A :class:`DataParallel` from a mode name (or ``None``: one device) over all local
    devices, or the one given."""
    return parallel if isinstance(parallel, DataParallel) else DataParallel(parallel)
