"""Optimizers from config: optax chains with schedules, clipping, weight decay and freezing.

The ``optimizer`` section of a run config is a plain dict; :func:`make_optimizer` turns it into
one ``optax.GradientTransformation``. Everything except AdaBound (which optax lacks) is optax::

    optimizer:
      name: adamw
      learning_rate: 1.0e-3      # the base (peak) learning rate
      b2: 0.99                   # optimizer hyper-parameters, under their optax names
      weight_decay: 1.0e-4
      clip_norm: 1.0
      schedule: {name: cosine, decay_steps: 10000, warmup_steps: 500}
      freeze: [encoder]          # transfer learning: these layers get zero updates

Per trainable leaf the chain is::

    clip_value -> clip_norm -> [L2 weight decay: g + wd * w] -> optimizer (lr from the schedule)

and frozen leaves get zero updates. Updates are *added* to params (``optax.apply_updates``),
so every optimizer's update is ``-lr * direction``. Pass ``params`` to ``update``: weight
decay needs them.

Optimizers (extra keys keep their optax names and defaults, except ``momentum``'s 0.9):

===========  ===========================================  ==================================
name         optax                                        extra keys
===========  ===========================================  ==================================
sgd          ``optax.sgd``                                momentum (None), nesterov
momentum     ``optax.sgd(momentum=...)`` (heavy ball)     momentum (0.9)
nesterov     ``optax.sgd(momentum=..., nesterov=True)``   momentum (0.9)
adagrad      ``optax.adagrad``                            initial_accumulator_value, eps
rmsprop      ``optax.rmsprop``                            decay, eps, initial_scale, eps_in_sqrt,
                                                          centered, momentum, nesterov,
                                                          bias_correction
adadelta     ``optax.adadelta``                           rho, eps
adam         ``optax.adam``                               b1, b2, eps, eps_root
adamw        ``optax.adamw`` (decoupled weight decay)     b1, b2, eps, eps_root, nesterov
nadam        ``optax.nadam``                              b1, b2, eps, eps_root
adamax       ``optax.adamax``                             b1, b2, eps
amsgrad      ``optax.amsgrad``                            b1, b2, eps, eps_root,
                                                          bias_correction_mu, bias_correction_nu
adabound     :func:`adabound` (here)                      final_lr, gamma, b1, b2, eps, amsbound
===========  ===========================================  ==================================

Keys common to every optimizer:

* ``name``, ``learning_rate`` (required; ``learning_rate > 0`` is the base value the schedule
  scales), ``schedule`` (see :func:`make_schedule`);
* ``clip_value``: clip each gradient entry to ``[-v, v]`` (``optax.clip``);
  ``clip_norm``: rescale the gradients of the *trainable* params to global norm at most ``c``
  (``optax.clip_by_global_norm``); both applied before the optimizer, value first;
* ``weight_decay``: for ``adamw`` the decoupled decay of ``optax.adamw``
  (``u = -lr * (adam(g) + wd * w)``, default 1e-4 as in optax); for every other optimizer
  L2 decay added to the gradient before it (``g + wd * w``, as PyTorch's ``weight_decay``),
  default 0. ``weight_decay_mask``: ``"weights"`` (default: leaves whose key is ``w`` or starts
  with ``w_``, see :func:`weights_only`) or ``"all"``;
* ``freeze``: layer names whose params get zero updates and no optimizer state
  (``optax.multi_transform`` with ``optax.set_to_zero``). A name matches any key on the path to a
  leaf (``"dense_0"`` matches ``("serial", "dense_0", "w")``); ``"block/dense_0"`` matches two
  consecutive keys. A name matching nothing is an error.

The learning rate is injected with ``optax.inject_hyperparams``, so the state carries the value
in use: :func:`current_learning_rate` reads it for logs.

Example:
    >>> opt = fnn.optim.make_optimizer({"name": "adam", "learning_rate": 1e-3, "clip_norm": 1.0})
    >>> opt_state = opt.init(params)
    >>> updates, opt_state = opt.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> fnn.optim.current_learning_rate(opt_state)
    0.001
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["make_optimizer", "make_schedule", "optimizer_names", "schedule_names",
           "current_learning_rate", "learning_rate_of", "weights_only", "adabound",
           "scale_by_adabound", "ScaleByAdaBoundState"]


# --------------------------------------------------------------------------- AdaBound

class ScaleByAdaBoundState(NamedTuple):
    """State of :func:`scale_by_adabound`: step count, first and second moments.

    ``nu_max`` is the running maximum of ``nu`` for AMSBound, ``None`` otherwise.
    """

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates | None


def scale_by_adabound(final_lr: float = 0.1, gamma: float = 1e-3, b1: float = 0.9,
                      b2: float = 0.999, eps: float = 1e-8, *, base_learning_rate: float = 1.0,
                      amsbound: bool = False) -> optax.GradientTransformation:
    r"""AdaBound's direction, per unit learning rate (Luo et al. 2019); follow it by ``-lr``.

    Follows the authors' PyTorch implementation (github.com/Luolc/AdaBound), in which the step
    of a parameter at step ``t`` (from 1) with learning rate ``lr_t`` is

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2

        \eta_t = \mathrm{clip}\Big(\frac{lr_t \sqrt{1-\beta_2^t} / (1-\beta_1^t)}
                 {\sqrt{v_t} + \epsilon},\ \eta^l_t,\ \eta^u_t\Big), \qquad
        \theta_t = \theta_{t-1} - \eta_t m_t

        \eta^l_t = f_t\,(1 - \tfrac{1}{\gamma t + 1}), \quad
        \eta^u_t = f_t\,(1 + \tfrac{1}{\gamma t}), \quad
        f_t = \mathrm{final\_lr} \cdot lr_t / \mathrm{base\_lr}

    (``v_t`` replaced by its running maximum for AMSBound). The final (SGD) rate ``f_t`` follows
    the learning-rate schedule as in the reference code; the paper's extra ``1/sqrt(t)`` factor
    is not applied (the reference code omits it; Adam's bias correction takes its place).
    For ``lr_t > 0``, ``clip(lr_t a, lr_t l, lr_t u) = lr_t clip(a, l, u)``, so this
    transformation returns ``clip(a, l, u) * m_t`` with bounds relative to the learning rate
    and ``optax.scale_by_learning_rate`` multiplies by ``-lr_t``, as in every optax optimizer.

    Args:
        final_lr: the SGD learning rate the bounds converge to (for the base learning rate).
        gamma: convergence speed of the bounds, in ``[0, 1)`` (0: plain Adam).
        b1, b2: decay rates of the first and second moments.
        eps: added to ``sqrt(v_t)``.
        base_learning_rate: the learning rate ``final_lr`` belongs to (``> 0``).
        amsbound: use the running maximum of ``v_t`` (AMSBound).

    Example:
        >>> tx = optax.chain(scale_by_adabound(final_lr=0.1, base_learning_rate=1e-3),
        ...                  optax.scale_by_learning_rate(1e-3))
    """
    if not base_learning_rate > 0:
        raise ValueError(f"scale_by_adabound: base_learning_rate must be > 0, "
                         f"got {base_learning_rate!r}")
    if not final_lr >= 0:
        raise ValueError(f"scale_by_adabound: final_lr must be >= 0, got {final_lr!r}")
    if not 0 <= gamma < 1:
        raise ValueError(f"scale_by_adabound: gamma must be in [0, 1), got {gamma!r}")
    ratio = final_lr / base_learning_rate

    def init_fn(params):
        return ScaleByAdaBoundState(
            count=jnp.zeros([], jnp.int32), mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
            nu_max=optax.tree.zeros_like(params) if amsbound else None)

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsbound else None
        step = jnp.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        lower = ratio * (1 - 1 / (gamma * t + 1))
        upper = ratio * (1 + 1 / (gamma * t))

        def direction(g, m, v):
            return (jnp.clip(step / (jnp.sqrt(v) + eps), lower, upper) * m).astype(g.dtype)

        updates = jax.tree.map(direction, updates, mu, nu_max if amsbound else nu)
        return updates, ScaleByAdaBoundState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return optax.GradientTransformation(init_fn, update_fn)


def adabound(learning_rate: optax.ScalarOrSchedule, final_lr: float = 0.1, gamma: float = 1e-3,
             b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
             base_learning_rate: float | None = None,
             amsbound: bool = False) -> optax.GradientTransformation:
    """The AdaBound optimizer (Luo et al. 2019): Adam whose per-parameter step is clipped to
    bounds converging to ``final_lr``, so it turns into SGD; see :func:`scale_by_adabound`.

    Args:
        learning_rate: the Adam learning rate, a number or an optax schedule.
        final_lr, gamma, b1, b2, eps, amsbound: as in :func:`scale_by_adabound`.
        base_learning_rate: the learning rate ``final_lr`` is given for; the bounds scale by
            ``lr_t / base_learning_rate``. Defaults to ``learning_rate`` when it is a number;
            required with a schedule (pass its peak value).

    Example:
        >>> opt = adabound(1e-3, final_lr=0.1)
        >>> updates, state = opt.update(grads, opt.init(params), params)
    """
    if base_learning_rate is None:
        if callable(learning_rate):
            raise ValueError("adabound: base_learning_rate is required when learning_rate is a "
                             "schedule (pass the schedule's base or peak value)")
        base_learning_rate = float(learning_rate)
    return optax.chain(
        scale_by_adabound(final_lr, gamma, b1, b2, eps, base_learning_rate=base_learning_rate,
                          amsbound=amsbound),
        optax.scale_by_learning_rate(learning_rate))


# --------------------------------------------------------------------------- validation

# Names other libraries (Keras, PyTorch) use for keys of ours: suggested when valid here.
_KEY_ALIASES = {"lr": "learning_rate", "beta1": "b1", "beta_1": "b1", "beta2": "b2",
                "beta_2": "b2", "epsilon": "eps", "clipnorm": "clip_norm",
                "clipvalue": "clip_value", "rho": "decay", "type": "name",
                "optimizer": "name", "transition_steps": "decay_steps"}


def _unknown_key(where: str, key: Any, valid: Sequence[str]) -> ValueError:
    alias = _KEY_ALIASES.get(str(key).lower())
    close = [alias] if alias in valid else \
        difflib.get_close_matches(str(key).lower(), list(valid), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"{where}.{key}: unknown key{hint} (valid keys: {', '.join(sorted(valid))})")


def _check_keys(config: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    for key in config:
        if key not in valid:
            raise _unknown_key(where, key, valid)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a mapping of keys to values, "
                         f"got {type(value).__name__} {value!r}")
    return value


def _number(value: Any, where: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    """A real number in ``[low, high]`` (open ends on request); numeric strings are accepted,
    as YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ValueError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{where}: must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{where}: must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return value


def _int(value: Any, where: str, *, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{where}: expected an integer, got {type(value).__name__} "
                             f"{value!r}")
    if value < low:
        raise ValueError(f"{where}: must be >= {low}, got {value!r}")
    return int(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where}: expected true or false, got {type(value).__name__} "
                         f"{value!r}")
    return bool(value)


# Ranges of optimizer hyper-parameters: (low, high, low_open, high_open).
_UNIT = (0.0, 1.0, False, True)  # [0, 1)
_NONNEG = (0.0, None, False, False)
_RANGES: dict[str, tuple] = {
    "b1": _UNIT, "b2": _UNIT, "decay": _UNIT, "rho": _UNIT, "momentum": _UNIT, "gamma": _UNIT,
    "eps": _NONNEG, "eps_root": _NONNEG, "initial_accumulator_value": _NONNEG,
    "initial_scale": _NONNEG, "final_lr": _NONNEG,
}


def _hyper(value: Any, default: Any, where: str) -> Any:
    """Check one optimizer hyper-parameter by the kind of its default."""
    if isinstance(default, bool):
        return _bool(value, where)
    if value is None and default is None:
        return None
    low, high, low_open, high_open = _RANGES.get(where.rsplit(".", 1)[-1], (None,) * 4)
    return _number(value, where, low=low, high=high, low_open=bool(low_open),
                   high_open=bool(high_open))


# --------------------------------------------------------------------------- optimizers

class _Optimizer(NamedTuple):
    factory: Callable[..., optax.GradientTransformation]
    defaults: dict[str, Any]  # accepted hyper-parameters with their defaults
    fixed: dict[str, Any]  # arguments implied by the name, or defaults other than optax's


def _spec(factory: Callable, keys: Sequence[str], fixed: Mapping[str, Any] | None = None,
          **overrides: Any) -> _Optimizer:
    params = inspect.signature(factory).parameters
    defaults = {k: overrides.get(k, params[k].default) for k in keys}
    return _Optimizer(factory, defaults, {**(fixed or {}), **overrides})


_ADAM = ("b1", "b2", "eps", "eps_root")
_OPTIMIZERS: dict[str, _Optimizer] = {
    "sgd": _spec(optax.sgd, ("momentum", "nesterov")),
    "momentum": _spec(optax.sgd, ("momentum",), {"nesterov": False}, momentum=0.9),
    "nesterov": _spec(optax.sgd, ("momentum",), {"nesterov": True}, momentum=0.9),
    "adagrad": _spec(optax.adagrad, ("initial_accumulator_value", "eps")),
    "rmsprop": _spec(optax.rmsprop, ("decay", "eps", "initial_scale", "eps_in_sqrt", "centered",
                                     "momentum", "nesterov", "bias_correction")),
    "adadelta": _spec(optax.adadelta, ("rho", "eps")),
    "adam": _spec(optax.adam, _ADAM),
    "adamw": _spec(optax.adamw, (*_ADAM, "nesterov")),
    "nadam": _spec(optax.nadam, _ADAM),
    "adamax": _spec(optax.adamax, ("b1", "b2", "eps")),
    "amsgrad": _spec(optax.amsgrad, (*_ADAM, "bias_correction_mu", "bias_correction_nu")),
    "adabound": _spec(adabound, ("final_lr", "gamma", "b1", "b2", "eps", "amsbound")),
}
_COMMON_KEYS = ("name", "learning_rate", "schedule", "clip_value", "clip_norm", "weight_decay",
                "weight_decay_mask", "freeze")
_ADAMW_WEIGHT_DECAY = inspect.signature(optax.adamw).parameters["weight_decay"].default


def optimizer_names() -> list[str]:
    """All optimizer names accepted by :func:`make_optimizer`."""
    return sorted(_OPTIMIZERS)


def _optimizer(name: Any, where: str) -> _Optimizer:
    if not isinstance(name, str):
        raise ValueError(f"{where}: expected an optimizer name, got {name!r} "
                         f"(known: {', '.join(optimizer_names())})")
    spec = _OPTIMIZERS.get(name.lower())
    if spec is None:
        close = difflib.get_close_matches(name.lower(), _OPTIMIZERS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{where}: unknown optimizer {name!r}{hint} "
                         f"(known: {', '.join(optimizer_names())})")
    return spec


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def weights_only(params: optax.Params) -> Any:
    """Weight-decay mask: ``True`` for weights (leaf key ``"w"`` or starting with ``"w_"``).

    Biases, normalization ``scale``/``offset`` and other leaves are ``False``, as is a leaf not
    held under a dict key. Shapes: a pytree of bools with the structure of ``params``.

    Example:
        >>> weights_only({"dense_0": {"w": w, "b": b}, "lstm": {"w_ih": w2}})
        {'dense_0': {'b': False, 'w': True}, 'lstm': {'w_ih': True}}
    """
    from fnn.regularizers import is_weight

    def mask(keypath, _):
        if not keypath or not isinstance(keypath[-1], jax.tree_util.DictKey):
            return False
        return is_weight((str(keypath[-1].key),))

    return jax.tree_util.tree_map_with_path(mask, params)


def _frozen_labels(params: optax.Params, freeze: Sequence[tuple[str, ...]],
                   where: str) -> Any:
    """Label each leaf ``"frozen"`` (under a named layer) or ``"trainable"``; every name must
    match. A name's parts match consecutive keys on the leaf's path, its own name excluded."""
    def matches(parts: tuple[str, ...], keys: tuple[str, ...]) -> bool:
        n = len(parts)
        return any(keys[i:i + n] == parts for i in range(len(keys) - n + 1))

    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    layer_paths = [tuple(_key_name(k) for k in kp[:-1]) for kp, _ in leaves]
    for parts in freeze:
        if not any(matches(parts, keys) for keys in layer_paths):
            layer_keys = sorted({k for keys in layer_paths for k in keys})
            close = difflib.get_close_matches(parts[-1], layer_keys, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else \
                f"; layer keys: {', '.join(layer_keys) or '(none)'}"
            raise ValueError(f"{where}: no layer {'/'.join(parts)!r} in params{hint}")
    labels = ["frozen" if any(matches(p, keys) for p in freeze) else "trainable"
              for keys in layer_paths]
    return jax.tree_util.tree_unflatten(treedef, labels)


def _freeze_list(value: Any, where: str) -> tuple[tuple[str, ...], ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v and all(v.split("/")) for v in value):
        raise ValueError(f"{where}: expected a list of layer names such as ['dense_0', "
                         f"'block/dense_1'], got {value!r}")
    return tuple(tuple(v.split("/")) for v in value)


def make_optimizer(config: Mapping[str, Any], *, params: optax.Params | None = None,
                   where: str = "optimizer") -> optax.GradientTransformationExtraArgs:
    """Build the optax optimizer described by an ``optimizer`` config section.

    Args:
        config: ``{"name": ..., "learning_rate": ..., <optimizer keys>, "schedule": {...},
            "clip_value", "clip_norm", "weight_decay", "weight_decay_mask", "freeze"}``; see the
            module docstring for the keys of each optimizer.
        params: optional params pytree; when given, ``freeze`` names are checked now rather
            than at ``init``.
        where: the config path used in error messages.

    Returns:
        An ``optax.GradientTransformationExtraArgs``; its state is an
        ``optax.InjectStatefulHyperparamsState`` whose ``hyperparams["learning_rate"]`` is the
        learning rate in use (see :func:`current_learning_rate`). Its ``update`` needs
        ``params`` when weight decay is on.

    Raises:
        ValueError: naming the key path, for an unknown optimizer, an unknown key (with the
            closest valid keys), a missing or ill-typed value, or a frozen layer not in params.

    Example:
        >>> opt = make_optimizer({"name": "momentum", "learning_rate": 0.1, "momentum": 0.9,
        ...                       "freeze": ["dense_0"]})
        >>> state = opt.init(params)
        >>> updates, state = opt.update(grads, state, params)   # zeros under dense_0
    """
    config = _mapping(config, where)
    if "name" not in config:
        raise ValueError(f"{where}.name: required (one of {', '.join(optimizer_names())})")
    spec = _optimizer(config["name"], f"{where}.name")
    name = config["name"].lower()
    _check_keys(config, (*_COMMON_KEYS, *spec.defaults), where)
    if "learning_rate" not in config:
        raise ValueError(f"{where}.learning_rate: required")
    lr = _number(config["learning_rate"], f"{where}.learning_rate", low=0.0, low_open=True)
    schedule = make_schedule(lr, config.get("schedule"), where=f"{where}.schedule")
    hyper = {k: _hyper(config[k], spec.defaults[k], f"{where}.{k}")
             for k in spec.defaults if k in config}

    def optional_positive(key: str) -> float | None:
        value = config.get(key)
        return None if value is None else _number(value, f"{where}.{key}", low=0.0,
                                                  low_open=True)

    clip_value, clip_norm = optional_positive("clip_value"), optional_positive("clip_norm")
    default_decay = _ADAMW_WEIGHT_DECAY if name == "adamw" else 0.0
    weight_decay = _number(config.get("weight_decay", default_decay) or 0.0,
                           f"{where}.weight_decay", low=0.0)
    mask_kind = config.get("weight_decay_mask", "weights")
    if mask_kind not in ("weights", "all"):
        raise ValueError(f"{where}.weight_decay_mask: expected 'weights' or 'all', "
                         f"got {mask_kind!r}")
    decay_mask = weights_only if mask_kind == "weights" else None
    freeze = _freeze_list(config.get("freeze"), f"{where}.freeze")
    if freeze and params is not None:
        _frozen_labels(params, freeze, f"{where}.freeze")

    def build(learning_rate):
        chain = []
        if clip_value is not None:
            chain.append(optax.clip(clip_value))
        if clip_norm is not None:
            chain.append(optax.clip_by_global_norm(clip_norm))
        kwargs = {**spec.fixed, **hyper}
        if name == "adamw":
            kwargs.update(weight_decay=weight_decay, mask=decay_mask)
        elif weight_decay:
            chain.append(optax.add_decayed_weights(weight_decay, decay_mask))
        if name == "adabound":
            kwargs["base_learning_rate"] = lr
        chain.append(spec.factory(learning_rate, **kwargs))
        tx = optax.chain(*chain) if len(chain) > 1 else chain[0]
        if freeze:
            tx = optax.multi_transform(
                {"trainable": tx, "frozen": optax.set_to_zero()},
                lambda tree: _frozen_labels(tree, freeze, f"{where}.freeze"))
        return tx

    return optax.inject_hyperparams(build)(learning_rate=schedule)


# --------------------------------------------------------------------------- learning rate

def learning_rate_of(opt_state: Any) -> jax.Array | None:
    """The learning rate held in an optimizer state (a scalar array; works inside ``jit``).

    Looks for ``hyperparams["learning_rate"]`` of an ``optax.inject_hyperparams`` state anywhere
    in ``opt_state`` (the outermost one wins), so wrapped states work too. After ``k >= 1``
    updates it is the rate the ``k``-th update used, ``schedule(k - 1)``; right after ``init``,
    the first one's, ``schedule(0)``. ``None`` when the state holds no learning rate.

    Example:
        >>> metrics["lr"] = learning_rate_of(opt_state)   # inside a jitted train step
    """
    found = optax.tree.get_all_with_path(
        opt_state, "learning_rate",
        filtering=lambda path, value: (len(path) >= 2 and _key_name(path[-2]) == "hyperparams"))
    return found[0][1] if found else None


def current_learning_rate(opt_state: Any) -> float | None:
    """The learning rate in ``opt_state`` as a Python float, for logs (outside ``jit``).

    See :func:`learning_rate_of` for which step's rate it is; ``None`` if there is none.

    Example:
        >>> opt = make_optimizer({"name": "sgd", "learning_rate": 0.1})
        >>> current_learning_rate(opt.init({"w": jnp.zeros(3)}))
        0.1
    """
    lr = learning_rate_of(opt_state)
    # Shortest decimal that round-trips in the state's dtype: 0.1, not 0.10000000149011612.
    return None if lr is None else float(str(np.asarray(lr)))


# --------------------------------------------------------------------------- schedules

def _inverse_time(lr: float, decay_rate: float, decay_steps: int,
                  staircase: bool) -> optax.Schedule:
    def schedule(count):
        t = jnp.asarray(count, jnp.float32) / decay_steps
        return lr / (1 + decay_rate * (jnp.floor(t) if staircase else t))
    return schedule


def _inverse_sqrt(lr: float, decay_steps: int) -> optax.Schedule:
    def schedule(count):
        return lr / jnp.sqrt(1 + jnp.asarray(count, jnp.float32) / decay_steps)
    return schedule


def _step(lr: float, c: Mapping[str, Any], where: str) -> optax.Schedule:
    by_boundaries = "boundaries" in c or "scales" in c
    by_size = "step_size" in c or "gamma" in c
    if by_boundaries == by_size:
        raise ValueError(f"{where}: a step schedule takes either boundaries and scales, or "
                         f"step_size (and gamma), got keys {sorted(k for k in c if k != 'name')}")
    if by_size:
        if "step_size" not in c:
            raise ValueError(f"{where}.step_size: required with gamma")
        step_size = _int(c["step_size"], f"{where}.step_size")
        gamma = _number(c.get("gamma", 0.1), f"{where}.gamma", low=0.0)
        return optax.exponential_decay(lr, step_size, gamma, staircase=True)
    boundaries, scales = c.get("boundaries"), c.get("scales")
    if not isinstance(boundaries, (list, tuple)) or not isinstance(scales, (list, tuple)) \
            or len(boundaries) != len(scales) or not boundaries:
        raise ValueError(f"{where}: boundaries and scales must be lists of the same non-zero "
                         f"length, got boundaries={boundaries!r}, scales={scales!r}")
    bounds = [_int(b, f"{where}.boundaries[{i}]") for i, b in enumerate(boundaries)]
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"{where}.boundaries: must be increasing, got {bounds}")
    factors = [_number(s, f"{where}.scales[{i}]", low=0.0) for i, s in enumerate(scales)]
    return optax.piecewise_constant_schedule(lr, dict(zip(bounds, factors)))


# name -> (accepted keys besides name/warmup_steps/init_value, required keys)
_SCHEDULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "constant": ((), ()),
    "step": (("boundaries", "scales", "step_size", "gamma"), ()),
    "exponential": (("decay_rate", "decay_steps", "staircase"), ("decay_rate", "decay_steps")),
    "inverse_time": (("decay_rate", "decay_steps", "staircase"), ("decay_rate",)),
    "inverse_sqrt": (("decay_steps",), ()),
    "cosine": (("decay_steps", "alpha"), ("decay_steps",)),
}
_SCHEDULE_ALIASES = {"piecewise": "step", "piecewise_constant": "step"}


def schedule_names() -> list[str]:
    """All schedule names accepted by :func:`make_schedule` (aliases included)."""
    return sorted([*_SCHEDULES, *_SCHEDULE_ALIASES])


def make_schedule(learning_rate: float, config: Mapping[str, Any] | str | None = None, *,
                  where: str = "optimizer.schedule") -> optax.Schedule:
    """Build a learning-rate schedule ``count -> lr`` from a ``schedule`` config section.

    ``learning_rate`` is the base (peak) value ``lr``; ``t`` is the step count from 0, counted
    from the end of warmup when there is one. Schedules (defaults in brackets):

    * ``constant``: ``lr`` (``optax.constant_schedule``).
    * ``step`` (alias ``piecewise``), either ``boundaries`` and ``scales``:
      ``lr * prod(scales[i] for boundaries[i] <= t)``, the scales multiplying one another as in
      ``optax.piecewise_constant_schedule``; or ``step_size`` and ``gamma`` [0.1]:
      ``lr * gamma ** floor(t / step_size)`` (``optax.exponential_decay``, staircase).
    * ``exponential``: ``decay_rate``, ``decay_steps``, ``staircase`` [false]:
      ``lr * decay_rate ** (t / decay_steps)``, the exponent floored with ``staircase``
      (``optax.exponential_decay``).
    * ``inverse_time`` (1/t): ``decay_rate``, ``decay_steps`` [1], ``staircase`` [false]:
      ``lr / (1 + decay_rate * t / decay_steps)``, ``t / decay_steps`` floored with staircase.
    * ``inverse_sqrt`` (1/sqrt(t)): ``decay_steps`` [1]: ``lr / sqrt(1 + t / decay_steps)``.
    * ``cosine``: ``decay_steps`` ``D``, ``alpha`` [0]:
      ``lr * ((1 - alpha) * (1 + cos(pi * min(t, D) / D)) / 2 + alpha)``
      (``optax.cosine_decay_schedule``).

    Any of them may start with a linear warmup: ``warmup_steps: W`` goes linearly from
    ``init_value`` [0] to ``lr`` over ``W`` steps, then the schedule runs from its own step 0
    (``optax.join_schedules``), so ``decay_steps`` count after the warmup.

    Args:
        learning_rate: base learning rate.
        config: ``None`` (constant), a name, or ``{"name": ..., <keys>, "warmup_steps",
            "init_value"}``.
        where: the config path used in error messages.

    Raises:
        ValueError: naming the key path, for an unknown schedule or key, or a bad value.

    Example:
        >>> s = make_schedule(0.1, {"name": "cosine", "decay_steps": 100, "warmup_steps": 10})
        >>> [round(float(s(t)), 4) for t in (0, 5, 10, 60, 110)]
        [0.0, 0.05, 0.1, 0.05, 0.0]
    """
    lr = _number(learning_rate, "learning_rate", low=0.0)
    if config is None:
        config = {"name": "constant"}
    elif isinstance(config, str):
        config = {"name": config}
    config = _mapping(config, where)
    raw_name = config.get("name", "constant")
    name = _SCHEDULE_ALIASES.get(raw_name, raw_name) if isinstance(raw_name, str) else raw_name
    if name not in _SCHEDULES:
        close = difflib.get_close_matches(str(raw_name), schedule_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{where}.name: unknown schedule {raw_name!r}{hint} "
                         f"(known: {', '.join(schedule_names())})")
    keys, required = _SCHEDULES[name]
    _check_keys(config, ("name", "warmup_steps", "init_value", *keys), where)
    for key in required:
        if key not in config:
            raise ValueError(f"{where}.{key}: required for the {name!r} schedule")
    c = config

    def steps(key: str, default: int = 1) -> int:
        return _int(c.get(key, default), f"{where}.{key}")

    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "step":
        main = _step(lr, c, where)
    elif name == "exponential":
        main = optax.exponential_decay(
            lr, steps("decay_steps"), _number(c["decay_rate"], f"{where}.decay_rate", low=0.0),
            staircase=_bool(c.get("staircase", False), f"{where}.staircase"))
    elif name == "inverse_time":
        main = _inverse_time(lr, _number(c["decay_rate"], f"{where}.decay_rate", low=0.0),
                             steps("decay_steps"),
                             _bool(c.get("staircase", False), f"{where}.staircase"))
    elif name == "inverse_sqrt":
        main = _inverse_sqrt(lr, steps("decay_steps"))
    else:  # cosine
        main = optax.cosine_decay_schedule(
            lr, steps("decay_steps"),
            _number(c.get("alpha", 0.0), f"{where}.alpha", low=0.0, high=1.0))

    warmup = _int(c.get("warmup_steps", 0), f"{where}.warmup_steps", low=0)
    if not warmup:
        if "init_value" in c:
            raise ValueError(f"{where}.init_value: the warmup start value needs warmup_steps")
        return main
    init_value = _number(c.get("init_value", 0.0), f"{where}.init_value", low=0.0)
    return optax.join_schedules(
        [optax.linear_schedule(init_value, lr, warmup), main], [warmup])
