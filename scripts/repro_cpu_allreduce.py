"""Minimal reproduction of XLA's CPU all-reduce deadlock (no fnn): dispatching ahead aborts.

A jitted convolution gradient summed over devices with one ``lax.psum`` (under ``pmap`` or
``shard_map``) on ``--devices`` simulated CPU devices, run for ``--steps`` steps. Each variant
runs ``--runs`` times in a fresh process (``XLA_FLAGS`` must be set before JAX starts) and the
table counts the runs XLA aborted with SIGABRT after "Expected N threads to join the rendezvous,
but only N-1 of them arrived" (exit code -6 in the table, 134 in a shell):

* ``dispatch ahead`` -- the plain loop ``w = step(w, x)``: JAX dispatches asynchronously, so
  the host runs up to 32 steps (XLA's limit of computations in flight per device) ahead;
* ``wait every step`` -- the same loop with ``w.block_until_ready()`` after each step (what
  ``fnn.train.parallel`` does on CPU devices);
* ``PJRT_NPROC=2N`` / ``PJRT_NPROC=1.5N`` -- dispatch ahead with XLA's CPU thread pools enlarged
  (the environment variable is read when the CPU client starts).

Why: XLA's CPU client runs the launches and executions of all devices on one pool of
``max(cores, devices)`` threads. Once a device has 32 computations in flight, launching the
next one holds a pool thread until that device finishes one, and executions hold threads while
they wait in the all-reduce for their partners. With launches holding up to N threads and one
all-reduce needing N, a pool of fewer than 2N threads can end with every thread waiting and the
partner executions queued behind them; XLA aborts after its collective timeout
(``--xla_cpu_collective_call_terminate_timeout_seconds``, 40 s; this script sets 10 s).

    python scripts/repro_cpu_allreduce.py                        # 2 devices, pmap, 3 runs each
    python scripts/repro_cpu_allreduce.py --devices 8 --mode shard_map --runs 2
    python scripts/repro_cpu_allreduce.py --kind matmul          # no convolution: aborts too
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _child(args: argparse.Namespace) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax
    from jax.sharding import Mesh, PartitionSpec as P

    n = jax.device_count()

    def loss(w, x):
        if args.kind == "conv":
            y = lax.conv_general_dilated(x, w, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        else:  # as slow, without a convolution
            y = x.reshape(-1, 28) @ jnp.tile(w.reshape(9, 32), (4, 1))[:28]
            y = y @ jnp.ones((32, 512)) @ jnp.ones((512, 512))
        return jnp.mean(jnp.tanh(y) ** 2)

    def step(w, x):
        return w - 0.1 * lax.psum(jax.grad(loss)(w, x), "d")

    w = jnp.full((3, 3, 1, 32), 0.1, jnp.float32)
    x = np.random.default_rng(0).normal(size=(n * 16, 28, 28, 1)).astype(np.float32)
    if args.mode == "pmap":
        f = jax.pmap(step, axis_name="d", in_axes=(None, 0), out_axes=None)
        x = x.reshape(n, 16, 28, 28, 1)
    else:
        mesh = Mesh(np.array(jax.devices()), ("d",))
        f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("d")), out_specs=P()))
    for i in range(args.steps):
        w = f(w, x)
        if args.wait:
            w.block_until_ready()
        print(f"dispatched step {i + 1}", flush=True)
    print(f"finished {args.steps} steps, sum(w) = {float(w.sum()):.6f}")


def _run(args: argparse.Namespace, *, wait: bool, nproc: int | None) -> tuple[int, str]:
    flags = (f"--xla_force_host_platform_device_count={args.devices} "
             f"--xla_cpu_collective_call_terminate_timeout_seconds={args.timeout} "
             f"--xla_cpu_collective_call_warn_stuck_timeout_seconds={max(1, args.timeout // 2)}")
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(),
           "JAX_PLATFORMS": "cpu"}
    env.pop("PJRT_NPROC", None)
    if nproc is not None:
        env["PJRT_NPROC"] = str(nproc)
    cmd = [sys.executable, __file__, "--child", "--mode", args.mode, "--kind", args.kind,
           "--steps", str(args.steps)] + (["--wait"] if wait else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    steps = [line for line in proc.stdout.splitlines() if line.startswith("dispatched")]
    return proc.returncode, steps[-1].split()[-1] if steps else "0"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=2, help="simulated CPU devices N")
    p.add_argument("--mode", choices=("pmap", "shard_map"), default="pmap")
    p.add_argument("--kind", choices=("conv", "matmul"), default="conv")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--runs", type=int, default=3, help="processes per variant")
    p.add_argument("--timeout", type=int, default=10, help="XLA's collective timeout, seconds")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return
    n = args.devices
    variants = [("dispatch ahead", False, None), ("wait every step", True, None),
                (f"PJRT_NPROC={2 * n} (2N)", False, 2 * n),
                (f"PJRT_NPROC={3 * n // 2} (1.5N)", False, 3 * n // 2)]
    print(f"{args.mode}, {args.kind} gradient + psum, {n} CPU devices, {args.steps} steps, "
          f"{args.runs} runs per variant")
    print(f"{'variant':24s} {'aborted':>8s}  exit codes (step dispatched when it stopped)")
    for name, wait, nproc in variants:
        start = time.perf_counter()
        results = [_run(args, wait=wait, nproc=nproc) for _ in range(args.runs)]
        aborted = sum(rc != 0 for rc, _ in results)
        detail = ", ".join(f"{rc} ({step})" for rc, step in results)
        print(f"{name:24s} {aborted:>4d}/{args.runs:<3d}  {detail}   "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
