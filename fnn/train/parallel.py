"""Data parallelism: one training step spread over devices and processes.

Three modes run the same step function (:func:`fnn.train.train_step_fn`):

* ``"none"`` -- one device, ``jax.jit``.
* ``"pmap"`` -- ``jax.pmap`` over the local devices with axis name ``"batch"``
  (:data:`PMAP_AXIS`). The train state is replicated (stacked ``[devices, ...]``), each global
  batch is split into ``[devices, batch / devices, ...]``, gradients, losses and metrics are
  summed over exact global counts with ``lax.psum`` (so they equal the whole batch's means),
  every device draws its own dropout mask (``fold_in(rng, axis_index)``), and every
  ``BatchNorm`` of the network is rebuilt with ``axis_name="batch"`` so its batch statistics
  are those of the whole global batch (synchronized batch norm).
* ``"mesh"`` -- ``jax.jit`` over a ``jax.sharding.Mesh`` with one ``"data"`` axis
  (:data:`MESH_AXIS`): the batch is sharded ``P("data")``, the train state replicated ``P()``,
  and XLA inserts the collectives. The step sees the batch as one global array, so batch
  norm computes global statistics by itself (``BatchNorm`` layers get ``axis_name=None``).
  The recommended mode for new work.

Across several processes (hosts), call :func:`initialize` first; each process then feeds
only its own slice of every global batch (:meth:`DataParallel.local_slice`), and the step
averages over all devices of all processes.

On CPU devices (``--xla_force_host_platform_device_count``) every compiled call returns only
once its results are computed (:attr:`DataParallel.waits_for_each_call`): XLA's CPU client
deadlocks when the host runs 32 steps with collectives ahead of the devices (see
``docs/DISTRIBUTED.md``, "Simulated CPU devices"); on GPUs and TPUs dispatch stays asynchronous.

Results do not depend on the number of devices: with the same global batches (and dropout
off under ``pmap``) a run on 8 devices ends with the params of a run on 1, to float
rounding. Checkpoints hold one unreplicated copy of the state
(:meth:`DataParallel.unreplicate`), so a run saved on 8 devices resumes on 1 and back.

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
    >>> ts = dp.replicate(train_state)                # the step donates it: use ts from here on
    >>> rng = np.random.default_rng(0)
    >>> batches = [{"x": rng.normal(size=(8, 4)).astype(np.float32),
    ...             "y": rng.integers(0, 3, size=8)} for _ in range(3)]
    >>> for host_batch in batches:
    ...     ts, metrics = step(ts, dp.put_batch(dp.local_part(host_batch)))
    >>> {name: value.shape for name, value in metrics.items()}   # whole-batch means
    {'loss': (), 'objective': ()}
    >>> one = dp.unreplicate(ts)                      # one copy, for checkpoints
    >>> int(one.step), one.params["dense_0"]["w"].shape
    (3, (4, 16))
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fnn.core import Layer, map_layers

__all__ = ["DataParallel", "as_data_parallel", "initialize", "synchronize",
           "wait_for_results", "with_batch_norm_axis", "MODES", "PMAP_AXIS", "MESH_AXIS"]

MODES = ("none", "pmap", "mesh")
PMAP_AXIS = "batch"
MESH_AXIS = "data"

# --------------------------------------------------------------------------- processes

_ENV = {"coordinator_address": "JAX_COORDINATOR_ADDRESS", "num_processes": "JAX_NUM_PROCESSES",
        "process_id": "JAX_PROCESS_ID"}


def _cluster_processes() -> int:
    """Processes of a SLURM job step or an Open MPI launch (what JAX can detect by itself)."""
    if all(k in os.environ for k in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
                                     "SLURM_PROCID", "SLURM_LOCALID")):
        return int(os.environ["SLURM_NTASKS"])
    if "OMPI_MCA_orte_hnp_uri" in os.environ and "OMPI_COMM_WORLD_SIZE" in os.environ:
        return int(os.environ["OMPI_COMM_WORLD_SIZE"])
    return 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Start ``jax.distributed`` when this is one process of several; a no-op otherwise.

    Each argument left ``None`` is read from the environment (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``). When none is set anywhere, a SLURM job step
    (``srun``) or an Open MPI launch with more than one task is detected by JAX itself. A
    single process with nothing set starts nothing. Calling it again is harmless.

    Must run before anything else touches JAX devices (``jax.devices()``, any computation).

    Args:
        coordinator_address: ``"host:port"`` of process 0 (the same on every process).
        num_processes: the number of processes.
        process_id: this process's index, ``0 <= process_id < num_processes``.

    Returns:
        ``True`` if ``jax.distributed`` is running (this call or an earlier one started it).

    Raises:
        ValueError: an incomplete or inconsistent setting (naming the missing one).
        RuntimeError: JAX was already in use, too late to start ``jax.distributed``.

    Example:
        On host 0 of two, before anything else uses JAX,
        ``initialize("10.0.0.1:1234", num_processes=2, process_id=0)`` starts
        ``jax.distributed`` and returns ``True`` (host 1 passes ``process_id=1``). A single
        process with nothing set starts nothing, and a bad setting is refused before any
        connection is tried:

        >>> initialize(), initialize(num_processes=1)
        (False, False)
        >>> initialize("10.0.0.1:1234", num_processes=2)
        Traceback (most recent call last):
        ValueError: parallel.process_id: not set (nor JAX_PROCESS_ID); several processes need
        coordinator_address, num_processes and process_id
        >>> initialize("10.0.0.1:1234", num_processes=2, process_id=2)
        Traceback (most recent call last):
        ValueError: parallel.process_id: must be an int in [0, 2), got 2
    """
    if jax.distributed.is_initialized():
        return True
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    for key, var in _ENV.items():
        if given[key] is None and os.environ.get(var):
            value = os.environ[var]
            if key != "coordinator_address":
                try:
                    value = int(value)
                except ValueError:
                    raise ValueError(f"parallel.{key}: {var} must be an int, got "
                                     f"{value!r}") from None
            given[key] = value
    if all(v is None for v in given.values()):
        if _cluster_processes() <= 1:
            return False
        _start({})  # SLURM / Open MPI: JAX detects all three
        return True
    if given["num_processes"] == 1 and given["coordinator_address"] is None:
        return False
    missing = [k for k, v in given.items() if v is None]
    if missing and _cluster_processes() <= 1:
        raise ValueError(f"parallel.{missing[0]}: not set (nor {_ENV[missing[0]]}); several "
                         "processes need coordinator_address, num_processes and process_id")
    n, i = given["num_processes"], given["process_id"]
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ValueError(f"parallel.num_processes: must be an int >= 1, got {n!r}")
    if i is not None and n is not None and not (isinstance(i, int) and 0 <= i < n):
        raise ValueError(f"parallel.process_id: must be an int in [0, {n}), got {i!r}")
    _start({k: v for k, v in given.items() if v is not None})
    return True


def _start(kwargs: dict[str, Any]) -> None:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("jax.distributed must start before JAX is used (devices listed, "
                           "arrays created); call fnn.train.parallel.initialize() first thing")
    jax.distributed.initialize(**kwargs)


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


# --------------------------------------------------------------------------- data parallel

def _local_devices(devices: int | Sequence[Any] | None, mode: str) -> list[Any]:
    local = jax.local_devices()
    if devices is None:
        return local if mode != "none" else [local[0]]
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ValueError(f"parallel.devices: {devices} devices asked for, this process has "
                             f"{len(local)} ({local[0].platform}); use 1 to {len(local)}")
        if mode == "none" and devices != 1:
            raise ValueError(f"parallel.devices: {devices} devices need parallel.mode pmap or "
                             "mesh (mode none runs on one device)")
        return local[:int(devices)]
    chosen = list(devices)
    if not chosen or any(d not in local for d in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"parallel.devices: expected distinct local devices of this process "
                         f"({local}), got {chosen}")
    if mode == "none" and len(chosen) != 1:
        raise ValueError("parallel.devices: several devices need parallel.mode pmap or mesh")
    return chosen


class DataParallel:
    """Where and how a training step runs: mode ``none``, ``pmap`` or ``mesh`` (see module doc).

    Args:
        mode: ``"none"`` (or ``None``), ``"pmap"`` or ``"mesh"``.
        devices: the local devices to use: a count (the first ``devices`` of each process)
            or a list of this process's devices; ``None``: all (one for ``"none"``).
            Several processes need a count, the same on every process.

    Attributes:
        mode: the mode.
        local_devices: this process's devices taking part.
        devices: the devices of all processes, process by process (the order of the batch).
        num_devices: ``len(devices)``; global batches must divide by it.
        process_index, process_count: this process and how many there are.
        axis_name: the axis name to give ``train_step_fn``/``eval_step_fn``: ``"batch"``
            under ``pmap``, else ``None``.
        mesh: the ``Mesh`` of ``mesh`` mode (``None`` otherwise).
        waits_for_each_call: whether the compiled step, evaluation and epoch return only once
            their results are computed; ``True`` on several CPU devices (where XLA deadlocks
            when dispatch runs 32 steps ahead, see :func:`wait_for_results`), else ``False``.

    Example:
        >>> dp = DataParallel("pmap", devices=1)     # the first local device
        >>> dp, dp.axis_name, dp.waits_for_each_call
        (DataParallel(mode='pmap', devices=1), 'batch', False)
        >>> dp.check_batch_size(128)       # the per-process part of a global batch
        128
        >>> DataParallel("mesh").mesh.axis_names
        ('data',)
        >>> DataParallel("data")
        Traceback (most recent call last):
        ValueError: parallel.mode: must be one of none, pmap, mesh, got 'data'
    """

    def __init__(self, mode: str | None = "none", devices: int | Sequence[Any] | None = None):
        mode = "none" if mode is None else mode
        if mode not in MODES:
            raise ValueError(f"parallel.mode: must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.process_index = jax.process_index()
        self.process_count = jax.process_count()
        if mode == "none" and self.process_count > 1:
            raise ValueError(f"parallel.mode: {self.process_count} processes are running; "
                             "choose pmap or mesh (mode none trains on one device)")
        self.local_devices = tuple(_local_devices(devices, mode))
        per_process = len(self.local_devices)
        if self.process_count > 1:
            if not (devices is None or isinstance(devices, (int, np.integer))):
                raise ValueError("parallel.devices: with several processes give a count of "
                                 "devices per process, not a list")
            self.devices = tuple(d for p in range(self.process_count)
                                 for d in jax.local_devices(process_index=p)[:per_process])
        else:
            self.devices = self.local_devices
        self.num_devices = len(self.devices)
        self.axis_name = PMAP_AXIS if mode == "pmap" else None
        self.waits_for_each_call = (len(self.local_devices) > 1
                                    and self.local_devices[0].platform == "cpu")
        self.mesh: Mesh | None = None
        if mode == "pmap":
            local_mesh = Mesh(np.array(self.local_devices), (PMAP_AXIS,))
            self._stacked = NamedSharding(local_mesh, P(PMAP_AXIS))
            self._local_replicated = NamedSharding(local_mesh, P())
        elif mode == "mesh":
            self.mesh = Mesh(np.array(self.devices), (MESH_AXIS,))
            self._replicated = NamedSharding(self.mesh, P())
            self._sharded = NamedSharding(self.mesh, P(MESH_AXIS))

    def __repr__(self) -> str:
        procs = f", processes={self.process_count}" if self.process_count > 1 else ""
        return f"DataParallel(mode={self.mode!r}, devices={self.num_devices}{procs})"

    @property
    def is_main(self) -> bool:
        """Whether this is process 0 (the one that writes checkpoints, logs and plots)."""
        return self.process_index == 0

    # ---------------------------------------------------------------- batches

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
            raise ValueError(f"{key}: {batch_size} does not split evenly over {where} in "
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

    def put_batch(self, batch: Any) -> Any:
        """Put this process's part of a global batch on its devices, split by the mode.

        ``pmap``: each leaf ``(b, ...)`` becomes ``(devices, b / devices, ...)``, one slice per
        device; ``mesh``: one global array sharded over ``"data"``; ``none``: the device.
        """
        if self.mode == "pmap":
            d = len(self.local_devices)

            def split(a):
                a = np.asarray(a)
                if a.shape[0] % d:
                    raise ValueError(f"a batch of {a.shape[0]} rows does not split over {d} "
                                     "devices")
                return jax.device_put(a.reshape(d, a.shape[0] // d, *a.shape[1:]), self._stacked)

            return jax.tree_util.tree_map(split, batch)
        if self.mode == "mesh":
            self.check_batch_size(len(jax.tree_util.tree_leaves(batch)[0]) * self.process_count,
                                  "the batch size")
            if self.process_count > 1:
                return jax.tree_util.tree_map(
                    lambda a: jax.make_array_from_process_local_data(self._sharded, np.asarray(a)),
                    batch)
            return jax.device_put(batch, self._sharded)
        return jax.device_put(batch, self.local_devices[0])

    def put_data(self, data: Any) -> Any:
        """A whole data set on every device (epoch mode scans over it), replicated."""
        if self.mode == "pmap":
            return jax.device_put(data, self._local_replicated)
        if self.mode == "mesh":
            return self.replicate(data)
        return jax.device_put(data, self.local_devices[0])

    # ---------------------------------------------------------------- state

    def replicate(self, tree: Any) -> Any:
        """A copy of ``tree`` on every device: stacked ``[devices, ...]`` under ``pmap``,
        replicated ``P()`` under ``mesh``, on the one device under ``none``."""
        if self.mode == "pmap":
            d = len(self.local_devices)
            return jax.tree_util.tree_map(
                lambda a: jax.device_put(jnp.stack([jnp.asarray(a)] * d), self._stacked), tree)
        if self.mode == "mesh":
            if self.process_count > 1:
                return jax.tree_util.tree_map(
                    lambda a: jax.make_array_from_process_local_data(self._replicated, a), tree)
            return jax.device_put(tree, self._replicated)
        return jax.device_put(tree, self.local_devices[0])

    def unreplicate(self, tree: Any) -> Any:
        """One copy of a replicated ``tree`` on one local device: what a checkpoint saves.

        The inverse of :meth:`replicate`; the result does not depend on the device count.
        """
        if self.mode == "none":
            return tree

        def first(a):
            if not isinstance(a, jax.Array):
                return a
            shard = a.addressable_shards[0].data
            return shard.reshape(shard.shape[1:]) if self.mode == "pmap" else shard

        return jax.tree_util.tree_map(first, tree)

    # ---------------------------------------------------------------- compiled functions

    def compile_step(self, step_fn: Callable, donate: bool = True) -> Callable:
        """Compile ``step_fn(train_state, batch) -> (train_state, metrics)`` for the mode.

        ``step_fn`` must be built with ``axis_name=self.axis_name``. Takes a state from
        :meth:`replicate` and a batch from :meth:`put_batch`; the metrics come back as plain
        (unreplicated) scalars.
        """
        donate_argnums = (0,) if donate else ()
        if self.mode == "pmap":
            step = jax.pmap(step_fn, axis_name=PMAP_AXIS, out_axes=(0, None),
                            donate_argnums=donate_argnums, devices=self.devices)
        elif self.mode == "mesh":
            rep = self._replicated
            step = jax.jit(step_fn, in_shardings=(rep, self._sharded), out_shardings=(rep, rep),
                           donate_argnums=donate_argnums)
        else:
            step = jax.jit(step_fn, donate_argnums=donate_argnums)
        return self._paced(step)

    def compile_eval(self, eval_fn: Callable) -> Callable:
        """Compile ``eval_fn(params, model_state, batch) -> sums`` (from ``eval_step_fn`` with
        ``axis_name=self.axis_name``); the sums over the global batch come back unreplicated."""
        if self.mode == "pmap":
            evaluate = jax.pmap(eval_fn, axis_name=PMAP_AXIS, out_axes=None, devices=self.devices)
        elif self.mode == "mesh":
            rep = self._replicated
            evaluate = jax.jit(eval_fn, in_shardings=(rep, rep, self._sharded),
                               out_shardings=rep)
        else:
            evaluate = jax.jit(eval_fn)
        return self._paced(evaluate)

    def compile_epoch(self, step_fn: Callable, num_examples: int, batch_size: int, *,
                      shuffle: bool = True, donate: bool = True,
                      chunk: int | None = None) -> Callable:
        """A whole epoch as one compiled ``lax.scan``, like :func:`fnn.train.make_train_epoch`.

        ``epoch(train_state, data, epoch_key) -> (train_state, metrics)`` with ``data`` from
        :meth:`put_data` (every device holds the training set) and metrics stacked over the
        epoch's ``num_examples // batch_size`` steps. Every device takes its own rows of each
        global batch: under ``pmap`` by its axis index, under ``mesh`` by a sharding
        constraint on the gathered batch. The same batches, in the same order, as one device.
        ``chunk``: ``epoch(train_state, data, epoch_key, first_step)`` runs ``chunk`` steps
        from ``first_step`` (:func:`fnn.train.step.epoch_fn`).
        """
        from fnn.train.step import epoch_fn, make_train_epoch

        if self.mode == "none":
            return make_train_epoch(step_fn, num_examples, batch_size, shuffle=shuffle,
                                    donate=donate, chunk=chunk)
        self.check_batch_size(batch_size)
        pmapped = self.mode == "pmap"
        size = batch_size // self.num_devices if pmapped else batch_size
        donate_argnums = (0,) if donate else ()
        # pmap: each device takes its own rows by its axis index; mesh: the gathered global
        # batch is constrained to the data sharding, so each device keeps its rows.
        epoch = epoch_fn(step_fn, num_examples, batch_size, shuffle=shuffle, rows=size,
                         first_row=(lambda: lax.axis_index(PMAP_AXIS) * size) if pmapped else None,
                         constrain=None if pmapped else
                         (lambda batch: lax.with_sharding_constraint(batch, self._sharded)),
                         chunk=chunk)
        args = 3 if chunk is None else 4  # (train_state, data, epoch_key[, first_step])

        if pmapped:
            return self._paced(jax.pmap(epoch, axis_name=PMAP_AXIS, in_axes=(0,) + (None,) * (args - 1),
                                        out_axes=(0, None), donate_argnums=donate_argnums,
                                        devices=self.devices))
        rep = self._replicated
        return self._paced(jax.jit(epoch, in_shardings=(rep,) * args,
                                   out_shardings=(rep, rep), donate_argnums=donate_argnums))

    def _paced(self, compiled: Callable) -> Callable:
        return wait_for_results(compiled) if self.waits_for_each_call else compiled

    def prepare_net(self, net: Layer) -> Layer:
        """The network to train in this mode: ``BatchNorm`` axis names set (see
        :func:`with_batch_norm_axis`); unchanged in mode ``none``."""
        if self.mode == "none":
            return net
        return with_batch_norm_axis(net, self.axis_name)


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


def as_data_parallel(parallel: "str | DataParallel | None",
                     devices: int | Sequence[Any] | None = None) -> DataParallel:
    """A :class:`DataParallel` from a mode name (or ``None``), or the one given."""
    if isinstance(parallel, DataParallel):
        if devices is not None:
            raise ValueError("give devices to DataParallel(...), not next to it")
        return parallel
    return DataParallel(parallel, devices)


def synchronize(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
