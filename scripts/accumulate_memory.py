"""Memory of a train step with gradient accumulation: batch B in K micro-batches vs B/K vs B.

Compiles ``fnn.train.train_step_fn`` (as ``fit`` does, the train state donated) for abstract
shapes only (nothing is run) and reads XLA's ``compiled.memory_analysis()``: the temporary
buffers (activations and their gradients live there) for a batch of B with ``accumulate=K``,
for one micro-batch of B/K, and for B in one piece. The model is the config's (default the MNIST
CNN of ``configs/mnist_cnn.yaml``, 28x28x1 inputs). Deterministic for a given compile.

    python scripts/accumulate_memory.py                      # B = 512 and 1024, K = 4 and 8
    python scripts/accumulate_memory.py --batches 256 --accumulate 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def step_memory(net, loss, optimizer, input_shape: tuple, batch: int, accumulate: int):
    """XLA's memory analysis of the compiled train step for ``batch`` rows of ``input_shape``."""
    import jax
    import jax.numpy as jnp

    from fnn.train import init_train_state, train_step_fn

    state = jax.eval_shape(lambda: init_train_state(net, optimizer, (-1, *input_shape),
                                                    jax.random.key(0))[1])
    rows = {"x": jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32),
            "y": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    step = jax.jit(train_step_fn(net, loss, optimizer, accumulate=accumulate),
                   donate_argnums=(0,))
    return step.lower(state, rows).compile().memory_analysis()


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "mnist_cnn.yaml"))
    p.add_argument("--input-shape", default="28,28,1")
    p.add_argument("--batches", default="512,1024", help="large batches B")
    p.add_argument("--accumulate", default="4,8", help="K for each B")
    args = p.parse_args(argv)
    import jax

    from fnn.config import load_config
    from fnn.run import build

    exp = build(load_config(args.config))
    shape = tuple(int(d) for d in args.input_shape.split(","))
    mib = 2 ** 20
    print(f"{Path(args.config).name}: train step temporaries (XLA memory_analysis, MiB), "
          f"jax {jax.__version__} {jax.default_backend()}")
    print("| batch B | K | micro-batch B/K | temp(B, K) | temp(B/K, 1) | temp(B, 1) | "
          "temp(B, K) / temp(B, 1) |")
    print("|---|---|---|---|---|---|---|")
    for b, k in zip((int(s) for s in args.batches.split(",")),
                    (int(s) for s in args.accumulate.split(","))):
        acc, micro, whole = (step_memory(exp.net, exp.loss, exp.optimizer, shape, rows, kk)
                             .temp_size_in_bytes for rows, kk in ((b, k), (b // k, 1), (b, 1)))
        print(f"| {b} | {k} | {b // k} | {acc / mib:.1f} | {micro / mib:.1f} | "
              f"{whole / mib:.1f} | {acc / whole:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
