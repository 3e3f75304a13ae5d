"""Command-line options of ``fnn sweep``: ``KEY=V1,V2`` and ``KEY=LOW,HIGH`` read into keys and
values (``--grid``, ``--choice``, ``--uniform``, ``--loguniform``)."""

from __future__ import annotations

from typing import Any

from fnn.config import ConfigError, parse_yaml
from fnn.selection.errors import SelectionError
from fnn.selection.spaces import check_key

__all__ = ["parse_values", "parse_bounds"]


def _split_assignment(item: str, option: str) -> tuple[str, str]:
    if not isinstance(item, str) or "=" not in item:
        raise SelectionError(f"{option}: expected KEY.PATH=VALUES, e.g. "
                             f"optimizer.learning_rate=1e-4,1e-3; got {item!r}")
    key, text = item.split("=", 1)
    return check_key(key.strip(), option), text


def parse_values(item: str, option: str = "--grid") -> tuple[str, list[Any]]:
    """Parse ``"key=v1,v2,..."`` into ``(key, [v1, v2, ...])``, values read as YAML.

    The values are read as the YAML flow list ``[v1, v2, ...]``, so numbers (``1e-4``),
    strings, ``true``/``null``, and lists or mappings in brackets (``[8, 8],{Dense: 4}``) work.

    Example:
        >>> parse_values("optimizer.learning_rate=1e-4,3e-4")
        ('optimizer.learning_rate', [0.0001, 0.0003])
        >>> parse_values("model.1=Relu,{Dense: 4}", "--choice")
        ('model.1', ['Relu', {'Dense': 4}])
    """
    key, text = _split_assignment(item, option)
    try:
        values = parse_yaml(f"[{text}]", f"{option} {key}")
    except ConfigError as e:
        raise SelectionError(f"{option} {key}: cannot read the values {text!r}: "
                             f"{e.detail}") from None
    if not values:
        raise SelectionError(f"{option} {key}: no values given")
    return key, list(values)


def parse_bounds(item: str, option: str) -> tuple[str, float, float]:
    """Parse ``"key=low,high"`` into ``(key, low, high)`` (two numbers).

    Example:
        >>> parse_bounds("optimizer.learning_rate=1e-4,1e-1", "--loguniform")
        ('optimizer.learning_rate', 0.0001, 0.1)
    """
    key, values = parse_values(item, option)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                               for v in values):
        raise SelectionError(f"{option} {key}: expected two numbers LOW,HIGH, got {values!r}")
    return key, float(values[0]), float(values[1])
