"""JAX's persistent compilation cache for fnn runs: compile once, reuse in every later command.

``fnn train`` turns the cache on before anything compiles (:func:`enable_compile_cache`), in
``$XDG_CACHE_HOME/fnn/jax`` (default ``~/.cache/fnn/jax``), so a second run of the same
network, batch and devices loads its compiled steps instead of compiling them again. It is off
with ``training.compile_cache: false`` or the environment variable ``FNN_COMPILE_CACHE=0``;
``FNN_COMPILE_CACHE=/some/folder`` puts it elsewhere. A cache folder that cannot be created
(a read-only home) leaves the cache off, with a notice; the run goes on.

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
from typing import Callable, Mapping

__all__ = ["cache_folder", "enable_compile_cache", "ENV"]

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
