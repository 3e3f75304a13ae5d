"""Where a NaN or an Inf first appears in one training step: which layer, forward or backward.

:func:`localize` replays one step of a network eagerly (``jax.disable_jit()``, so ``lax.scan``
runs as a Python loop and every value is concrete) with a check after every layer:

* **forward**: each layer's output is checked when the layer returns; the first layer whose
  output holds a non-finite value while its input did not is the one that made it (an inner
  layer returns before the combinator around it, so the most specific layer is named);
* **backward**: each layer's input, output and params are wrapped in an identity with a custom
  VJP whose backward rule checks the cotangent; in the backward pass the cotangent of a layer's
  output arrives before those of its input and params, so the first layer whose output
  cotangent is finite and whose input or params cotangent is not is the one that made it.

Layers are named by their path in the network, as fnn's errors name them (``block/dense_1``);
a layer inside ``fnn.repeat`` is named by its path (``repeat_0/dense_0``, as its params are
keyed) and the copy index is given as ``copy``. The loss is checked too (``layer="loss"``).

Example:
    >>> @fnn.layer_type("Log")
    ... def Log() -> fnn.Layer:
    ...     return fnn.Layer(lambda rng, shape: (shape, {}, {}),
    ...                      lambda params, state, x, *, rng=None, train=False: (jnp.log(x), state))
    >>> net = fnn.serial(fnn.Dense(4), fnn.serial(fnn.Tanh, Log(), name="block"), fnn.Dense(2))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 3))
    >>> x = np.ones((8, 3), np.float32)
    >>> x[5] = -1.0                          # row 5 gives the log negative inputs
    >>> fault = localize(net, params, state, {"x": x, "y": np.zeros(8, int)},
    ...                  fnn.losses.softmax_cross_entropy)
    >>> fault.layer, fault.kind, fault.direction
    ('block/log_0', 'Log', 'forward')
    >>> 5 in fault.rows
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fnn.core import Layer, watching_apply

__all__ = ["localize", "Fault"]


@dataclasses.dataclass(frozen=True)
class Fault:
    """The first non-finite value of a step.

    Attributes:
        layer: the layer's path in the network (``"block/dense_1"``), ``"loss"`` for the loss,
            ``"input"`` when the batch itself holds NaN/Inf.
        kind: the layer's kind (``"Dense"``), or ``""``.
        direction: ``"forward"`` or ``"backward"``.
        rows: the batch rows (examples) whose values are non-finite, in order.
        copy: the copy index inside ``fnn.repeat``, or ``None``.
        value: ``"nan"``, ``"inf"`` or ``"nan, inf"``: what was found.
        where: in the backward pass, which cotangent turned non-finite (``"input"`` or
            ``"params"``); forward, ``"params"`` when the layer's params were already
            non-finite (an earlier update), else ``""``.
        detail: for an overflow in the loss, the layer with the largest output (where the
            values grew), e.g. ``"largest layer output: dense_2 (max |y| 3.1e+19)"``.
    """

    layer: str
    kind: str
    direction: str
    rows: tuple[int, ...]
    copy: int | None = None
    value: str = "nan"
    where: str = ""
    detail: str = ""

    def describe(self) -> str:
        """One line: ``forward NaN in layer 'block/log_0' (Log), batch rows 5``."""
        what = f"{self.direction} {self.value.replace('nan', 'NaN').replace('inf', 'Inf')}"
        if self.layer in ("loss", "input"):
            place = "in the loss" if self.layer == "loss" else "in the input batch"
        else:
            place = f"in layer '{self.layer}'" + (f" ({self.kind})" if self.kind else "")
            if self.copy is not None:
                place += f", copy {self.copy}"
        if self.where and self.direction == "backward":
            place += f" (its {self.where} gradient)"
        elif self.where:
            place += " (its params were non-finite before the step)"
        text = f"{what} {place}, batch rows {_ranges(self.rows)}"
        return f"{text}; {self.detail}" if self.detail else text

    def record(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self) | {"rows": list(self.rows)}


def _ranges(rows: tuple[int, ...], limit: int = 8) -> str:
    if not rows:
        return "(all or none identifiable)"
    parts, start = [], rows[0]
    for a, b in zip(rows, rows[1:] + (None,)):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    text = ", ".join(parts[:limit])
    return text + (f", ... ({len(rows)} rows)" if len(parts) > limit else "")


def _concrete(tree: Any) -> bool:
    """No leaf is a tracer: a value the forward check can read."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def _staged(tree: Any) -> bool:
    """A leaf is being traced into a jaxpr (``jax.eval_shape`` inside ``fnn.repeat``): a call
    that computes nothing. Under ``jax.vjp`` in ``disable_jit`` values are linearize tracers
    over concrete values, which do run."""
    return any(isinstance(leaf, jax.core.Tracer) and "Jaxpr" in type(leaf).__name__
               for leaf in jax.tree_util.tree_leaves(tree))


def _bad(tree: Any, n: int | None) -> tuple[bool, tuple[int, ...], str]:
    """Whether ``tree`` holds NaN/Inf; the rows (leading axis of size ``n``) that do; which."""
    found, rows, kinds = False, set(), set()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.inexact):
            continue
        finite = np.isfinite(a)
        if finite.all():
            continue
        found = True
        kinds |= {"nan"} if np.isnan(a).any() else set()
        kinds |= {"inf"} if np.isinf(a).any() else set()
        if n is not None and a.ndim >= 1 and a.shape[0] == n:
            rows |= set(np.nonzero(~finite.reshape(n, -1).all(axis=1))[0].tolist())
    return found, tuple(sorted(rows)), ", ".join(sorted(kinds))


class _Watch:
    """The hook of one pass: keeps the path of the layer being applied, checks what it sees."""

    def __init__(self, n: int, backward: bool):
        self.n, self.backward = n, backward
        self.stack: list[str] = []
        self.calls: dict[tuple[str, ...], int] = {}
        self.fault: Fault | None = None
        self.finite_out: set[tuple[tuple[str, ...], int]] = set()
        self.repeats: set[tuple[str, ...]] = set()   # paths of the fnn.repeat layers met
        self.largest: tuple[float, str] = (0.0, "")    # the largest |output| of a leaf layer

    def copy_of(self, path: tuple[str, ...]) -> int | None:
        """The copy index of the innermost ``fnn.repeat`` around ``path``: how many times its
        child has been entered in this pass, less one."""
        for i in range(len(path) - 1, 0, -1):
            if path[:i] in self.repeats:
                return self.calls.get(path[:i + 1], 1) - 1
        return None

    def found(self, path, kind, direction, rows, value, call, where=""):
        if self.fault is None:
            name = "/".join(p for p in path if p)
            self.fault = Fault(name, kind, direction, rows,
                               self.copy_of(path) if call is None else call, value, where)

    def __call__(self, key, layer: Layer, params, state, x, *, rng, train):
        self.stack.append(key)
        path = tuple(self.stack)
        if layer.kind == "Repeat":
            self.repeats.add(path)
        running = not _staged((params, x))
        if running:
            self.calls[path] = self.calls.get(path, 0) + 1
        concrete = running and _concrete((params, x))
        if concrete and not self.backward and not layer.children and self.fault is None:
            bad, _, value = _bad(params, None)  # made by an earlier step's update
            if bad:
                self.found(path, layer.kind, "forward", (), value, None, "params")
        try:
            if self.backward and running:
                copy = self.copy_of(path)
                x = self.tap(path, layer.kind, "input", x, copy)
                params = self.tap(path, layer.kind, "params", params, copy)
            y, new_state = layer.apply(params, state, x, rng=rng, train=train)
            if self.backward and running:
                y = self.tap(path, layer.kind, "output", y, copy)
            elif concrete and _concrete(y) and self.fault is None:
                bad, rows, value = _bad(y, self.n)
                if bad and not _bad(x, self.n)[0] and not _bad(params, None)[0]:
                    self.found(path, layer.kind, "forward", rows, value, None)
                if not layer.children:
                    self.largest = max(self.largest, (_magnitude(y), "/".join(p for p in path if p)))
        finally:
            self.stack.pop()
        return y, new_state

    def tap(self, path, kind, role, tree, copy):
        """``tree`` through an identity whose backward rule checks its cotangent."""
        if not jax.tree_util.tree_leaves(tree):
            return tree

        @jax.custom_vjp
        def identity(t):
            return t

        def fwd(t):
            return t, None

        def bwd(_, ct):
            self.seen(path, kind, role, ct, copy)
            return (ct,)

        identity.defvjp(fwd, bwd)
        return identity(tree)

    def seen(self, path, kind, role, ct, copy):
        if self.fault is not None or not _concrete(ct):
            return
        bad, rows, value = _bad(ct, self.n if role != "params" else None)
        key = (path, copy if copy is not None else -1)
        if role == "output":
            if not bad:
                self.finite_out.add(key)
            elif path == ("",):  # the loss's gradient itself
                self.found(path, kind, "backward", rows, value, copy, "output")
        elif bad and key in self.finite_out:
            self.found(path, kind, "backward", rows, value, copy, role)


def _magnitude(tree: Any) -> float:
    """The largest finite |value| among the float leaves of ``tree``."""
    values = [np.max(np.abs(a[np.isfinite(a)])) for a in map(np.asarray, jax.tree_util.tree_leaves(tree))
              if np.issubdtype(a.dtype, np.inexact) and np.isfinite(a).any()]
    return float(max(values, default=0.0))


def _loss_rows(loss: Callable, out: Any, y: Any, n: int) -> jax.Array:
    """Per-example loss values when the loss can give them (``reduction="none"``), else its
    value as it is."""
    try:
        return jnp.asarray(loss(out, y, reduction="none"))
    except TypeError:
        return jnp.asarray(loss(out, y))


def _batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, Mapping):
        return batch["x"], batch["y"]
    x, y = batch
    return x, y


def localize(net: Layer, params: Any, state: Any, batch: Any,
             loss: Callable[..., jax.Array], *, rng: jax.Array | None = None,
             train: bool = True) -> Fault | None:
    """Replay one step of ``net`` on ``batch`` and return where the first NaN/Inf appears.

    The forward pass is checked first (layer outputs, then the loss); if it is finite, the
    backward pass of ``mean(loss(outputs, y))`` with respect to ``params`` is checked.

    Args:
        net, params, state: the network and its variables (as ``net.apply`` takes them).
        batch: ``{"x": inputs, "y": targets}`` or ``(inputs, targets)``; inputs ``(N, ...)``.
        loss: ``loss(outputs, targets)``, per example or a mean (``fnn.losses`` qualify).
        rng, train: as the training step applies the net (``train=True``; ``rng`` for dropout).

    Returns:
        A :class:`Fault` naming the layer, the direction and the batch rows; ``None`` when the
        step is finite throughout (forward, loss and every gradient).
    """
    x, y = _batch(batch)
    x = jax.tree_util.tree_map(jnp.asarray, x)
    n = int(jax.tree_util.tree_leaves(x)[0].shape[0])
    bad, rows, value = _bad(x, n)
    if bad:
        return Fault("input", "", "forward", rows, None, value)
    with jax.disable_jit():
        watch = _Watch(n, backward=False)
        with watching_apply(watch):
            out, _ = watch("", net, params, state, x, rng=rng, train=train)
        if watch.fault is not None:
            return _root_named(watch.fault, net)
        values = _loss_rows(loss, out, y, n)
        bad, rows, value = _bad(values, n if values.ndim else None)
        if bad:
            size, layer = watch.largest
            detail = f"largest layer output: {layer} (max |y| {size:.3g})" if layer else ""
            return Fault("loss", "", "forward", rows, None, value, "", detail)

        watch = _Watch(n, backward=True)

        def objective(p):
            with watching_apply(watch):
                outputs, _ = watch("", net, p, state, x, rng=rng, train=train)
            return jnp.mean(loss(outputs, y))

        _, pullback = jax.vjp(objective, params)
        (grads,) = pullback(jnp.ones((), jnp.float32))
    if watch.fault is not None:
        return _root_named(watch.fault, net)
    if _bad(grads, None)[0]:  # a gradient no check saw (a layer applied outside apply_child)
        return Fault(net.kind if net.record else "network", "", "backward", (), None,
                     _bad(grads, None)[2], "params")
    return None


def _root_named(fault: Fault, net: Layer) -> Fault:
    """Paths are recorded under a root key ``""``: strip it; a fault at the root itself is the
    whole network (a hand-made or leaf layer given as ``net``) or, backward, the loss."""
    if fault.layer:
        return fault
    if fault.direction == "backward" and fault.where == "output":
        return dataclasses.replace(fault, layer="loss", kind="", where="")
    return dataclasses.replace(fault, layer=net.name or net.kind, kind=net.kind)
