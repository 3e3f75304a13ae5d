"""The ``fnn`` command: ``fnn train|eval|summary|validate``.

Examples::

    fnn train configs/mnist_mlp.yaml
    fnn train configs/mnist_mlp.yaml optimizer.learning_rate=3e-4 training.epochs=5 --out runs/lr3e-4
    fnn train configs/mnist_mlp.yaml --resume          # continue a stopped run
    fnn eval runs/lr3e-4                                # test metrics of the best checkpoint
    fnn summary configs/mnist_mlp.yaml
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fnn", description="Train and inspect fnn networks from config files.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the run a config describes")
    t.add_argument("config", help="a YAML config file")
    t.add_argument("overrides", nargs="*", help="KEY.PATH=VALUE overrides, e.g. training.epochs=5")
    t.add_argument("--out", help="the run folder (default: output.dir or runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    e = sub.add_parser("eval", help="test metrics of a run's best checkpoint (writes test.json)")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", default="best", choices=("best", "latest"))
    s = sub.add_parser("summary", help="print a config's network: layers, shapes, parameters")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*")
    v = sub.add_parser("validate", help="check a config and print it resolved")
    v.add_argument("config")
    v.add_argument("overrides", nargs="*")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fnn`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    from fnn.config import ConfigError, dump_config, load_config
    from fnn.data.datasets import DatasetNotFoundError
    from fnn.train.checkpoint import CheckpointError
    from fnn.train.loop import TrainingDiverged

    try:
        if args.command == "eval":
            from fnn.run import evaluate_run
            evaluate_run(args.run_dir, checkpoint=args.checkpoint)
            return 0
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":
            print(dump_config(cfg), end="")
        elif args.command == "summary":
            print(_summary(cfg))
        else:
            from fnn.run import train
            train(cfg, args.out, resume=args.resume)
        return 0
    except (ConfigError, DatasetNotFoundError, CheckpointError, TrainingDiverged,
            FileNotFoundError, FileExistsError) as e:
        print(f"fnn {args.command}: error: {e}", file=sys.stderr)
        return 2


def _summary(cfg) -> str:
    from fnn.layers.spec import from_spec
    from fnn.summary import summary

    shape = cfg["data"].get("input_shape") if isinstance(cfg["data"], dict) else None
    return str(summary(from_spec(cfg["model"]), tuple(shape) if shape else _input_shape(cfg)))


def _input_shape(cfg) -> tuple[int, ...]:
    d = cfg["data"]
    if d["name"] in ("mnist", "fashion_mnist"):
        return (-1, 784) if d["flatten"] else ((-1, 28, 28, 1) if d["channels"] else (-1, 28, 28))
    from fnn.run import load_data
    return (-1, *load_data(cfg)["train"]["x"].shape[1:])


if __name__ == "__main__":
    sys.exit(main())
