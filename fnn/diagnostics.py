"""Gradient-flow diagnostics: per layer (and per copy of a repeated block) gradient and weight
norms, update-to-weight ratios and activation statistics.

:func:`gradient_flow` is the notebook entry point; :class:`Diagnostics` is what a training loop
calls on diagnostic steps (it appends to ``diagnostics.jsonl`` and redraws ``gradflow.png``
now and then).
Both run one extra compiled forward and backward pass on the given batch, separate from the
train step, so a step without diagnostics runs exactly the code it ran before.

Per layer, keyed by its path in the params (``"repeat_0/conv2d_0"``):

* ``grad_norm``, ``weight_norm``: L2 norms over the layer's weights (leaves named ``w`` or
  ``w_*``, as :func:`fnn.regularizers.is_weight`; biases are left out);
* ``update_ratio``: ``||update|| / ||w||`` for the optimizer's update (``updates=``) or for
  plain SGD at ``lr=`` (``lr * ||grad|| / ||w||``); around 1e-3 is the usual healthy value;
* ``rms``: root mean square of the layer's output;
* ``dead_fraction`` (``Relu``): the fraction of units (features / channels) that are zero for
  every example and position of the batch;
* ``saturated_fraction`` (``Tanh``, ``Sigmoid``): the fraction of outputs within 1% of the ends
  of the range (``|y| > 0.99`` for tanh, ``|2y - 1| > 0.99`` for the sigmoid).

Layers inside ``fnn.repeat`` get one value per copy (arrays of shape ``(copies,)``), summarised
in the JSON records as quantiles over depth (``q0, q25, q50, q75, q100``). The network is walked
through ``serial`` and ``Repeat``; any other combinator counts as one layer (its own weights,
its output statistics).

Example:
    >>> block = fnn.serial(fnn.Dense(8), fnn.Tanh)
    >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.repeat(block, 3), fnn.Dense(3))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, size=16)
    >>> flow = fnn.diagnostics.gradient_flow(net, params, state, {"x": x, "y": y},
    ...                                      fnn.losses.softmax_cross_entropy, lr=1e-3)
    >>> flow.profile("grad_norm").shape    # gradient norm of every weight layer, input to output
    (5,)
    >>> print(flow)                        # a table, repeated layers as quantiles
    layer             kind   copies  grad_norm  weight_norm  update_ratio  activations
    ---...
    dense_0           Dense ...
    relu_0            Relu ...dead ...
    repeat_0/dense_0  Dense  3 ...[...]...
    repeat_0/tanh_0   Tanh   3 ...saturated ...
    dense_1           Dense ...
    loss ...
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fnn.core import Layer, apply_child, child_keys, default_key, split_keys, split_rng
from fnn.logs import append_record, trim_records
from fnn.regularizers import is_weight

__all__ = ["gradient_flow", "make_gradient_flow", "GradientFlow", "LayerFlow", "Diagnostics",
           "plot_gradient_flow", "QUANTILES"]

QUANTILES = (0, 25, 50, 75, 100)
_STATS = ("grad_norm", "weight_norm", "update_ratio", "rms", "dead_fraction", "saturated_fraction")


# --------------------------------------------------------------------------- walking the network

@dataclasses.dataclass(frozen=True)
class _Site:
    """A layer met by the walk: its params path, kind, copies (one entry per enclosing Repeat)
    and its place in depth order."""

    path: tuple[str, ...]
    kind: str
    copies: tuple[int, ...]
    order: int
    group: int   # order of the outermost enclosing Repeat, or ``order`` itself


def _repeat_times(layer: Layer) -> int:
    return int(layer.record.args["times"])


def _activation_stats(kind: str, y: jax.Array) -> dict[str, jax.Array]:
    y = jnp.asarray(y, jnp.float32)
    stats = {"rms": jnp.sqrt(jnp.mean(y * y))}
    if kind == "Relu":   # a unit (feature / channel) is dead if zero for the whole batch
        alive = jnp.any(y.reshape(-1, y.shape[-1]) > 0, axis=0)
        stats["dead_fraction"] = jnp.mean(jnp.logical_not(alive).astype(jnp.float32))
    elif kind == "Tanh":
        stats["saturated_fraction"] = jnp.mean((jnp.abs(y) > 0.99).astype(jnp.float32))
    elif kind == "Sigmoid":
        stats["saturated_fraction"] = jnp.mean((jnp.abs(2 * y - 1) > 0.99).astype(jnp.float32))
    return stats


class _Walk:
    """Applies a network layer by layer, collecting output statistics per layer.

    ``serial`` and ``Repeat`` are opened (the same keys, rng splits and scan as their own
    ``apply``); every other layer is applied whole. Sites are recorded at trace time.
    """

    def __init__(self, train: bool):
        self.train = train
        self.sites: dict[tuple[str, ...], _Site] = {}
        self.counter = 0

    def run(self, layer, params, state, x, rng, path, copies, group):
        if layer.kind == "serial":
            stats: dict = {}
            keys = child_keys(layer.children)
            for key, child, r in zip(keys, layer.children, split_rng(rng, len(keys))):
                x, s = self.run(child, params.get(key, {}), state.get(key, {}), x, r,
                                path + (key,), copies, group)
                stats.update(s)
            return x, stats
        if layer.kind == "Repeat":
            child, times = layer.children[0], _repeat_times(layer)
            rngs = None if rng is None else split_keys(rng, times)
            first = self.counter if group is None else group

            def body(carry, per_copy):
                p, s, r = per_copy
                return self.run(child, p, s, carry, r, path, copies + (times,), first)

            one = jax.tree_util.tree_map(lambda a: a[0], (params, state, rngs))
            out = jax.eval_shape(lambda c, pc: child.apply(pc[0], pc[1], c, rng=pc[2],
                                                           train=self.train)[0], x, one)
            x = jax.tree_util.tree_map(lambda a, o: jnp.asarray(a, o.dtype), x, out)
            return lax.scan(body, x, (params, state, rngs), length=times)
        y, _ = apply_child("/".join(path) or default_key(layer), layer, params, state, x,
                           rng=rng, train=self.train)
        order = self.counter
        self.counter += 1
        if path not in self.sites:
            self.sites[path] = _Site(path, layer.kind, copies, order,
                                     order if group is None else group)
        return y, {path: _activation_stats(layer.kind, y) if isinstance(y, jax.Array) else {}}


# --------------------------------------------------------------------------- the result

@dataclasses.dataclass(frozen=True)
class LayerFlow:
    """Diagnostics of one layer; arrays have shape ``copies`` (``()`` outside a Repeat)."""

    path: str
    kind: str
    copies: tuple[int, ...]
    stats: dict[str, np.ndarray]

    def record(self) -> dict[str, Any]:
        """JSON-ready: scalars as floats, per-copy values as quantiles over depth."""
        out: dict[str, Any] = {"layer": self.path, "kind": self.kind}
        if self.copies:
            out["copies"] = int(np.prod(self.copies))
        for name in _STATS:
            if name not in self.stats:
                continue
            v = np.asarray(self.stats[name], np.float64)
            if v.ndim == 0:
                out[name] = _num(v)
            else:
                qs = np.percentile(v.ravel(), QUANTILES)
                out[name] = {f"q{q}": _num(x) for q, x in zip(QUANTILES, qs)}
        return out


def _num(x: Any) -> float | None:
    x = float(x)
    return float(f"{x:.6g}") if math.isfinite(x) else None


@dataclasses.dataclass(frozen=True)
class GradientFlow:
    """What :func:`gradient_flow` returns: one :class:`LayerFlow` per layer, in depth order,
    and the loss on the batch."""

    loss: float
    layers: tuple[LayerFlow, ...]
    depth_keys: tuple[tuple[int, int, int], ...]  # (group, copy, order) sort keys, per layer
    grads: Any = None  # the gradients (host arrays), with make_gradient_flow(keep_grads=True)

    def __getitem__(self, path: str) -> LayerFlow:
        for layer in self.layers:
            if layer.path == path:
                return layer
        raise KeyError(f"no layer {path!r}; layers: {', '.join(l.path for l in self.layers)}")

    def profile(self, stat: str = "grad_norm") -> np.ndarray:
        """``stat`` of every layer that has it, copies expanded, ordered from input to output
        (the copies of a repeated block interleave as the block is applied: copy 0's layers,
        then copy 1's, ...)."""
        items = []
        for layer, (group, _, order) in zip(self.layers, self.depth_keys):
            if stat not in layer.stats:
                continue
            values = np.asarray(layer.stats[stat], np.float64).reshape(-1)
            items += [((group, i, order), v) for i, v in enumerate(values)]
        return np.array([v for _, v in sorted(items, key=lambda kv: kv[0])])

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per layer (see :meth:`LayerFlow.record`)."""
        return [layer.record() for layer in self.layers]

    def __str__(self) -> str:
        head = ("layer", "kind", "copies", "grad_norm", "weight_norm", "update_ratio", "activations")
        rows = [head]
        for r in self.records():
            def cell(name):
                v = r.get(name)
                if isinstance(v, dict):
                    return f"{v['q50']:.3g} [{v['q0']:.2g}..{v['q100']:.2g}]"
                return "" if v is None else f"{v:.3g}"
            act = ""
            for name, label in (("dead_fraction", "dead"), ("saturated_fraction", "saturated")):
                if name in r:
                    act = f"{label} {cell(name)}"
            rows.append((r["layer"], r["kind"], str(r.get("copies", "")), cell("grad_norm"),
                         cell("weight_norm"), cell("update_ratio"), act))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], f"loss {self.loss:.6g}"])


# --------------------------------------------------------------------------- computing it

def _batch_xy(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        return batch["x"], batch["y"]
    x, y = batch
    return x, y


def _scalar_loss(loss: Callable, outputs: Any, targets: Any) -> jax.Array:
    value = loss(outputs, targets)
    return jnp.mean(value)


def _layer_norms(tree: Any, sites: Mapping[tuple[str, ...], _Site]) -> dict[tuple[str, ...], jax.Array]:
    """Per layer path, the L2 norm over its weight leaves (per copy for stacked ones)."""
    squares: dict[tuple[str, ...], jax.Array] = {}
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        path = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)
        if not is_weight(path):
            continue
        layer = path[:-1]
        copies = sites[layer].copies if layer in sites else ()
        axes = tuple(range(len(copies), leaf.ndim))
        sq = jnp.sum(jnp.square(leaf.astype(jnp.float32)), axis=axes)
        squares[layer] = squares[layer] + sq if layer in squares else sq
    return {k: jnp.sqrt(v) for k, v in squares.items()}


def make_gradient_flow(net: Layer, loss: Callable[..., jax.Array], *, train: bool = False,
                       optimizer: Any = None, jit: bool = True,
                       keep_grads: bool = False) -> Callable[..., GradientFlow]:
    """A reusable ``flow(params, state, batch, *, rng=None, updates=None, lr=None, opt_state=None)``.

    Compiled once per batch shape (``jit=True``); :func:`gradient_flow` is the one-shot form.
    With an optax ``optimizer``, ``flow(..., opt_state=s)`` takes ``update_ratio`` from the
    update the optimizer would make from ``s`` with these gradients (nothing is applied).
    ``keep_grads``: the result's ``grads`` holds the gradients too (for histograms).
    """

    def compute(params, state, batch, rng, updates, lr, opt_state):
        x, y = _batch_xy(batch)
        walk = _Walk(train)

        def objective(p):
            outputs, _ = net.apply(p, state, x, rng=rng, train=train)
            return _scalar_loss(loss, outputs, y)

        value, grads = jax.value_and_grad(objective)(params)
        if opt_state is not None:
            updates, _ = optimizer.update(grads, opt_state, params)
        _, acts = walk.run(net, params, state, x, rng, (), (), None)
        g_norm = _layer_norms(grads, walk.sites)
        w_norm = _layer_norms(params, walk.sites)
        stats: dict[tuple[str, ...], dict[str, jax.Array]] = {p: dict(s) for p, s in acts.items()}
        for path in set(g_norm) | set(w_norm):
            entry = stats.setdefault(path, {})
            entry["grad_norm"], entry["weight_norm"] = g_norm[path], w_norm[path]
        if updates is not None:
            u_norm = _layer_norms(updates, walk.sites)
            for path, u in u_norm.items():
                stats[path]["update_ratio"] = u / jnp.maximum(w_norm[path], 1e-30)
        elif lr is not None:
            for path in g_norm:
                stats[path]["update_ratio"] = lr * g_norm[path] / jnp.maximum(w_norm[path], 1e-30)
        compute.sites = walk.sites   # static: read after tracing
        return value, stats, (grads if keep_grads else None)

    compiled = jax.jit(compute) if jit else compute

    def flow(params, state, batch, *, rng=None, updates=None, lr=None,
             opt_state=None) -> GradientFlow:
        if opt_state is not None and optimizer is None:
            raise ValueError("gradient flow: opt_state= needs make_gradient_flow(..., optimizer=)")
        value, stats, grads = compiled(params, state, batch, rng, updates, lr, opt_state)
        stats = jax.device_get(stats)
        sites = compute.sites
        order = sorted(stats, key=lambda p: (sites[p].group, sites[p].order) if p in sites
                       else (math.inf, 0))
        layers, keys = [], []
        for path in order:
            site = sites.get(path, _Site(path, "?", (), 10 ** 9, 10 ** 9))
            layers.append(LayerFlow("/".join(path) or default_key(net), site.kind, site.copies,
                                    {k: np.asarray(v) for k, v in stats[path].items()}))
            keys.append((site.group, 0, site.order))
        return GradientFlow(float(value), tuple(layers), tuple(keys),
                            None if grads is None else jax.device_get(grads))

    return flow


def gradient_flow(net: Layer, params: Any, state: Any, batch: Any, loss: Callable[..., jax.Array],
                  *, rng: jax.Array | None = None, train: bool = False, updates: Any = None,
                  lr: float | None = None) -> GradientFlow:
    """Gradient-flow diagnostics of ``net`` on one ``batch`` (see the module docstring).

    Args:
        net, params, state: the network and its variables.
        batch: ``{"x": inputs, "y": targets}`` or ``(inputs, targets)``.
        loss: ``loss(outputs, targets) -> scalar`` (fnn.losses reduce to the mean by default).
        rng, train: as for ``net.apply`` (``train=True`` needs ``rng`` if the net has dropout).
        updates: an optimizer update (params-shaped) for ``update_ratio``; or
        lr: a learning rate, for the plain-SGD update ``lr * grad``.

    Returns:
        A :class:`GradientFlow`: ``flow["dense_0"].stats["grad_norm"]``, ``flow.profile()``,
        ``flow.records()`` (JSON), ``print(flow)``.

    Example:
        >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(2))
        >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
        >>> flow = gradient_flow(net, params, state, (jnp.ones((16, 4)), jnp.zeros(16, int)),
        ...                      fnn.losses.softmax_cross_entropy)
        >>> sorted(flow["relu_0"].stats)
        ['dead_fraction', 'rms']
    """
    return make_gradient_flow(net, loss, train=train)(params, state, batch, rng=rng,
                                                      updates=updates, lr=lr)


# --------------------------------------------------------------------------- in a training run

def plot_gradient_flow(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Draw ``gradflow.png``: gradient norm against depth, one line per logged record."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fnn.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    cmap = plt.get_cmap("viridis")
    for i, r in enumerate(records):
        values = np.asarray(r["grad_norm_by_depth"], np.float64)
        ax.plot(np.arange(1, len(values) + 1), values, color=cmap(i / max(len(records) - 1, 1)),
                label=f"step {r['step']}" if i in (0, len(records) - 1) else None)
    positive = any(np.any(np.asarray(r["grad_norm_by_depth"], np.float64) > 0) for r in records)
    ax.set_yscale("log" if positive else "linear")  # all-zero gradients (every unit dead)
    ax.set_xlabel("weight layer (input to output)")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient flow")
    if records:
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


class Diagnostics:
    """Gradient-flow diagnostics inside a training run, every ``every`` steps.

    The loop calls :meth:`due` with the step count and, when it says so, :meth:`record` with the
    train state and a training batch; ``record`` computes the diagnostics of that state (the
    update ratio from the optimizer's actual next update) and appends one line to
    ``run_dir/diagnostics.jsonl`` (:func:`fnn.logs.append_record`: a record costs the same at
    the millionth step as at the first). ``gradflow.png`` is redrawn at most once per epoch and
    at most every ``plot_seconds`` (the first record draws it); :meth:`finish` draws the last
    records at the end of the run. A resumed run passes ``start_step``: the records of steps up
    to it are kept, later ones (logged after the checkpoint it resumes from) and a line torn by
    a kill are cut (:func:`fnn.logs.trim_records`), so no step appears twice.

    Example:
        >>> import os, tempfile
        >>> from fnn.train.state import init_train_state
        >>> net = fnn.serial(fnn.Dense(8), fnn.Relu, fnn.Dense(3))
        >>> loss, optimizer = fnn.losses.softmax_cross_entropy, optax.adam(1e-3)
        >>> _, train_state = init_train_state(net, optimizer, (-1, 4), jax.random.key(0))
        >>> rng = np.random.default_rng(0)
        >>> batch = {"x": rng.normal(size=(16, 4)).astype(np.float32),
        ...          "y": rng.integers(0, 3, size=16)}
        >>> run_dir = tempfile.mkdtemp()
        >>> diag = Diagnostics(net, loss, optimizer, every=100, run_dir=run_dir)
        >>> for step in (99, 100, 101):
        ...     if diag.due(step):
        ...         record = diag.record(train_state, batch, step=step, epoch=1)
        >>> diag.finish()
        >>> record["step"], sorted(record)
        (100, ['epoch', 'grad_norm_by_depth', 'layers', 'loss', 'step'])
        >>> sorted(os.listdir(run_dir))
        ['diagnostics.jsonl', 'gradflow.png']
    """

    def __init__(self, net: Layer, loss: Callable[..., jax.Array], optimizer: Any, *,
                 every: int, run_dir: str | os.PathLike | None, start_step: int = 0,
                 plot_seconds: float = 30.0, keep_grads: bool = False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"training.diagnostics.every must be a positive int, got {every!r}")
        self.every = every
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.flow = make_gradient_flow(net, loss, train=False, optimizer=optimizer,
                                       keep_grads=keep_grads)
        self.last_grads: Any = None  # keep_grads: the gradients of the last record (host)
        self.records: list[dict[str, Any]] = (
            trim_records(self.run_dir / "diagnostics.jsonl", start_step)
            if self.run_dir is not None else [])
        self.plot_seconds = plot_seconds
        self.plotted: tuple[float, Any, int] | None = None  # (time, epoch, records) last drawn

    def due(self, step: int, steps_done: int = 1) -> bool:
        """True when a multiple of ``every`` lies in the ``steps_done`` steps that ended at ``step``
        (``steps_done`` > 1 where the loop runs a whole epoch per call)."""
        return step // self.every > (step - steps_done) // self.every

    def record(self, train_state: Any, batch: Any, *, step: int, epoch: int | None = None
               ) -> dict[str, Any]:
        """Compute the diagnostics of ``train_state`` on ``batch``, append them to
        ``diagnostics.jsonl`` and redraw ``gradflow.png``; returns the JSON record (with
        ``keep_grads``, the gradients are left in :attr:`last_grads`)."""
        x, y = _batch_xy(batch)
        flow = self.flow(train_state.params, train_state.model_state, {"x": x, "y": y},
                         opt_state=train_state.opt_state)
        self.last_grads = flow.grads
        record: dict[str, Any] = {"step": int(step)}
        if epoch is not None:
            record["epoch"] = int(epoch)
        record["loss"] = _num(flow.loss)
        record["layers"] = flow.records()
        record["grad_norm_by_depth"] = [_num(v) for v in flow.profile("grad_norm")]
        self.records.append(record)
        if self.run_dir is not None:
            append_record(self.run_dir / "diagnostics.jsonl", record)
            now = time.monotonic()
            if self.plotted is None or (epoch != self.plotted[1]
                                        and now - self.plotted[0] >= self.plot_seconds):
                self._plot(now, epoch)
        return record

    def finish(self) -> None:
        """Draw ``gradflow.png`` with every record, if some came after the last drawing."""
        if self.run_dir is not None and self.records and (
                self.plotted is None or self.plotted[2] != len(self.records)):
            self._plot(time.monotonic(), self.records[-1].get("epoch"))

    def _plot(self, now: float, epoch: Any) -> None:
        plot_gradient_flow(self.records, self.run_dir / "gradflow.png")
        self.plotted = (now, epoch, len(self.records))
