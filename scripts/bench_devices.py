"""Step time of data-parallel training on 1, 2, 4, 8 devices, in pmap and mesh mode.

The same global batch (default 256) of the MNIST MLP (784-800-800-10, ReLU, Adam) is split
over ``k`` devices with :class:`fnn.train.parallel.DataParallel`; each configuration is compiled,
warmed up, then timed over several rounds (median), alternating configurations so a busy
machine slows them alike. The table gives milliseconds per step, examples per second and the
speed-up over one device in the same mode.

    python scripts/bench_devices.py                       # CPU: 8 simulated devices
    python scripts/bench_devices.py --devices 1,2,4,8 --batch 1024 --modes mesh
    python scripts/bench_devices.py --model cnn           # the MNIST CNN with batch norm

On CPU the script re-runs itself with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(the flag must be set before JAX starts). Those devices share the same cores, so on CPU the
table only shows that the collectives work and what they cost; speed-ups need real devices
(GPUs or TPUs), where the script uses the devices it finds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

FLAG = "--xla_force_host_platform_device_count"


def _ensure_devices(count: int) -> None:
    """Re-run this script with ``count`` simulated CPU devices when no accelerator is present."""
    if FLAG in os.environ.get("XLA_FLAGS", "") or os.environ.get("FNN_BENCH_CHILD"):
        return
    probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                           capture_output=True, text=True)
    if probe.stdout.strip() != "cpu":
        return
    env = {**os.environ, "FNN_BENCH_CHILD": "1",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FLAG}={count}".strip()}
    sys.exit(subprocess.run([sys.executable, *sys.argv], env=env).returncode)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4,8", help="device counts, comma-separated")
    p.add_argument("--modes", default="pmap,mesh", help="pmap, mesh or both")
    p.add_argument("--batch", type=int, default=256, help="global batch size")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--steps", type=int, default=20, help="steps per timing round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    counts = [int(c) for c in args.devices.split(",")]
    _ensure_devices(max(counts))

    import jax
    import numpy as np
    import optax

    import fnn
    from fnn.losses import softmax_cross_entropy
    from fnn.train.parallel import DataParallel
    from fnn.train import init_train_state, train_step_fn

    available = jax.local_device_count()
    counts = [c for c in counts if c <= available]
    if args.model == "mlp":
        net = fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(800), fnn.Relu, fnn.Dense(10))
        shape = (784,)
    else:
        net = fnn.serial(fnn.Conv2D(32, 3, use_bias=False), fnn.BatchNorm(), fnn.Relu,
                         fnn.MaxPool2D(2), fnn.Conv2D(64, 3, use_bias=False), fnn.BatchNorm(),
                         fnn.Relu, fnn.MaxPool2D(2), fnn.Flatten(), fnn.Dense(128), fnn.Relu,
                         fnn.Dense(10))
        shape = (28, 28, 1)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(args.batch, *shape)).astype(np.float32),
             "y": rng.integers(0, 10, args.batch).astype(np.int32)}
    opt = optax.adam(1e-3)

    runs = {}
    for mode in args.modes.split(","):
        for k in counts:
            dp = DataParallel(mode, devices=k)
            if args.batch % k:
                print(f"skip {mode} x{k}: batch {args.batch} does not split over {k} devices")
                continue
            step = dp.compile_step(train_step_fn(dp.prepare_net(net), softmax_cross_entropy,
                                                 opt, axis_name=dp.axis_name))
            _, state = init_train_state(net, opt, (-1, *shape), jax.random.key(0))
            state, on_device = dp.replicate(state), dp.put_batch(batch)
            for _ in range(2):  # compile and warm up
                state, metrics = step(state, on_device)
            jax.block_until_ready(state)
            runs[(mode, k)] = {"step": step, "state": state, "batch": on_device, "times": []}

    for _ in range(args.rounds):  # alternate configurations each round
        for run in runs.values():
            start = time.perf_counter()
            state = run["state"]
            for _ in range(args.steps):
                state, metrics = run["step"](state, run["batch"])
            jax.block_until_ready(state)
            run["state"] = state
            run["times"].append((time.perf_counter() - start) / args.steps)

    device = jax.devices()[0]
    print(f"{args.model} on {device.platform} ({device.device_kind}), global batch {args.batch}, "
          f"median of {args.rounds} rounds of {args.steps} steps")
    print(f"{'mode':<6} {'devices':>7} {'per device':>10} {'ms/step':>9} {'examples/s':>11} "
          f"{'speed-up':>9}")
    for (mode, k), run in runs.items():
        t = statistics.median(run["times"])
        base = statistics.median(runs[(mode, counts[0])]["times"]) if (mode, counts[0]) in runs \
            else t
        print(f"{mode:<6} {k:>7} {args.batch // k:>10} {1e3 * t:>9.2f} {args.batch / t:>11,.0f} "
              f"{base / t:>8.2f}x")


if __name__ == "__main__":
    main()
