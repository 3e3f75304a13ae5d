"""Transfer learning: start from pretrained weights, and freeze the layers that must not move.

* :func:`transfer` initialises a new network and copies every pretrained param (and state entry,
  e.g. batch-norm statistics) whose path and shape match; a :class:`TransferReport` lists what
  was copied, what is new and what was skipped because its shape differs. ``fit(..., init=...)``
  and the config's ``training.pretrained`` use it.
* :func:`freeze` gives a network whose named layers are frozen: they get no gradient, no update
  and no optimizer state (``fit`` masks them out of the optimizer), and they run in inference
  mode even while the rest trains (batch norm normalizes with, and keeps, its running
  statistics; dropout is off). :func:`unfreeze` undoes it for the second stage of fine-tuning.
  The params keep their structure and names, so the same params fit both networks.

Example:
    >>> features = fnn.serial(fnn.Dense(8), fnn.Relu, name="features")
    >>> old_net = fnn.serial(features, fnn.Dense(3, name="head"))     # pretrained on 3 classes
    >>> _, old_params, old_state = old_net.init(jax.random.key(1), (-1, 4))
    >>> new_net = fnn.serial(features, fnn.Dense(2, name="head"))     # a new 2-class head
    >>> params, state, report = fnn.transfer(old_params, old_state, new_net, (-1, 4),
    ...                                      jax.random.key(0))
    >>> print(report)
    copied 2 pretrained arrays, 0 new, 2 skipped (shape differs): params/head/b, params/head/w
      copied   params/features/dense_0/b
      copied   params/features/dense_0/w
      skipped  params/head/b: pretrained (3,), new (2,)
      skipped  params/head/w: pretrained (8, 3), new (8, 2)
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(32, 4)).astype(np.float32)
    >>> data, loss = {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}, fnn.losses.softmax_cross_entropy
    >>> frozen = fnn.freeze(new_net, "features")
    >>> result = fnn.train.fit(frozen, loss, optax.adam(1e-3), data, epochs=3, init=(params, state),
    ...                        log=None)
    >>> w = result.train_state.params["features"]["dense_0"]["w"]
    >>> bool(jnp.all(w == params["features"]["dense_0"]["w"]))            # frozen: unchanged
    True
    >>> result = fnn.train.fit(fnn.unfreeze(frozen), loss, optax.adam(1e-4), data, epochs=3,
    ...                        init=(result.train_state.params, result.train_state.model_state),
    ...                        log=None)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
import optax

from fnn.core import (Layer, key_name, layer_paths, layer_type, map_layers, select_layers,
                      transparent)

__all__ = ["transfer", "TransferReport", "load_pretrained", "freeze", "unfreeze", "Frozen",
           "frozen_paths", "frozen_mask", "with_frozen_mask", "keep_frozen"]


# --------------------------------------------------------------------------- transfer

@dataclasses.dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer` did, leaf by leaf (paths like ``"params/conv2d_0/w"``).

    Attributes:
        copied: leaves taken from the pretrained weights (same path, same shape).
        new: leaves of the new network with no pretrained counterpart (freshly initialised).
        skipped: ``(path, pretrained shape, new shape)`` for leaves whose shapes differ (kept
            freshly initialised).
        unused: pretrained leaves the new network does not have.
    """

    copied: tuple[str, ...]
    new: tuple[str, ...]
    skipped: tuple[tuple[str, tuple, tuple], ...]
    unused: tuple[str, ...]

    def one_line(self) -> str:
        return (f"copied {len(self.copied)} pretrained arrays, {len(self.new)} new, "
                f"{len(self.skipped)} skipped (shape differs)"
                + (f": {', '.join(p for p, _, _ in self.skipped)}" if self.skipped else ""))

    def __str__(self) -> str:
        lines = [self.one_line()]
        lines += [f"  copied   {p}" for p in self.copied]
        lines += [f"  new      {p}" for p in self.new]
        lines += [f"  skipped  {p}: pretrained {a}, new {b}" for p, a, b in self.skipped]
        lines += [f"  unused   {p}" for p in self.unused]
        return "\n".join(lines)


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        out["/".join([prefix, *keys])] = leaf
    return out


def transfer(pretrained_params: Any, pretrained_state: Any, new_net: Layer, input_shape: Any,
             rng: jax.Array) -> tuple[Any, Any, TransferReport]:
    """Initialise ``new_net`` and copy every pretrained leaf whose path and shape match.

    Args:
        pretrained_params, pretrained_state: weights of the old network (``state`` may be
            ``None``), e.g. from ``fnn.load_weights``.
        new_net: the new network (e.g. the old body with a new head).
        input_shape: its input shape, ``-1`` for the batch.
        rng: the key of the fresh initialisation (what is not copied is exactly as
            ``new_net.init(rng, input_shape)`` makes it).

    Returns:
        ``(params, state, report)``: the new network's params and state, and a
        :class:`TransferReport`.

    Example:
        >>> body = fnn.serial(fnn.Flatten(), fnn.Dense(8), fnn.Relu)
        >>> old_net = fnn.serial(body, fnn.Dense(10, name="old_head"))
        >>> _, p, s = old_net.init(jax.random.key(1), (-1, 28, 28, 1))
        >>> params, state, report = transfer(p, s, fnn.serial(body, fnn.Dense(5, name="head")),
        ...                                  (-1, 28, 28, 1), jax.random.key(0))
        >>> report.new
        ('params/head/b', 'params/head/w')
        >>> report.copied, report.unused
        (('params/serial_0/dense_0/b', 'params/serial_0/dense_0/w'),
         ('params/old_head/b', 'params/old_head/w'))
    """
    _, params, state = new_net.init(rng, input_shape)
    old = {**_flat(pretrained_params, "params"), **_flat(pretrained_state or {}, "state")}
    copied, new, skipped = [], [], []

    def take(prefix: str, tree: Any) -> Any:
        def one(path, leaf):
            key = "/".join([prefix, *(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)])
            if key not in old:
                new.append(key)
                return leaf
            value = old[key]
            if tuple(np.shape(value)) != tuple(np.shape(leaf)):
                skipped.append((key, tuple(np.shape(value)), tuple(np.shape(leaf))))
                return leaf
            copied.append(key)
            return jax.numpy.array(value, dtype=leaf.dtype, copy=True)  # fit donates its state

        return jax.tree_util.tree_map_with_path(one, tree)

    params, state = take("params", params), take("state", state)
    used = set(copied) | {p for p, _, _ in skipped}
    report = TransferReport(tuple(copied), tuple(new), tuple(skipped),
                            tuple(k for k in old if k not in used))
    return params, state, report


def load_pretrained(source: Any) -> tuple[Any, Any]:
    """``(params, state)`` from a checkpoint path or a ``(params, state)`` pair."""
    if isinstance(source, (str, os.PathLike)):
        from fnn.train.checkpoint import load_weights
        return load_weights(source)
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return source[0], source[1]
    raise ValueError(f"init: expected a checkpoint path or a (params, state) pair, got "
                     f"{type(source).__name__}")


# --------------------------------------------------------------------------- freezing

@layer_type("Frozen", sublayers="layer", layout=transparent("layer"))
def Frozen(layer: Layer) -> Layer:
    """``layer`` frozen: no gradient flows into its params and it always runs in inference mode.

    Its params and state have ``layer``'s structure (no extra level), and its state is never
    changed (batch norm keeps its running statistics). Use :func:`freeze` to freeze a layer
    inside a network by name; ``fit`` also leaves the frozen params out of the optimizer (no
    update, no optimizer state, no weight decay) and out of constraints such as max-norm.

    Example:
        >>> layer = Frozen(fnn.BatchNorm())
        >>> _, params, state = layer.init(jax.random.key(0), (-1, 3))
        >>> x = jnp.ones((4, 3))
        >>> layer.apply(params, state, x, train=True)[1] is state
        True
    """
    def init(rng, input_shape):
        return layer.init(rng, input_shape)

    def apply(params, state, x, *, rng=None, train=False):
        y, _ = layer.apply(jax.lax.stop_gradient(params), state, x, rng=None, train=False)
        return y, state

    return Layer(init, apply)


def frozen_paths(net: Layer, input_shape: Any = None) -> list[tuple[str, ...]]:
    """The paths (key tuples) of ``net``'s :class:`Frozen` layers: every param and state leaf
    under one of them is frozen. Read from the declared layout (``fnn.core.layer_paths``), so a
    ``Frozen`` layer inside ``repeat``, ``DtypePolicy`` or ``shared`` is found like any other.
    (``input_shape`` is not needed and is ignored; kept for 0.1 callers.)

    Example:
        >>> net = fnn.repeat(fnn.serial(fnn.Dense(4), fnn.Tanh), 3)
        >>> frozen_paths(fnn.freeze(net, "dense_0"))
        [('dense_0',)]
    """
    return [path for path, layer in layer_paths(net) if layer.kind == "Frozen"]


def frozen_mask(net: Layer, tree: Any) -> Any:
    """A pytree of bools with the structure of ``tree`` (``net``'s params or state): ``True``
    for the leaves under a :class:`Frozen` layer."""
    frozen = frozen_paths(net)

    def is_frozen(path, _):
        keys = tuple(key_name(k) for k in path)
        return any(keys[:len(f)] == f for f in frozen)

    return jax.tree_util.tree_map_with_path(is_frozen, tree)


def with_frozen_mask(net: Layer, optimizer: optax.GradientTransformation, input_shape: Any = None
                     ) -> optax.GradientTransformation:
    """``optimizer`` with the params of ``net``'s frozen layers set to zero updates and no state
    (``optax.multi_transform``); ``optimizer`` itself when nothing is frozen. Weight decay and
    every other part of ``optimizer`` see only the trainable params."""
    if not frozen_paths(net):
        return optimizer

    def labels(params):
        return jax.tree_util.tree_map(lambda f: "frozen" if f else "trainable",
                                      frozen_mask(net, params))

    return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)


def keep_frozen(net: Layer, constraint: Callable[[Any], Any] | None
                ) -> Callable[[Any], Any] | None:
    """``constraint`` (``params -> params``, e.g. max-norm) applied to the trainable params only:
    the leaves of ``net``'s frozen layers are returned as they are."""
    if constraint is None or not frozen_paths(net):
        return constraint

    def constrained(params):
        projected = constraint(params)
        return jax.tree_util.tree_map(lambda f, old, new: old if f else new,
                                      frozen_mask(net, params), params, projected)

    return constrained


def freeze(net: Layer, *names: str, input_shape: Any = None) -> Layer:
    """``net`` with the layers called ``names`` frozen (see :class:`Frozen`).

    A name is a path as ``fnn.summary`` prints it, or its end: ``"encoder"``, ``"dense_0"``,
    ``"block/dense_1"``, ``"repeat_0/dense_0"`` (a layer inside a repeated block: all its copies);
    every layer whose path holds those consecutive keys is frozen, as ``optimizer.freeze`` and
    ``regularizers.layers`` select them. The frozen network has the same params and state
    structure as ``net`` (every layer keeps its key). ``input_shape`` is not needed (ignored).

    Raises:
        ValueError: a name that matches no layer (naming the closest keys).

    Example:
        >>> net = fnn.serial(fnn.serial(fnn.Dense(8), fnn.BatchNorm(), name="encoder"),
        ...                  fnn.Dense(2, name="head"))
        >>> frozen = fnn.freeze(net, "encoder")
        >>> [layer.kind for layer in frozen.children]
        ['Frozen', 'Dense']
    """
    if not names:
        raise ValueError("freeze: name at least one layer, e.g. freeze(net, 'encoder')")
    targets = {(path, id(layer)) for path, layer in select_layers(net, names, "freeze")}

    def wrap(layer: Layer, path: tuple[str, ...]) -> Layer:
        if (path, id(layer)) in targets and layer.kind != "Frozen":
            return Frozen(layer, name=layer.name)
        return layer

    return map_layers(wrap, net, with_path=True)


def unfreeze(net: Layer, *names: str, input_shape: Any = None) -> Layer:
    """``net`` with its frozen layers (all, or those ``names`` select) trainable again.

    Example:
        >>> net = fnn.freeze(fnn.serial(fnn.Dense(8), fnn.Dense(2)), "dense_0")
        >>> fnn.unfreeze(net).children[0]
        Dense(8, name='dense_0')
    """
    chosen = None
    if names:
        chosen = {path for path, _ in select_layers(net, names, "unfreeze")}

    def unwrap(layer: Layer, path: tuple[str, ...]) -> Layer:
        if layer.kind != "Frozen":
            return layer
        if chosen is not None and not any(path[:len(p)] == p or p[:len(path)] == path
                                          for p in chosen):
            return layer
        inner = layer.children[0]
        return inner.replace(name=layer.name) if layer.name and inner.record else inner

    return map_layers(unwrap, net, with_path=True)
