"""A run from a config: build the network, loss, optimizer and data, train, write the run folder.

The run folder holds ``config.yaml`` (the resolved config), ``summary.txt``,
``metrics.jsonl`` (one JSON object per epoch), ``checkpoints/latest.safetensors`` and
``checkpoints/best.safetensors``, ``test.json`` (test metrics of the best checkpoint) and
``curves.png`` (loss and accuracy per epoch, train vs validation).

The config's ``parallel`` section picks the data parallelism (``mode: none | pmap | mesh | fsdp``,
``devices``) and, for several processes, starts ``jax.distributed`` from
``coordinator_address``/``num_processes``/``process_id`` (or the ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` variables, or a SLURM/Open MPI launch); see
:mod:`fnn.train.parallel`. Every process trains; process 0 alone writes the run folder and logs.

Example:
    >>> import pathlib, tempfile
    >>> xor = pathlib.Path(fnn.__file__).parents[1] / "configs" / "xor.yaml"
    >>> cfg = fnn.config.load_config(xor, ["training.epochs=2", "output.plots=false"])
    >>> run_dir = fnn.run.train(cfg, out=tempfile.mkdtemp(), log=None)   # 1000 epochs: accuracy 1.0
    >>> sorted(p.name for p in run_dir.iterdir())
    ['checkpoints', 'config.yaml', 'metrics.jsonl', 'summary.txt', 'test.json']
    >>> sorted(json.load(open(run_dir / "test.json")))
    ['accuracy', 'checkpoint', 'examples', 'loss']
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax

from fnn import losses, regularizers
from fnn import metrics as fnn_metrics
from fnn.config import ConfigError, dump_config, load_config
from fnn.core import Layer, LayerNameError
from fnn.data.checks import MAX_DATA_FILE_BYTES, MAX_TEXT_DATA_BYTES, data_file_problem
from fnn.finetune import freeze
from fnn.layers.precision import with_model_dtype
from fnn.layers.spec import from_spec
from fnn.train.parallel import DataParallel, initialize
from fnn.summary import summary
from fnn.trackers import from_config as trackers_from_config
from fnn.train import checkpoint as ckpt
from fnn.train.loop import EarlyStopping, FitResult, evaluate, fit
from fnn.train.run_options import RunOptions
from fnn.train.step import binary_correct, correct, make_eval_step

__all__ = ["Experiment", "build", "load_data", "train", "evaluate_run", "run_dir_of",
           "data_parallel", "check_shapes"]

CLASSIFICATION = {"softmax_cross_entropy": correct, "categorical_cross_entropy": correct,
                  "sigmoid_binary_cross_entropy": binary_correct}


@dataclasses.dataclass
class Experiment:
    """Everything a config describes, built and ready to train."""

    config: dict[str, Any]
    net: Layer
    loss: Callable[..., jax.Array]
    optimizer: optax.GradientTransformation
    regularizer: Callable[[Any], jax.Array] | None
    constraint: Callable[[Any], Any] | None
    metrics: dict[str, Callable]
    augment: Callable | None


def _make_loss(cfg: dict[str, Any]) -> Callable[..., jax.Array]:
    fn = losses.get(cfg["loss"]["name"])
    options = dict(cfg["loss"]["options"])
    if not options:
        return fn
    return lambda outputs, targets, **kw: fn(outputs, targets, **options, **kw)


def _make_regularizer(cfg: dict[str, Any]):
    reg = cfg["regularizers"]
    select = regularizers.layers(*reg["layers"]) if reg["layers"] else None
    terms = [(coef, fn) for coef, fn in ((reg["l1"], regularizers.l1), (reg["l2"], regularizers.l2))
             if coef]
    penalty = None
    if terms:
        def penalty(params):
            return sum(coef * fn(params, select=select) for coef, fn in terms)
    constraint = None
    if reg["max_norm"] is not None:
        r = float(reg["max_norm"])

        def constraint(params):
            return regularizers.max_norm(params, r, select=select)
    return penalty, constraint


def build(cfg: dict[str, Any]) -> Experiment:
    """Build an :class:`Experiment` from a validated config (see ``fnn.config``)."""
    from fnn import optim

    net = with_model_dtype(from_spec(cfg["model"], "model"), cfg.get("model_dtype"))
    if cfg["training"]["freeze"]:
        try:
            net = freeze(net, *cfg["training"]["freeze"])
        except LayerNameError as e:
            raise ConfigError("training.freeze", e.detail) from None
    optimizer = optim.make_optimizer(cfg["optimizer"])
    if cfg["training"]["ema"]["decay"] is not None:  # the average lives in the optimizer state
        from fnn.train.ema import with_ema
        optimizer = with_ema(optimizer, cfg["training"]["ema"]["decay"])
    penalty, constraint = _make_regularizer(cfg)
    metric = CLASSIFICATION.get(cfg["loss"]["name"])
    if metric is None and cfg["data"]["one_hot"] is not False:  # e.g. mse on one-hot digits
        metric = correct
    augment = None
    if cfg["data"]["augment"]:
        from fnn.data.augment import make_augment
        augment = make_augment(cfg["data"]["augment"])
    metrics = {"accuracy": metric} if metric else {}
    if cfg["loss"]["name"] == "sequence_cross_entropy":  # next-token prediction
        metrics = {name: functools.partial(fn, reduction="none") for name, fn in
                   (("exact_match", fnn_metrics.exact_match),
                    ("bits_per_token", fnn_metrics.bits_per_token))}
    return Experiment(cfg, net, _make_loss(cfg), optimizer, penalty, constraint, metrics, augment)


# --------------------------------------------------------------------------- data

def _images(x: np.ndarray, dcfg: dict[str, Any]) -> np.ndarray:
    x = x.astype(np.float32) / 255.0 if dcfg["scale"] else x.astype(np.float32)
    if dcfg["flatten"]:
        x = x.reshape(len(x), -1)
    elif dcfg["channels"]:
        x = x[..., None]
    return x


def load_data(cfg: dict[str, Any], *, download: bool = True,
              stand_in: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """The train, validation and test sets of a config: ``{"train": {"x", "y"}, "val": ..., "test": ...}``.

    The validation set is held out of the training data with the config's seed
    (``data.validation``: a fraction or a count); the test set is kept apart for the final report.
    ``download=False``: an image data set missing here raises ``DatasetNotFoundError`` instead
    of being downloaded. ``stand_in=True``: an image data set is replaced by arrays of its shapes
    and classes (:func:`fnn.data.stand_in`), read from nowhere; every other step is the same.
    """
    from fnn.data import datasets, splits

    d = cfg["data"]
    name, opts = d["name"], dict(d["options"])
    test = None
    try:
        if name in ("mnist", "fashion_mnist"):
            loader = datasets.load_mnist if name == "mnist" else datasets.load_fashion_mnist
            spec = datasets.MNIST if name == "mnist" else datasets.FASHION_MNIST
            download = download and opts.pop("download", True)
            raw = (datasets.stand_in(spec) if stand_in else
                   loader(d["dir"], download=download, progress=cfg["output"]["progress"], **opts))
            x, y = _images(raw["train"][0], d), raw["train"][1].astype(np.int32)
            test = {"x": _images(raw["test"][0], d), "y": raw["test"][1].astype(np.int32)}
        elif name in ("xor", "spirals", "circles", "regression", "adding", "addition",
                      "python_source"):
            x, y, test = _synthetic(name, opts, cfg)
        elif name == "arrays":
            from fnn.data.arrays import load_arrays
            x, y = load_arrays(_need_path(d), **opts)
        elif name == "csv":
            from fnn.data.tabular import load_csv
            x, y = load_csv(_need_path(d), **opts)
        else:  # pragma: no cover - the schema's choices stop this earlier
            raise ConfigError("data.name", f"unknown dataset {name!r}")
    except (ConfigError, datasets.DatasetNotFoundError):
        raise
    except (ValueError, KeyError, OSError, EOFError, zlib.error) as e:  # a bad or unreadable
        # data file (truncated gzip: EOFError, corrupt deflate stream: zlib.error); loaders name it
        raise ConfigError(f"data ({name})", _one_line(e)) from None
    x, y = np.asarray(x), np.asarray(y)
    val_n = d["validation"]
    val_n = int(round(val_n * len(x))) if isinstance(val_n, float) and val_n < 1 else int(val_n)
    if val_n >= len(x):
        raise ConfigError("data.validation", f"{val_n} validation examples leave none of the "
                                             f"{len(x)} for training")
    out: dict[str, dict[str, np.ndarray]] = {}
    if val_n:
        train_idx, val_idx = splits.holdout(len(x), val_n, seed=cfg["seed"],
                                            stratify=y if d["stratify"] else None)
        out["train"] = {"x": x[train_idx], "y": y[train_idx]}
        out["val"] = {"x": x[val_idx], "y": y[val_idx]}
    else:
        out["train"] = {"x": x, "y": y}
    if d["standardize"]:
        from fnn.data.tabular import Standardizer
        scaler = Standardizer.fit(out["train"]["x"])
        for part in list(out.values()) + ([test] if test else []):
            part["x"] = scaler.transform(part["x"])
    if test is not None:
        out["test"] = test
    if d["one_hot"] is not False:
        _one_hot_targets(out, d["one_hot"])
    return out


def _one_hot_targets(parts: dict[str, dict[str, np.ndarray]], classes: bool | int) -> None:
    """``data.one_hot``: class ids -> one-hot rows, with one number of classes for every part."""
    from fnn.data.labels import one_hot

    if classes is True:
        classes = 1 + max(int(np.max(p["y"])) for p in parts.values() if len(p["y"]))
    if isinstance(classes, bool) or classes < 2:
        raise ConfigError("data.one_hot", f"expected true or a number of classes >= 2, got "
                                          f"{classes!r}")
    for name, part in parts.items():
        try:
            part["y"] = one_hot(part["y"], classes)
        except ValueError as e:
            raise ConfigError("data.one_hot", f"{name} labels: {e}") from None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    return text


BINARY_TARGETS = ("sigmoid_binary_cross_entropy", "binary_cross_entropy", "hinge", "mse", "mae")


def _synthetic(name: str, opts: dict[str, Any], cfg: dict[str, Any]):
    """Train arrays and a test set for the teaching datasets.

    XOR's test set is its four points; spirals and circles draw a fresh test set of
    ``n_test`` points (seed + 1); the regression set is tested on the clean curve.
    """
    from fnn.data import synthetic

    try:
        if name == "adding":  # the test set: a fresh draw of n_test sequences
            n_test = opts.pop("n_test", 2000)
            x, y = synthetic.adding_problem(**{"seed": cfg["seed"], **opts})
            test_x, test_y = synthetic.adding_problem(**{**opts, "n": n_test, "seed": cfg["seed"] + 1})
            return x, y, {"x": test_x, "y": test_y}
        if name == "addition":  # held-out problems: pairs never drawn for training
            n_test = opts.pop("n_test", 2000)
            n = opts.pop("n", 50000)
            x, y = synthetic.addition(n + n_test, **{"seed": cfg["seed"], **opts})
            return x[:n], y[:n], {"x": x[n:], "y": y[n:]}
        if name == "python_source":  # the test set: the end of the text
            from fnn.data.text import python_source
            x, y, test_x, test_y = python_source(**opts)
            return x, y, {"x": test_x, "y": test_y}
        if name == "regression":
            data = synthetic.noisy_regression(**{"seed": cfg["seed"], **opts})
            return data.x, data.y, {"x": data.x_grid, "y": data.y_grid}
        if name == "xor":
            x, y = synthetic.xor(**opts)
            test_x, test_y = x, y
        else:
            make = synthetic.two_spirals if name == "spirals" else synthetic.circles
            n_test = opts.pop("n_test", opts.get("n", 400))
            x, y = make(**{"seed": cfg["seed"], **opts})
            test_x, test_y = make(**{**opts, "n": n_test, "seed": cfg["seed"] + 1})
    except TypeError as e:
        raise ConfigError("data.options", f"bad option for the {name} dataset: {e}") from None
    if cfg["loss"]["name"] in BINARY_TARGETS:  # one sigmoid output: float targets (N, 1)
        y, test_y = (v.astype(np.float32)[:, None] for v in (y, test_y))
    return x, y, {"x": test_x, "y": test_y}


def _need_path(d: dict[str, Any]) -> str:
    if not d["path"]:
        raise ConfigError("data.path", f"the {d['name']} dataset needs a file path")
    limit = MAX_TEXT_DATA_BYTES if d["name"] == "csv" else MAX_DATA_FILE_BYTES
    problem = data_file_problem(d["path"], limit)
    if problem == "file not found":
        raise ConfigError("data.path", f"file not found: {d['path']}")
    if problem:
        raise ConfigError("data.path", f"{d['path']}: {problem}")
    return d["path"]


# --------------------------------------------------------------------------- run folder

def run_dir_of(cfg: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """The run folder: ``out``, else ``output.dir``, else ``runs/<name>``."""
    return Path(out or cfg["output"]["dir"] or Path("runs") / cfg["name"])


def check_shapes(cfg: dict[str, Any], data: dict[str, dict[str, np.ndarray]] | None = None,
                 net: Layer | None = None) -> None:
    """Check, without compiling, that the config's model, loss and targets fit together.

    Runs :func:`fnn.train.check_shapes` on one batch of the training data (loaded when ``data``
    is not given), so ``fnn validate`` and ``fnn train`` fail before anything is compiled.

    Raises:
        ConfigError: ``loss.name: loss 'mse' cannot compare the network's outputs (N, 10) with
            the targets (N,): ...; if the targets are class labels, one-hot them
            (data.one_hot: true, ...)``.
    """
    from fnn.train.contract import LossContractError, check_shapes as check

    exp = build(cfg)
    data = data if data is not None else load_data(cfg)
    batch = {k: v[:2] for k, v in data["train"].items()}
    try:
        check(net or exp.net, exp.loss, batch["x"], batch["y"], loss_name=cfg["loss"]["name"],
              metrics=exp.metrics)
    except LossContractError as e:
        raise ConfigError("loss.name", str(e)) from None


def data_parallel(cfg: dict[str, Any]) -> DataParallel:
    """The :class:`~fnn.train.parallel.DataParallel` of a config's ``parallel`` section.

    Starts ``jax.distributed`` first when the section (or the environment) describes several
    processes, and checks that ``training.batch_size`` splits evenly over all devices.
    Call it before anything else uses JAX.

    Raises:
        ConfigError: naming the bad key (``parallel.devices``, ``training.batch_size``...).
    """
    p = cfg["parallel"]
    distributed = ("coordinator_address", "num_processes", "process_id")
    try:
        if p["mode"] != "none":
            initialize(p["coordinator_address"], p["num_processes"], p["process_id"])
        else:
            for key in distributed:
                if p[key] is not None and (key != "num_processes" or p[key] != 1):
                    raise ConfigError(f"parallel.{key}", "several processes need "
                                                         "parallel.mode pmap, mesh or fsdp")
        dp = DataParallel(p["mode"], p["devices"], model=p["model"])
        dp.check_batch_size(cfg["training"]["batch_size"], "training.batch_size")
    except ConfigError:  # carries its key path (parallel.devices, training.batch_size...)
        raise
    except ValueError as e:
        raise ConfigError("parallel", str(e)) from None
    return dp


def train_model(cfg: dict[str, Any], train_data: dict[str, np.ndarray],
                val_data: dict[str, np.ndarray] | None, run_dir: str | os.PathLike, *,
                resume: bool = False, log: Callable[[str], None] | None = print,
                parallel: Any = None, experiment: Experiment | None = None,
                reset_optimizer: bool = False, profile: int | None = None,
                callbacks: Sequence[Callable[[dict, Any], Any]] = ()) -> FitResult:
    """Train the model of ``cfg`` on ``train_data`` into ``run_dir``; the test set is not touched.

    Writes ``config.yaml``, ``summary.txt``, ``metrics.jsonl``, checkpoints and ``curves.png``
    (process 0 only). This is :func:`train` without the run-folder guard and the final test
    evaluation, which is what model selection (``fnn.selection``) needs. ``reset_optimizer``:
    on resume, restore params and progress but start the optimizer state afresh. ``profile``:
    trace the first steps into ``run_dir/profile`` (``fnn train --profile STEPS``).
    ``callbacks``: called after each epoch, as in :func:`fnn.train.fit`.
    """
    from fnn.doctor import LiveHints

    dp = parallel if parallel is not None else data_parallel(cfg)
    if not dp.is_main:
        log = None
    exp = experiment or build(cfg)
    run_dir = Path(run_dir)
    t = cfg["training"]
    input_shape = (-1, *np.shape(train_data["x"])[1:])
    check_shapes(cfg, {"train": train_data}, exp.net)
    if not resume and (run_dir / "checkpoints" / "latest.safetensors").exists():
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it "
                              "or --out to start a new one")
    n = len(train_data["x"])
    batch_size = t["batch_size"]
    if batch_size > n:  # as Keras does: one smaller batch per epoch
        batch_size = n
        if log:
            log(f"training.batch_size {t['batch_size']} is larger than the {n} training "
                f"examples: training on one batch of {n} per epoch")
    table = str(summary(exp.net, input_shape)) if dp.is_main or log else ""
    if dp.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write(run_dir / "config.yaml", dump_config(cfg).encode())
        ckpt.atomic_write(run_dir / "summary.txt", (table + "\n").encode())
    if log:
        log(f"run folder: {run_dir}")
        log(table)
        if dp.mode != "none":
            log(f"data parallel: {dp.mode} over {dp.num_devices} devices"
                + (f" in {dp.process_count} processes" if dp.process_count > 1 else "")
                + (f" (mesh {dp.num_devices // dp.model} data x {dp.model} model)"
                   if dp.model > 1 else "")
                + f", {batch_size // (dp.num_devices // dp.model)} examples per device per step")
    es = t["early_stopping"]
    early = (EarlyStopping(es["monitor"], es["mode"], es["patience"], es["min_delta"],
                           es["restore_best"]) if es["enabled"] else None)
    run = RunOptions(run_dir, resume=resume, reset_optimizer=reset_optimizer,
                     metadata={"config": cfg, "input_shape": list(input_shape)},
                     checkpoint=_checkpointing(t["checkpoint"]),
                     diagnostics=t["diagnostics"]["every"], profile=profile,
                     trackers=trackers_from_config(cfg["output"]),
                     log_every=cfg["output"]["log_every"])
    result = fit(exp.net, exp.loss, exp.optimizer, train_data, val_data,
                 epochs=t["epochs"], batch_size=batch_size, seed=cfg["seed"],
                 regularizer=exp.regularizer, constraint=exp.constraint, metrics=exp.metrics,
                 augment=exp.augment, mode=t["mode"], early_stopping=early,
                 divergence_factor=t["divergence"]["factor"], init=t["pretrained"],
                 accumulate=t["accumulate"],
                 plateau=_plateau(cfg["optimizer"]), run=run, parallel=dp,
                 eval_batch_size=t["eval_batch_size"], progress=cfg["output"]["progress"], log=log,
                 callbacks=[*callbacks, *([LiveHints(exp.net, {"x": train_data["x"][:256]}, log)]
                                          if log else [])])
    if dp.is_main and cfg["output"]["plots"]:
        from fnn.plots import plot_curves
        plot_curves(result.history, run_dir / "curves.png", title=cfg["name"])
    return result


def _checkpointing(c: dict[str, Any]) -> Any:
    """``training.checkpoint``: a :class:`~fnn.train.checkpointing.Checkpointing`, or ``None``
    when neither ``every_steps`` nor ``every_minutes`` is set (checkpoints at epoch ends only)."""
    from fnn.train.checkpointing import Checkpointing

    if c["every_steps"] is None and c["every_minutes"] is None:
        return None
    return Checkpointing(c["every_steps"], c["every_minutes"], c["keep"])


def _plateau(ocfg: dict[str, Any]) -> Any:
    """``optimizer.schedule: {name: plateau, ...}``: a :class:`~fnn.train.plateau.Plateau`."""
    from fnn.optim.schedules import plateau_options
    from fnn.train.plateau import Plateau

    options = plateau_options(ocfg.get("schedule"))
    return None if options is None else Plateau(**options)


def train(cfg: dict[str, Any], out: str | os.PathLike | None = None, *, resume: bool = False,
          overwrite: bool = False, allow_change: Sequence[str] = (),
          log: Callable[[str], None] | None = print, profile: int | None = None) -> Path:
    """Train the run a config describes, then report its test metrics; returns the run folder.

    Everything a user can get wrong is checked first, before anything compiles and before the
    run folder is created or changed: the data (:func:`load_data`), the network (with
    ``training.freeze``), loss, metrics and options against the data's shapes
    (:func:`fnn.checks.check_run`), and the folder (:func:`fnn.rundir.check_run_folder`:
    writable, owned, not used by another run, not holding another run unless ``resume`` or
    ``overwrite``, a resume's config changes only those in ``allow_change``). The run then holds the folder's lock until it ends; with
    ``overwrite`` the old run is kept aside until the first epoch is saved, and put back if the
    new run fails before that.

    Raises:
        ConfigError, RunFolderError: one line naming the key or the folder.
    """
    from fnn import checks, rundir
    from fnn.compile_cache import enable_compile_cache

    enable_compile_cache(cfg["training"]["compile_cache"], log)  # before anything compiles
    dp = data_parallel(cfg)
    data = load_data(cfg)
    run_dir = run_dir_of(cfg, out)
    exp = build(cfg)
    check = checks.check_run(cfg, exp, data)
    plan = rundir.check_run_folder(run_dir, cfg, resume=resume, overwrite=overwrite,
                                   allow_change=allow_change, train_state=check.train_state,
                                   checkpoint_bytes=check.checkpoint_bytes)
    if not dp.is_main:  # process 0 alone opens (locks) and writes the folder
        train_model(cfg, data["train"], data.get("val"), run_dir, resume=resume, log=None,
                    parallel=dp, experiment=exp, reset_optimizer=plan.reset_optimizer,
                    profile=profile)
        return run_dir
    with rundir.open_run_folder(plan) as opened:
        if log:
            _log_opened(opened, plan, log)
        started = [lambda record, train_state: opened.started()] if opened.old_run else []
        train_model(cfg, data["train"], data.get("val"), run_dir, resume=resume, log=log,
                    parallel=dp, experiment=exp, reset_optimizer=plan.reset_optimizer,
                    callbacks=started, profile=profile)
        if "test" in data:  # the test set is evaluated once, by process 0
            evaluate_run(run_dir, data=data, experiment=exp, log=log)
    return run_dir


def _log_opened(opened: Any, plan: Any, log: Callable[[str], None]) -> None:
    """What opening the folder did, and what a resume changes."""
    if opened.stale_lock is not None:
        log(f"took over the lock of a run that is gone ({opened.stale_lock})")
    if opened.removed_temporary:
        log(f"removed {len(opened.removed_temporary)} temporary file(s) of an interrupted "
            "write: " + ", ".join(p.name for p in opened.removed_temporary))
    if opened.old_run is not None:
        log(f"--overwrite: the old run is kept in {opened.old_run.name}/ until the first epoch "
            "is saved" + (f"; kept (not written by fnn): {', '.join(opened.kept)}"
                          if opened.kept else ""))
    for note in plan.notes:
        log(f"resume: {note}")
    if plan.changes:
        log("resume: config changes: " + ", ".join(plan.changes))


def check_checkpoint_fits(cfg: dict[str, Any], exp: Experiment, path: str | os.PathLike,
                          input_shape: Sequence[int]) -> None:
    """Refuse a checkpoint whose params or state do not fit the config's network, naming the
    first layer that differs (``fnn eval`` of a folder whose config.yaml was edited)."""
    from fnn.checks import first_mismatch

    def init():
        _, params, state = exp.net.init(jax.random.key(0), tuple(input_shape))
        return params, state

    params, state = jax.eval_shape(init)
    arrays = ckpt.load_tree(path)
    for prefix, tree in (("params", params), ("model_state", state)):
        mismatch = first_mismatch(tree, arrays, prefix)
        if mismatch:
            raise ConfigError(str(Path(path).parent.parent / "config.yaml"),
                              f"does not match {Path(path).name}: {mismatch}")


def evaluate_run(run_dir: str | os.PathLike, *, checkpoint: str = "best", data=None,
                 experiment: Experiment | None = None,
                 log: Callable[[str], None] | None = print) -> dict[str, float]:
    """Test metrics of a run's ``best`` (or ``latest``) checkpoint; writes ``test.json``.

    The folder's ``config.yaml`` must describe the network the checkpoint holds: a mismatch is
    refused naming the first layer that differs, before anything compiles. Called on its own
    (``fnn eval``: no ``experiment``), it holds the folder's lock while it runs, as ``fnn
    train`` does, and a folder another run is using is refused in one line
    (:class:`fnn.rundir.RunFolderError`); ``fnn train`` passes its ``experiment`` and holds
    the lock already.
    """
    from fnn import rundir

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.yaml)")
    if experiment is not None:
        return _evaluate(run_dir, checkpoint, data, experiment, log)
    with rundir.take_lock(run_dir)[0]:
        return _evaluate(run_dir, checkpoint, data, None, log)


def _evaluate(run_dir: Path, checkpoint: str, data: Any, experiment: Experiment | None,
              log: Callable[[str], None] | None) -> dict[str, float]:
    """:func:`evaluate_run`'s work, in a folder whose lock this process holds."""
    from fnn import rundir

    cfg_path = run_dir / "config.yaml"
    try:
        cfg = load_config(cfg_path)
    except ConfigError as e:  # the run's own config: name its file
        raise ConfigError(e.path, e.detail, file=e.file or str(cfg_path), line=e.line) from None
    rundir.check_checkpoint_files(run_dir)
    exp = experiment or build(cfg)
    data = data or load_data(cfg)
    if "test" not in data:
        raise ConfigError("data", f"the {cfg['data']['name']} dataset of this run has no test set")
    path = run_dir / "checkpoints" / f"{checkpoint}.safetensors"
    if not path.exists():
        path = run_dir / "checkpoints" / "latest.safetensors"
    if experiment is None:
        check_checkpoint_fits(cfg, exp, path, (-1, *np.shape(data["test"]["x"])[1:]))
        for stale in rundir.stale_temporary_files(run_dir):
            stale.unlink(missing_ok=True)
    params, state = ckpt.load_weights(path)
    step = make_eval_step(exp.net, exp.loss, metrics=exp.metrics)
    result = evaluate(step, params, state, data["test"],
                      batch_size=cfg["training"]["eval_batch_size"])
    result = {**result, "checkpoint": path.name, "examples": int(len(data["test"]["x"]))}
    ckpt.atomic_write(run_dir / "test.json", (json.dumps(result, indent=2) + "\n").encode())
    if log:
        shown = "  ".join(f"test_{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        log(f"{shown}  ({path.name}, {result['examples']} examples)")
    return result
