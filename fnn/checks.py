"""Checks a config run makes before anything compiles: options against the functions they go
to, layer names against the built network, shapes under ``jax.eval_shape``, and memory.

Every failure is a :class:`~fnn.errors.ConfigError` naming the key path (and a fix where one
helps); nothing here compiles, allocates the parameters, or writes a file. Called by
``fnn validate``, ``fnn train`` and model selection after the data is loaded::

    ConfigError: data.options.label_colum: unknown option of the csv loader; did you mean 'label_column'?
    ConfigError: loss: mse: predictions and targets must have the same shape, got (4, 10) and (4,);
                 the labels are class ids: one-hot them (data.one_hot: true) or use softmax_cross_entropy
    ConfigError: optimizer.freeze: no layer named 'dense_9' (layers: dense_0, relu_0, dense_1)
    ConfigError: model: training needs at least 48.0 GiB (...), but only 21.9 GiB is available on cpu

Example:
    >>> cfg = fnn.config.load_config("configs/xor.yaml")
    >>> data = fnn.run.load_data(cfg)
    >>> report = check_run(cfg, fnn.run.build(cfg), data)
    >>> report.train_state.params["dense_0"]["w"].shape
    (2, 2)
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from fnn.core import LayerError, LayerNameError, check_layer_names, leaf_layer_paths
from fnn.data.checks import data_file_problem
from fnn.errors import ConfigError
from fnn.train.contract import LossContractError, check_loss

__all__ = ["check_data_options", "check_loss_options", "check_run", "RunCheck",
           "monitored_keys", "available_memory", "tree_bytes", "first_mismatch"]


# --------------------------------------------------------------------------- options

def _loader(name: str) -> tuple[Callable, set[str], set[str]]:
    """The function ``data.options`` go to, the arguments fnn passes itself, extra option names."""
    from fnn.data import arrays, datasets, synthetic, tabular, text

    table = {
        "mnist": (datasets.load_mnist, {"data_dir", "progress"}, set()),
        "fashion_mnist": (datasets.load_fashion_mnist, {"data_dir", "progress"}, set()),
        "xor": (synthetic.xor, set(), set()),
        "spirals": (synthetic.two_spirals, {"seed"}, {"n_test"}),
        "circles": (synthetic.circles, {"seed"}, {"n_test"}),
        "regression": (synthetic.noisy_regression, {"seed"}, set()),
        "adding": (synthetic.adding_problem, {"seed"}, {"n_test"}),
        "addition": (synthetic.addition, {"seed"}, {"n_test"}),
        "python_source": (text.python_source, set(), set()),
        "arrays": (arrays.load_arrays, {"path"}, set()),
        "csv": (tabular.load_csv, {"path"}, set()),
    }
    return table[name]


def _type_error(value: Any, default: Any) -> str | None:
    """Why ``value`` cannot stand where ``default`` does (``None`` if it can)."""
    if default is None or default is inspect.Parameter.empty:
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "an int"
    if isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "a string"
    return None


def _check_against(fn: Callable, options: Mapping[str, Any], where: str, what: str,
                   reserved: set[str], extra: set[str] = frozenset()) -> None:
    """Option names, required options and value types against ``fn``'s signature."""
    params = {name: p for name, p in inspect.signature(fn).parameters.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in reserved}
    valid = sorted(set(params) | set(extra))
    for key, value in options.items():
        if key in reserved:
            raise ConfigError(f"{where}.{key}", f"is set by fnn itself for the {what}; remove it")
        if key not in params and key not in extra:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
            hint = (f"; did you mean {close[0]!r}?" if close
                    else f"; valid options: {', '.join(valid) or 'none'}")
            raise ConfigError(f"{where}.{key}", f"unknown option of the {what}{hint}")
        if key in params:
            expected = _type_error(value, params[key].default)
            if expected:
                raise ConfigError(f"{where}.{key}", f"expected {expected}, got {value!r}")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in options:
            raise ConfigError(f"{where}.{name}", f"required by the {what}")


def check_data_options(cfg: Mapping[str, Any]) -> None:
    """``data.options`` and ``data.augment`` against the loader and augmentation they go to."""
    d = cfg["data"]
    fn, reserved, extra = _loader(d["name"])
    _check_against(fn, d["options"], "data.options", f"{d['name']} loader", reserved, extra)
    if d["augment"]:
        from fnn.data.augment import make_augment
        make_augment(d["augment"], where="data.augment")


def check_loss_options(cfg: Mapping[str, Any]) -> None:
    """``loss.options`` against the loss's keyword arguments (names and value types)."""
    from fnn import losses

    name = cfg["loss"]["name"]
    fn = losses.get(name)
    first_two = list(inspect.signature(fn).parameters)[:2]
    _check_against(fn, cfg["loss"]["options"], "loss.options", f"{name} loss",
                   {"reduction", "weights", *first_two})


# --------------------------------------------------------------------------- network

def _check_layer_names(names: Any, params: Any, where: str) -> None:
    """Each name selects some params (:func:`fnn.core.check_layer_names`), as a config error."""
    if not names:
        return
    layer_paths = leaf_layer_paths(params)
    for i, name in enumerate(names):
        try:
            check_layer_names([name], layer_paths, f"{where}[{i}]")
        except LayerNameError as e:
            raise ConfigError(e.where, e.detail) from None


def _check_pretrained(path: str | None, params: Any) -> None:
    """``training.pretrained`` loads, and every param it shares with the network has its shape."""
    if not path:
        return
    from fnn.train import checkpoint as ckpt

    problem = data_file_problem(path)
    if problem == "file not found":
        raise ConfigError("training.pretrained", f"file not found: {path}")
    if problem:
        raise ConfigError("training.pretrained", f"{path}: {problem}")
    ckpt.read_metadata(path)
    arrays = ckpt.load_tree(path)
    shared = {k: v for k, v in arrays.items() if k.startswith("params/")}
    for key, leaf in _leaves(params, "params"):
        if key in shared and tuple(shared[key].shape) != tuple(leaf.shape):
            raise ConfigError("training.pretrained", f"{key} has shape {shared[key].shape} in "
                                                     f"{path}, the network needs {leaf.shape}")


def _leaves(tree: Any, prefix: str):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}")
    else:
        yield prefix, tree


def monitored_keys(metrics: Mapping[str, Any], regularized: bool, validation: bool) -> list[str]:
    """The keys of the per-epoch record ``fit`` logs (what early stopping can monitor)."""
    train = ["loss", *metrics] + (["objective"] if regularized else [])
    keys = ["epoch", "step", "learning_rate", *(f"train_{k}" for k in train)]
    if validation:
        keys += [f"val_{k}" for k in ["loss", *metrics]]
    return keys + ["seconds", "examples_per_sec"]


def tree_bytes(tree: Any) -> int:
    """Bytes of the arrays (or ``ShapeDtypeStruct``s) of a pytree."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        dtype = leaf.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            total += 8 * int(np.prod(leaf.shape, dtype=np.int64))
            continue
        total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return total


def available_memory(device: Any = None) -> int | None:
    """Bytes free for new arrays on ``device`` (default the first); ``None`` when unknown."""
    device = device or jax.local_devices()[0]
    if device.platform == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def first_mismatch(expected: Any, found: Mapping[str, Any], prefix: str = "params") -> str | None:
    """The first leaf (in layer order) whose shape differs between a params tree and a flat
    ``{"params/dense_0/w": array_or_shape}`` mapping, as one readable sentence; ``None`` if all fit.
    """
    def shape(x: Any) -> tuple[int, ...]:
        return tuple(x) if isinstance(x, (tuple, list)) else tuple(np.shape(x))

    expected_keys: list[str] = []

    def walk(node: Any, path: tuple[str, ...]) -> str | None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                msg = walk(v, path + (str(k),))
                if msg:
                    return msg
            return None
        key = "/".join((prefix, *path))
        layer = "/".join(path[:-1]) or "(top)"
        expected_keys.append(key)
        if key not in found:
            return f"layer '{layer}': {path[-1]} is missing from the checkpoint"
        if shape(found[key]) != tuple(node.shape):
            return (f"layer '{layer}': {path[-1]} has shape {shape(found[key])} in the "
                    f"checkpoint, the config's network needs {tuple(node.shape)}")
        return None

    msg = walk(expected, ())
    if msg:
        return msg
    extra = sorted(k for k in found if k.startswith(prefix + "/") and k not in expected_keys)
    if extra:
        layer = "/".join(extra[0].split("/")[1:-1]) or "(top)"
        return f"layer '{layer}' is in the checkpoint but not in the config's network"
    return None


@dataclasses.dataclass
class RunCheck:
    """What :func:`check_run` found: the abstract train state, output shape, memory estimate."""

    train_state: Any  # a TrainState of jax.ShapeDtypeStruct leaves
    output_shape: Any
    batch_size: int  # the training batch, at most the number of training examples
    train_bytes: int  # params + gradients + optimizer and model state
    checkpoint_bytes: int  # one train-state checkpoint


def _data_note(part: Mapping[str, Any]) -> str:
    x, y = np.asarray(part["x"]), np.asarray(part["y"])
    return f"inputs {x.dtype} {x.shape[1:]} and targets {y.dtype} {y.shape[1:]} per example"


def _abstract(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def check_run(cfg: Mapping[str, Any], exp: Any, data: Mapping[str, Mapping[str, Any]], *,
              memory: int | None = -1) -> RunCheck:
    """All checks that need the built experiment and the data's shapes; nothing compiles.

    Args:
        cfg: the validated config.
        exp: its :class:`fnn.run.Experiment` (network, loss, optimizer, metrics...).
        data: ``{"train": {"x", "y"}, "val": ..., "test": ...}`` as ``fnn.run.load_data`` gives.
        memory: bytes available for training (``-1``: ask the device; ``None``: do not check).

    Returns:
        A :class:`RunCheck`.

    Raises:
        ConfigError: naming the key (``model``, ``loss``, ``optimizer.freeze``...) and the fix.
    """
    from fnn.finetune import with_frozen_mask
    from fnn.train.state import init_train_state
    from fnn.train.step import train_step_fn

    train = data["train"]
    x, y = np.asarray(train["x"]), np.asarray(train["y"])
    n = len(x)
    batch = min(cfg["training"]["batch_size"], n)
    input_shape = (-1, *x.shape[1:])
    found: dict[str, Any] = {}

    optimizer = with_frozen_mask(exp.net, exp.optimizer)  # as fit makes it: frozen layers
                                                           # get no optimizer state
    def init():
        out_shape, ts = init_train_state(exp.net, optimizer, input_shape, jax.random.key(0))
        found["output_shape"] = out_shape
        return ts

    try:
        ts = jax.eval_shape(init)
    except LayerError as e:
        raise ConfigError("model", f"{e} (the data has {_data_note(train)})") from None
    except LayerNameError as e:  # the optimizer's freeze names, checked against the params
        raise ConfigError(e.where, e.detail) from None
    _check_pretrained(cfg["training"]["pretrained"], ts.params)
    _check_layer_names(cfg["optimizer"].get("freeze"), ts.params, "optimizer.freeze")
    _check_layer_names(cfg["regularizers"]["layers"], ts.params, "regularizers.layers")

    bx = _abstract((batch, *x.shape[1:]), x.dtype)
    by = _abstract((batch, *y.shape[1:]), y.dtype)
    key = jax.eval_shape(lambda: jax.random.key(0))
    try:
        outputs = jax.eval_shape(
            lambda p, s, xb, k: exp.net.apply(p, s, xb, rng=k, train=True)[0],
            ts.params, ts.model_state, bx, key)
    except LayerError as e:
        raise ConfigError("model", f"{e} (the data has {_data_note(train)})") from None
    _check_loss_shapes(cfg, exp, outputs, by)
    for name, metric in exp.metrics.items():
        try:
            jax.eval_shape(metric, outputs, by)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"metrics.{name}", f"{e} (network outputs {outputs.shape}, "
                                                 f"targets {by.shape})") from None
    _check_labels(cfg, outputs, data)
    step = train_step_fn(exp.net, exp.loss, optimizer, regularizer=exp.regularizer,
                         constraint=exp.constraint, metrics=exp.metrics, augment=exp.augment)
    try:
        jax.eval_shape(step, ts, {"x": bx, "y": by})
    except (ValueError, TypeError) as e:
        if exp.augment is None:
            raise
        raise ConfigError("data.augment", f"{e} (the inputs are {x.dtype} {x.shape[1:]} "
                                          "per example)") from None

    es = cfg["training"]["early_stopping"]
    if es["enabled"]:
        keys = monitored_keys(exp.metrics, exp.regularizer is not None, data.get("val") is not None)
        if es["monitor"] not in keys:
            close = difflib.get_close_matches(es["monitor"], keys, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            why = "" if data.get("val") is not None else " (data.validation is 0: no val_ keys)"
            raise ConfigError("training.early_stopping.monitor",
                              f"{es['monitor']!r} is not logged{why}; {hint}"
                              f"logged: {', '.join(keys)}")

    params_bytes = tree_bytes(ts.params)
    state_bytes = tree_bytes(ts.opt_state) + tree_bytes(ts.model_state)
    need = 2 * params_bytes + state_bytes
    if memory == -1:
        memory = available_memory()
    if memory is not None and need > memory:
        raise ConfigError("model", f"training needs at least {_gib(need)} (parameters "
                                   f"{_gib(params_bytes)}, as much again for their gradients, "
                                   f"optimizer and layer state {_gib(state_bytes)}), but only "
                                   f"{_gib(memory)} of memory is available on "
                                   f"{jax.local_devices()[0].platform}; make the network smaller")
    return RunCheck(ts, found["output_shape"], batch, need, params_bytes + state_bytes)


def _check_loss_shapes(cfg: Mapping[str, Any], exp: Any, outputs: Any, by: Any) -> None:
    """The loss on the network's outputs and the targets (``fnn.train.contract.check_loss``)."""
    try:
        check_loss(exp.loss, outputs, by, loss_name=cfg["loss"]["name"])
    except LossContractError as e:
        raise ConfigError("loss", str(e)) from None


CLASS_ID_LOSSES = ("softmax_cross_entropy", "categorical_cross_entropy")


def _check_labels(cfg: Mapping[str, Any], outputs: Any, data: Mapping[str, Any]) -> None:
    """Class ids within ``[0, classes)`` of the network's output, in every split."""
    if cfg["loss"]["name"] not in CLASS_ID_LOSSES:
        return
    classes = outputs.shape[-1]
    for split, part in data.items():
        y = np.asarray(part["y"])
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != len(outputs.shape) - 1:
            continue
        bad = (y < 0) | (y >= classes)
        if bad.any():
            values = np.unique(y[bad])
            shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
            raise ConfigError("data", f"the {split} labels hold {int(bad.sum())} value(s) outside "
                                      f"[0, {classes}) for the network's {classes} outputs: "
                                      f"{shown}")
