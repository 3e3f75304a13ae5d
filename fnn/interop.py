"""Weights in and out: PyTorch ``state_dict``s and Keras weight files onto fnn params and state.

* :func:`from_torch` maps a PyTorch ``state_dict`` (a mapping of tensors or arrays, a
  ``.safetensors`` file read without torch, or a ``.pt`` file read with
  ``torch.load(weights_only=True)``, never unpickled otherwise) onto a network.
* :func:`from_keras` maps a Keras 3 ``.keras`` archive or ``.weights.h5`` file (read with
  ``h5py``; Keras itself is not needed).
* :func:`to_torch_state_dict` is the way back, with the keys PyTorch modules use
  (``<fnn path>.weight``), so a PyTorch model built with the same modules in the same order
  loads it.

Layers are matched **by order**: the fnn layers that hold weights, in the order ``init`` meets
them, against the source's modules in their order (PyTorch: the ``state_dict``'s; Keras: the
k-th fnn layer of a kind takes the k-th Keras layer of that kind). Each pair is converted:

==============  ==================================  =====================================
fnn kind        PyTorch                             Keras
==============  ==================================  =====================================
Dense           ``Linear``: ``w = weight.T``        ``Dense``: ``w = kernel``
Conv1D/Conv2D   ``Conv*d``: ``(O, I, *k)`` to       ``Conv*D``: the same layout
                ``(*k, I, O)`` (no flip: both
                are cross-correlations)
BatchNorm       ``weight, bias, running_mean,        ``gamma, beta, moving_mean,
                running_var``                        moving_variance``
LayerNorm       ``weight, bias``                    ``gamma, beta``
Embedding       ``weight``                          ``embeddings``
LSTM            ``w_x = weight_ih.T``, ``w_h =      ``kernel, recurrent_kernel, bias``
                weight_hh.T``, ``b = bias_ih +      (gates i, f, c, o as in fnn)
                bias_hh`` (gates i, f, g, o)
GRU             ``b = bias_ih + [bias_hh_r,          gates z, r, h reordered to r, z, n;
                bias_hh_z, 0]``, ``b_hn =            ``bias[0]``, ``bias[1]`` as for
                bias_hh_n``                          PyTorch
SimpleRNN       ``RNN``: ``b = bias_ih + bias_hh``  ``SimpleRNN``
==============  ==================================  =====================================

A bidirectional PyTorch RNN (``..._l0`` and ``..._l0_reverse``) fills fnn's
``Bidirectional``'s ``forward`` and ``backward``; a 2-layer one fills two fnn layers.
A ``Dense`` right after a ``Flatten`` of ``(H, W, C)`` features takes a PyTorch ``Linear``
written for the ``(C, H, W)`` order (its columns are permuted).

What is not matched is reported as in :func:`fnn.transfer`: arrays whose shapes differ stay
freshly initialised ("did not fit"), fnn layers without a counterpart are "new", source
modules left over are "unused". A pair whose form cannot match at all (a convolution kernel
for a ``Dense``) is a one-line :class:`InteropError` naming both.

BatchNorm: the running statistics are copied; the momentum is not in a state dict. PyTorch's
``BatchNorm*d(momentum=0.1)`` trains like ``fnn.BatchNorm(momentum=0.9,
unbiased_running_var=True)``; the epsilons (``1e-5`` in both by default) must agree.

Example:
    >>> net = fnn.serial(fnn.Dense(3), fnn.Relu, fnn.Dense(2))
    >>> state_dict = {"0.weight": np.ones((3, 4), np.float32), "0.bias": np.zeros(3, np.float32),
    ...               "2.weight": np.ones((2, 3), np.float32), "2.bias": np.zeros(2, np.float32)}
    >>> params, state, report = fnn.interop.from_torch(net, state_dict, (-1, 4))
    >>> print(report.one_line())
    copied 4 arrays from 2 source layers, 0 new, 0 did not fit
    >>> params["dense_0"]["w"].shape
    (4, 3)
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from fnn.core import Layer, recording
from fnn.layers.cells import cell_from_spec

__all__ = ["from_torch", "from_keras", "to_torch_state_dict", "InteropReport", "InteropError"]

# fnn kinds with weights that the converters know; RNN maps through its cell's kind.
_RECURRENT = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
_CELL_KINDS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}
_MAPPED = ("Dense", "Conv1D", "Conv2D", "BatchNorm", "LayerNorm", "Embedding", "LSTM", "GRU",
           "SimpleRNN")


class InteropError(ValueError):
    """A source whose layers cannot be matched with the network's; one line naming the first
    layer that cannot match, or the file and what is missing."""


@dataclasses.dataclass(frozen=True)
class InteropReport:
    """What :func:`from_torch` / :func:`from_keras` did (paths like ``"params/dense_0/w"``).

    Attributes:
        copied: ``(fnn path, source layer)`` of every array taken from the source (the
            PyTorch module, e.g. ``"features.0"``, ``"lstm.l0_reverse"``; the Keras layer,
            e.g. ``"layers/dense_1"``).
        new: fnn arrays with no counterpart in the source (freshly initialised).
        did_not_fit: ``(fnn path, source shape, fnn shape)`` of converted arrays whose shape
            differs (kept freshly initialised).
        unused: source layers (modules) the network has no layer for.
    """

    copied: tuple[tuple[str, str], ...]
    new: tuple[str, ...]
    did_not_fit: tuple[tuple[str, tuple, tuple], ...]
    unused: tuple[str, ...]

    def one_line(self) -> str:
        layers = len({src for _, src in self.copied})
        return (f"copied {len(self.copied)} arrays from {layers} source layers, {len(self.new)} "
                f"new, {len(self.did_not_fit)} did not fit"
                + (f": {', '.join(p for p, _, _ in self.did_not_fit)}" if self.did_not_fit else "")
                + (f"; unused: {', '.join(self.unused)}" if self.unused else ""))

    def __str__(self) -> str:
        lines = [self.one_line()]
        lines += [f"  copied       {p} <- {s}" for p, s in self.copied]
        lines += [f"  new          {p}" for p in self.new]
        lines += [f"  did not fit  {p}: source {a}, fnn {b}" for p, a, b in self.did_not_fit]
        lines += [f"  unused       {u}" for u in self.unused]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the network side

@dataclasses.dataclass
class _Unit:
    """One fnn layer that holds weights: its path, kind (as converted), params, state, and
    the shape of the features a ``Dense`` after a ``Flatten`` reads (else ``None``)."""

    path: tuple[str, ...]
    kind: str
    layer: Layer
    params: dict
    state: dict
    flattened: tuple[int, ...] | None = None

    @property
    def where(self) -> str:
        return f"{self.kind} layer '{'/'.join(self.path) or '(the network)'}'"


def _converted_kind(layer: Layer) -> str:
    if layer.kind == "RNN":
        return _CELL_KINDS.get(cell_from_spec(layer.record.args["cell"]).kind, "RNN")
    if layer.kind == "GRU" and layer.record.args.get("reset_after") is False:
        return "GRU(reset_after=False)"
    return layer.kind


def _units(net: Layer, input_shape: Any, rng: jax.Array) -> tuple[list[_Unit], dict, dict]:
    """The fresh ``(params, state)`` of ``net`` and its weight-holding leaf layers, in order."""
    with recording() as rec:
        _, params, state = net.init(rng, input_shape)
    rows = [r for r in rec.rows if r is not None] or [((), net, None, params, state)]
    units, previous = [], []
    for path, layer, out_shape, p, s in rows:
        if layer.children and any(r[0][:len(path)] == path and len(r[0]) > len(path) for r in rows):
            continue  # a combinator: its children are rows of their own
        while layer.children:  # a wrapper that keeps its child's params in place (Frozen)
            if len(layer.children) != 1:
                raise InteropError(f"{layer.kind} layer '{'/'.join(path)}': cannot see which of "
                                   f"its sub-layers holds which weights")
            layer = layer.children[0]
        flattened = None
        if layer.kind == "Dense" and len(previous) >= 2 and previous[-1][1].kind == "Flatten":
            before = previous[-2][2]
            if isinstance(before, tuple) and len(before) >= 3:
                flattened = tuple(before[1:])
        previous.append((path, layer, out_shape))
        if not jax.tree.leaves((p, s)):
            continue
        units.append(_Unit(path, _converted_kind(layer), layer, p, s, flattened))
    return units, params, state


def _at(tree: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        tree = tree[key]
    return tree


# ---------------------------------------------------------------------------- PyTorch's layout

def _flatten_order(w: np.ndarray, feature_shape: tuple[int, ...] | None, torch_side: bool) -> np.ndarray:
    """A ``Linear`` weight ``(out, C*H*W)`` in PyTorch's ``(C, H, W)`` order as fnn's
    ``(H, W, C)`` order (or back, ``torch_side=False``)."""
    if feature_shape is None or w.shape[1] != int(np.prod(feature_shape)):
        return w
    *spatial, c = feature_shape
    n = len(spatial)
    if torch_side:  # (out, C, *spatial) -> (out, *spatial, C)
        return w.reshape(w.shape[0], c, *spatial).transpose(0, *range(2, n + 2), 1).reshape(w.shape)
    return w.reshape(w.shape[0], *spatial, c).transpose(0, n + 1, *range(1, n + 1)).reshape(w.shape)


def _need(unit: _Unit, src: dict[str, np.ndarray], name: str, names: list[str], rank: int) -> np.ndarray:
    if names[0] not in src:
        raise InteropError(f"{unit.where} cannot take {name} ({_describe(src)}): it has no "
                           f"{names[0]}")
    a = src[names[0]]
    if a.ndim != rank:
        raise InteropError(f"{unit.where} cannot take {name} ({_describe(src)}): {names[0]} has "
                           f"{a.ndim} dimensions, {rank} needed")
    return a


def _describe(src: dict[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {tuple(v.shape)}" for k, v in src.items())


def _torch_to_fnn(unit: _Unit, name: str, src: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """``(params, state)`` of ``unit`` from one PyTorch module's tensors (by their short names)."""
    kind = unit.kind
    need = lambda key, rank: _need(unit, src, name, [key], rank)  # noqa: E731
    if kind == "Dense":
        params = {"w": _flatten_order(need("weight", 2), unit.flattened, True).T}
        if "b" in unit.params:
            params["b"] = need("bias", 1)
        return params, {}
    if kind in ("Conv1D", "Conv2D"):
        n = 1 if kind == "Conv1D" else 2
        w = need("weight", n + 2)
        params = {"w": w.transpose(*range(2, n + 2), 1, 0)}
        if "b" in unit.params:
            params["b"] = need("bias", 1)
        return params, {}
    if kind in ("BatchNorm", "LayerNorm"):
        params = {k: need(t, 1) for k, t in (("scale", "weight"), ("offset", "bias"))
                  if k in unit.params}
        state = {}
        if kind == "BatchNorm":
            state = {"mean": need("running_mean", 1), "var": need("running_var", 1)}
        return params, state
    if kind == "Embedding":
        return {"w": need("weight", 2)}, {}
    if kind in _RECURRENT:
        w_ih, w_hh = need("weight_ih", 2), need("weight_hh", 2)
        gates = _RECURRENT[kind]
        if w_ih.shape[0] != gates * w_hh.shape[1]:
            raise InteropError(f"{unit.where} cannot take {name} ({_describe(src)}): "
                               f"{gates} gate blocks needed, weight_ih has "
                               f"{w_ih.shape[0] / max(w_hh.shape[1], 1):g}")
        b_ih = src.get("bias_ih", np.zeros(w_ih.shape[0], w_ih.dtype))
        b_hh = src.get("bias_hh", np.zeros(w_ih.shape[0], w_ih.dtype))
        params = {"w_x": w_ih.T, "w_h": w_hh.T}
        if kind == "GRU":
            u = w_hh.shape[1]
            params["b"] = b_ih + np.concatenate([b_hh[:2 * u], np.zeros(u, b_hh.dtype)])
            params["b_hn"] = b_hh[2 * u:]
        else:
            params["b"] = b_ih + b_hh
        return params, {}
    raise AssertionError(f"no PyTorch conversion for {unit.kind}")  # _match checked the kinds


def _fnn_to_torch(unit: _Unit, params: dict, state: dict) -> dict[str, np.ndarray]:
    """PyTorch's tensors (short names) of one fnn layer; a recurrent layer's without suffix."""
    kind = unit.kind
    p = {k: np.asarray(v) for k, v in params.items()}
    if kind == "Dense":
        out = {"weight": _flatten_order(p["w"].T, unit.flattened, False)}
    elif kind in ("Conv1D", "Conv2D"):
        n = p["w"].ndim - 2
        out = {"weight": p["w"].transpose(n + 1, n, *range(n))}
    elif kind in ("BatchNorm", "LayerNorm"):
        out = {t: p[k] for k, t in (("scale", "weight"), ("offset", "bias")) if k in p}
        if kind == "BatchNorm":
            out.update(running_mean=np.asarray(state["mean"]), running_var=np.asarray(state["var"]),
                       num_batches_tracked=np.zeros((), np.int64))
        return out
    elif kind == "Embedding":
        return {"weight": p["w"]}
    elif kind in _RECURRENT:
        zeros = np.zeros_like(p["b"])
        bias_hh = zeros if kind != "GRU" else np.concatenate([zeros[:-p["b_hn"].size], p["b_hn"]])
        return {"weight_ih": p["w_x"].T, "weight_hh": p["w_h"].T, "bias_ih": p["b"],
                "bias_hh": bias_hh}
    else:
        raise InteropError(f"{unit.where} has no PyTorch counterpart that fnn can map "
                           f"(it maps {', '.join(_MAPPED)})")
    if "b" in p:
        out["bias"] = p["b"]
    return out


_RNN_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def _torch_modules(state_dict: Mapping[str, Any]) -> list[tuple[str, dict[str, np.ndarray]]]:
    """``[(module name, {short name: array})]`` in the ``state_dict``'s order; an RNN module's
    layers and directions are modules of their own (``lstm.l0``, ``lstm.l0_reverse``)."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        prefix, _, short = key.rpartition(".")
        if short == "num_batches_tracked":
            continue
        m = _RNN_KEY.match(short)
        if m:
            prefix = f"{prefix}.l{m.group(2)}{m.group(3) or ''}" if prefix else \
                f"l{m.group(2)}{m.group(3) or ''}"
            short = m.group(1)
        modules.setdefault(prefix, {})[short] = _numpy(value, key)
    return list(modules.items())


def _numpy(value: Any, key: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise InteropError(f"state_dict[{key!r}]: not an array ({type(value).__name__}): {e}") from None


def _read_torch_file(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise InteropError(f"{path}: not a readable safetensors file: {e}") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            import torch
        except ImportError:
            raise InteropError(f"{path}: reading a PyTorch pickle needs torch (pip install "
                               f"'fnn[torch]'); fnn never unpickles without it: save the "
                               f"state_dict as .safetensors instead") from None
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        if not isinstance(loaded, Mapping):
            raise InteropError(f"{path}: holds a {type(loaded).__name__}, not a state_dict")
        return loaded
    raise InteropError(f"{path}: expected a .safetensors or .pt file, got {path.suffix or 'no suffix'}")


def _match(net: Layer, input_shape: Any, rng: jax.Array | None, sources: list, convert: Callable,
           source_units: Callable[[list[_Unit]], list], source_name: str
           ) -> tuple[Any, Any, InteropReport]:
    """Put the converted source weights into fresh params/state; ``sources`` pairs with the units."""
    rng = jax.random.key(0) if rng is None else rng
    units, params, state = _units(net, input_shape, rng)
    for unit in units:
        if unit.kind not in _MAPPED:
            raise InteropError(f"{unit.where} has no {source_name} counterpart that fnn can map "
                               f"(it maps {', '.join(_MAPPED)})")
    pairs = source_units(units)
    copied, new, did_not_fit = [], [], []
    params, state = jax.tree.map(lambda a: a, params), jax.tree.map(lambda a: a, state)
    for unit, source in zip(units, pairs):
        if source is None:
            new += [f"{tree}/{'/'.join(unit.path + (k,))}" for tree, d in
                    (("params", unit.params), ("state", unit.state)) for k in d]
            continue
        name, arrays = source
        got_p, got_s = convert(unit, name, arrays)
        for tree, fresh, got, target in (("params", unit.params, got_p, params),
                                         ("state", unit.state, got_s, state)):
            for k, old in fresh.items():
                where = f"{tree}/{'/'.join(unit.path + (k,))}"
                value = got.get(k)
                if value is None:
                    new.append(where)
                elif tuple(value.shape) != tuple(old.shape):
                    did_not_fit.append((where, tuple(value.shape), tuple(old.shape)))
                else:
                    _at(target, unit.path)[k] = jax.numpy.asarray(value)
                    copied.append((where, name))
    used = {s[0] for s in pairs if s is not None}
    unused = tuple(n for n, _ in sources if n not in used)
    return params, state, InteropReport(tuple(copied), tuple(new), tuple(did_not_fit), unused)


def from_torch(net: Layer, state_dict: Mapping[str, Any] | str | os.PathLike, input_shape: Any, *,
               rng: jax.Array | None = None) -> tuple[Any, Any, InteropReport]:
    """``net``'s params and state with the weights of a PyTorch model, matched by order.

    Args:
        net: the fnn network, built with the PyTorch model's layers in the same order.
        state_dict: ``model.state_dict()`` (tensors or numpy arrays), a ``.safetensors`` file
            (read without torch) or a ``.pt`` file (needs torch; read with
            ``torch.load(weights_only=True)``).
        input_shape: the network's input shape, ``-1`` for the batch (fnn's layout:
            channels last, ``(-1, H, W, C)`` for a CNN that PyTorch feeds ``(N, C, H, W)``).
        rng: key of the fresh initialisation of what is not copied (default ``key(0)``).

    Returns:
        ``(params, state, report)``; see :class:`InteropReport`. Arrays keep the source's dtype.

    Raises:
        InteropError: a layer whose PyTorch counterpart has the wrong form, naming both.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _read_torch_file(Path(state_dict))
    sources = _torch_modules(state_dict)

    def pair(units):
        return [sources[i] if i < len(sources) else None for i in range(len(units))]

    def convert(unit, name, arrays):
        return _torch_to_fnn(unit, name, arrays)

    return _match(net, input_shape, rng, sources, convert, pair, "PyTorch")


def to_torch_state_dict(net: Layer, params: Any, state: Any, input_shape: Any) -> dict[str, Any]:
    """A PyTorch ``state_dict`` (torch tensors) of ``net``'s weights, keys ``<fnn path>.<name>``.

    A PyTorch model with the same modules in the same order loads it with
    ``model.load_state_dict(...)`` after renaming the keys in order (or ``from_torch`` reads it
    back bit for bit). A ``Bidirectional`` layer gives one bidirectional RNN module
    (``..._l0`` and ``..._l0_reverse``). Needs torch (``pip install 'fnn[torch]'``).

    Raises:
        InteropError: a layer kind with no PyTorch counterpart (or GRU ``reset_after=False``).
    """
    try:
        import torch
    except ImportError:
        raise InteropError("to_torch_state_dict needs torch: pip install 'fnn[torch]'") from None
    units, _, _ = _units(net, input_shape, jax.random.key(0))
    out: dict[str, Any] = {}
    for unit in units:
        tensors = _fnn_to_torch(unit, _at(params, unit.path), _at(state, unit.path) if unit.state else {})
        path = unit.path
        suffix = ""
        if unit.kind in _RECURRENT:
            if len(path) >= 2 and path[-1] in ("forward", "backward"):
                suffix = "_l0" if path[-1] == "forward" else "_l0_reverse"
                path = path[:-1]
            else:
                suffix = "_l0"
        prefix = ".".join(path)
        for short, value in tensors.items():
            key = f"{prefix}.{short}{suffix}" if prefix else f"{short}{suffix}"
            out[key] = torch.from_numpy(np.array(value))
    return out


# ------------------------------------------------------------------------------ Keras's layout

_KERAS_NAMES = {"Dense": "dense", "Conv1D": "conv1d", "Conv2D": "conv2d",
                "BatchNorm": "batch_normalization", "LayerNorm": "layer_normalization",
                "Embedding": "embedding", "LSTM": "lstm", "GRU": "gru", "SimpleRNN": "simple_rnn"}


def _keras_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """``{"layers/dense_1": [vars 0, 1, ...], "layers/bidirectional/forward_layer": ...}``."""
    try:
        import h5py
    except ImportError:
        raise InteropError(f"{path}: reading Keras weights needs h5py: pip install 'fnn[keras]'") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as z:
                data = z.read("model.weights.h5")
        except (zipfile.BadZipFile, KeyError):
            raise InteropError(f"{path}: not a Keras archive (no model.weights.h5 inside)") from None
        source: Any = io.BytesIO(data)
    elif path.name.endswith(".h5"):
        source = str(path)
    else:
        raise InteropError(f"{path}: expected a .keras or .weights.h5 file")
    found: dict[str, list[np.ndarray]] = {}
    try:
        with h5py.File(source, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Group) and name.endswith("vars") and len(obj):
                    owner = name[:-len("/vars")]
                    owner = owner[:-len("/cell")] if owner.endswith("/cell") else owner
                    found[owner] = [np.asarray(obj[str(i)]) for i in range(len(obj))]
            f.visititems(visit)
    except OSError as e:
        raise InteropError(f"{path}: not a readable HDF5 file: {e}") from None
    return found


def _keras_to_fnn(unit: _Unit, name: str, vars_: list[np.ndarray]) -> tuple[dict, dict]:
    """``(params, state)`` of ``unit`` from one Keras layer's variables, in Keras's order."""
    kind = unit.kind
    if kind in ("Dense", "Conv1D", "Conv2D"):
        src = dict(zip(("weight", "bias"), vars_))
        rank = {"Dense": 2, "Conv1D": 3, "Conv2D": 4}[kind]
        params = {"w": _need(unit, src, name, ["weight"], rank)}
        if "b" in unit.params:
            params["b"] = _need(unit, src, name, ["bias"], 1)
        return params, {}
    if kind in ("BatchNorm", "LayerNorm"):
        names = [k for k in ("scale", "offset") if k in unit.params]
        params = dict(zip(names, vars_))
        state = {}
        if kind == "BatchNorm":
            rest = vars_[len(names):]
            if len(rest) != 2:
                raise InteropError(f"{unit.where} cannot take Keras layer {name}: "
                                   f"{len(vars_)} variables, moving mean and variance needed")
            state = {"mean": rest[0], "var": rest[1]}
        return params, state
    if kind == "Embedding":
        return {"w": vars_[0]}, {}
    if kind in _RECURRENT:
        if len(vars_) != 3:
            raise InteropError(f"{unit.where} cannot take Keras layer {name}: {len(vars_)} "
                               f"variables, kernel, recurrent_kernel and bias needed")
        kernel, recurrent, bias = vars_
        if kind != "GRU":
            return {"w_x": kernel, "w_h": recurrent, "b": bias}, {}
        u = recurrent.shape[0]
        zrh = lambda a: np.concatenate([a[..., u:2 * u], a[..., :u], a[..., 2 * u:]], axis=-1)  # noqa: E731
        if bias.ndim != 2:
            raise InteropError(f"{unit.where} cannot take Keras layer {name}: a GRU with "
                               f"reset_after=True (bias (2, 3u)) is needed, got bias {bias.shape}")
        b_in, b_rec = zrh(bias[0]), zrh(bias[1])
        return {"w_x": zrh(kernel), "w_h": zrh(recurrent),
                "b": b_in + np.concatenate([b_rec[:2 * u], np.zeros(u, b_rec.dtype)]),
                "b_hn": b_rec[2 * u:]}, {}
    raise AssertionError(f"no Keras conversion for {unit.kind}")  # _match checked the kinds


def from_keras(net: Layer, path: str | os.PathLike, input_shape: Any, *,
               rng: jax.Array | None = None) -> tuple[Any, Any, InteropReport]:
    """``net``'s params and state with the weights of a Keras 3 model (``.keras`` or
    ``.weights.h5``, read with ``h5py``; Keras is not needed).

    The k-th fnn layer of a kind takes the k-th Keras layer of that kind (``dense``,
    ``dense_1``, ...: the names Keras saves weights under); an fnn ``Bidirectional``'s
    ``forward``/``backward`` take a Keras ``Bidirectional``'s ``forward_layer``/``backward_layer``.

    Returns:
        ``(params, state, report)`` as :func:`from_torch`.

    Raises:
        InteropError: the file cannot be read, or a layer cannot take its Keras counterpart.
    """
    path = Path(path)
    found = _keras_weights(path)
    sources = list(found.items())

    def pair(units):
        counts: dict[str, int] = {}
        out = []
        for unit in units:
            base = _KERAS_NAMES[unit.kind]
            if len(unit.path) >= 2 and unit.path[-1] in ("forward", "backward"):
                base, half = "bidirectional", f"/{unit.path[-1]}_layer"
            else:
                half = ""
            k = counts.get(base + half, 0)
            counts[base + half] = k + 1
            key = f"layers/{base}{'' if k == 0 else f'_{k}'}{half}"
            out.append((key, found[key]) if key in found else None)
        return out

    return _match(net, input_shape, rng, sources, _keras_to_fnn, pair, "Keras")

