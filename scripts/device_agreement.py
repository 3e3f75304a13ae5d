"""Do the first steps' losses agree across device counts and parallel modes? (issue 24)

Trains each config for ``--steps`` steps on the same global batches (the first epoch's order,
as ``fit`` draws it) on every ``--devices`` count and ``--modes`` mode of one process of
simulated CPU devices, with dropout, batch norm and augmentation as the config has them, and
prints (``--markdown``) or writes (``--json``) the largest relative difference of a step's loss
from the one-device ``none`` run. The devices are simulated by setting
``--xla_force_host_platform_device_count`` to the largest count before JAX starts.

    FNN_DATA_DIR=/work/shared/data/mnist python scripts/device_agreement.py \\
        --devices 1,2,8 --steps 20 configs/mnist_cnn.yaml configs/mnist_mlp_augment.yaml

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
    p.add_argument("--batch-size", type=int, default=None, help="instead of the config's")
    p.add_argument("--examples", type=int, default=None, help="first N training examples")
    p.add_argument("--data", choices=("config", "random"), default="config")
    p.add_argument("--json", type=Path, default=None, help="write the losses here")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--table", type=Path, default=None,
                   help="only print the table of an earlier --json file")
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
    return train


def main(argv: list[str]) -> None:
    args = _args(argv)
    if args.table:
        report = json.loads(args.table.read_text())
        print(_table(report, len(next(iter(next(iter(report.values())).values())))))
        return
    counts = [int(d) for d in args.devices.split(",")]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={max(counts)}")
    from fnn.config import load_config
    from fnn.train.parallel import DataParallel

    report: dict[str, dict[str, list[float]]] = {}
    for spec in args.configs:
        path, _, own = spec.partition(":")
        overrides = ([f"training.batch_size={args.batch_size}"] if args.batch_size else [])
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
        report[spec] = runs
    if args.json:
        args.json.write_text(json.dumps(report))
    if args.markdown:
        print(_table(report, args.steps))


def _table(report: dict[str, dict[str, list[float]]], steps: int) -> str:
    """Relative difference of the loss from one device (mode none) at a few steps."""
    import numpy as np

    at = sorted({1, 2, 5, 10, 20, 50, 100, steps} & set(range(1, steps + 1)))
    lines = ["| config | devices | mode | " + " | ".join(f"step {k}" for k in at) + " |",
             "|---|---|---|" + "---|" * len(at)]
    for spec, runs in report.items():
        path, _, own = spec.partition(":")
        label = Path(path).name + (" (no conv biases)" if "use_bias=false" in own else
                                   f" ({own})" if own else "")
        one = np.array(runs["1 none"])
        for name, losses in runs.items():
            n, mode = name.split()
            rel = np.abs(np.array(losses) - one) / np.abs(one)
            lines.append(f"| {label} | {n} | {mode} | "
                         + " | ".join(f"{rel[k - 1]:.1e}" for k in at) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
