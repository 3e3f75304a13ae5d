"""Signal propagation at initialisation: gradient norm per layer of a very deep vanilla tanh CNN.

The network (the one of configs/deep_tanh_*.yaml): two stride-2 3x3 convs take 28x28 inputs
to 7x7, then ``depth`` repeated 3x3 convs (``fnn.repeat``), each followed by tanh, global
average pooling and a dense softmax layer; no batch norm, no residual connections. Biases are
drawn with variance ``sigma_b2``. For each initialisation the script computes, on one batch,
the norm of the loss gradient with respect to each conv kernel (``fnn.diagnostics``), and draws
them against depth with the mean-field prediction: squared gradient norms shrink by ``chi_1``
per layer going back from the output (``fnn.meanfield``).

* ``glorot``: Glorot-uniform kernels (sigma_w^2 = 1 for 16 -> 16 channels): ordered phase;
* ``orthogonal``: orthogonal kernels with gain 1 (sigma_w^2 = 1): ordered phase, off-critical;
* ``critical``: delta-orthogonal kernels with gain sqrt(sigma_w^2*), sigma_w^2* the critical
  point of tanh at ``sigma_b2`` (chi_1 = 1).

Usage (about a minute per initialisation at depth 1000 on 2 CPU cores):

    python scripts/signal_propagation.py --depth 1000 --out docs/signal_propagation.png

Inputs are MNIST training images when ``FNN_DATA_DIR`` holds MNIST, otherwise Gaussian noise.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn


def vanilla_tanh_cnn(depth: int, w_init, *, channels: int = 16, sigma_b2: float = 1e-4,
                     classes: int = 10, remat: bool = False, stem_init=None) -> fnn.Layer:
    """Strided convs to 7x7, ``depth`` repeated 3x3 conv + tanh, global average pool, dense.

    The two strided convs get ``stem_init`` (default ``w_init``); a delta-orthogonal stride-2
    conv sees only every other pixel, so the configs give the stem full orthogonal kernels.
    """
    b_init = {"normal": {"stddev": math.sqrt(sigma_b2)}} if sigma_b2 > 0 else "zeros"
    conv = lambda init=w_init, **kw: fnn.Conv2D(channels, 3, w_init=init, b_init=b_init, **kw)
    stem = w_init if stem_init is None else stem_init
    return fnn.serial(
        conv(stem, strides=2), fnn.Tanh, conv(stem, strides=2), fnn.Tanh,
        fnn.repeat(fnn.serial(conv(), fnn.Tanh), depth, remat=remat),
        fnn.GlobalAvgPool(), fnn.Dense(classes))


def inits(sigma_b2: float) -> dict[str, object]:
    gain = fnn.meanfield.critical_point("tanh", sigma_b2).gain
    return {
        "glorot": fnn.initializers.glorot_uniform,
        "orthogonal": fnn.initializers.orthogonal(gain=1.0),
        "critical": fnn.initializers.delta_orthogonal(gain=round(gain, 4)),
    }


def batch(size: int) -> tuple[jax.Array, jax.Array]:
    data_dir = os.environ.get("FNN_DATA_DIR")
    if data_dir and os.path.exists(os.path.join(data_dir, "train-images-idx3-ubyte.gz")):
        from fnn.data.idx import read_idx
        x = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))[:size]
        y = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))[:size]
        x = (x.astype(np.float32) / 255.0 - 0.1307) / 0.3081
        return jnp.asarray(x[..., None]), jnp.asarray(y.astype(np.int32))
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(size, 28, 28, 1)), jnp.float32),
            jnp.asarray(rng.integers(0, 10, size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sigma-b2", type=float, default=1e-4)
    parser.add_argument("--out", default="docs/signal_propagation.png")
    args = parser.parse_args()

    x, y = batch(args.batch)
    loss = fnn.losses.softmax_cross_entropy
    profiles = {}
    print(f"depth {args.depth}, {args.channels} channels, batch {args.batch}, "
          f"sigma_b^2 {args.sigma_b2}")
    for name, w_init in inits(args.sigma_b2).items():
        start = time.perf_counter()
        net = vanilla_tanh_cnn(args.depth, w_init, channels=args.channels, sigma_b2=args.sigma_b2)
        _, params, state = net.init(jax.random.key(0), (-1, 28, 28, 1))
        flow = fnn.diagnostics.gradient_flow(net, params, state, (x, y), loss)
        grads = flow.profile("grad_norm")[:-1]          # the conv kernels; the dense head last
        profiles[name] = grads
        sat = flow["repeat_0/tanh_0"].stats["saturated_fraction"]
        print(f"{name:>10} ({w_init!r}): grad norm at conv 1 {grads[0]:.3g}, conv 10 "
              f"{grads[min(9, len(grads) - 1)]:.3g}, last conv {grads[-1]:.3g}; "
              f"saturated tanh units (median over depth) {np.median(sat):.3g}; "
              f"{time.perf_counter() - start:.1f}s")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fnn.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = {"glorot": "tab:red", "orthogonal": "tab:orange", "critical": "tab:blue"}
    labels = {"glorot": "Glorot uniform", "orthogonal": "orthogonal, gain 1 (off-critical)",
              "critical": None}
    sb2 = args.sigma_b2
    for name, grads in profiles.items():
        w = inits(sb2)[name]
        label = labels[name] or f"delta-orthogonal, gain {w.kwargs['gain']} (critical)"
        layers = np.arange(1, len(grads) + 1)
        shown = np.where(grads > 0, grads, np.nan)
        ax.plot(layers, shown, color=colors[name], label=label)
        if name == "critical":
            # mean field: ||g_l||^2 changes by chi_1 per layer away from the output. It describes
            # delta-orthogonal kernels (only the centre tap: no zero-padding at the 7x7 borders);
            # full 3x3 kernels lose signal at the borders, so they decay faster than their chi_1.
            chi = fnn.meanfield.signal_propagation("tanh", w.kwargs["gain"] ** 2, sb2).chi_1
            theory = grads[-1] * chi ** ((layers[-1] - layers) / 2)
            ax.plot(layers, theory, color="black", linestyle=":", linewidth=1,
                    label=f"mean field, chi_1 = {chi:.4f}")
    ax.set_yscale("log")
    ax.set_xlabel("conv layer (input to output)")
    ax.set_ylabel("||dL/dW|| at initialisation")
    ax.set_title(f"{args.depth + 2}-conv vanilla tanh CNN at init, sigma_b^2 = {sb2}\n"
                 f"(missing points: the gradient is exactly 0 in float32)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    print("wrote", save_figure(fig, args.out))


if __name__ == "__main__":
    main()
