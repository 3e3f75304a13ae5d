"""Checkpoints in the safetensors format (no pickle), written atomically.

A checkpoint is one ``.safetensors`` file: every array of the saved pytrees under a readable
key (``params/dense_0/w``, ``opt_state/1/0/mu/dense_0/w``, ``step``, ``rng``) and a JSON
metadata block (format version, the run's config, the network's spec, training progress).
Files are written to a temporary name in the same folder, flushed to disk, then renamed over
the old file, so a kill mid-write leaves the previous checkpoint intact.

Example:
    >>> fnn.save("model.safetensors", net, params, state)
    >>> net, params, state = fnn.load("model.safetensors")
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from fnn.core import Layer, SpecError, kind_modules

__all__ = ["save_tree", "load_tree", "read_metadata", "restore_like", "save", "load",
           "save_weights", "load_weights", "CheckpointError", "atomic_write"]

FORMAT = "fnn-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit what it is loaded into."""


def _key_str(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: tuple) -> str:
    """``(DictKey('dense_0'), DictKey('w'))`` -> ``"dense_0/w"``."""
    return "/".join(_key_str(e) for e in path)


def _to_numpy(leaf: Any) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(jax.device_get(leaf))


def flatten(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    """Flatten a pytree to ``{"prefix/a/b": array}`` (PRNG keys stored as their raw data)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(p for p in (prefix, path_str(path)) if p)
        flat[key] = _to_numpy(leaf)
    return flat


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _ignore():
            os.unlink(tmp)
        raise


class _ignore:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def save_tree(path: str | os.PathLike, trees: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Save named pytrees (``{"params": ..., "opt_state": ...}``) and JSON metadata atomically."""
    tensors: dict[str, np.ndarray] = {}
    for name, tree in trees.items():
        tensors.update(flatten(tree, name))
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    atomic_write(path, safetensors.numpy.save(tensors, metadata=meta))


def _read(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path.read_bytes()


def _header(data: bytes, path: Any) -> dict:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        return json.loads(data[8:8 + n])
    except Exception as e:  # noqa: BLE001 - any corruption reads as one clear error
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({e})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata saved with a checkpoint (``config``, ``spec``, ``progress``...)."""
    raw = _header(_read(path), path).get("__metadata__", {})
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fnn checkpoint (format {raw.get('format')!r})")
    return {k: json.loads(v) for k, v in raw.items() if k != "format"}


def load_tree(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a checkpoint, by key."""
    data = _read(path)
    _header(data, path)
    try:
        return safetensors.numpy.load(data)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is corrupt ({e})") from None


def restore_like(template: Any, arrays: dict[str, np.ndarray], prefix: str, *, source: Any = "") -> Any:
    """Fill a pytree shaped like ``template`` with ``arrays[prefix/...]``, checking every shape.

    PRNG-key leaves are rebuilt from their saved raw data with the template's key type.
    """
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in leaves_with_path:
        key = "/".join(p for p in (prefix, path_str(path)) if p)
        if key not in arrays:
            raise CheckpointError(f"{source}: missing {key!r}; the checkpoint does not match "
                                  "this network/optimizer")
        value = arrays[key]
        is_key = isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        want = jax.random.key_data(leaf).shape if is_key else np.shape(leaf)
        if tuple(value.shape) != tuple(want):
            raise CheckpointError(f"{source}: {key!r} has shape {value.shape}, expected {tuple(want)}")
        if is_key:
            leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf)))
        else:
            leaves.append(jnp.asarray(value, dtype=getattr(leaf, "dtype", None)))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def nest(arrays: dict[str, np.ndarray], prefix: str) -> dict:
    """Rebuild nested dicts from ``{"prefix/a/b": x}`` keys (for params and state)."""
    out: dict = {}
    start = prefix + "/"
    for key, value in sorted(arrays.items()):
        if not key.startswith(start):
            continue
        node = out
        *parents, leaf = key[len(start):].split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(value)
    return out


def save_weights(path: str | os.PathLike, params: Any, state: Any = None) -> None:
    """Save a network's params (and state) only; see :func:`load_weights`."""
    save_tree(path, {"params": params, "model_state": state or {}}, {"kind": "weights"})


def load_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """Load ``(params, state)`` saved by :func:`save_weights`, :func:`save` or a training run."""
    read_metadata(path)
    arrays = load_tree(path)
    return nest(arrays, "params"), nest(arrays, "model_state")


def save(path: str | os.PathLike, net: Layer, params: Any, state: Any = None, *,
         input_shape: Any = None) -> None:
    """Save architecture and weights: ``fnn.load(path)`` gives back ``(net, params, state)``.

    The architecture is the network's spec (``net.spec``); every layer argument must be plain
    data (numbers, strings, lists, layers, named initializers); a custom function as an
    argument, or a hand-made ``Layer(init, apply)``, is refused here, before anything is written.
    """
    try:
        spec = net.spec
    except SpecError as e:
        raise CheckpointError(f"cannot save the architecture of this network: {e}") from None
    save_tree(path, {"params": params, "model_state": state or {}},
              {"kind": "model", "spec": spec, "modules": kind_modules(net),
               "input_shape": input_shape})


def load(path: str | os.PathLike) -> tuple[Layer, dict, dict]:
    """Load ``(net, params, state)`` saved by :func:`save` or by a training run."""
    from fnn.layers.spec import from_spec

    meta = read_metadata(path)
    spec = meta.get("spec")
    if spec is None:
        raise CheckpointError(f"{path} holds weights only (no architecture); use load_weights")
    params, state = load_weights(path)
    return from_spec(spec, modules=meta.get("modules")), params, state
