"""The ``fnn`` command: ``fnn train|eval|doctor|summary|validate|cv|sweep|export``.

Examples::

    fnn --version                                       # the fnn version, e.g. "fnn 0.1.0"
    fnn train configs/mnist_mlp.yaml
    fnn train configs/mnist_mlp.yaml optimizer.learning_rate=3e-4 training.epochs=5 --out runs/lr3e-4
    fnn train configs/mnist_mlp.yaml --resume          # continue a stopped run
    fnn train configs/mnist_mlp.yaml --resume training.epochs=20        # ... for longer
    fnn train configs/mnist_mlp.yaml --resume --allow-change optimizer  # ... with a new optimizer
    fnn eval runs/lr3e-4                                # test metrics of the best checkpoint
    fnn doctor runs/lr3e-4                              # what went wrong, where, the fix
    fnn summary configs/mnist_mlp.yaml
    fnn cv configs/csv_example.yaml --folds 5          # k-fold cross-validation, mean ± std
    fnn sweep configs/mnist_mlp.yaml training.epochs=5 --grid optimizer.learning_rate=1e-4,1e-3
    fnn sweep configs/mnist_mlp.yaml --random 8 --loguniform optimizer.learning_rate=1e-4,1e-2
    fnn validate my.yaml --import mylayers            # layer kinds registered in mylayers.py
    fnn export runs/lr3e-4                              # runs/lr3e-4/model.stablehlo
    fnn export runs/lr3e-4 --format onnx --batch 1 --out model.onnx

Overrides (KEY.PATH=VALUE) go right after the config file, before any --option.

``--import MODULE`` (repeatable, every command) imports a module of your own before the config
is read, so that the layer kinds it registers (``@fnn.layer_type``) can be used; the config key
``imports: [MODULE, ...]`` does the same from the config. The current directory is on the
module path, as for ``python -m``.

A mistake in the config, the data files, a checkpoint or the run folder ends in one line
``fnn <command>: error: <where>: <what>`` with exit status 2, before anything compiles and
before the run folder is touched; ``--debug`` or ``FNN_DEBUG=1`` shows the traceback.
``fnn train`` holds its folder's lock while it runs (``fnn eval``, ``fnn export`` of a run
folder, ``fnn cv`` and ``fnn sweep`` hold it too, and refuse a folder another run holds);
Ctrl-C or SIGTERM (``kill``, a scheduler's preemption) release it (exit status 130 or 143).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
from typing import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fnn", description="Train and inspect fnn networks from config files.",
        epilog="--debug (anywhere) or FNN_DEBUG=1: show the traceback of an error")
    from fnn.version import version

    p.add_argument("--version", action="version", version=f"fnn {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the run a config describes")
    t.add_argument("config", help="a YAML config file")
    t.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE overrides, e.g. training.epochs=5")
    t.add_argument("--out", help="the run folder (default: output.dir or runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run the folder holds (its config, metrics and checkpoints)")
    t.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                   help="with --resume: accept a config that differs from the run's in KEY "
                        "(or keys under it, e.g. optimizer); repeat for several")
    t.add_argument("--profile", type=int, metavar="STEPS",
                   help="write a jax.profiler trace of the first STEPS steps (compilation "
                        "included) to <run folder>/profile (open with xprof or TensorBoard)")
    t.add_argument("--parallel", choices=("none", "pmap", "mesh", "fsdp"),
                   help="data parallelism over local devices (same as parallel.mode=...)")
    t.add_argument("--coordinator-address", help="host:port of process 0 (several processes)")
    t.add_argument("--num-processes", type=int, help="number of processes in the run")
    t.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")
    e = sub.add_parser("eval", help="test metrics of a run's best checkpoint (writes test.json)")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    d = sub.add_parser("doctor", help="what went wrong in a run, in which layer, and the fix "
                                      "(exit 1 on a warning)")
    d.add_argument("run_dir")
    s = sub.add_parser("summary", help="print a config's network: layers, shapes, parameters")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    v = sub.add_parser("validate", help="check a config and print it resolved")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    x = sub.add_parser("export", help="export a run's best checkpoint (or a checkpoint file) "
                                      "for serving, verified against predict")
    x.add_argument("source", help="a run folder or a .safetensors checkpoint saved with its "
                                  "architecture (fnn.save, a training run)")
    x.add_argument("--format", default="stablehlo", choices=("stablehlo", "onnx"))
    x.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    x.add_argument("--dtype", default="float32", help="the input's dtype (int32 for token ids)")
    x.add_argument("--checkpoint", default="best", choices=("best", "latest"),
                   help="which checkpoint of a run folder")
    x.add_argument("--out", help="the file to write (default: model.stablehlo / model.onnx in "
                                 "the run folder, or next to the checkpoint)")
    _add_selection_parsers(sub)
    for command in sub.choices.values():
        command.add_argument("--import", dest="imports", action="append", default=[],
                             metavar="MODULE", help="import MODULE first (layer kinds of your "
                                                    "own); repeat for several")
    return p


def _add_selection_parsers(sub) -> None:
    c = sub.add_parser("cv", help="k-fold cross-validation on the training data "
                                  "(never the test set)")
    c.add_argument("config", help="a YAML config file")
    c.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE overrides")
    c.add_argument("--folds", type=int, default=5, help="number of folds K (default 5)")
    c.add_argument("--seed", type=int, help="seed of the fold assignment (default: the config's)")
    c.add_argument("--metric", help="headline validation metric (default val_accuracy or val_loss)")
    c.add_argument("--out", help="output folder (default: output.dir or runs/<name>-cv)")
    w = sub.add_parser("sweep", help="grid or random search; picks the best by validation, then "
                                     "tests only that one")
    w.add_argument("config", help="a YAML config file")
    w.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE overrides")
    for option, metavar, text in (
            ("grid", "KEY=V1,V2,...", "values to try for KEY (repeat for a product grid)"),
            ("choice", "KEY=V1,V2,...", "random search: draw KEY from these values"),
            ("uniform", "KEY=LOW,HIGH", "random search: draw KEY uniformly from [LOW, HIGH)"),
            ("loguniform", "KEY=LOW,HIGH", "random search: draw KEY log-uniformly "
                                           "(learning rates)")):
        # one list in command-line order: random search draws the keys in that order
        w.add_argument(f"--{option}", dest="dimensions", action="append", default=[],
                       metavar=metavar, help=text, type=lambda item, o=option: (f"--{o}", item))
    w.add_argument("--random", type=int, metavar="N",
                   help="random search: draw N settings (--grid values count as choices) "
                        "instead of the grid")
    w.add_argument("--seed", type=int, help="seed of the random search (default: the config's)")
    w.add_argument("--metric", help="validation metric to choose by (default val_accuracy for "
                                    "classification, else val_loss)")
    w.add_argument("--mode", default="auto", choices=("auto", "min", "max"),
                   help="whether the metric is maximized (auto: max for accuracies)")
    w.add_argument("--out", help="output folder (default: output.dir or runs/<name>-sweep)")


USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
               errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the user's input, files or disk are wrong, not fnn."""
    from fnn.config import ConfigError
    from fnn.data import DataError
    from fnn.core import LayerError
    from fnn.data.datasets import DatasetNotFoundError
    from fnn.rundir import RunFolderError
    from fnn.selection import SelectionError
    from fnn.files import WriteError
    from fnn.train.checkpoint import CheckpointError
    from fnn.train.loop import TrainingDiverged
    from fnn.export import ExportError
    from fnn.doctor import RunFolderMissing

    return (RunFolderMissing, ConfigError, DataError, DatasetNotFoundError, CheckpointError, TrainingDiverged,
            RunFolderError, SelectionError, LayerError, WriteError, FileNotFoundError,
            FileExistsError, ExportError)


def _message(e: BaseException) -> str:
    """One line: the error's text, with the file an OS error names."""
    text = " ".join(str(e).split())
    if isinstance(e, OSError) and e.strerror:  # raised by the OS, not with a message of ours
        from fnn.files import WriteError  # its message already names the file

        text = str(e) if isinstance(e, WriteError) else f"{e.filename or 'writing a file'}: {e.strerror}"
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            text += ("; the checkpoints written before are intact: free some space and "
                     "continue with --resume")
    return text


def _parse(argv: list[str]) -> argparse.Namespace:
    """The command line, with ``KEY.PATH=VALUE`` overrides allowed after options too
    (``fnn train c.yaml --out runs/x training.epochs=5``), which argparse alone refuses."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra
    elif extra:
        parser.parse_args(argv)  # argparse's own one-line error for what is left over
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fnn`` command; returns the exit status.

    A user's mistake (config, data file, checkpoint, run folder, disk) ends in one line
    ``fnn <command>: error: <where>: <what>`` and exit status 2; ``--debug`` (or ``FNN_DEBUG=1``)
    shows the traceback instead. A run stopped by SIGTERM/SIGINT (after writing its latest
    checkpoint) prints the command that continues it and exits with status 75. Anything else is a bug in fnn and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("FNN_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = _parse(argv)
    from fnn.train.checkpointing import PREEMPTED_STATUS, Preempted

    try:
        return _run(args)
    except Preempted as e:  # SIGTERM/SIGINT: latest is written; say how to go on
        again = " ".join(["fnn", *argv] + ([] if "--resume" in argv else ["--resume"]))
        print(f"fnn {args.command}: {e}; continue with: {again}", file=sys.stderr)
        return PREEMPTED_STATUS
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs right here
        user = isinstance(e, _user_errors()) or (isinstance(e, OSError)
                                                   and e.errno in USER_ERRNOS)
        if debug or not user:
            raise
        print(f"fnn {args.command}: error: {_message(e)}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from fnn.config import import_modules, load_config

    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m fnn.cli` has it
        sys.path.insert(0, os.getcwd())
    import_modules(args.imports, lambda i: f"--import {args.imports[i]}")
    if args.command == "doctor":
        from fnn.doctor import examine, format_findings
        findings = examine(args.run_dir)
        print(format_findings(findings))
        return 1 if any(f.severity != "info" for f in findings) else 0
    if args.command == "eval":
        from fnn.run import evaluate_run
        evaluate_run(args.run_dir, checkpoint=args.checkpoint)
        return 0
    if args.command == "export":
        from fnn.export import export_checkpoint
        out = export_checkpoint(args.source, format=args.format, batch=args.batch,
                                dtype=args.dtype, checkpoint=args.checkpoint, out=args.out)
        print(f"exported {out} (verified against predict)")
        return 0
    overrides = list(args.overrides)
    for flag, key in (("parallel", "mode"), ("coordinator_address", "coordinator_address"),
                      ("num_processes", "num_processes"), ("process_id", "process_id")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"parallel.{key}={value}")
    cfg = load_config(args.config, overrides)
    if args.command == "train":
        from fnn.run import train
        if args.profile is not None and args.profile < 1:
            from fnn.config import ConfigError
            raise ConfigError("--profile", f"must be a number of steps >= 1, got {args.profile}")
        with _terminate_as_exit():  # fit's own handlers finish the step and save while training
            train(cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                  allow_change=args.allow_change, profile=args.profile)
        return 0
    # validate, summary, cv, sweep: every check a training run makes first (model selection
    # leaves the test set alone until it has chosen)
    _check(cfg, args.command)
    if args.command == "validate":
        from fnn.config import dump_config
        print(dump_config(cfg), end="")
    elif args.command == "summary":
        print(_summary(cfg))
    else:
        return _selection(args, cfg)
    return 0


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (``kill``, a scheduler's preemption) ends the run as Ctrl-C does: the run
    folder's lock is released and an unfinished --overwrite puts the old run back; exit
    status 143 (128 + SIGTERM). Only the main thread may set a handler; elsewhere nothing."""
    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check(cfg, command: str) -> None:
    """Every check a training run makes first. ``validate`` and ``summary`` download nothing:
    an image data set that is not on this machine is checked by its shapes and classes."""
    from fnn.checks import check_run
    from fnn.data import DatasetNotFoundError
    from fnn.run import build, load_data

    inspect_only = command in ("validate", "summary")
    try:
        data = load_data(cfg, download=False) if inspect_only else load_data(cfg)
    except DatasetNotFoundError:
        if not inspect_only:
            raise
        print(f"fnn {command}: note: the {cfg['data']['name']} files are not on this machine; "
              f"checked against the data set's shapes and classes (fnn train downloads them)",
              file=sys.stderr)
        data = load_data(cfg, stand_in=True)
    parts = ("train", "val", "test") if inspect_only else ("train", "val")
    check_run(cfg, build(cfg), {k: data[k] for k in parts if k in data})


def _selection(args, cfg) -> int:
    from fnn import selection
    from fnn.config import MAX_SEED, ConfigError

    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise ConfigError("--seed", f"must be in [0, {MAX_SEED}], got {args.seed}")
    if args.command == "cv":
        selection.cross_validate(cfg, args.folds, out=args.out, seed=args.seed,
                                 metric=args.metric)
        return 0
    settings = _sweep_settings(args, cfg, selection)
    selection.sweep(cfg, settings, metric=args.metric, mode=args.mode, out=args.out)
    return 0


def _sweep_settings(args, cfg, selection) -> list[dict]:
    grid, space = {}, {}
    for option, item in args.dimensions:
        key = item.split("=", 1)[0].strip()
        if key in space:
            raise selection.SelectionError(f"{option} {key}: this key is already swept")
        if option in ("--grid", "--choice"):
            key, values = selection.parse_values(item, option)
            if option == "--grid":
                grid[key] = values
            space[key] = selection.Choice(tuple(values))
        else:
            key, low, high = selection.parse_bounds(item, option)
            dist = selection.Uniform if option == "--uniform" else selection.LogUniform
            space[key] = dist(low, high)
    if args.random is None:
        if len(space) > len(grid):
            raise selection.SelectionError("--choice, --uniform and --loguniform need --random N")
        if not grid:
            raise selection.SelectionError("nothing to sweep: give --grid KEY=V1,V2 (or --random N "
                                           "with --choice/--uniform/--loguniform)")
        return selection.grid_settings(grid)
    seed = cfg["seed"] if args.seed is None else args.seed
    return selection.random_settings(space, args.random, seed=seed)


def _summary(cfg) -> str:
    from fnn.layers.spec import from_spec
    from fnn.summary import summary

    return str(summary(from_spec(cfg["model"]), _input_shape(cfg)))


def _input_shape(cfg) -> tuple[int, ...]:
    d = cfg["data"]
    if d["name"] in ("mnist", "fashion_mnist"):
        return (-1, 784) if d["flatten"] else ((-1, 28, 28, 1) if d["channels"] else (-1, 28, 28))
    from fnn.run import load_data
    return (-1, *load_data(cfg)["train"]["x"].shape[1:])


if __name__ == "__main__":
    sys.exit(main())
