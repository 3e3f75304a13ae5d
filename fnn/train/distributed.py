"""Processes: start ``jax.distributed`` for a multi-host run, and wait for all processes.

One job: the multi-controller set-up that must happen before JAX touches a device. Every
process of a run calls :func:`initialize` first thing (it reads ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, or lets JAX detect a SLURM step or an Open MPI
launch); :mod:`fnn.train.parallel` then sees every device of every process
(``jax.devices()``) and this process's own (``jax.local_devices()``).
See ``docs/DISTRIBUTED.md`` for launch recipes (``srun``, a Kubernetes indexed Job).
"""

from __future__ import annotations

import os
from typing import Any

import jax

from fnn.errors import ConfigError

__all__ = ["initialize", "synchronize"]

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
        fnn.errors.ConfigError: parallel.process_id: not set (nor JAX_PROCESS_ID); several
        processes need coordinator_address, num_processes and process_id
        >>> initialize("10.0.0.1:1234", num_processes=2, process_id=2)
        Traceback (most recent call last):
        fnn.errors.ConfigError: parallel.process_id: must be an int in [0, 2), got 2
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
                    raise ConfigError(f"parallel.{key}", f"{var} must be an int, got "
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
        raise ConfigError(f"parallel.{missing[0]}",
                          f"not set (nor {_ENV[missing[0]]}); several processes need "
                          "coordinator_address, num_processes and process_id")
    n, i = given["num_processes"], given["process_id"]
    if n is not None and (not isinstance(n, int) or n < 1):
        raise ConfigError("parallel.num_processes", f"must be an int >= 1, got {n!r}")
    if i is not None and n is not None and not (isinstance(i, int) and 0 <= i < n):
        raise ConfigError("parallel.process_id", f"must be an int in [0, {n}), got {i!r}")
    _start({k: v for k, v in given.items() if v is not None})
    return True


def _start(kwargs: dict[str, Any]) -> None:
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise RuntimeError("jax.distributed must start before JAX is used (devices listed, "
                           "arrays created); call fnn.train.distributed.initialize() first thing")
    jax.distributed.initialize(**kwargs)


def synchronize(name: str) -> None:
    """Wait until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
