"""Validation of optimizer and schedule config values: one-line errors that name the key path.

Every function takes the value and ``where``, the config path used in the message
(``"optimizer.b1"``), and returns the checked value or raises a
:class:`~fnn.errors.ConfigError` (a ``ValueError``) whose ``path`` is that key path.

Example:
    >>> number("1e-3", "optimizer.learning_rate", low=0.0, low_open=True)
    0.001
    >>> check_keys({"betta1": 0.9}, ("b1", "b2"), "optimizer")
    Traceback (most recent call last):
    fnn.errors.ConfigError: optimizer.betta1: unknown key; did you mean b1? (valid keys: b1, b2)
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, Mapping, Sequence

import numpy as np

from fnn.errors import ConfigError

__all__ = ["KEY_ALIASES", "unknown_key", "check_keys", "mapping", "number", "integer",
           "boolean", "choice"]

# Names other libraries (Keras, PyTorch) use for keys of ours: suggested when valid here.
KEY_ALIASES = {"lr": "learning_rate", "beta1": "b1", "beta_1": "b1", "beta2": "b2",
               "beta_2": "b2", "epsilon": "eps", "clipnorm": "clip_norm",
               "clipvalue": "clip_value", "rho": "decay", "alpha": "decay", "type": "name",
               "optimizer": "name", "transition_steps": "decay_steps",
               "initial_accumulator": "initial_accumulator_value",
               "psi": "momentum_decay", "momentum_decay_rate": "momentum_decay"}


def unknown_key(where: str, key: Any, valid: Sequence[str]) -> ConfigError:
    """The error for ``key`` not in ``valid``, with the closest valid keys (or a known alias)."""
    alias = KEY_ALIASES.get(str(key).lower())
    close = [alias] if alias in valid else \
        difflib.get_close_matches(str(key).lower(), list(valid), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}.{key}", f"unknown key{hint} (valid keys: "
                                        f"{', '.join(sorted(valid))})")


def check_keys(config: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    """Raise :func:`unknown_key`'s error for the first key of ``config`` not in ``valid``."""
    for key in config:
        if key not in valid:
            raise unknown_key(where, key, valid)


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping, else a ``ConfigError`` naming ``where``."""
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"expected a mapping of keys to values, "
                                 f"got {type(value).__name__} {value!r}")
    return value


def number(value: Any, where: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A real number in ``[low, high]`` (open ends on request); numeric strings are accepted,
    as YAML 1.1 reads ``1e-3`` (no dot) as a string."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ConfigError(where, f"expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(where, f"must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(where, f"must be {'<' if high_open else '<='} {high:g}, got {value!r}")
    return value


def integer(value: Any, where: str, *, low: int = 1) -> int:
    """An integer ``>= low`` (a float with an integer value is accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(where, f"expected an integer, got {type(value).__name__} "
                                     f"{value!r}")
    if value < low:
        raise ConfigError(where, f"must be >= {low}, got {value!r}")
    return int(value)


def boolean(value: Any, where: str) -> bool:
    """``true`` or ``false`` (no 0/1 or strings)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(where, f"expected true or false, got {type(value).__name__} "
                                 f"{value!r}")
    return bool(value)


def choice(value: Any, where: str, choices: Sequence[str]) -> str:
    """One of the strings ``choices``, with a did-you-mean."""
    if isinstance(value, str) and value in choices:
        return value
    close = difflib.get_close_matches(str(value), list(choices), n=2)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(where, f"expected one of {', '.join(choices)}, got {value!r}{hint}")
