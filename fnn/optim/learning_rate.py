"""The learning rate held in an optimizer state, for logs and metrics.

:func:`fnn.optim.make_optimizer` injects the learning rate with ``optax.inject_hyperparams``,
so the state carries the value in use.

Example:
    >>> opt = fnn.optim.make_optimizer({"name": "sgd", "learning_rate": 0.1})
    >>> current_learning_rate(opt.init({"w": jnp.zeros(3)}))
    0.1
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from fnn.core import key_name

__all__ = ["learning_rate_of", "current_learning_rate"]


def learning_rate_of(opt_state: Any) -> jax.Array | None:
    """The learning rate held in an optimizer state (a scalar array; works inside ``jit``).

    Looks for ``hyperparams["learning_rate"]`` of an ``optax.inject_hyperparams`` state anywhere
    in ``opt_state`` (the outermost one wins), so wrapped states work too. After ``k >= 1``
    updates it is the rate the ``k``-th update used, ``schedule(k - 1)``; right after ``init``,
    the first one's, ``schedule(0)``. ``None`` when the state holds no learning rate.

    Example:
        >>> opt = fnn.optim.make_optimizer({"name": "sgd", "learning_rate": 0.1,
        ...     "schedule": {"name": "step", "step_size": 1, "gamma": 0.5}})
        >>> params = {"w": jnp.zeros(3)}
        >>> opt_state = opt.init(params)
        >>> learning_rate_of(opt_state)                    # schedule(0)
        Array(0.1, dtype=float32)
        >>> for _ in range(2):
        ...     _, opt_state = opt.update({"w": jnp.ones(3)}, opt_state, params)
        >>> metrics = jax.jit(lambda s: {"lr": learning_rate_of(s)})(opt_state)  # in a train step
        >>> metrics["lr"]                                  # the 2nd update's rate, schedule(1)
        Array(0.05, dtype=float32)
    """
    found = optax.tree.get_all_with_path(
        opt_state, "learning_rate",
        filtering=lambda path, value: (len(path) >= 2 and key_name(path[-2]) == "hyperparams"))
    return found[0][1] if found else None


def current_learning_rate(opt_state: Any) -> float | None:
    """The learning rate in ``opt_state`` as a Python float, for logs (outside ``jit``).

    See :func:`learning_rate_of` for which step's rate it is; ``None`` if there is none.

    Example:
        >>> opt = fnn.optim.make_optimizer({"name": "sgd", "learning_rate": 0.1})
        >>> current_learning_rate(opt.init({"w": jnp.zeros(3)}))
        0.1
    """
    lr = learning_rate_of(opt_state)
    # Shortest decimal that round-trips in the state's dtype: 0.1, not 0.10000000149011612.
    return None if lr is None else float(str(np.asarray(lr)))
