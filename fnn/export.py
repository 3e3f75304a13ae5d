"""Export a trained network for serving: StableHLO through ``jax.export``, run without fnn's layers.

:func:`export` traces ``net.apply(params, state, x, train=False)`` (dropout off, batch norm on
its running statistics) with the weights baked in as constants and a symbolic batch dimension,
checks the result against :func:`fnn.train.predict` on a batch of 1 and of an odd size, and
writes it atomically. :func:`load_exported` reads it back and runs it with nothing but JAX: the
network's Python code, its config and fnn's layers are not needed.

The file (``fnn-export-1``) is: the line ``FNNEXPORT``, an 8-byte little-endian length, a JSON
header (format, fnn and jax versions, input and output signatures, the batch, the platform, the
payload's length and sha256), then the payload, ``jax.export.Exported.serialize()`` (which
needs the ``flatbuffers`` package). Another program reads it with ``jax.export.deserialize``
on the bytes after the header.

Example:
    >>> import pathlib, tempfile
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dropout(0.5), fnn.Dense(3))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.stablehlo"
    >>> _ = fnn.export(net, params, state, (-1, 4), path=path)
    >>> model = fnn.load_exported(path)
    >>> model.signature["input"]["shape"]
    ['batch', 4]
    >>> model(np.ones((5, 4), np.float32)).shape
    (5, 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import jax
import jax.export
import jax.numpy as jnp
import numpy as np

from fnn import rundir
from fnn.core import Layer
from fnn.files import atomic_write

__all__ = ["export", "export_checkpoint", "load_exported", "ExportedModel", "OnnxModel", "ExportError", "FORMAT"]

FORMAT = "fnn-export-1"
_MAGIC = b"FNNEXPORT\n"
_TOLERANCE = 1e-5  # float32 agreement of the exported function with predict
_ODD_BATCH = 7


class ExportError(ValueError):
    """An export that cannot be made or verified, or an exported file that cannot be read;
    the message is one line naming the file, the input or the output that is wrong."""


def fnn_version() -> str:
    """fnn's version, from its one source (:func:`fnn.version.version`)."""
    from fnn.version import version

    return version()


class ExportedModel:
    """An exported network: call it on a batch (``model(x)``) to get the network's outputs.

    Attributes:
        exported: the ``jax.export.Exported`` (``.mlir_module()`` is the StableHLO text).
        signature: the header: ``input`` (``{"shape": ["batch", ...], "dtype": ...}``),
            ``outputs`` (one such entry per output array), ``fnn_version``, ``jax_version``,
            ``batch`` (``"dynamic"`` or a number) and ``platforms``.
    """

    def __init__(self, exported: jax.export.Exported, signature: dict[str, Any]) -> None:
        self.exported = exported
        self.signature = signature

    def __call__(self, x: Any) -> Any:
        """The outputs for inputs ``x`` of shape ``(batch, ...)`` (host numpy arrays)."""
        out = self.exported.call(jnp.asarray(x, self.signature["input"]["dtype"]))
        return jax.tree.map(np.asarray, out)

    def serialize(self) -> bytes:
        """The file's bytes: ``FNNEXPORT``, the header's length and JSON, the payload."""
        payload = bytes(self.exported.serialize())
        header = {**self.signature, "payload_bytes": len(payload),
                  "payload_sha256": hashlib.sha256(payload).hexdigest()}
        text = json.dumps(header, sort_keys=True).encode()
        return _MAGIC + struct.pack("<Q", len(text)) + text + payload

    def __repr__(self) -> str:
        s = self.signature
        return f"ExportedModel(input={s['input']}, outputs={s['outputs']}, fnn {s['fnn_version']})"


def _shape_text(shape: Any) -> list[Any]:
    return [d if isinstance(d, int) else str(d) for d in shape]


def _input_spec(input_shape: Any, batch: Any, dtype: Any) -> tuple[Any, list[Any]]:
    """The ``ShapeDtypeStruct`` to trace with, and the input shape as written in the header."""
    if not (isinstance(input_shape, (tuple, list)) and input_shape
            and all(isinstance(d, int) for d in input_shape)):
        raise ExportError(f"export: input_shape must be one shape (-1, ...) with the batch first, "
                          f"got {input_shape!r}")
    if input_shape[0] != -1 or any(d < 1 for d in input_shape[1:]):
        raise ExportError(f"export: input_shape must be (-1, ...) with -1 for the batch and known "
                          f"sizes after it, got {tuple(input_shape)}")
    if batch == "dynamic":
        first = jax.export.symbolic_shape("batch")[0]
    elif isinstance(batch, int) and not isinstance(batch, bool) and batch >= 1:
        first = batch
    else:
        raise ExportError(f"export: batch must be 'dynamic' or a positive int, got {batch!r}")
    shape = (first, *input_shape[1:])
    return jax.ShapeDtypeStruct(shape, dtype), _shape_text(shape)


def _example(shape: tuple[int, ...], dtype: Any, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if jnp.issubdtype(dtype, jnp.integer):  # ids (Embedding): small valid ones
        return rng.integers(0, 2, size=shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


def _verify(model: ExportedModel, net: Layer, params: Any, state: Any, sizes: list[int]) -> None:
    """The exported function equals ``predict`` on batches of ``sizes``, or an ``ExportError``."""
    from fnn.train.predict import predict

    spec = model.signature["input"]
    for n in sizes:
        x = _example((n, *spec["shape"][1:]), np.dtype(spec["dtype"]), seed=n)
        want = jax.tree.leaves(predict(net, params, state, x, batch_size=n))
        try:
            got = jax.tree.leaves(model(x))
        except Exception as e:  # noqa: BLE001 - e.g. onnxruntime refusing an operation
            raise ExportError(f"export: the exported model fails at batch {n} "
                              f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                              f"the export was not written") from None
        for i, (g, w) in enumerate(zip(got, want)):
            if g.shape != w.shape:
                raise ExportError(f"export: at batch {n}, output {i} has shape {g.shape} in the "
                                  f"export and {w.shape} from predict")
            diff = np.abs(g.astype(np.float64) - w.astype(np.float64))
            bound = _TOLERANCE * (1.0 + np.abs(w.astype(np.float64)))
            if not np.all(diff <= bound):  # NaN differences fail too
                raise ExportError(f"export: at batch {n}, output {i} differs from predict by "
                                  f"{np.nanmax(diff):.3g} (allowed {_TOLERANCE:g} relative); "
                                  f"the export was not written")


def export(net: Layer, params: Any, state: Any, input_shape: tuple[int, ...],
           format: str = "stablehlo", *, batch: int | str = "dynamic", dtype: Any = "float32",
           path: str | os.PathLike | None = None) -> ExportedModel:
    """Export ``net`` in inference mode with its weights, verified, optionally written to ``path``.

    Args:
        net, params, state: the trained network (``state``: batch-norm statistics, may be ``{}``).
        input_shape: ``(-1, ...)``: ``-1`` is the batch, the rest fixed, e.g. ``(-1, 784)``.
        format: ``"stablehlo"``, or ``"onnx"`` (needs the ``fnn[onnx]`` extra: ``jax2onnx``
            converts, ``onnxruntime`` checks; the file is the ``ModelProto``'s bytes).
        batch: ``"dynamic"`` (any batch size, a symbolic dimension) or a fixed size ``N``.
        dtype: the input's dtype (``"int32"`` for token ids).
        path: where to write the file (atomically); ``None`` writes nothing.

    Returns:
        The :class:`ExportedModel` (ONNX: :class:`OnnxModel`), already checked: it equals
        ``predict`` to 1e-5 on a batch of 1 and of 7 (``batch="dynamic"``) or of ``N``.

    Raises:
        ExportError: a bad argument, or an export that differs from ``predict`` (naming the
            batch size and the output), before anything is written.
    """
    if format not in ("stablehlo", "onnx"):
        raise ExportError(f"export: format must be 'stablehlo' or 'onnx', got {format!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ExportError(f"export: dtype: not a dtype: {dtype!r}") from None
    spec, shape_text = _input_spec(input_shape, batch, dtype)

    def serve(x):
        return net.apply(params, state, x, train=False)[0]

    signature = {"format": FORMAT, "fnn_version": fnn_version(), "jax_version": jax.__version__,
                 "batch": batch, "input": {"shape": shape_text, "dtype": dtype.name}}
    if format == "onnx":
        _refuse_for_onnx(net, input_shape)
        model: Any = _onnx(serve, spec, signature)
    else:
        exported = jax.export.export(jax.jit(serve))(spec)
        signature.update(platforms=list(exported.platforms), outputs=_outputs(exported.out_avals))
        # Verify what will be written: the serialized bytes, read back.
        model = _read(ExportedModel(exported, signature).serialize(), "the export")
    _verify(model, net, params, state, [1, _ODD_BATCH] if batch == "dynamic" else [batch])
    if path is not None:
        atomic_write(path, model.serialize())
    return model


# Kinds that jax2onnx 0.17 does not convert (measured over every kind of the layer contract):
# the reverse scan of a backward recurrent layer, and the out-of-range fill of Embedding.
_NOT_ONNX = {"Bidirectional": "its backward pass is a reverse scan, which jax2onnx does not convert",
             "Embedding": "its lookup (a gather that fills unknown ids with NaN) does not convert"}


def _refuse_for_onnx(net: Layer, input_shape: Any) -> None:
    """An ``ExportError`` naming the first layer that does not convert to ONNX, before converting."""
    from fnn.core import recording

    with recording() as rec:
        jax.eval_shape(lambda k: net.init(k, tuple(input_shape))[1:], jax.random.key(0))
    rows = [(path, layer) for path, layer, *_ in filter(None, rec.rows)] or [((), net)]
    for path, layer in rows:
        why = _NOT_ONNX.get(layer.kind)
        if why is None and layer.record is not None and layer.record.args.get("reverse") is True:
            why = "reverse=True is a reverse scan, which jax2onnx does not convert"
        if why:
            where = "/".join(path) or "(the network)"
            raise ExportError(f"export: {layer.kind} layer '{where}' cannot be exported to ONNX: "
                              f"{why}; export it as 'stablehlo'")


def _outputs(avals: Any) -> list[dict[str, Any]]:
    return [{"shape": _shape_text(a.shape), "dtype": np.dtype(a.dtype).name} for a in avals]


class OnnxModel:
    """An ONNX export: ``proto`` (the ``onnx.ModelProto``), run with ``onnxruntime`` by calling it.

    The signature and fnn's version are in the model's ``metadata_props`` (key ``"fnn"``, JSON).
    """

    def __init__(self, proto: Any, signature: dict[str, Any]) -> None:
        import onnxruntime

        self.proto = proto
        self.signature = signature
        self._session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                                     providers=["CPUExecutionProvider"])

    def __call__(self, x: Any) -> Any:
        name = self._session.get_inputs()[0].name
        outs = self._session.run(None, {name: np.asarray(x, self.signature["input"]["dtype"])})
        return outs[0] if len(outs) == 1 else outs

    def serialize(self) -> bytes:
        return self.proto.SerializeToString()


def _onnx(serve: Any, spec: Any, signature: dict[str, Any]) -> OnnxModel:
    """Convert with ``jax2onnx``; a kind it cannot convert is refused naming the JAX operation."""
    try:
        import jax2onnx
        import onnxruntime  # noqa: F401 - checked here so that a missing one is one line
    except ImportError as e:
        raise ExportError(f"export: format 'onnx' needs jax2onnx and onnxruntime ({e.name} is "
                          f"missing): pip install 'fnn[onnx]'") from None
    shape = ["batch" if not isinstance(d, int) else d for d in spec.shape]
    try:
        proto = jax2onnx.to_onnx(serve, [jax.ShapeDtypeStruct(
            jax.export.symbolic_shape(",".join(map(str, shape))), spec.dtype)],
            model_name="fnn", input_names=["x"])
    except Exception as e:  # noqa: BLE001 - jax2onnx raises many types for unsupported operations
        raise ExportError(f"export: jax2onnx cannot convert this network to ONNX "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); export it "
                          f"as 'stablehlo'") from None
    signature = {**signature, "outputs": [
        {"shape": [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]}
        for o in proto.graph.output]}
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fnn", json.dumps(signature, sort_keys=True)
    return OnnxModel(proto, signature)


def export_checkpoint(source: str | os.PathLike, *, format: str = "stablehlo",
                      batch: int | str = "dynamic", dtype: Any = "float32",
                      checkpoint: str = "best", out: str | os.PathLike | None = None) -> Path:
    """Export a run folder's ``best`` (or ``latest``) checkpoint, or a checkpoint file saved
    with its architecture and input shape (``fnn.save(..., input_shape=...)``); what
    ``fnn export`` runs. Returns the file written (default: ``model.<format>`` in the run
    folder, or the checkpoint's name with the format's suffix).

    Raises:
        ExportError: ``batch`` is not ``dynamic`` or a number, the checkpoint has no
            architecture or no input shape, or the export fails its check.
        FileNotFoundError: no such run folder or checkpoint.
        fnn.rundir.RunFolderError: another run is using the run folder (its lock is held
            while the export reads and writes there).
    """
    source = Path(source)
    if isinstance(batch, str) and batch != "dynamic":
        if not batch.isdigit() or int(batch) < 1:
            raise ExportError(f"--batch: must be 'dynamic' or a positive integer, got {batch!r}")
        batch = int(batch)
    suffix = ".onnx" if format == "onnx" else ".stablehlo"
    if source.is_dir():
        path = source / "checkpoints" / f"{checkpoint}.safetensors"
        if not path.exists():
            path = source / "checkpoints" / "latest.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{source}: no checkpoints/{checkpoint}.safetensors or "
                                    f"checkpoints/latest.safetensors (is it a run folder?)")
        default_out = source / f"model{suffix}"
    elif source.is_file():
        path, default_out = source, source.with_suffix(suffix)
    else:
        raise FileNotFoundError(f"{source}: no such run folder or checkpoint")
    out = Path(out) if out is not None else default_out
    if not source.is_dir():
        _export_file(path, out, format, batch, dtype)
        return out
    with rundir.take_lock(source)[0]:  # a run training there would replace the checkpoint
        _export_file(path, out, format, batch, dtype)
    return out


def _export_file(path: Path, out: Path, format: str, batch: int | str, dtype: Any) -> None:
    """:func:`export_checkpoint`'s work on one checkpoint file."""
    from fnn.train.checkpoint import load, read_metadata

    input_shape = read_metadata(path).get("input_shape")
    if input_shape is None:
        raise ExportError(f"{path}: no input shape stored with the weights; save it with "
                          f"fnn.save(path, net, params, state, input_shape=(-1, ...))")
    net, params, state = load(path)
    export(net, params, state, tuple(input_shape), format, batch=batch, dtype=dtype, path=out)


def _read(data: bytes, where: Any) -> ExportedModel:
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
        raise ExportError(f"{where}: not an fnn export (it does not start with FNNEXPORT)")
    at = len(_MAGIC)
    (size,) = struct.unpack("<Q", data[at:at + 8])
    try:
        header = json.loads(data[at + 8:at + 8 + size])
    except ValueError:
        raise ExportError(f"{where}: the header is damaged (not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExportError(f"{where}: format {header.get('format') if isinstance(header, dict) else None!r}"
                          f" is not {FORMAT!r}")
    payload = data[at + 8 + size:]
    if (len(payload) != header.get("payload_bytes")
            or hashlib.sha256(payload).hexdigest() != header.get("payload_sha256")):
        raise ExportError(f"{where}: the payload is damaged (its length or sha256 differs from "
                          f"the header's)")
    try:
        exported = jax.export.deserialize(bytearray(payload))
    except Exception as e:  # noqa: BLE001 - a version of jax that cannot read it
        raise ExportError(f"{where}: jax {jax.__version__} cannot read this export (made with jax "
                          f"{header.get('jax_version')}): {' '.join(str(e).split())}") from None
    signature = {k: v for k, v in header.items() if k not in ("payload_bytes", "payload_sha256")}
    return ExportedModel(exported, signature)


def load_exported(path: str | os.PathLike) -> ExportedModel:
    """Read an export written by :func:`export` (checking its header and payload checksum).

    Raises:
        ExportError: not an fnn export, damaged, or unreadable by this jax; names the file.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    return _read(path.read_bytes(), path)
