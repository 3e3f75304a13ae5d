"""Very deep vanilla tanh CNNs: build, init, compile and step times, program size, memory.

For each depth, the network of scripts/signal_propagation.py (strided convs to 7x7, ``depth``
repeated 3x3 conv + tanh, global average pooling, dense) with delta-orthogonal critical
init, and an Adam train step on a batch of 64 MNIST-shaped inputs:

* build: constructing the layer (Python); init: ``net.init`` (all params, eager);
* trace / compile: ``jit(step).lower`` and ``.compile()``; HLO: size of the lowered text;
* step: median wall time of a compiled step (after one warm-up), 5 repeats;
* peak RSS of the process so far (``resource.getrusage``), which is cumulative over depths;
* ``--grad-norms``: the norm of the loss gradient with respect to the first conv kernel (the
  input end of the network) at initialisation, on the same batch, for the critical
  (delta-orthogonal) network and for its Glorot-uniform twin (``critical / glorot``).

``--unrolled`` also measures the same network built with ``serial`` (no scan) for comparison.
Timings on a shared 2-core CPU are noisy; repeat and take medians.

Usage:
    python scripts/bench_deep.py --depths 50 200 1000 --unrolled --grad-norms
    python scripts/bench_deep.py --depths 10000
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fnn  # noqa: E402
from signal_propagation import vanilla_tanh_cnn  # noqa: E402


def unrolled_tanh_cnn(depth, w_init, *, channels=16, sigma_b2=1e-4, stem_init=None):
    """``vanilla_tanh_cnn`` with ``serial`` in place of ``repeat`` (the same function)."""
    b_init = {"normal": {"stddev": math.sqrt(sigma_b2)}}
    conv = lambda init=w_init, **kw: fnn.Conv2D(channels, 3, w_init=init, b_init=b_init, **kw)
    stem = w_init if stem_init is None else stem_init
    body = [layer for _ in range(depth) for layer in (conv(), fnn.Tanh)]
    return fnn.serial(conv(stem, strides=2), fnn.Tanh, conv(stem, strides=2), fnn.Tanh, *body,
                      fnn.GlobalAvgPool(), fnn.Dense(10))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def first_conv_grad_norm(net, batch) -> float:
    """Norm of the loss gradient with respect to the first conv kernel of ``net`` at init."""
    _, params, state = net.init(jax.random.key(0), (-1, 28, 28, 1))

    def loss(p):
        out, _ = net.apply(p, state, batch["x"], train=True)
        return fnn.losses.softmax_cross_entropy(out, batch["y"]).mean()

    grads = jax.jit(jax.grad(loss))(params)
    return float(jnp.linalg.norm(grads["conv2d_0"]["w"]))


def measure(name, build, batch, repeats=5, verbose=False, extra=""):
    say = (lambda *a: print(f"  {name}:", *a, file=sys.stderr, flush=True)) if verbose else \
        (lambda *a: None)
    t0 = time.perf_counter()
    net = build()
    t1 = time.perf_counter()
    say(f"built in {t1 - t0:.2f} s")
    opt = optax.adam(1e-3)
    _, ts = fnn.train.init_train_state(net, opt, (-1, 28, 28, 1), jax.random.key(0))
    jax.block_until_ready(ts)
    t2 = time.perf_counter()
    say(f"initialised in {t2 - t1:.2f} s, peak RSS {peak_rss_mb():.0f} MB")
    step = jax.jit(fnn.train.train_step_fn(net, fnn.losses.softmax_cross_entropy, opt))
    lowered = step.lower(ts, batch)
    t3 = time.perf_counter()
    compiled = lowered.compile()
    t4 = time.perf_counter()
    hlo_mb = len(lowered.as_text()) / 1e6
    say(f"traced in {t3 - t2:.2f} s, compiled in {t4 - t3:.2f} s, HLO {hlo_mb:.2f} MB")
    s = time.perf_counter()
    ts, m = compiled(ts, batch)
    jax.block_until_ready(ts)
    say(f"first step {time.perf_counter() - s:.2f} s, peak RSS {peak_rss_mb():.0f} MB")
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        ts, m = compiled(ts, batch)
        jax.block_until_ready(ts)
        times.append(time.perf_counter() - s)
    row = (f"| {name} | {t1 - t0:.2f} s | {t2 - t1:.2f} s | {t3 - t2:.2f} + {t4 - t3:.2f} s | "
           f"{hlo_mb:.2f} MB | {1000 * statistics.median(times):.0f} ms | {peak_rss_mb():.0f} MB |"
           + (f" {extra} |" if extra else ""))
    print(row, flush=True)
    assert np.isfinite(float(m["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--unrolled", action="store_true")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--remat", action="store_true", help="repeat(..., remat=True)")
    parser.add_argument("--verbose", action="store_true", help="each phase as it ends (stderr)")
    parser.add_argument("--grad-norms", action="store_true",
                        help="first conv's gradient norm at init, critical / Glorot")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batch = {"x": jnp.asarray(rng.normal(size=(args.batch, 28, 28, 1)), jnp.float32),
             "y": jnp.asarray(rng.integers(0, 10, args.batch))}
    gain = round(fnn.meanfield.critical_point("tanh", 1e-4).gain, 4)
    w = fnn.initializers.delta_orthogonal(gain=gain)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {args.batch}")
    grad_column = " first conv grad norm at init, critical / Glorot |" if args.grad_norms else ""
    print("| network | build | init | trace + compile | HLO | step | peak RSS |" + grad_column)
    print("|---|---|---|---|---|---|---|" + ("---|" if args.grad_norms else ""))
    for depth in args.depths:
        remat = ", remat" if args.remat else ""
        norms = ""
        if args.grad_norms:
            critical = first_conv_grad_norm(vanilla_tanh_cnn(depth, w), batch)
            glorot = first_conv_grad_norm(
                vanilla_tanh_cnn(depth, fnn.initializers.glorot_uniform), batch)
            norms = f"{critical:.2g} / {glorot:.2g}"
        measure(f"repeat{remat}, depth {depth}",
                lambda: vanilla_tanh_cnn(depth, w, remat=args.remat), batch, args.repeats,
                args.verbose, norms)
        if args.unrolled:
            measure(f"serial, depth {depth}", lambda: unrolled_tanh_cnn(depth, w), batch,
                    args.repeats, args.verbose)


if __name__ == "__main__":
    main()
