"""How far the per-step training loss on 8 devices (mesh, pmap) drifts from one device.

Trains a config's network for ``STEPS`` steps on the same global batches (the first epoch's
order) in modes ``none``, ``mesh`` and ``pmap`` in one process, then prints the relative
difference of the step's loss, and of the mean loss so far, at a few steps. Pass config
overrides after the step count (dropout is switched off for you only if you say so).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python scripts/compare_devices_loss.py configs/mnist_cnn.yaml 200 model.11.Dropout=0.0
"""

from __future__ import annotations

import sys

import jax
import numpy as np

from fnn.config import load_config
from fnn.run import build, load_data
from fnn.train import init_train_state, train_step_fn
from fnn.train.loop import batch_order
from fnn.train.parallel import DataParallel


def main() -> None:
    path, steps, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    cfg = load_config(path, overrides)
    exp = build(cfg)
    train = load_data(cfg)["train"]
    n, batch = len(train["x"]), cfg["training"]["batch_size"]
    seed_key = jax.random.key(cfg["seed"])
    order = np.asarray(batch_order(jax.random.fold_in(seed_key, 1), 0, n))
    losses = {}
    for mode in ("none", "mesh", "pmap"):
        dp = DataParallel(mode)
        _, ts = init_train_state(exp.net, exp.optimizer, (-1, *train["x"].shape[1:]),
                                 jax.random.fold_in(seed_key, 0))
        step = dp.compile_step(train_step_fn(dp.prepare_net(exp.net), exp.loss, exp.optimizer,
                                             axis_name=dp.axis_name))
        ts, metrics = dp.replicate(ts), []
        for i in range(steps):
            rows = order[i * batch:(i + 1) * batch]
            ts, m = step(ts, dp.put_batch({k: v[rows] for k, v in train.items()}))
            metrics.append(m)
        losses[mode] = np.array([float(m["loss"]) for m in metrics])
    one = losses["none"]
    print(f"{path} {' '.join(overrides)}: relative difference from one device")
    print(f"{'mode':5s} {'step':>5s} {'step loss':>10s} {'mean so far':>12s}")
    for mode in ("mesh", "pmap"):
        for k in sorted({1, 10, 50, 100, 200, steps} & set(range(1, steps + 1))):
            step_rel = abs(losses[mode][k - 1] - one[k - 1]) / one[k - 1]
            mean_rel = abs(losses[mode][:k].mean() - one[:k].mean()) / one[:k].mean()
            print(f"{mode:5s} {k:5d} {step_rel:10.1e} {mean_rel:12.1e}")


if __name__ == "__main__":
    main()
