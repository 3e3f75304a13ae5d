"""Optimizers from config: optax chains with conventions, schedules, clipping, weight decay
and freezing.

The ``optimizer`` section of a run config is a plain dict; :func:`make_optimizer` turns it into
one ``optax.GradientTransformation``::

    optimizer:
      name: adamw
      learning_rate: 1.0e-3      # the base (peak) learning rate
      convention: paper          # paper (default) | pytorch | keras | optax
      b2: 0.99                   # optimizer hyper-parameters
      weight_decay: 1.0e-4
      clip_norm: 1.0
      schedule: {name: cosine, decay_steps: 10000, warmup_steps: 500}
      freeze: [encoder]          # transfer learning: these layers get zero updates

Optimizers: sgd, momentum, nesterov, adagrad, rmsprop, adadelta, adam, adamw, nadam, adamax,
amsgrad, adabound. By default each follows the update rule of its paper; ``convention``
selects PyTorch's, Keras' or optax's rule and defaults where they differ, and any single
choice is also a key of its own (``eps_in_sqrt``, ``eps_hat``, ``max_of``, ...). The table of
rules, defaults and conventions is docs/OPTIMIZERS.md.

Modules, one job each:

* :mod:`fnn.optim.builder`: :func:`make_optimizer`, the config -> optax chain;
* :mod:`fnn.optim.rules`: each optimizer's rule and defaults under each convention;
* :mod:`fnn.optim.transforms`: the gradient transformations optax lacks (AdaBound, AdaGrad
  with epsilon outside the root, Adam/AMSGrad variants, NAdam's momentum schedule, AdaMax
  with epsilon outside the maximum);
* :mod:`fnn.optim.schedules`: :func:`make_schedule`;
* :mod:`fnn.optim.masks`: the weight-decay mask and frozen-layer labels;
* :mod:`fnn.optim.learning_rate`: the learning rate in an optimizer state;
* :mod:`fnn.optim.checks`: config value checks with one-line errors.

Example:
    >>> net = fnn.serial(fnn.Dense(4), fnn.Relu, fnn.Dense(2))
    >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
    >>> grads = jax.tree.map(jnp.ones_like, params)          # stand-in gradients
    >>> opt = fnn.optim.make_optimizer({"name": "adam", "learning_rate": 1e-3, "clip_norm": 1.0})
    >>> opt_state = opt.init(params)
    >>> updates, opt_state = opt.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> fnn.optim.current_learning_rate(opt_state)
    0.001
"""

from fnn.optim.builder import make_optimizer, optimizer_names
from fnn.optim.learning_rate import current_learning_rate, learning_rate_of
from fnn.optim.masks import weights_only
from fnn.optim.rules import CONVENTIONS
from fnn.optim.schedules import make_schedule, schedule_names
from fnn.optim.transforms import (ScaleByAdaBoundState, adabound, scale_by_adabound,
                                  scale_by_adagrad, scale_by_adam_variant, scale_by_adamax,
                                  scale_by_nadam)

__all__ = ["make_optimizer", "make_schedule", "optimizer_names", "schedule_names",
           "current_learning_rate", "learning_rate_of", "weights_only", "adabound",
           "scale_by_adabound", "ScaleByAdaBoundState", "CONVENTIONS", "scale_by_adagrad",
           "scale_by_adam_variant", "scale_by_nadam", "scale_by_adamax"]
