"""Compilation in fnn runs: JAX's persistent cache (compile once, reuse in every later command),
and the compile time of each function, logged once.

``fnn train`` turns the cache on before anything compiles (:func:`enable_compile_cache`), in
``$XDG_CACHE_HOME/fnn/jax`` (default ``~/.cache/fnn/jax``), so a second run of the same
network, batch and devices loads its compiled steps instead of compiling them again. It is off
with ``training.compile_cache: false`` or the environment variable ``FNN_COMPILE_CACHE=0``;
``FNN_COMPILE_CACHE=/some/folder`` puts it elsewhere. A cache folder that cannot be created
(a read-only home) leaves the cache off, with a notice; the run goes on.

:func:`log_compile` wraps a jitted function so that its first call logs what compiling it cost,
e.g. ``compile: train_step 3.1 s`` or ``compile: train_step 0.2 s (cached)`` when it came from
the cache (tracing, lowering and XLA's compile or the cache read, from ``jax.monitoring``).

Example:
    >>> cache_folder({"FNN_COMPILE_CACHE": "0"}) is None
    True
    >>> str(cache_folder({"FNN_COMPILE_CACHE": "/tmp/jax-cache"}))
    '/tmp/jax-cache'
    >>> str(cache_folder({"XDG_CACHE_HOME": "/data/cache"}))
    '/data/cache/fnn/jax'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["cache_folder", "enable_compile_cache", "log_compile", "ENV"]

ENV = "FNN_COMPILE_CACHE"
_OFF = ("0", "false", "off", "no")


def cache_folder(environ: Mapping[str, str] | None = None) -> Path | None:
    """The cache folder the environment asks for, or ``None`` when ``FNN_COMPILE_CACHE`` turns
    the cache off."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value and value.lower() not in ("1", "true", "on", "yes"):
        return Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fnn" / "jax"


def enable_compile_cache(enabled: bool = True,
                         log: Callable[[str], None] | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_folder` (every compiled
    program is kept, however quick its compilation); returns the folder, or ``None`` when it
    stays off. Call it before anything compiles."""
    folder = cache_folder() if enabled else None
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if log:
            log(f"compile cache: off ({folder}: {e.strerror or e}; set {ENV}=0 to silence)")
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


# compile-time events of jax.monitoring, summed by one listener registered on first use
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration",
                   "/jax/compilation_cache/cache_retrieval_time_sec")
_totals = {"seconds": 0.0, "hits": 0}
_listening = [False]


def _listen() -> None:
    if _listening[0]:
        return
    import jax.monitoring

    def duration(event: str, seconds: float, **_: Any) -> None:
        if event in _COMPILE_EVENTS:
            _totals["seconds"] += seconds

    def count(event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            _totals["hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(duration)
    jax.monitoring.register_event_listener(count)
    _listening[0] = True


def log_compile(fn: Callable, name: str, log: Callable[[str], None] | None) -> Callable:
    """``fn``, whose first call logs ``compile: <name> <seconds> s`` (``(cached)`` when it was
    read from the persistent cache); ``fn`` itself when ``log`` is ``None``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> square = log_compile(jax.jit(lambda x: x * x), "square", print)
        >>> _ = square(jnp.ones(3))
        compile: square ... s
        >>> _ = square(jnp.ones(3))       # logged once
    """
    if log is None:
        return fn
    _listen()
    first = [True]

    def call(*args: Any, **kwargs: Any) -> Any:
        if not first[0]:
            return fn(*args, **kwargs)
        first[0] = False
        seconds, hits = _totals["seconds"], _totals["hits"]
        out = fn(*args, **kwargs)
        cached = " (cached)" if _totals["hits"] > hits else ""
        log(f"compile: {name} {_totals['seconds'] - seconds:.1f} s{cached}")
        return out

    return call
