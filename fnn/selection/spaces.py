"""Search spaces: the distributions of a random search and the settings of grid and random search.

A setting is a dict ``{dotted config key: value}`` (as in ``fnn.config.apply_overrides``);
:func:`grid_settings` makes every combination of listed values, :func:`random_settings` draws
settings from :class:`Choice`, :class:`Uniform` and :class:`LogUniform` distributions.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fnn.selection.errors import SelectionError

__all__ = ["Choice", "Uniform", "LogUniform", "Distribution", "check_key", "grid_settings",
           "random_settings"]


class Choice(NamedTuple):
    """Draw one of ``values`` uniformly at random.

    Example:
        >>> Choice(("adam", "sgd")).sample(np.random.default_rng(0)) in ("adam", "sgd")
        True
    """

    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        """One value (each with probability ``1 / len(values)``)."""
        return self.values[int(rng.integers(len(self.values)))]


class Uniform(NamedTuple):
    """A float drawn uniformly from ``[low, high)``.

    Example:
        >>> 0.1 <= Uniform(0.1, 0.5).sample(np.random.default_rng(0)) < 0.5
        True
    """

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One value, uniform on ``[low, high)``."""
        return float(rng.uniform(self.low, self.high))


class LogUniform(NamedTuple):
    """A float whose logarithm is uniform: ``exp(U(log low, log high))``, for scales such as
    learning rates (each decade is equally likely).

    Example:
        >>> 1e-4 <= LogUniform(1e-4, 1e-2).sample(np.random.default_rng(0)) <= 1e-2
        True
    """

    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One value; ``P(value < t) = log(t / low) / log(high / low)``."""
        value = float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return min(max(value, self.low), self.high)  # exp(log(x)) may round past a bound


Distribution = Choice | Uniform | LogUniform


def check_key(key: Any, where: str) -> str:
    """``key`` if it is a dotted config path (non-empty parts), else a :class:`SelectionError`
    naming ``where`` (the option or the kind of search).

    Example:
        >>> check_key("optimizer.learning_rate", "grid")
        'optimizer.learning_rate'
        >>> check_key("optimizer..learning_rate", "--grid")
        Traceback (most recent call last):
        fnn.selection.errors.SelectionError: --grid: a config key is a dotted path ...learning_rate'
    """
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise SelectionError(f"{where}: a config key is a dotted path such as "
                             f"optimizer.learning_rate, got {key!r}")
    return key


def _check_distribution(key: str, dist: Any) -> Distribution:
    if isinstance(dist, Choice):
        if not dist.values:
            raise SelectionError(f"{key}: Choice needs at least one value")
        return dist
    if isinstance(dist, (Uniform, LogUniform)):
        kind = type(dist).__name__
        low, high = dist
        for v in (low, high):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SelectionError(f"{key}: {kind} bounds must be finite numbers, got "
                                     f"({low!r}, {high!r})")
        if not low < high:
            raise SelectionError(f"{key}: {kind} needs low < high, got ({low!r}, {high!r})")
        if isinstance(dist, LogUniform) and low <= 0:
            raise SelectionError(f"{key}: LogUniform needs 0 < low < high, got ({low!r}, {high!r})")
        return type(dist)(float(low), float(high))
    if isinstance(dist, (list, tuple)):
        return _check_distribution(key, Choice(tuple(dist)))
    raise SelectionError(f"{key}: expected a list of values, Choice, Uniform or LogUniform, "
                         f"got {dist!r}")


def grid_settings(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values of ``space``: the Cartesian product, in order.

    The last key varies fastest (as ``itertools.product``); an empty space gives one empty
    setting (the config as it is).

    Args:
        space: ``{dotted config key: [value, ...]}``.

    Returns:
        ``prod(len(values))`` settings ``{key: value}``.

    Example:
        >>> grid_settings({"optimizer.learning_rate": [1e-3, 1e-2],
        ...                "training.batch_size": [32, 64]})
        [{'optimizer.learning_rate': 0.001, 'training.batch_size': 32},
         {'optimizer.learning_rate': 0.001, 'training.batch_size': 64},
         {'optimizer.learning_rate': 0.01, 'training.batch_size': 32},
         {'optimizer.learning_rate': 0.01, 'training.batch_size': 64}]
    """
    keys = [check_key(k, "grid") for k in space]
    values = []
    for key in keys:
        vals = space[key]
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not vals:
            raise SelectionError(f"{key}: a grid dimension needs a non-empty list of values, "
                                 f"got {vals!r}")
        values.append(list(vals))
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def random_settings(space: Mapping[str, Distribution | Sequence[Any]], n: int, *,
                    seed: int) -> list[dict[str, Any]]:
    """``n`` settings drawn at random from ``space``, reproducibly from ``seed``.

    Each setting draws every key independently, in the order of ``space``; a plain list is a
    :class:`Choice`. The same ``space``, ``n`` and ``seed`` give the same settings, and the
    first ``m`` settings of a larger ``n`` are the same as those of ``n = m``.

    Example:
        >>> space = {"optimizer.learning_rate": LogUniform(1e-4, 1e-1),
        ...          "model.1.Dense.features": [64, 128, 256]}
        >>> settings = random_settings(space, 8, seed=0)
        >>> len(settings), sorted(settings[0])
        (8, ['model.1.Dense.features', 'optimizer.learning_rate'])
        >>> all(1e-4 <= s["optimizer.learning_rate"] <= 1e-1 for s in settings)
        True
        >>> {s["model.1.Dense.features"] for s in settings} <= {64, 128, 256}
        True
        >>> random_settings(space, 3, seed=0) == settings[:3]
        True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SelectionError(f"random search: the number of settings must be an int >= 1, "
                             f"got {n!r}")
    dists = {check_key(k, "random"): _check_distribution(k, d) for k, d in space.items()}
    if not dists:
        raise SelectionError("random search needs at least one dimension to draw")
    rng = np.random.default_rng(seed)
    return [{key: dist.sample(rng) for key, dist in dists.items()} for _ in range(int(n))]
