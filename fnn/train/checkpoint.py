"""Checkpoints in the safetensors format (no pickle), written atomically.

A checkpoint is one ``.safetensors`` file: every array of the saved pytrees under a readable
key (``params/dense_0/w``, ``opt_state/1/0/mu/dense_0/w``, ``step``, ``rng``) and a JSON
metadata block (format version, the version of fnn that wrote it (:func:`written_by`), the
run's config, the network's spec, training progress).
Files are written to a temporary name in the same folder, flushed to disk, then renamed over
the old file, so a kill mid-write leaves the previous checkpoint intact; temporary files left by
a killed write are removed by :func:`clean_temporary_files` the next time the folder is opened.
Written files get the permissions the process umask allows (``0o666 & ~umask``).

Integrity: the metadata also holds ``checksums`` (the sha256 of every tensor's bytes, by
tensor name) and ``header_sha256`` (the sha256 of the tensor names, dtypes and shapes and of
every other metadata entry). Every load path (:func:`load`, :func:`load_weights`,
:func:`load_tree`, :func:`read_metadata`) checks them and raises :class:`CheckpointError`
naming the file and the tensor on a mismatch. A checkpoint written by fnn 0.1 (no checksums)
still loads, with a one-line :class:`UnverifiedCheckpointWarning`.

Example:
    >>> import os, tempfile
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(2))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 3))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> fnn.save(path, net, params, state, input_shape=(-1, 3))
    >>> net2, params2, state2 = fnn.load(path)       # architecture and weights
    >>> net2.spec == net.spec
    True
    >>> x = jnp.ones((5, 3))
    >>> bool(jnp.array_equal(net2.apply(params2, state2, x)[0], net.apply(params, state, x)[0]))
    True

    A changed byte is caught by the checksums:

    >>> with open(path, "r+b") as f:
    ...     _ = f.seek(-1, os.SEEK_END)
    ...     _ = f.write(b"X")
    >>> fnn.load(path)
    Traceback (most recent call last):
    fnn.train.checkpoint.CheckpointError: .../model.safetensors is damaged: tensor '...' does not
    match its sha256 checksum
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from fnn.core import Layer, SpecError, kind_modules
from fnn.files import WriteError, atomic_write, clean_temporary_files  # re-exported
from fnn.version import __version__

__all__ = ["save_tree", "load_tree", "read_checkpoint", "read_metadata", "restore_like", "save", "load",
           "save_weights", "load_weights", "written_by", "CheckpointError", "UnverifiedCheckpointWarning",
           "WriteError", "atomic_write", "clean_temporary_files"]

FORMAT = "fnn-checkpoint-1"
CHECKSUMS_KEY = "checksums"
HEADER_KEY = "header_sha256"
VERSION_KEY = "fnn_version"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, damaged (a checksum mismatch), or does not fit
    what it is loaded into; the message names the file (and the tensor or layer)."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint without checksums (written by fnn 0.1): it loads, but unverified."""


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


def _tensor_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes(order="C")).hexdigest()


def _header_sha256(header: dict) -> str:
    """Digest of what the header says apart from the data offsets: tensor names, dtypes and
    shapes, and every metadata entry but ``header_sha256`` itself."""
    meta = {k: v for k, v in header.get("__metadata__", {}).items() if k != HEADER_KEY}
    tensors = {k: [v.get("dtype"), v.get("shape")] for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict)}
    canonical = json.dumps({"metadata": meta, "tensors": tensors}, sort_keys=True,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_tree(path: str | os.PathLike, trees: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
    """Save named pytrees (``{"params": ..., "opt_state": ...}``) and JSON metadata atomically.

    The file's metadata also gets ``checksums`` (sha256 per tensor) and ``header_sha256``,
    which every load checks (see the module docstring).

    Raises:
        WriteError: the file cannot be written (names it; an older file is left intact).
    """
    tensors: dict[str, np.ndarray] = {}
    for name, tree in trees.items():
        tensors.update(flatten(tree, name))
    # safetensors stores little-endian C-order bytes: hash exactly those
    tensors = {k: np.asarray(v, dtype=v.dtype.newbyteorder("<"), order="C")
               for k, v in tensors.items()}
    metadata = {**(metadata or {}), VERSION_KEY: __version__}  # the fnn that wrote the file
    meta = {"format": FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    meta[CHECKSUMS_KEY] = json.dumps({k: _tensor_sha256(v) for k, v in sorted(tensors.items())})
    # the header digest is taken of the header safetensors writes (its dtype names, its shapes)
    draft = safetensors.numpy.save(tensors, metadata=meta)
    (n,) = struct.unpack("<Q", draft[:8])
    meta[HEADER_KEY] = _header_sha256(json.loads(draft[8:8 + n]))
    atomic_write(path, safetensors.numpy.save(tensors, metadata=meta))


def _read_header(path: Path, f) -> tuple[dict, int]:
    """The parsed JSON header of an open safetensors file and the data's start offset."""
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: only {size} bytes "
                              "(truncated or empty)")
    (n,) = struct.unpack("<Q", prefix)
    if 8 + n > size:
        raise CheckpointError(f"{path} is truncated or not a safetensors checkpoint: its header "
                              f"claims {n} bytes, the file has {size}")
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} has a damaged or non-safetensors header ({e})") from None
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        raise CheckpointError(f"{path} has a damaged or non-safetensors header")
    _check_layout(path, header, size - 8 - n)
    return header, 8 + n


def _itemsize(dtype: Any) -> int | None:
    if dtype == "BOOL":
        return 1
    digits = str(dtype).lstrip("BFIU")
    return int(digits) // 8 if digits.isdigit() and int(digits) % 8 == 0 else None


def _check_layout(path: Path, header: dict, data_size: int) -> None:
    """Every tensor's bytes follow the previous one's, fit its dtype and shape, and the last
    one ends where the file does (what a flipped bit in an offset, a shape or a dtype breaks)."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            count = int(np.prod(info["shape"], dtype=np.int64))
            size = _itemsize(info["dtype"])
            if size is None or not all(isinstance(d, int) and d >= 0 for d in info["shape"]):
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path} is damaged: the header entry of tensor {name!r} "
                                  "cannot be read") from None
        if end - begin != count * size:
            raise CheckpointError(f"{path} is damaged: tensor {name!r} has {end - begin} bytes, "
                                  f"its dtype and shape need {count * size}")
        entries.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(entries):
        if begin != position:
            raise CheckpointError(f"{path} is damaged: tensor {name!r} starts at byte {begin}, "
                                  f"expected {position}")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path} is truncated or damaged: its tensors need {position} bytes "
                              f"after the header, the file has {data_size}")


def _check_header(path: Path, header: dict) -> dict[str, str] | None:
    """Check the header's own checksum; returns the tensor checksums (``None``: fnn 0.1 file)."""
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not an fnn checkpoint or its header is damaged "
                              "(no '__metadata__')")
    if CHECKSUMS_KEY not in meta and HEADER_KEY not in meta:
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not an fnn checkpoint (format "
                                  f"{meta.get('format')!r})")
        warnings.warn(f"{path} has no checksums (written by fnn 0.1): loaded unverified; "
                      "save it again to add them", UnverifiedCheckpointWarning, stacklevel=2)
        return None
    try:
        sums = json.loads(meta[CHECKSUMS_KEY])
        if not isinstance(sums, dict):
            raise ValueError("not a JSON object")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged: its {CHECKSUMS_KEY!r} metadata cannot be read "
                              f"({e})") from None
    names = {k for k in header if k != "__metadata__"}
    unknown = sorted(names - set(sums))
    if unknown:
        raise CheckpointError(f"{path} is damaged: tensor {unknown[0]!r} has no checksum "
                              "(an altered tensor name?)")
    missing = sorted(set(sums) - names)
    if missing:
        raise CheckpointError(f"{path} is damaged: tensor {missing[0]!r} is missing "
                              "(an altered tensor name?)")
    if meta.get(HEADER_KEY) != _header_sha256(header):
        raise CheckpointError(f"{path} is damaged: the header checksum does not match (tensor "
                              "names, dtypes, shapes or metadata were altered)")
    return sums


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata saved with a checkpoint (``config``, ``spec``, ``progress``...).

    Reads and checks the header only (its checksum); the tensors are checked by
    :func:`load_tree`.

    Raises:
        CheckpointError: no such file, not a safetensors file, or a damaged header.
    """
    path = Path(path)
    with _open(path) as f:
        header, _ = _read_header(path, f)
    _check_header(path, header)
    return _metadata(path, header)


def written_by(path: str | os.PathLike) -> str | None:
    """The version of fnn that wrote a checkpoint (``"0.1.0"``), or ``None`` for a file written
    before fnn recorded it. Every checkpoint fnn writes (:func:`save`, :func:`save_weights`,
    training runs) records it in its metadata as ``fnn_version``.

    Raises:
        CheckpointError: no such file, not a safetensors file, or a damaged header.

    Example:
        >>> import os, tempfile
        >>> _, params, state = fnn.Dense(2).init(jax.random.key(0), (-1, 3))
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> fnn.save_weights(path, params, state)
        >>> written_by(path) == fnn.__version__
        True
    """
    found = read_metadata(path).get(VERSION_KEY)
    return found if isinstance(found, str) else None


def _metadata(path: Path, header: dict) -> dict[str, Any]:
    raw = header.get("__metadata__", {})
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fnn checkpoint (format {raw.get('format')!r})")
    try:
        return {k: json.loads(v) for k, v in raw.items()
                if k not in ("format", CHECKSUMS_KEY, HEADER_KEY)}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has damaged metadata ({e})") from None


def _open(path: Path):
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return open(path, "rb")
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """All arrays of a checkpoint by key, and its metadata, each tensor checked against its
    checksum.

    Raises:
        CheckpointError: no such file, truncated, not a safetensors file, not an fnn
            checkpoint, or a checksum that does not match (naming the file and the tensor).

    Example:
        >>> import os, tempfile
        >>> _, params, _ = fnn.serial(fnn.Dense(8)).init(jax.random.key(0), (-1, 2))
        >>> path = os.path.join(tempfile.mkdtemp(), "latest.safetensors")
        >>> save_tree(path, {"params": params, "step": jnp.int32(7)}, {"kind": "train_state"})
        >>> arrays, meta = read_checkpoint(path)
        >>> sorted(arrays)
        ['params/dense_0/b', 'params/dense_0/w', 'step']
        >>> arrays["params/dense_0/w"].shape, int(arrays["step"]), meta["kind"]
        ((2, 8), 7, 'train_state')
    """
    path = Path(path)
    with _open(path) as f:
        header, start = _read_header(path, f)
        f.seek(0)
        data = f.read()
    sums = _check_header(path, header)
    meta = _metadata(path, header)
    try:
        arrays = _arrays(path, data)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any corruption reads as one clear error
        raise CheckpointError(f"{path} is damaged or truncated ({e})") from None
    if sums is not None:
        for name in sorted(arrays):
            begin, end = header[name]["data_offsets"]
            got = hashlib.sha256(data[start + begin:start + end]).hexdigest()
            if got != sums[name]:
                raise CheckpointError(f"{path} is damaged: tensor {name!r} does not match its "
                                      "sha256 checksum")
    return arrays, meta


# safetensors' dtype names; safetensors.numpy writes bfloat16 (JAX's ml_dtypes type) as BF16
# but does not read it back, so the tensors are read here.
_NUMPY_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
                 "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                 "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
                 "BOOL": np.bool_, "C64": np.complex64}


def _arrays(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file's bytes as numpy arrays (bfloat16 included)."""
    arrays = {}
    for name, info in safetensors.deserialize(data):
        if info["dtype"] not in _NUMPY_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which fnn "
                                  f"does not read (known: {', '.join(_NUMPY_DTYPES)})")
        dtype = np.dtype(_NUMPY_DTYPES[info["dtype"]])
        arrays[name] = np.frombuffer(info["data"], dtype=dtype).reshape(info["shape"])
    return arrays


def load_tree(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of a checkpoint, by key, checked against their checksums.

    Raises:
        CheckpointError: as :func:`read_checkpoint`.
    """
    return read_checkpoint(path)[0]


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


def nest(arrays: dict[str, np.ndarray], prefix: str, *, source: Any = "") -> dict:
    """Rebuild nested dicts from ``{"prefix/a/b": x}`` keys (for params and state).

    Raises:
        CheckpointError: a float64 tensor while JAX's 64-bit mode is off (it would silently
            become float32).
    """
    out: dict = {}
    start = prefix + "/"
    for key, value in sorted(arrays.items()):
        if not key.startswith(start):
            continue
        node = out
        *parents, leaf = key[len(start):].split("/")
        for p in parents:
            node = node.setdefault(p, {})
        if value.dtype == np.float64 and jax.dtypes.canonicalize_dtype(np.float64) != np.float64:
            raise CheckpointError(f"{source}: {key!r} is float64 but JAX's 64-bit mode is off; "
                                  "set JAX_ENABLE_X64=1 or call jax.config.update("
                                  "'jax_enable_x64', True) before loading")
        node[leaf] = jnp.asarray(value)
    return out


def save_weights(path: str | os.PathLike, params: Any, state: Any = None) -> None:
    """Save a network's params (and state) only; see :func:`load_weights`."""
    save_tree(path, {"params": params, "model_state": state or {}}, {"kind": "weights"})


def load_weights(path: str | os.PathLike, net: Layer | None = None, *,
                 input_shape: Any = None) -> tuple[dict, dict]:
    """Load ``(params, state)`` saved by :func:`save_weights`, :func:`save` or a training run
    (of a run with ``training.ema``, the averaged params; a frozen layer's params as they are).

    With ``net``, the weights are checked against the params and state that ``net`` has for
    ``input_shape`` (default: the ``input_shape`` stored in the checkpoint; shapes only, no
    memory allocated): a missing, extra or differently shaped tensor is refused naming the
    layer path and both shapes.

    Raises:
        CheckpointError: the file is missing, damaged (checksums) or does not fit ``net``.

    Example:
        >>> import os, tempfile
        >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(2))
        >>> _, params, state = net.init(jax.random.key(0), (-1, 784))
        >>> path = os.path.join(tempfile.mkdtemp(), "best.safetensors")
        >>> fnn.save_weights(path, params, state)
        >>> params, state = fnn.load_weights(path, net, input_shape=(-1, 784))
        >>> params["dense_0"]["w"].shape
        (784, 8)
        >>> wider = fnn.serial(fnn.Dense(16), fnn.Relu, fnn.Dense(2))
        >>> fnn.load_weights(path, wider, input_shape=(-1, 784))
        Traceback (most recent call last):
        fnn.train.checkpoint.CheckpointError: .../best.safetensors: layer 'dense_0' parameter 'b'
        has shape (8,) in the checkpoint, but the network needs (16,)
    """
    path = Path(path)
    arrays, meta = read_checkpoint(path)
    weights = meta.get("weights")  # a run with a moving average: the averaged params, where
    if isinstance(weights, str) and weights != "params":  # held (not those of frozen layers)
        arrays = {**arrays, **{"params/" + k[len(weights) + 1:]: v for k, v in arrays.items()
                               if k.startswith(weights + "/")}}
    params, state = nest(arrays, "params", source=path), nest(arrays, "model_state", source=path)
    if net is not None:
        shape = input_shape if input_shape is not None else meta.get("input_shape")
        if shape is None:
            raise CheckpointError(f"{path}: no input_shape stored; pass input_shape= to check "
                                  "the weights against the network")
        want_params, want_state = jax.eval_shape(lambda k: net.init(k, tuple(shape))[1:],
                                                 jax.random.key(0))
        _check_fits(path, "params", params, want_params)
        _check_fits(path, "state", state, want_state)
    return params, state


def _check_fits(path: Path, what: str, got: Any, want: Any) -> None:
    """Refuse ``got`` unless it has exactly the keys and shapes of ``want``."""
    def shapes(tree: Any) -> dict[str, tuple]:
        return {path_str(p): tuple(np.shape(leaf))
                for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    have, need = shapes(got), shapes(want)

    label = {"params": "parameter", "state": "state"}[what]

    def where(key: str) -> str:
        layer, _, leaf = key.rpartition("/")
        return f"layer {layer!r} {label} {leaf!r}" if layer else f"{label} {leaf!r}"

    for key, shape in need.items():
        if key not in have:
            raise CheckpointError(f"{path}: {where(key)} of shape {shape} is not in the "
                                  "checkpoint; it was saved from another network")
        if have[key] != shape:
            raise CheckpointError(f"{path}: {where(key)} has shape {have[key]} in the checkpoint, "
                                  f"but the network needs {shape}")
    extra = [k for k in have if k not in need]
    if extra:
        raise CheckpointError(f"{path}: the checkpoint has {where(extra[0])} of shape "
                              f"{have[extra[0]]} that the network does not have; it was saved "
                              "from another network")


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
    """Load ``(net, params, state)`` saved by :func:`save` or by a training run.

    When the checkpoint stores an ``input_shape`` (as training runs and ``save(...,
    input_shape=...)`` do), the weights are checked against the architecture.

    Raises:
        CheckpointError: the file is missing, damaged (checksums), holds weights only, or its
            weights do not fit its architecture (naming the layer and both shapes).
    """
    from fnn.layers.spec import from_spec

    path = Path(path)
    arrays, meta = read_checkpoint(path)
    spec = meta.get("spec")
    if spec is None:
        raise CheckpointError(f"{path} holds weights only (no architecture); use load_weights")
    net = from_spec(spec, modules=meta.get("modules"))
    params, state = nest(arrays, "params", source=path), nest(arrays, "model_state", source=path)
    if meta.get("input_shape") is not None:  # the weights must fit the stored architecture
        want_params, want_state = jax.eval_shape(
            lambda k: net.init(k, tuple(meta["input_shape"]))[1:], jax.random.key(0))
        _check_fits(path, "params", params, want_params)
        _check_fits(path, "state", state, want_state)
    return net, params, state
