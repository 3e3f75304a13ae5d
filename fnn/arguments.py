"""Checks of constructor arguments, done when a layer, loss or metric is built (not when it first
runs under ``jit``). Each returns the checked value or raises one :class:`ArgumentError` naming
who took the argument: ``"Dense: features must be a positive int, got 0"``; the layer kind (or
function) and the rest of the message are kept apart on the error (``who``, ``detail``), so a
caller that knows the place better (a config's key path) uses ``detail`` without parsing text.

Example:
    >>> positive_int("Dense", "features", 8)
    8
    >>> flag("Dense", "use_bias", "yes")
    Traceback (most recent call last):
    fnn.arguments.ArgumentError: Dense: use_bias must be true or false, got 'yes'
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["ArgumentError", "positive_int", "integer", "flag", "number"]


class ArgumentError(ValueError, TypeError):
    """A bad constructor argument: ``who`` took it (a layer kind such as ``"Dense"``), ``detail``
    says what is wrong; the message is ``"who: detail"``. A ``ValueError`` (a bad value) and a
    ``TypeError`` (a missing or unexpected argument) both, as Python's own checks raise either."""

    def __init__(self, who: str, detail: str):
        self.who = who
        self.detail = detail
        super().__init__(f"{who}: {detail}")

    def __reduce__(self):  # pickling: __init__ takes two arguments, not the message
        return (ArgumentError, (self.who, self.detail))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def positive_int(who: str, arg: str, value: Any) -> int:
    """``value`` as an int ``>= 1`` (bools refused)."""
    if not _is_int(value) or value < 1:
        raise ArgumentError(who, f"{arg} must be a positive int, got {value!r}")
    return int(value)


def integer(who: str, arg: str, value: Any) -> int:
    """``value`` as an int (bools refused), e.g. an axis."""
    if not _is_int(value):
        raise ArgumentError(who, f"{arg} must be an int, got {value!r}")
    return int(value)


def flag(who: str, arg: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ArgumentError(who, f"{arg} must be true or false, got {value!r}")
    return value


def number(who: str, arg: str, value: Any) -> float:
    """``value`` as a float, from an int or a float (bools and strings refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentError(who, f"{arg} must be a number, got {value!r}")
    return float(value)
