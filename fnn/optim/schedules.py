"""Learning-rate schedules from config: ``count -> learning rate`` functions (optax schedules).

:func:`make_schedule` turns the ``schedule`` key of an ``optimizer`` config section into an
``optax.Schedule``; the optimizer builder (:mod:`fnn.optim.builder`) injects it.

Example:
    >>> s = make_schedule(0.1, {"name": "step", "step_size": 10, "gamma": 0.5})
    >>> round(float(s(25)), 6)                     # 0.1 * 0.5 ** (25 // 10)
    0.025
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

import jax.numpy as jnp
import optax

from fnn.errors import ConfigError
from fnn.optim.checks import boolean, check_keys, integer, mapping, number

__all__ = ["make_schedule", "schedule_names", "plateau_options"]


def _float() -> jnp.dtype:
    """The default float dtype: float32, or float64 under ``jax_enable_x64``."""
    return jnp.result_type(float)


def _in_default_float(schedule: optax.Schedule) -> optax.Schedule:
    """``schedule`` called with a float step count, so that it computes in float64 under
    ``jax_enable_x64`` (optax divides the int32 count into float32 otherwise)."""
    def float_schedule(count):
        return schedule(jnp.asarray(count, _float()))
    return float_schedule


def _inverse_time(lr: float, decay_rate: float, decay_steps: int,
                  staircase: bool) -> optax.Schedule:
    def schedule(count):
        t = jnp.asarray(count, _float()) / decay_steps
        return lr / (1 + decay_rate * (jnp.floor(t) if staircase else t))
    return schedule


def _inverse_sqrt(lr: float, decay_steps: int) -> optax.Schedule:
    def schedule(count):
        return lr / jnp.sqrt(1 + jnp.asarray(count, _float()) / decay_steps)
    return schedule


def _step(lr: float, c: Mapping[str, Any], where: str) -> optax.Schedule:
    by_boundaries = "boundaries" in c or "scales" in c
    by_size = "step_size" in c or "gamma" in c
    if by_boundaries == by_size:
        keys = sorted(k for k in c if k != "name")
        raise ConfigError(where, f"a step schedule takes either boundaries and scales, or "
                                 f"step_size (and gamma), got keys {keys}")
    if by_size:
        if "step_size" not in c:
            raise ConfigError(f"{where}.step_size", "required with gamma")
        step_size = integer(c["step_size"], f"{where}.step_size")
        gamma = number(c.get("gamma", 0.1), f"{where}.gamma", low=0.0)
        return optax.exponential_decay(lr, step_size, gamma, staircase=True)
    boundaries, scales = c.get("boundaries"), c.get("scales")
    if not isinstance(boundaries, (list, tuple)) or not isinstance(scales, (list, tuple)) \
            or len(boundaries) != len(scales) or not boundaries:
        raise ConfigError(where, f"boundaries and scales must be lists of the same non-zero "
                                 f"length, got boundaries={boundaries!r}, scales={scales!r}")
    bounds = [integer(b, f"{where}.boundaries[{i}]") for i, b in enumerate(boundaries)]
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ConfigError(f"{where}.boundaries", f"must be increasing, got {bounds}")
    factors = [number(s, f"{where}.scales[{i}]", low=0.0) for i, s in enumerate(scales)]
    return optax.piecewise_constant_schedule(lr, dict(zip(bounds, factors)))


# name -> (accepted keys besides name/warmup_steps/init_value, required keys)
_SCHEDULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "constant": ((), ()),
    "step": (("boundaries", "scales", "step_size", "gamma"), ()),
    "exponential": (("decay_rate", "decay_steps", "staircase"), ("decay_rate", "decay_steps")),
    "inverse_time": (("decay_rate", "decay_steps", "staircase"), ("decay_rate",)),
    "inverse_sqrt": (("decay_steps",), ()),
    "cosine": (("decay_steps", "alpha"), ("decay_steps",)),
    "plateau": (("factor", "patience", "monitor", "mode", "min_delta", "min_lr"), ()),
}
_SCHEDULE_ALIASES = {"piecewise": "step", "piecewise_constant": "step"}


def plateau_options(config: Any, where: str = "optimizer.schedule") -> dict[str, Any] | None:
    """The checked options of a ``plateau`` schedule section (``None`` for another schedule):
    ``{"factor", "patience", "monitor", "mode", "min_delta", "min_lr"}``."""
    if not isinstance(config, Mapping) or config.get("name") != "plateau":
        return None
    if "warmup_steps" in config or "init_value" in config:
        raise ValueError(f"{where}: the plateau schedule takes no warmup")
    mode = config.get("mode", "auto")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{where}.mode: must be auto, min or max, got {mode!r}")
    monitor = config.get("monitor", "val_loss")
    if not isinstance(monitor, str):
        raise ValueError(f"{where}.monitor: must be a metric name such as val_loss, got "
                         f"{monitor!r}")
    return {"factor": number(config.get("factor", 0.1), f"{where}.factor", low=0.0, high=1.0,
                             low_open=True, high_open=True),
            "patience": integer(config.get("patience", 10), f"{where}.patience"),
            "monitor": monitor, "mode": mode,
            "min_delta": number(config.get("min_delta", 0.0), f"{where}.min_delta", low=0.0),
            "min_lr": number(config.get("min_lr", 0.0), f"{where}.min_lr", low=0.0)}


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
    * ``plateau``: ``factor`` [0.1], ``patience`` [10], ``monitor`` [val_loss], ``mode``
      [auto], ``min_delta`` [0], ``min_lr`` [0]: ``lr``, multiplied by ``factor`` by the
      training loop after ``patience`` epochs without improvement of ``monitor``
      (:mod:`fnn.train.plateau`; no warmup).
    * ``cosine``: ``decay_steps`` ``D``, ``alpha`` [0]:
      ``lr * ((1 - alpha) * (1 + cos(pi * min(t, D) / D)) / 2 + alpha)``
      (``optax.cosine_decay_schedule``).

    Any of them may start with a linear warmup: ``warmup_steps: W`` goes linearly from
    ``init_value`` [0] to ``lr`` over ``W`` steps, then the schedule runs from its own step 0
    (``optax.join_schedules``), so ``decay_steps`` count after the warmup.

    The step count is converted to the default float dtype first, so a schedule computes in
    float64 under ``jax_enable_x64`` (float32 otherwise, with the same values as optax's).

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
    lr = number(learning_rate, "learning_rate", low=0.0)
    if config is None:
        config = {"name": "constant"}
    elif isinstance(config, str):
        config = {"name": config}
    config = mapping(config, where)
    raw_name = config.get("name", "constant")
    name = _SCHEDULE_ALIASES.get(raw_name, raw_name) if isinstance(raw_name, str) else raw_name
    if name not in _SCHEDULES:
        close = difflib.get_close_matches(str(raw_name), schedule_names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{where}.name", f"unknown schedule {raw_name!r}{hint} "
                                           f"(known: {', '.join(schedule_names())})")
    keys, required = _SCHEDULES[name]
    check_keys(config, ("name", "warmup_steps", "init_value", *keys), where)
    for key in required:
        if key not in config:
            raise ConfigError(f"{where}.{key}", f"required for the {name!r} schedule")
    c = config

    def steps(key: str, default: int = 1) -> int:
        return integer(c.get(key, default), f"{where}.{key}")

    if name == "plateau":  # the loop lowers a constant rate (fnn.train.plateau)
        plateau_options(c, where)
        main = optax.constant_schedule(lr)
    elif name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "step":
        main = _step(lr, c, where)
    elif name == "exponential":
        main = optax.exponential_decay(
            lr, steps("decay_steps"), number(c["decay_rate"], f"{where}.decay_rate", low=0.0),
            staircase=boolean(c.get("staircase", False), f"{where}.staircase"))
    elif name == "inverse_time":
        main = _inverse_time(lr, number(c["decay_rate"], f"{where}.decay_rate", low=0.0),
                             steps("decay_steps"),
                             boolean(c.get("staircase", False), f"{where}.staircase"))
    elif name == "inverse_sqrt":
        main = _inverse_sqrt(lr, steps("decay_steps"))
    else:  # cosine
        main = optax.cosine_decay_schedule(
            lr, steps("decay_steps"),
            number(c.get("alpha", 0.0), f"{where}.alpha", low=0.0, high=1.0))

    warmup = integer(c.get("warmup_steps", 0), f"{where}.warmup_steps", low=0)
    if not warmup:
        if "init_value" in c:
            raise ConfigError(f"{where}.init_value", "the warmup start value needs warmup_steps")
        return _in_default_float(main)
    init_value = number(c.get("init_value", 0.0), f"{where}.init_value", low=0.0)
    return _in_default_float(optax.join_schedules(
        [optax.linear_schedule(init_value, lr, warmup), main], [warmup]))
