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
from typing import Any

import jax
import numpy as np
import optax

from fnn.core import (Layer, default_key, init_child, layer_type, no_layer_error, recording,
                      sublayer_arguments)

__all__ = ["transfer", "TransferReport", "load_pretrained", "freeze", "unfreeze", "Frozen",
           "frozen_paths", "with_frozen_mask"]


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

@layer_type("Frozen", sublayers="layer")
def Frozen(layer: Layer) -> Layer:
    """``layer`` frozen: no gradient flows into its params and it always runs in inference mode.

    Its params and state have ``layer``'s structure (no extra level), and its state is never
    changed (batch norm keeps its running statistics). Use :func:`freeze` to freeze a layer
    inside a network by name; ``fit`` also leaves the frozen params out of the optimizer.

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


def _rows(net: Layer, input_shape: Any) -> list[tuple[tuple[str, ...], Layer]]:
    """``(path, layer)`` of every layer in ``net`` (root first), found by an abstract init."""
    found: list = []

    def trace(rng):
        with recording() as rec:
            init_child(default_key(net), net, rng, input_shape)
        found.extend((path, layer) for path, layer, *_ in rec.rows)
        return jax.numpy.zeros(())

    jax.eval_shape(trace, jax.random.key(0))
    return found


def frozen_paths(net: Layer, input_shape: Any) -> list[tuple[str, ...]]:
    """The paths (key tuples) of the param leaves of ``net``'s :class:`Frozen` layers.

    Found by an abstract init: the leaves a ``Frozen`` layer's ``init`` returns are located in
    the whole params tree by identity, so combinators that do not nest their children's params
    under the child's key (``shared``) are handled too.
    """
    found: list[tuple[str, ...]] = []

    def trace(rng):
        with recording() as rec:
            _, params, _ = init_child(default_key(net), net, rng, input_shape)
        frozen = {id(leaf) for _, layer, _, p, _ in rec.rows if layer.kind == "Frozen"
                  for leaf in jax.tree_util.tree_leaves(p)}
        found.extend(tuple(str(getattr(k, "key", k)) for k in path)
                     for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                     if id(leaf) in frozen)
        return jax.numpy.zeros(())

    jax.eval_shape(trace, jax.random.key(0))
    return found


def with_frozen_mask(net: Layer, optimizer: optax.GradientTransformation, input_shape: Any
                     ) -> optax.GradientTransformation:
    """``optimizer`` with the params of ``net``'s frozen layers set to zero updates and no state
    (``optax.multi_transform``); ``optimizer`` itself when nothing is frozen."""
    frozen = set(frozen_paths(net, input_shape))
    if not frozen:
        return optimizer

    def labels(params):
        def label(path, _):
            keys = tuple(str(getattr(k, "key", k)) for k in path)
            return "frozen" if keys in frozen else "trainable"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)


def freeze(net: Layer, *names: str, input_shape: Any = None) -> Layer:
    """``net`` with the layers called ``names`` frozen (see :class:`Frozen`).

    A name is a layer's key in its network (``"encoder"``, ``"dense_0"``) or the end of its path
    (``"block/dense_1"``); every layer it names is frozen. The frozen network has the same
    params and state structure as ``net``.

    Args:
        net: the network.
        *names: the layers to freeze.
        input_shape: an input shape for the abstract init that finds the layers; needed only
            when the network cannot be initialised with a guessed one (``(-1, 1)`` is tried
            first, then ``input_shape``).

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
    rows = _layer_rows(net, input_shape)
    targets = []
    for name in names:
        parts = tuple(p for p in str(name).split("/") if p)
        hits = [(path, layer) for path, layer in rows
                if path[1:][-len(parts):] == parts and len(path) > len(parts)]
        if not hits:
            raise no_layer_error("freeze", name, [p for path, _ in rows for p in path[1:]],
                                 container="the network")
        targets.extend(hits)
    return _rewrite(net, rows, {path: (lambda layer, key: Frozen(layer, name=key))
                                for path, _ in targets})


def unfreeze(net: Layer, *names: str, input_shape: Any = None) -> Layer:
    """``net`` with its frozen layers (all, or those called ``names``) trainable again."""
    rows = _layer_rows(net, input_shape)
    targets = {}
    for path, layer in rows:
        if layer.kind != "Frozen":
            continue
        if names and not any(path[1:][-len(n.split("/")):] == tuple(n.split("/")) for n in names):
            continue
        targets[path] = lambda layer, key: layer.children[0].replace(name=key)
    return _rewrite(net, rows, targets)


def _layer_rows(net: Layer, input_shape: Any) -> list[tuple[tuple[str, ...], Layer]]:
    errors = []
    for shape in ([(-1, 1)] if input_shape is None else []) + [input_shape]:
        if shape is None:
            continue
        try:
            return _rows(net, shape)
        except Exception as e:  # the guessed shape does not fit this network
            errors.append(e)
    raise ValueError(f"freeze: give input_shape= (the network cannot be initialised to find "
                     f"its layers: {errors[-1] if errors else 'no shape'})")


def _rewrite(net: Layer, rows: list, targets: dict) -> Layer:
    """Rebuild ``net`` with each layer at a path in ``targets`` replaced by ``fn(layer, key)``.

    Like :func:`fnn.map_layers`, but following paths (a layer's key comes from its parent): the
    layers around a target are rebuilt with ``replace`` and the same arguments, and each of their
    children is given its key as ``name=``, so a wrapper in place of ``dense_0`` does not
    renumber its siblings and the params keep their structure.
    """
    targets = {p: fn for p, fn in targets.items()  # a target inside another one goes with it
               if not any(q != p and p[:len(q)] == q for q in targets)}

    def rebuild(path: tuple[str, ...], layer: Layer) -> Layer:
        if path in targets:
            return targets[path](layer, path[-1])
        if not any(p[:len(path)] == path and len(p) > len(path) for p in targets):
            return layer
        taken: set[tuple[str, ...]] = set()

        def child(c: Layer) -> Layer:
            where = next((p for p, lay in rows if lay is c and p not in taken
                          and p[:len(path)] == path and len(p) > len(path)), None)
            if where is None:
                raise ValueError(f"freeze: cannot find the layers of the {layer.kind} layer "
                                 f"'{'/'.join(path[1:])}' at their own paths; freeze it whole")
            taken.add(where)
            new = rebuild(where, c)
            return new if new.name else new.replace(name=where[-1])

        changes = {}
        for arg in sublayer_arguments(layer.kind):
            value = layer.record.args.get(arg)
            if isinstance(value, Layer):
                changes[arg] = child(value)
            elif isinstance(value, tuple):
                changes[arg] = tuple(child(v) for v in value)
        return layer.replace(**changes)

    return rebuild(rows[0][0], net)
