"""Do the first steps' losses agree across device counts and parallel modes? (issue 24)

Trains each config for ``--steps`` steps on the same global batches (the first epoch's order,
as ``fit`` draws it) on every ``--devices`` count and ``--modes`` mode of one process of
simulated CPU devices, with dropout, batch norm and augmentation as the config has them, and
prints (``--markdown``) or writes (``--json``) the largest relative difference of a step's loss
from the one-device ``none`` run. The devices are simulated by setting
``--xla_force_host_platform_device_count`` to the largest count before JAX starts.
``--dtype float64`` turns on ``jax_enable_x64`` and trains with float64 params
(``model_dtype.params=float64``), where float rounding is ~1e-16: runs that still part there
differ by more than rounding.

    FNN_DATA_DIR=/work/shared/data/mnist python scripts/device_agreement.py \\
        --devices 1,2,8 --steps 100 --json f32.json configs/mnist_cnn.yaml \\
        configs/mnist_mlp_augment.yaml
    ... the same with --dtype float64 --json f64.json
    python scripts/device_agreement.py --table f32.json --table f64.json   # one table

The table gives, for each run, the relative difference of its loss from the one-device
``none`` run at a few steps, the largest over all steps, and the first step where it exceeds
1e-5 (``--rtol``).

A config may carry its own overrides after a colon, e.g.
``configs/mnist_cnn.yaml:model.0.Conv2D.use_bias=false,model.4.Conv2D.use_bias=false``.
``--data random`` replaces the training images by seeded random ones of the same shape (for
tests and machines without MNIST); ``--examples`` keeps the first N training examples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*",
                   help="config files, each optionally with overrides: PATH:KEY=VALUE,KEY=VALUE")
    p.add_argument("--devices", default="1,2,8", help="device counts, comma-separated")
    p.add_argument("--modes", default="none,mesh,pmap,fsdp", help="modes, comma-separated")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="float64: jax_enable_x64 and model_dtype.params=float64")
    p.add_argument("--rtol", type=float, default=1e-5, help="the agreement asked for")
    p.add_argument("--batch-size", type=int, default=None, help="instead of the config's")
    p.add_argument("--examples", type=int, default=None, help="first N training examples")
    p.add_argument("--data", choices=("config", "random"), default="config")
    p.add_argument("--json", type=Path, default=None, help="write the losses here")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--table", type=Path, action="append", default=[],
                   help="only print the table of earlier --json files (repeatable)")
    return p.parse_args(argv)


def _losses(cfg: dict, train: dict, dp, steps: int) -> list[float]:
    import jax
    import numpy as np

    from fnn.run import build
    from fnn.train import init_train_state, train_step_fn
    from fnn.train.loop import batch_order

    exp = build(cfg)
    batch = cfg["training"]["batch_size"]
    seed_key = jax.random.key(cfg["seed"])
    order = np.asarray(batch_order(jax.random.fold_in(seed_key, 1), 0, len(train["x"])))
    _, ts = init_train_state(exp.net, exp.optimizer, (-1, *train["x"].shape[1:]),
                             jax.random.fold_in(seed_key, 0))
    step = dp.compile_step(train_step_fn(dp.prepare_net(exp.net), exp.loss, exp.optimizer,
                                         augment=exp.augment, axis_name=dp.axis_name))
    ts, losses = dp.place(ts), []
    for i in range(steps):
        rows = order[i * batch:(i + 1) * batch]
        ts, m = step(ts, dp.put_batch({k: v[rows] for k, v in train.items()}))
        losses.append(float(m["loss"]))
    return losses


def _train_data(cfg: dict, how: str, examples: int | None) -> dict:
    import numpy as np

    from fnn.run import load_data

    train = load_data(cfg)["train"]
    train = {k: v[:examples] for k, v in train.items()} if examples else train
    if how == "random":
        rng = np.random.default_rng(0)
        train = {"x": rng.random(train["x"].shape).astype(np.float32), "y": train["y"]}
    if cfg["model_dtype"]["params"] == "float64":  # nothing before the network rounds to f32
        train = {**train, "x": np.asarray(train["x"], np.float64)}
    return train


def main(argv: list[str]) -> None:
    args = _args(argv)
    if args.table:
        report = {}
        for table in args.table:
            report.update(json.loads(table.read_text()))
        print(_table(report, args.rtol))
        return
    counts = [int(d) for d in args.devices.split(",")]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(counts)}")
    if args.dtype == "float64":
        os.environ["JAX_ENABLE_X64"] = "1"
    from fnn.config import load_config
    from fnn.train.parallel import DataParallel

    report: dict[str, dict[str, list[float]]] = {}
    for spec in args.configs:
        path, _, own = spec.partition(":")
        overrides = ([f"training.batch_size={args.batch_size}"] if args.batch_size else [])
        overrides += ["model_dtype.params=float64"] if args.dtype == "float64" else []
        cfg = load_config(path, overrides + [o for o in own.split(",") if o])
        train = _train_data(cfg, args.data, args.examples)
        runs: dict[str, list[float]] = {}
        for n in counts:
            for mode in args.modes.split(","):
                if mode == "none" and n != 1:
                    continue
                runs[f"{n} {mode}"] = _losses(cfg, train, DataParallel(mode, n), args.steps)
                print(f"{spec}: {n} devices {mode}: last loss {runs[f'{n} {mode}'][-1]:.6f}",
                      file=sys.stderr, flush=True)
                report[f"{spec} {args.dtype}"] = runs
                if args.json:  # after every run: a long job's finished runs are kept
                    args.json.write_text(json.dumps(report))
    if args.markdown:
        print(_table(report, args.rtol))


def _table(report: dict[str, dict[str, list[float]]], rtol: float) -> str:
    """Relative difference of the loss from one device (mode none) at a few steps, the largest
    over all steps, and the first step where it exceeds ``rtol``."""
    import numpy as np

    steps = min(len(losses) for runs in report.values() for losses in runs.values())
    at = sorted({1, 10, 50, 100, steps} & set(range(1, steps + 1)))
    lines = ["| config | dtype | devices | mode | "
             + " | ".join(f"step {k}" for k in at)
             + f" | max, steps 1-{steps} | first step > {rtol:g} |",
             "|---|---|---|---|" + "---|" * (len(at) + 2)]
    for key, runs in report.items():
        spec, _, dtype = key.rpartition(" ")
        path, _, own = spec.partition(":")
        label = Path(path).name + (" (no conv biases)" if "use_bias=false" in own else
                                   f" ({own})" if own else "")
        one = np.array(runs["1 none"][:steps])
        for name, losses in runs.items():
            n, mode = name.split()
            rel = np.abs(np.array(losses[:steps]) - one) / np.abs(one)
            over = np.flatnonzero(rel > rtol)
            lines.append(f"| {label} | {dtype} | {n} | {mode} | "
                         + " | ".join(f"{rel[k - 1]:.1e}" for k in at)
                         + f" | {rel.max():.1e} | {over[0] + 1 if len(over) else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
