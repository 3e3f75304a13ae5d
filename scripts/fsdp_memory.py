"""Per-device bytes of params + Adam state: replicated (mesh) vs sharded (fsdp). (issue 24)

Builds an MLP of about ``--millions`` million parameters, initialises its params and Adam
state directly in each mode's layout (``jax.jit`` with the mode's out shardings, so no device
ever holds more than its part), and reads the bytes each device really holds from the live
arrays' ``addressable_shards`` (:func:`fnn.train.sharding.bytes_per_device`). Simulated CPU
devices; each mode in turn, the arrays of the previous one freed.

    python scripts/fsdp_memory.py --devices 8 --millions 100
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--millions", type=float, default=100.0)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--modes", default="fsdp,mesh")
    args = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    import jax
    import optax

    import fnn
    from fnn.train import init_train_state
    from fnn.train.parallel import DataParallel
    from fnn.train.sharding import bytes_per_device

    depth = max(1, round(args.millions * 1e6 / (args.width * args.width)))
    net = fnn.serial(*[layer for _ in range(depth) for layer in (fnn.Dense(args.width), fnn.Relu)],
                     fnn.Dense(10))
    opt = optax.adam(1e-3)
    shapes = jax.eval_shape(lambda: init_train_state(net, opt, (-1, args.width),
                                                     jax.random.key(0))[1])
    count = fnn.num_params(shapes.params)
    print(f"MLP {depth} x Dense({args.width}) + Dense(10): {count / 1e6:.1f} M params, "
          f"Adam; {args.devices} devices")
    print("| mode | params + Adam state per device (MiB, max) | all devices (MiB) |")
    print("|---|---|---|")
    for mode in args.modes.split(","):
        dp = DataParallel(mode, args.devices)
        layout = dp.state_sharding(shapes)
        ts = jax.jit(lambda: init_train_state(net, opt, (-1, args.width), jax.random.key(0))[1],
                     out_shardings=layout)()
        per = bytes_per_device((ts.params, ts.opt_state))
        print(f"| {mode} | {max(per.values()) / 2**20:,.1f} | {sum(per.values()) / 2**20:,.1f} |",
              flush=True)
        del ts


if __name__ == "__main__":
    main(sys.argv[1:])
