"""The figures behind docs/DOCTOR.md's "Healthy runs": for a run folder of ``fnn train`` (its
best checkpoint and its config's data), print

* the validation loss (first 1024 examples) in inference mode with the saved batch-norm running
  statistics, with the statistics recomputed for the same weights (BatchNorm momentum 0 and one
  training-mode pass over 4096 training examples), and with batch statistics (training mode,
  as ``fnn doctor`` compares): a lag of the running statistics shows as the first far above
  the second;
* the dead fraction of every ReLU layer at a fresh init and at the checkpoint, on the
  diagnostics batch (the first 128 training examples) and on 1024 validation examples.

    FNN_DATA_DIR=... python scripts/doctor_healthy_checks.py /tmp/doc_runs/cnn_1epoch
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.diagnostics import gradient_flow
from fnn.layers.spec import from_spec
from fnn.run import build, load_data
from fnn.train import checkpoint as ckpt


def zero_momentum(spec: Any) -> Any:
    """The network spec with every BatchNorm at momentum 0 (its state becomes the batch's)."""
    if spec == "BatchNorm":
        return {"BatchNorm": {"momentum": 0.0}}
    if isinstance(spec, dict):
        if "BatchNorm" in spec:
            return {"BatchNorm": {**(spec["BatchNorm"] or {}), "momentum": 0.0}}
        return {k: zero_momentum(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [zero_momentum(v) for v in spec]
    return spec


def main(run: str) -> None:
    path = f"{run}/checkpoints/best.safetensors"
    meta = ckpt.read_metadata(path)
    net, cfg = from_spec(meta["spec"]), meta["config"]
    data = load_data(cfg, download=False)
    loss = build(cfg).loss
    params, state = ckpt.load_weights(path)
    x, y = np.asarray(data["val"]["x"])[:1024], np.asarray(data["val"]["y"])[:1024]

    def val_loss(s, train=False):
        out = net.apply(params, s, x, train=train, rng=jax.random.key(0) if train else None)[0]
        return float(jnp.mean(loss(out, y)))

    if "BatchNorm" in str(meta["spec"]):
        _, fresh = from_spec(zero_momentum(meta["spec"])).apply(
            params, state, np.asarray(data["train"]["x"])[:4096], train=True,
            rng=jax.random.key(1))
        print(f"val loss: running statistics {val_loss(state):.4f}, recomputed "
              f"{val_loss(fresh):.4f}, batch statistics (training mode) "
              f"{val_loss(state, train=True):.4f}")
    shape = (-1, *np.asarray(data["train"]["x"]).shape[1:])
    _, init_params, init_state = net.init(jax.random.key(0), shape)
    for name, (p, s) in (("fresh init", (init_params, init_state)), ("checkpoint", (params, state))):
        for where, part, n in (("first 128 train", "train", 128), ("1024 val", "val", 1024)):
            batch = {"x": np.asarray(data[part]["x"][:n]), "y": np.asarray(data[part]["y"][:n])}
            dead = {r["layer"]: round(float(r["dead_fraction"]), 3)
                    for r in gradient_flow(net, p, s, batch, loss).records()
                    if "dead_fraction" in r}
            print(f"{name:10s} {where:16s} dead fractions {dead}")


if __name__ == "__main__":
    main(sys.argv[1])
