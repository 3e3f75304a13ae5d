"""A moving average of the weights (Polyak averaging), kept in the optimizer state.

:func:`with_ema` wraps an optax optimizer so that its state also holds
``ema = decay * ema + (1 - decay) * params`` of the params after each update, starting from the
initial params. Living in the optimizer state, the average is checkpointed, replicated over
devices and restored on resume with everything else. ``fit(ema=decay)`` validates with the
averaged weights (so ``best`` is chosen by them) and :func:`fnn.load_weights` (``fnn eval``)
reads them from a checkpoint written with it (:func:`weights_key`). The average is of the
params the optimizer produced (a ``constraint`` such as max-norm is applied to the params, not
to their average); batch-norm statistics are not averaged.

``fit`` puts the average inside the frozen-layer mask (:func:`fnn.finetune.with_frozen_mask`):
it covers the trained leaves only, and :func:`ema_weights` (what validation, ``best`` and
:func:`fnn.load_weights` use) takes a frozen layer's leaves from the params as they are.

Example:
    >>> opt = with_ema(optax.sgd(1.0), decay=0.5)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = opt.init(params)
    >>> for _ in range(2):                 # params: 1, then 2
    ...     updates, state = opt.update({"w": -jnp.ones(2)}, state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> averaged(state)["w"]               # 0.5 * (0.5 * 0 + 0.5 * 1) + 0.5 * 2
    Array([1.25, 1.25], dtype=float32)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["EmaState", "with_ema", "averaged", "ema_weights", "weights_key"]


class EmaState(NamedTuple):
    """The wrapped optimizer's state and the moving average of the params."""

    inner: Any
    ema: Any


def with_ema(optimizer: optax.GradientTransformation, decay: float
             ) -> optax.GradientTransformation:
    """``optimizer`` whose state also tracks an exponential moving average of the params."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ValueError(f"training.ema.decay: must be between 0 and 1, got {decay!r}")

    def init(params):
        # a copy: the params and their average are separate buffers (both donated to a step)
        return EmaState(optimizer.init(params),
                        jax.tree_util.tree_map(lambda p: jnp.array(p, copy=True), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("with_ema: the update needs the params")
        updates, inner = optimizer.update(updates, state.inner, params)
        new = optax.apply_updates(params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype),
                                     state.ema, new)
        return updates, EmaState(inner, ema)

    return optax.GradientTransformation(init, update)


def _find(opt_state: Any) -> tuple[str, EmaState] | None:
    """The first :class:`EmaState` in ``opt_state`` (e.g. under a frozen-layer mask), with its
    key path."""
    found = jax.tree_util.tree_flatten_with_path(
        opt_state, is_leaf=lambda x: isinstance(x, EmaState))[0]
    for path, leaf in found:
        if isinstance(leaf, EmaState):
            return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                            for k in path), leaf
    return None


def averaged(opt_state: Any) -> Any:
    """The averaged params held in an optimizer state of :func:`with_ema` (anywhere inside
    it; under a mask, the masked-out leaves are ``optax.MaskedNode``), else ``None``."""
    found = _find(opt_state)
    return None if found is None else found[1].ema


def ema_weights(params: Any, opt_state: Any) -> Any:
    """The weights to evaluate: each leaf of ``params`` replaced by its moving average where
    ``opt_state`` holds one (leaves of frozen layers, masked out of the optimizer, have none
    and are ``params``' own, bit for bit); ``params`` itself without :func:`with_ema`.

    Example:
        >>> opt = optax.multi_transform(
        ...     {"train": with_ema(optax.sgd(1.0), decay=0.5), "frozen": optax.set_to_zero()},
        ...     {"w": "train", "frozen_w": "frozen"})
        >>> params = {"w": jnp.zeros(2), "frozen_w": jnp.full(2, 0.1)}
        >>> state = opt.init(params)
        >>> updates, state = opt.update({"w": -jnp.ones(2), "frozen_w": jnp.ones(2)}, state,
        ...                             params)
        >>> params = optax.apply_updates(params, updates)
        >>> ema_weights(params, state)          # w: 0.5 * 0 + 0.5 * 1; frozen_w as it is
        {'frozen_w': Array([0.1, 0.1], dtype=float32), 'w': Array([0.5, 0.5], dtype=float32)}
    """
    average = averaged(opt_state)
    if average is None:
        return params
    by_path = {jax.tree_util.keystr(path): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(average)[0]}
    return jax.tree_util.tree_map_with_path(
        lambda path, p: by_path.get(jax.tree_util.keystr(path), p), params)


def weights_key(opt_state: Any) -> str | None:
    """Where a train-state checkpoint holds the averaged params (``"opt_state/ema"``), else
    ``None``."""
    found = _find(opt_state)
    return None if found is None else "/".join(p for p in ("opt_state", found[0], "ema") if p)
