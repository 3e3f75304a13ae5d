"""The ``optimizer`` config section -> one ``optax.GradientTransformation``.

Per trainable leaf the chain is::

    clip_value -> clip_norm -> [L2 weight decay: g + wd * w] -> optimizer (lr from the schedule)
                                                               [-> Keras: - lr * wd * w]

and frozen leaves get zero updates. The optimizer's rule under the chosen ``convention`` comes
from :data:`fnn.optim.rules.RULES`; keys, conventions and formulas are in docs/OPTIMIZERS.md.

Example:
    >>> params = {"dense_0": {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}}
    >>> grads = {"dense_0": {"w": jnp.full((3, 2), 5.0), "b": jnp.ones(2)}}
    >>> opt = make_optimizer({"name": "adam", "learning_rate": 1e-3, "clip_norm": 1.0})
    >>> updates, state = opt.update(grads, opt.init(params), params)
    >>> np.allclose(updates["dense_0"]["w"], -1e-3)  # Adam's first step: -lr * sign(g)
    True
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

import optax

from fnn.errors import ConfigError
from fnn.optim.checks import boolean, check_keys, choice, mapping, number
from fnn.optim.masks import freeze_list, frozen_labels, weights_only
from fnn.optim.rules import (ADAMW_WEIGHT_DECAY, CONVENTIONS, DECOUPLED_WEIGHT_DECAY,
                             DEFAULT_DECAY_MASK, RULES, Rule)
from fnn.optim.schedules import make_schedule, plateau_options

__all__ = ["make_optimizer", "optimizer_names", "COMMON_KEYS"]

COMMON_KEYS = ("name", "learning_rate", "convention", "schedule", "clip_value", "clip_norm",
               "weight_decay", "weight_decay_mask", "freeze")

# Ranges of optimizer hyper-parameters: (low, high, low_open, high_open).
_UNIT = (0.0, 1.0, False, True)  # [0, 1)
_NONNEG = (0.0, None, False, False)
_RANGES: dict[str, tuple] = {
    "b1": _UNIT, "b2": _UNIT, "decay": _UNIT, "rho": _UNIT, "momentum": _UNIT, "gamma": _UNIT,
    "eps": _NONNEG, "eps_root": _NONNEG, "initial_accumulator_value": _NONNEG,
    "initial_scale": _NONNEG, "final_lr": _NONNEG, "momentum_decay": _NONNEG,
}
_CHOICES = {"max_of": ("raw", "corrected")}
_NULLABLE = {"momentum", "momentum_decay"}  # null: no momentum / no momentum schedule


def optimizer_names() -> list[str]:
    """All optimizer names accepted by :func:`make_optimizer`."""
    return sorted(RULES)


def _rule(name: Any, convention: Any, where: str) -> Rule:
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name", f"expected an optimizer name, got {name!r} "
                                           f"(known: {', '.join(optimizer_names())})")
    rules = RULES.get(name.lower())
    if rules is None:
        close = difflib.get_close_matches(name.lower(), list(RULES), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}.name", f"unknown optimizer {name!r}{hint} "
                                           f"(known: {', '.join(optimizer_names())})")
    if convention not in CONVENTIONS:
        choice(convention, f"{where}.convention", CONVENTIONS)
    if convention not in rules:
        raise ConfigError(f"{where}.convention",
                          f"{name.lower()} has no {convention!r} convention (PyTorch, Keras and "
                          f"optax have no {name.lower()}); known: {', '.join(rules)}")
    return rules[convention]


def _hyper(key: str, value: Any, default: Any, where: str) -> Any:
    """Check one optimizer hyper-parameter by its key and the kind of its default."""
    if key in _CHOICES:
        return choice(value, where, _CHOICES[key])
    if isinstance(default, bool):
        return boolean(value, where)
    if value is None and (default is None or key in _NULLABLE):
        return None
    low, high, low_open, high_open = _RANGES.get(key, (None,) * 4)
    return number(value, where, low=low, high=high, low_open=bool(low_open),
                  high_open=bool(high_open))


def make_optimizer(config: Mapping[str, Any], *, params: optax.Params | None = None,
                   where: str = "optimizer") -> optax.GradientTransformationExtraArgs:
    """Build the optax optimizer described by an ``optimizer`` config section.

    Args:
        config: ``{"name": ..., "learning_rate": ..., "convention": "paper" | "pytorch" |
            "keras" | "optax", <optimizer keys>, "schedule": {...}, "clip_value",
            "clip_norm", "weight_decay", "weight_decay_mask", "freeze"}``; see
            docs/OPTIMIZERS.md for the keys and rule of each optimizer under each convention.
        params: optional params pytree; when given, ``freeze`` names are checked now rather
            than at ``init``.
        where: the config path used in error messages.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; its state is an
        ``optax.InjectStatefulHyperparamsState`` whose ``hyperparams["learning_rate"]`` is the
        learning rate in use (see :func:`fnn.optim.current_learning_rate`). Its ``update``
        needs ``params`` when weight decay is on.

    Raises:
        ConfigError: (a ``ValueError``) one line naming the key path, for an unknown optimizer
            or convention, an unknown key (with the closest valid keys), a missing or
            ill-typed value, or a frozen layer not in params.

    Example:
        >>> opt = make_optimizer({"name": "momentum", "learning_rate": 0.1, "momentum": 0.9,
        ...                       "freeze": ["dense_0"]})
        >>> net = fnn.serial(fnn.Dense(4), fnn.Relu, fnn.Dense(2))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> grads = jax.tree.map(jnp.ones_like, params)
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state, params)   # zeros under dense_0
        >>> jax.tree.map(lambda u: round(float(jnp.abs(u).max()), 4), updates)
        {'dense_0': {'b': 0.0, 'w': 0.0}, 'dense_1': {'b': 0.1, 'w': 0.1}}
        >>> make_optimizer({"name": "adam", "learning_rat": 0.1})
        Traceback (most recent call last):
        fnn.errors.ConfigError: optimizer.learning_rat: unknown key; did you mean learning_rate? ...
    """
    config = mapping(config, where)
    if "name" not in config:
        raise ConfigError(f"{where}.name", f"required (one of {', '.join(optimizer_names())})")
    convention = config.get("convention", "paper")
    rule = _rule(config["name"], convention, where)
    name = config["name"].lower()
    check_keys(config, (*COMMON_KEYS, *rule.defaults), where)
    if "learning_rate" not in config:
        raise ConfigError(f"{where}.learning_rate", "required")
    lr = number(config["learning_rate"], f"{where}.learning_rate", low=0.0, low_open=True)
    schedule = make_schedule(lr, config.get("schedule"), where=f"{where}.schedule")
    hyper = {k: _hyper(k, config[k], default, f"{where}.{k}") if k in config else default
             for k, default in rule.defaults.items()}

    def optional_positive(key: str) -> float | None:
        value = config.get(key)
        return None if value is None else number(value, f"{where}.{key}", low=0.0,
                                                 low_open=True)

    clip_value, clip_norm = optional_positive("clip_value"), optional_positive("clip_norm")
    default_decay = ADAMW_WEIGHT_DECAY[convention] if name == "adamw" else 0.0
    weight_decay = number(config.get("weight_decay", default_decay) or 0.0,
                          f"{where}.weight_decay", low=0.0)
    mask_kind = config.get("weight_decay_mask", DEFAULT_DECAY_MASK[convention])
    if mask_kind not in ("weights", "all"):
        raise ConfigError(f"{where}.weight_decay_mask", f"expected 'weights' or 'all', "
                                                        f"got {mask_kind!r}")
    decay_mask = weights_only if mask_kind == "weights" else None
    decoupled = convention in DECOUPLED_WEIGHT_DECAY
    freeze = freeze_list(config.get("freeze"), f"{where}.freeze")
    if freeze and params is not None:
        frozen_labels(params, freeze, f"{where}.freeze")
    try:  # an impossible combination of keys is reported now, with the config path
        rule.build(lr, **_extra(name, lr, weight_decay, decay_mask), **hyper)
    except ConfigError:
        raise
    except ValueError as e:  # a rule's own check, which does not know the key path
        raise ConfigError(where, str(e)) from None

    def build(learning_rate):
        chain = []
        if clip_value is not None:
            chain.append(optax.clip(clip_value))
        if clip_norm is not None:
            chain.append(optax.clip_by_global_norm(clip_norm))
        if weight_decay and name != "adamw" and not decoupled:
            chain.append(optax.add_decayed_weights(weight_decay, decay_mask))
        chain.append(rule.build(learning_rate, **_extra(name, lr, weight_decay, decay_mask),
                                **hyper))
        if weight_decay and name != "adamw" and decoupled:
            # Keras: var -= lr * wd * var, on the params before this step's update.
            chain.append(optax.add_decayed_weights(-learning_rate * weight_decay, decay_mask))
        tx = optax.chain(*chain) if len(chain) > 1 else chain[0]
        if freeze:
            tx = optax.multi_transform(
                {"trainable": tx, "frozen": optax.set_to_zero()},
                lambda tree: frozen_labels(tree, freeze, f"{where}.freeze"))
        return tx

    if plateau_options(config.get("schedule"), f"{where}.schedule") is not None:
        schedule = lr  # a number in the state, which the training loop lowers on a plateau
    return optax.inject_hyperparams(build)(learning_rate=schedule)


def _extra(name: str, lr: float, weight_decay: float, decay_mask: Any) -> dict[str, Any]:
    """Arguments some rules take besides their hyper-parameters."""
    if name == "adamw":
        return {"weight_decay": weight_decay, "mask": decay_mask}
    if name == "adabound":
        return {"base_learning_rate": lr}
    return {}
