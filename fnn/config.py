"""Run configs: YAML files with sections for model, loss, regularizers, optimizer, data,
training, parallel and output; validated before anything is compiled.

Every error names the full key path and, for a misspelt key or value, the closest valid one::

    ConfigError: training.epohcs: unknown key; did you mean 'epochs'?
    ConfigError: training.batch_size: expected an int, got 'big'
    ConfigError: model[2]: unknown layer 'Dnse'; did you mean 'Dense'?

Command-line overrides use dotted paths (list items by index): ``optimizer.learning_rate=3e-4``,
``training.epochs=5``, ``model.1.Dense.features=256``; values are read as YAML.

Example:
    >>> cfg = load_config("configs/mnist_mlp.yaml", ["training.epochs=2"])
    >>> cfg["training"]["epochs"]
    2
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Sequence

import yaml

from fnn.checks import check_data_options, check_loss_options
from fnn.errors import ConfigError

__all__ = ["ConfigError", "load_config", "parse_config", "apply_overrides", "validate",
           "SCHEMA", "dump_config", "import_modules", "parse_yaml", "read_yaml_file",
           "MAX_CONFIG_BYTES", "MAX_YAML_VALUES"]


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key: its accepted types, default, and (optionally) allowed values."""

    types: tuple[type, ...]
    default: Any = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""
    free: bool = False  # a mapping whose keys are checked elsewhere (optimizer options, ...)


ANY = (object,)
NUM = (int, float)
_DTYPE = (str, type(None))
_DTYPES = (None, "bfloat16", "float16", "float32", "float64")
_SECTIONS: dict[str, Any] = {
    "name": Field((str,), "run", doc="the run's name (default output folder runs/<name>)"),
    "seed": Field((int,), 0, doc="fixes init, data order, dropout, splits"),
    "imports": Field((list,), [], doc="modules imported before the model is checked (layer "
                                      "kinds of your own)"),
    "model": Field((list, dict, str), None, doc="a list of layer specs (see fnn.layers.spec)"),
    "model_dtype": {  # the network's DtypePolicy (fnn.layers.precision)
        "params": Field(_DTYPE, None, choices=_DTYPES, doc="stored params (null: float32); "
                        "float64 needs JAX_ENABLE_X64=1"),
        "compute": Field(_DTYPE, None, choices=_DTYPES, doc="dtype of matmuls and convolutions "
                         "(null: the params dtype)"),
        "output": Field(_DTYPE, None, choices=_DTYPES, doc="dtype of the network's outputs "
                        "(null: at least float32, so losses run in float32)"),
    },
    "loss": {
        "name": Field((str,), "softmax_cross_entropy", doc="a name from fnn.losses.names()"),
        "options": Field((dict,), {}, free=True, doc="keyword options of the loss"),
    },
    "regularizers": {
        "l1": Field(NUM, 0.0, doc="coefficient of the L1 penalty on weights"),
        "l2": Field(NUM, 0.0, doc="coefficient of the L2 penalty (sum of squares) on weights"),
        "max_norm": Field(NUM + (type(None),), None, doc="max-norm r, projected after updates"),
        "layers": Field((list, type(None)), None, doc="restrict penalties to these layer names"),
    },
    "optimizer": Field((dict,), {"name": "adam", "learning_rate": 1e-3}, free=True,
                       doc="passed to fnn.optim.make_optimizer"),
    "data": {
        "name": Field((str,), "mnist", choices=("mnist", "fashion_mnist", "xor", "spirals",
                                                "circles", "regression", "adding", "addition",
                                                "python_source", "arrays", "csv")),
        "dir": Field((str, type(None)), None, doc="folder of the dataset files"),
        "path": Field((str, type(None)), None, doc="file for arrays (.npz/.npy) and csv"),
        "options": Field((dict,), {}, free=True, doc="loader options (csv columns, noise...)"),
        "scale": Field((bool,), True, doc="images: uint8 -> float32 in [0, 1]"),
        "flatten": Field((bool,), False, doc="images: (N, 28, 28) -> (N, 784)"),
        "channels": Field((bool,), False, doc="images: add a channel axis (N, 28, 28, 1)"),
        "validation": Field(NUM, 0.1, doc="held-out examples: a fraction or a count"),
        "stratify": Field((bool,), False, doc="stratified validation split"),
        "standardize": Field((bool,), False, doc="standardize features (fitted on train only)"),
        "augment": Field((dict, type(None)), None, free=True, doc="training-batch augmentation"),
        "one_hot": Field((bool, int), False, doc="class ids -> one-hot target rows (true: "
                                                 "max id + 1 classes, or the number of classes)"),
    },
    "training": {
        "epochs": Field((int,), 10),
        "batch_size": Field((int,), 128),
        "eval_batch_size": Field((int,), 1000),
        "mode": Field((str,), "auto", choices=("epoch", "step", "auto"),
                      doc="epoch: one scanned epoch on device; step: per-step with prefetch; "
                          "auto: epoch when the data fits on the device"),
        "early_stopping": {
            "enabled": Field((bool,), False),
            "monitor": Field((str,), "val_loss"),
            "mode": Field((str,), "auto", choices=("auto", "min", "max")),
            "patience": Field((int,), 5),
            "min_delta": Field(NUM, 0.0),
            "restore_best": Field((bool,), True),
        },
        "divergence": {
            "factor": Field(NUM + (type(None),), 1e4,
                            doc="stop when a step's loss exceeds factor x the loss at the "
                                "start of training (median of the first steps; null: only "
                                "NaN/Inf stop the run)"),
        },
        "pretrained": Field((str, type(None)), None, doc="checkpoint whose matching params start the run"),
        "freeze": Field((list,), [], doc="layers frozen with fnn.freeze: no updates, "
                                         "inference mode (batch norm keeps its statistics)"),
        "diagnostics": {
            "every": Field((int, type(None)), None,
                           doc="log gradient-flow diagnostics every N steps (diagnostics.jsonl)"),
        },
        "accumulate": Field((int,), 1, doc="micro-batches per update (gradient accumulation); "
                                           "batch_size must divide by it"),
        "ema": {
            "decay": Field(NUM + (type(None),), None,
                           doc="moving average of the weights (e.g. 0.999) used for validation, "
                               "best and fnn eval"),
        },
        "compile_cache": Field((bool,), True,
                               doc="keep compiled steps in ~/.cache/fnn/jax for later runs "
                                   "(FNN_COMPILE_CACHE=0 turns it off too)"),
        "checkpoint": {
            "every_steps": Field((int, type(None)), None,
                                 doc="also write checkpoints/latest every N steps, inside epochs"),
            "every_minutes": Field(NUM + (type(None),), None,
                                   doc="also write checkpoints/latest every M minutes"),
            "keep": Field((int,), 1, doc="step checkpoints (step-N.safetensors) kept"),
        },
    },
    "parallel": {
        "mode": Field((str,), "none", choices=("none", "pmap", "mesh", "fsdp")),
        "devices": Field((int, type(None)), None, doc="local devices to use (default: all)"),
        "model": Field((int,), 1, doc="devices along the model axis of a 2-D (data x model) "
                                      "mesh, fsdp only; must divide the device count"),
        "coordinator_address": Field((str, type(None)), None),
        "num_processes": Field((int, type(None)), None),
        "process_id": Field((int, type(None)), None),
    },
    "output": {
        "dir": Field((str, type(None)), None, doc="run folder (default runs/<name>)"),
        "plots": Field((bool,), True, doc="write curves.png"),
        "progress": Field((bool,), True, doc="progress bars"),
        "trackers": Field((list,), [], doc="send the run's events to tensorboard, mlflow "
                                          "and/or csv (fnn.trackers)"),
        "log_every": Field((int,), 10, doc="per-step values to the trackers every N steps"),
        "mlflow": {
            "tracking_uri": Field((str, type(None)), None,
                                  doc="MLflow tracking URI (default: file store <run>/mlruns)"),
            "experiment": Field((str, type(None)), None,
                                doc="MLflow experiment (default: fnn)"),
        },
    },
}
SCHEMA = _SECTIONS


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``3e-4`` as a string; read every number-looking scalar as a number."""


_FLOAT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _construct_number(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    text = loader.construct_scalar(node)
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return loader.construct_yaml_float(node)  # .nan, .inf, 1_000.0: YAML's own spellings


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_number)


MAX_CONFIG_BYTES = 1 << 20
"""Largest config file (and command-line override) read, in bytes: a config is a page of YAML;
anything near a megabyte is a wrong file, and reading it whole would be the first step of
running out of memory."""

MAX_YAML_VALUES = 100_000
"""Most values (mappings, lists and scalars) a YAML document may hold once its aliases are
expanded. An alias names a value written elsewhere, and aliases of aliases grow the document
exponentially (a "billion laughs" bomb: nine lines expand to 10**9 values); every check after
parsing walks the expanded document, so it is counted and refused here, before any is built."""


def _document_node(text: str, source: str) -> yaml.Node | None:
    """The composed YAML node graph of ``text`` (nothing constructed yet)."""
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _check_node_graph(node: yaml.Node, source: str, lines: bool = True, root: str = "") -> None:
    """Refuse duplicate mapping keys (at any depth) and documents whose aliases expand to more
    than :data:`MAX_YAML_VALUES` values (or into themselves), naming ``source`` and the line."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def line(n: yaml.Node) -> int | None:  # 1-based; none for a one-line text (an override)
        return n.start_mark.line + 1 if lines else None

    def size(n: yaml.Node, path: str) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_nodes:
            raise ConfigError(path, "an alias refers to the value that contains it (a "
                                    "recursive alias)", file=source, line=line(n))
        open_nodes.add(id(n))
        total = 1
        if isinstance(n, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for key, value in n.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is not None and name != "<<":
                    if name in first:
                        shown = f"{path}.{name}" if path else name
                        first_at = f" (first at line {line(first[name])})" if lines else ""
                        raise ConfigError("", f"duplicate key {shown!r}{first_at}",
                                          file=source, line=line(key))
                    first[name] = key
                here = f"{path}.{name}" if path and name else (name or path)
                total += size(key, path) + size(value, here)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                total += size(item, f"{path}[{i}]")
        open_nodes.discard(id(n))
        if total > MAX_YAML_VALUES:
            raise ConfigError("", f"the YAML expands to more than {MAX_YAML_VALUES:,} "
                                  f"values (aliases of aliases: an alias bomb?); fnn.config."
                                  f"MAX_YAML_VALUES is the limit", file=source,
                              line=line(n))
        sizes[id(n)] = total
        return total

    size(node, root)


def parse_yaml(text: str, source: str = "<config>", root: str = "") -> Any:
    """Parse YAML text with numbers like ``1e-3`` read as floats; ``root`` is the key path of
    the text's value in the config (an override's key), for messages.

    Refused, naming ``source`` (and the line): text over :data:`MAX_CONFIG_BYTES`, invalid
    YAML, a key given twice in one mapping, and aliases expanding past :data:`MAX_YAML_VALUES`.

    Example:
        >>> parse_yaml("training: {epochs: 3, lr: 1e-3}")
        {'training': {'epochs': 3, 'lr': 0.001}}
        >>> parse_yaml("a: 1\\nb: 2\\na: 3", "config.yaml")
        Traceback (most recent call last):
        fnn.errors.ConfigError: config.yaml:3: duplicate key 'a' (first at line 1)
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:  # undecodable bytes of a command-line argument
        raise ConfigError("", "not UTF-8 text", file=source) from None
    if size > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{size:,} bytes of YAML, more than a config holds "
                              f"(fnn.config.MAX_CONFIG_BYTES = {MAX_CONFIG_BYTES:,})", file=source)
    try:
        node = _document_node(text, source)
        if node is None:
            return None
        _check_node_graph(node, source, lines="\n" in text.strip(), root=root)
        loader = _Loader("")
        try:
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError("", "nested too deeply to read", file=source) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None and "\n" in text.strip() else None
        raise ConfigError("", f"not valid YAML: {' '.join(str(e).split())}",
                          file=source, line=line) from None


def read_yaml_file(path: str | os.PathLike) -> Any:
    """The YAML document in the file ``path``: checked to be a regular file of at most
    :data:`MAX_CONFIG_BYTES`, UTF-8 text, then read by :func:`parse_yaml`.

    Raises:
        ConfigError: one line naming the file (and the line, for bad YAML).
    """
    path = Path(path)
    try:
        info = path.stat()
    except OSError:
        raise ConfigError("", f"config file not found: {path}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError("", "not a regular file (a config is a YAML file)",
                          file=str(path))
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{info.st_size:,} bytes, more than a config holds "
                              f"(fnn.config.MAX_CONFIG_BYTES = {MAX_CONFIG_BYTES:,}); is it the "
                              f"right file?", file=str(path))
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    bad = data.find(b"\0")  # valid UTF-8, but no text holds it
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start if bad < 0 else min(bad, e.start)
    if bad >= 0:
        raise ConfigError("", f"not a text file (byte {bad} is not UTF-8 text); a config is a "
                              "YAML file", file=str(path), line=data[:bad].count(b"\n") + 1)
    return parse_yaml(text, str(path))


def _hint(key: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(key), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(options)}"


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an int", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "a mapping", type(None): "null", object: "anything"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_value(path: str, value: Any, field: Field) -> Any:
    if isinstance(value, bool) and bool not in field.types:
        raise ConfigError(path, f"expected {_type_name(field.types)}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and float in field.types \
            and int not in field.types:
        value = float(value)
    if not isinstance(value, field.types):
        raise ConfigError(path, f"expected {_type_name(field.types)}, got {value!r}")
    if field.choices is not None and value not in field.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in field.choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(path, f"must be one of {', '.join(map(str, field.choices))}, "
                                f"got {value!r}{hint}")
    return copy.deepcopy(value)


def _validate_section(path: str, raw: Any, schema: dict[str, Any]) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, f"expected a mapping with keys {', '.join(schema)}, got {raw!r}")
    for key in raw:
        if key not in schema:
            raise ConfigError(f"{path}.{key}" if path else str(key),
                              "unknown key" + _hint(key, list(schema)))
    out: dict[str, Any] = {}
    for key, sub in schema.items():
        here = f"{path}.{key}" if path else key
        if isinstance(sub, dict):
            out[key] = _validate_section(here, raw.get(key), sub)
        elif key in raw:
            out[key] = _check_value(here, raw[key], sub)
        else:
            out[key] = copy.deepcopy(sub.default)
    return out


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Check a raw config against the schema and fill defaults; returns the resolved config.

    This checks keys, types and choices, and that the model's layers, the loss and the
    optimizer exist with valid arguments, all without compiling anything.
    """
    _check_finite("", raw)
    cfg = _validate_section("", raw, SCHEMA)
    if cfg["model"] is None:
        raise ConfigError("model", "missing: a list of layers, e.g. [{Dense: 10}]")
    if cfg["model"] in ([], {}, ""):
        raise ConfigError("model", "empty: a network needs at least one layer, "
                                   "e.g. [{Dense: 10}]")
    _check_name(cfg["name"])
    if not 0 <= cfg["seed"] <= MAX_SEED:
        raise ConfigError("seed", f"must be in [0, 2**32 - 1] = [0, {MAX_SEED}], "
                                  f"got {cfg['seed']}")
    factor = cfg["training"]["divergence"]["factor"]
    if factor is not None and not factor > 1:
        raise ConfigError("training.divergence.factor", f"must be > 1 (or null to turn the "
                                                        f"check off), got {factor}")
    _check_image_keys(cfg)
    import_modules(cfg["imports"], lambda i: f"imports[{i}]")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if cfg["training"][key] < 1:
            raise ConfigError(f"training.{key}", f"must be >= 1, got {cfg['training'][key]}")
    if cfg["data"]["validation"] < 0:
        raise ConfigError("data.validation", "must be >= 0")
    every = cfg["training"]["diagnostics"]["every"]
    if every is not None and every < 1:
        raise ConfigError("training.diagnostics.every", f"must be >= 1 (or null), got {every}")
    _check_checkpoint(cfg["training"]["checkpoint"])
    _check_trackers(cfg["output"])
    decay = cfg["training"]["ema"]["decay"]
    if decay is not None and not 0 < decay < 1:
        raise ConfigError("training.ema.decay", f"must be between 0 and 1 (or null), got {decay}")
    k = cfg["training"]["accumulate"]
    if k < 1 or cfg["training"]["batch_size"] % k:
        raise ConfigError("training.accumulate", f"must be >= 1 and divide training.batch_size "
                                                 f"({cfg['training']['batch_size']}), got {k}")
    _check_components(cfg)
    return cfg


def _check_trackers(out: dict[str, Any]) -> None:
    """``output.trackers``: known names, each once, their libraries installed."""
    from fnn.trackers import check_available

    if out["log_every"] < 1:
        raise ConfigError("output.log_every", f"must be >= 1, got {out['log_every']}")
    for i, name in enumerate(out["trackers"]):
        where = f"output.trackers[{i}]"
        if not isinstance(name, str):
            raise ConfigError(where, f"must be a tracker name (tensorboard, mlflow, csv), "
                                     f"got {name!r}")
        if name in out["trackers"][:i]:
            raise ConfigError(where, f"{name!r} is listed twice")
        try:
            check_available(name, where)
        except ValueError as e:
            raise ConfigError(where, str(e).split(": ", 1)[1]) from None


def _check_checkpoint(c: dict[str, Any]) -> None:
    if c["every_steps"] is not None and c["every_steps"] < 1:
        raise ConfigError("training.checkpoint.every_steps",
                          f"must be >= 1 (or null), got {c['every_steps']}")
    if c["every_minutes"] is not None and not c["every_minutes"] > 0:
        raise ConfigError("training.checkpoint.every_minutes",
                          f"must be > 0 (or null), got {c['every_minutes']}")
    if c["keep"] < 1:
        raise ConfigError("training.checkpoint.keep", f"must be >= 1, got {c['keep']}")


def import_modules(names: Sequence[Any], where: Any) -> None:
    """Import the modules ``names`` (dotted names, as for ``import``), so that the layer kinds
    they register can be used; ``where(i)`` names the place of the ``i``-th name in an error.

    Raises:
        ConfigError: at ``where(i)``, for a name that is not a module name or a module that
            cannot be imported (not found, or an error while importing it), in one line.

    Example:
        >>> import_modules(["json"], lambda i: f"imports[{i}]")
        >>> import_modules(["no_such_module_xyz"], lambda i: f"imports[{i}]")
        Traceback (most recent call last):
        ...
        fnn.errors.ConfigError: imports[0]: cannot import module 'no_such_module_xyz': ...
    """
    for i, name in enumerate(names):
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
            raise ConfigError(where(i), f"expected a module name such as mylayers or "
                                        f"pkg.layers, got {name!r}")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name != e.name and not name.startswith(e.name + "."):
                raise ConfigError(where(i), f"importing module {name!r} failed: {e}") from None
            raise ConfigError(where(i), f"cannot import module {name!r}: not found on the module "
                                        f"path (the current directory and PYTHONPATH); put "
                                        f"{name.split('.')[0]} there or install it") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed: say where, one line
            detail = " ".join(f"{type(e).__name__}: {e}".split())
            raise ConfigError(where(i), f"importing module {name!r} failed: {detail}") from None


MAX_SEED = 2**32 - 1  # numpy's generators and jax.random.key both take any seed in this range
IMAGE_DATASETS = ("mnist", "fashion_mnist")


def _check_name(name: str) -> None:
    """``name`` is one folder name: the run folder ``runs/<name>`` stays inside ``runs/``."""
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError("name", f"{name!r} is not a folder name (the run folder is "
                                  "runs/<name>): give one name without '/', '\\' or '..'; "
                                  "choose the folder itself with --out or output.dir")


def _check_finite(path: str, value: Any) -> None:
    """Refuse ``.nan``/``.inf`` anywhere in a config (no key takes a non-finite number)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"expected a finite number, got {value}")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(f"{path}.{k}" if path else str(k), v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(f"{path}[{i}]", v)


FILE_DATASETS = ("arrays", "csv")


def _check_image_keys(cfg: dict[str, Any]) -> None:
    """Keys that act on some datasets only are refused on the others, never silently ignored."""
    d = cfg["data"]
    image_keys = ("dir", "scale", "flatten", "channels")
    for key in image_keys if d["name"] not in IMAGE_DATASETS else ():
        if d[key] != SCHEMA["data"][key].default:
            raise ConfigError(f"data.{key}", f"applies to image datasets only "
                                             f"({', '.join(IMAGE_DATASETS)}), not {d['name']!r}")
    if d["path"] is not None and d["name"] not in FILE_DATASETS:
        raise ConfigError("data.path", f"applies to the file datasets only "
                                       f"({', '.join(FILE_DATASETS)}), not {d['name']!r}")
    reg = cfg["regularizers"]
    if reg["layers"] and not (reg["l1"] or reg["l2"] or reg["max_norm"] is not None):
        raise ConfigError("regularizers.layers", "set, but no penalty is on "
                                                 "(regularizers.l1, l2 or max_norm)")


def _check_components(cfg: dict[str, Any]) -> None:
    from fnn import losses
    from fnn.layers.precision import with_model_dtype
    from fnn.layers.spec import SpecError, from_spec

    try:
        net = from_spec(cfg["model"], "model")
    except SpecError as e:
        raise ConfigError(e.path, e.detail) from None
    try:
        with_model_dtype(net, cfg["model_dtype"])
    except ValueError as e:
        raise ConfigError("model_dtype", str(e)) from None
    try:
        losses.get(cfg["loss"]["name"])
    except ValueError as e:
        raise ConfigError("loss.name", str(e)) from None
    from fnn.optim import make_optimizer

    try:
        make_optimizer(cfg["optimizer"])
    except ConfigError:  # carries its key path (optimizer.name, optimizer.schedule.decay...)
        raise
    except ValueError as e:
        raise ConfigError("optimizer", str(e)) from None
    check_loss_options(cfg)
    check_data_options(cfg)


def _set_path(cfg: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[:i + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(here, f"no list item {part!r} (the list has {len(node)} items)")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                elif not isinstance(node[part], (dict, list)) or (
                        len(node) == 1 and isinstance(node[part], list)):
                    # a layer in shorthand ({Dense: 8}): spell its arguments out first
                    from fnn.layers.spec import SpecError, keyword_arguments
                    try:
                        node[part] = keyword_arguments(part, node[part])
                    except SpecError as e:
                        raise ConfigError(here, e.detail) from None
                node = node[part]
        else:
            raise ConfigError(here, f"cannot set a key inside {node!r}")


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``["a.b=1", "c.0.d=x"]`` to a raw config (values parsed as YAML); returns a copy."""
    cfg = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override is KEY.PATH=VALUE, e.g. training.epochs=5")
        key, text = item.split("=", 1)
        key = key.strip()
        _set_path(cfg, key, parse_yaml(text, f"override {key}", key) if text else None)
    return cfg


def parse_config(raw: Any, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Validate a config given as a dict (after applying overrides)."""
    if not isinstance(raw, dict):
        raise ConfigError("", f"a config is a mapping of sections, got {type(raw).__name__}")
    raw = dict(raw)
    for key, field in SCHEMA.items():  # `optimizer.b1=0.95` refines the default optimizer
        if isinstance(field, Field) and field.free and field.default and raw.get(key) is None:
            raw[key] = copy.deepcopy(field.default)
    return validate(apply_overrides(raw, overrides))


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read, override and validate a YAML config file."""
    return parse_config(read_yaml_file(path) or {}, overrides)


def dump_config(cfg: dict[str, Any]) -> str:
    """The resolved config as YAML (what a run writes to its folder)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
