"""The update rule of each optimizer under each convention: which optax chain, which defaults.

``RULES[name][convention]`` is a :class:`Rule`: the hyper-parameters the optimizer accepts with
their defaults under that convention, and ``build(learning_rate, **hyper)`` returning the
``optax.GradientTransformation`` (the learning rate is a scalar or a schedule). Conventions:

* ``paper`` (the default): the update rule of the paper that introduced the optimizer;
* ``pytorch``, ``keras``, ``optax``: the rule and defaults of ``torch.optim``, ``keras.optimizers``
  (Keras 3) and ``optax``, where they differ.

Every rule is an optax chain; the transformations optax lacks are in
:mod:`fnn.optim.transforms`. The exact formulas, defaults and sources are tabulated in
docs/OPTIMIZERS.md; tests/test_optim_conventions.py checks each against NumPy.

Example:
    >>> rule = RULES["adagrad"]["pytorch"]
    >>> rule.defaults
    {'initial_accumulator_value': 0.0, 'eps': 1e-10, 'eps_in_sqrt': False}
    >>> tx = rule.build(0.01, **rule.defaults)
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, _ = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params), params)
    >>> np.allclose(updates["w"], [-0.01, 0.01])    # first step: -lr * g / |g|
    True
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import optax

from fnn.optim.transforms import (adabound, scale_by_adagrad, scale_by_adam_variant,
                                  scale_by_adamax, scale_by_nadam)

__all__ = ["CONVENTIONS", "Rule", "RULES", "ADAMW_WEIGHT_DECAY", "DEFAULT_DECAY_MASK",
           "DECOUPLED_WEIGHT_DECAY"]

CONVENTIONS = ("paper", "pytorch", "keras", "optax")

# AdamW's default weight decay under each convention (torch.optim.AdamW 1e-2, Keras 4e-3,
# optax 1e-4; the paper gives none, fnn keeps optax's).
ADAMW_WEIGHT_DECAY = {"paper": 1e-4, "pytorch": 1e-2, "keras": 4e-3, "optax": 1e-4}
# Which leaves weight decay applies to by default: fnn's choice "weights" for the paper
# convention; PyTorch, Keras and optax decay every parameter unless told otherwise.
DEFAULT_DECAY_MASK = {"paper": "weights", "pytorch": "all", "keras": "all", "optax": "all"}
# Keras applies `weight_decay` of every optimizer decoupled (var -= lr * wd * var, before the
# step); the others add wd * w to the gradient (L2), except AdamW which is always decoupled.
DECOUPLED_WEIGHT_DECAY = {"keras"}


class Rule(NamedTuple):
    """One optimizer under one convention."""

    build: Callable[..., optax.GradientTransformation]  # build(learning_rate, **hyper)
    defaults: Mapping[str, Any]  # every accepted hyper-parameter with its default


def _by_lr(scale: optax.GradientTransformation, learning_rate) -> optax.GradientTransformation:
    return optax.chain(scale, optax.scale_by_learning_rate(learning_rate))


# --------------------------------------------------------------------------- SGD family

def _sgd(learning_rate, momentum=None, nesterov=False, *, lr_in_buffer=False):
    """Heavy ball / Nesterov. PyTorch and optax keep the learning rate out of the buffer
    (``v = mu v + g; p -= lr v``), Keras in it (``v = mu v - lr g; p += v``); the two agree
    while the learning rate is constant."""
    if not lr_in_buffer or momentum is None:
        return optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    return optax.chain(optax.scale_by_learning_rate(learning_rate),
                       optax.trace(decay=momentum, nesterov=nesterov))


def _sgd_rules(momentum, nesterov=None) -> dict[str, Rule]:
    def build(lr_in_buffer):
        if nesterov is None:
            return lambda lr, momentum, nesterov: _sgd(lr, momentum, nesterov,
                                                       lr_in_buffer=lr_in_buffer)
        return lambda lr, momentum: _sgd(lr, momentum, nesterov, lr_in_buffer=lr_in_buffer)

    defaults = {"momentum": momentum} if nesterov is not None else \
        {"momentum": momentum, "nesterov": False}
    return {c: Rule(build(c == "keras"), defaults) for c in CONVENTIONS}


# --------------------------------------------------------------------------- adaptive

def _adagrad(learning_rate, initial_accumulator_value, eps, eps_in_sqrt):
    if eps_in_sqrt:
        return optax.adagrad(learning_rate, initial_accumulator_value, eps)
    return _by_lr(scale_by_adagrad(initial_accumulator_value, eps), learning_rate)


def _rmsprop(learning_rate, decay, eps, initial_scale, eps_in_sqrt, centered, momentum,
             nesterov, bias_correction, *, lr_in_buffer=True):
    """optax and Keras put the learning rate inside the momentum buffer, PyTorch outside."""
    if lr_in_buffer:
        return optax.rmsprop(learning_rate, decay=decay, eps=eps, initial_scale=initial_scale,
                             eps_in_sqrt=eps_in_sqrt, centered=centered, momentum=momentum,
                             nesterov=nesterov, bias_correction=bias_correction)
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    chain = [scale(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt,
                   bias_correction=bias_correction)]
    if momentum is not None:
        chain.append(optax.trace(decay=momentum, nesterov=nesterov))
    return optax.chain(*chain, optax.scale_by_learning_rate(learning_rate))


def _rmsprop_pytorch(learning_rate, **hyper):
    return _rmsprop(learning_rate, **hyper, lr_in_buffer=False)


def _adadelta(learning_rate, rho, eps):
    return optax.adadelta(learning_rate, rho=rho, eps=eps)


# --------------------------------------------------------------------------- Adam family

def _adam(learning_rate, b1, b2, eps, eps_root, eps_hat):
    if not eps_hat:
        return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    return _by_lr(scale_by_adam_variant(b1, b2, eps, eps_root, eps_hat=True), learning_rate)


def _adamw(learning_rate, b1, b2, eps, eps_root, nesterov, eps_hat, *, weight_decay, mask):
    """Decoupled weight decay ``p -= lr * (adam(g) + wd * p)`` (optax, PyTorch, Keras); the
    paper's ``eta_t * lambda`` with ``eta_t = lr_t / lr`` is this with ``lambda = lr * wd``."""
    if not eps_hat:
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                           weight_decay=weight_decay, mask=mask, nesterov=nesterov)
    if nesterov:
        raise ValueError("adamw: nesterov is not available with eps_hat (Keras' AdamW has no "
                         "Nesterov form); use name: nadam")
    return optax.chain(scale_by_adam_variant(b1, b2, eps, eps_root, eps_hat=True),
                       optax.add_decayed_weights(weight_decay, mask),
                       optax.scale_by_learning_rate(learning_rate))


def _nadam(learning_rate, b1, b2, eps, eps_root, momentum_decay):
    if momentum_decay is None:
        return optax.nadam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    return _by_lr(scale_by_nadam(b1, b2, eps, eps_root, momentum_decay), learning_rate)


def _adamax(learning_rate, b1, b2, eps, eps_in_max):
    if eps_in_max:
        return optax.adamax(learning_rate, b1=b1, b2=b2, eps=eps)
    return _by_lr(scale_by_adamax(b1, b2, eps), learning_rate)


def _amsgrad(learning_rate, b1, b2, eps, eps_root, bias_correction_mu, bias_correction_nu,
             max_of, eps_hat):
    if max_of == "corrected" and not eps_hat:
        return optax.amsgrad(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                             bias_correction_mu=bias_correction_mu,
                             bias_correction_nu=bias_correction_nu)
    if max_of == "corrected":
        raise ValueError("amsgrad: eps_hat needs max_of: raw (Keras takes the maximum of the "
                         "raw second moment)")
    return _by_lr(scale_by_adam_variant(b1, b2, eps, eps_root,
                                        bias_correction_mu=bias_correction_mu,
                                        bias_correction_nu=bias_correction_nu, eps_hat=eps_hat,
                                        amsgrad=True, max_of=max_of), learning_rate)


def _same(build: Callable, **by_convention: Mapping[str, Any]) -> dict[str, Rule]:
    return {c: Rule(build, dict(by_convention[c])) for c in CONVENTIONS}


_ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "eps_hat": False}
_ADAM_KERAS = {**_ADAM, "eps": 1e-7, "eps_hat": True}
_RMS = {"decay": 0.9, "eps": 1e-8, "initial_scale": 0.0, "eps_in_sqrt": True, "centered": False,
        "momentum": None, "nesterov": False, "bias_correction": False}
_AMS = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "bias_correction_mu": True,
        "bias_correction_nu": True, "max_of": "raw", "eps_hat": False}
_NADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 0.0, "momentum_decay": 4e-3}
_ADAMAX = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_in_max": False}
_ADAGRAD_PAPER = {"initial_accumulator_value": 0.0, "eps": 1e-10, "eps_in_sqrt": False}
_ADAGRAD_OPTAX = {"initial_accumulator_value": 0.1, "eps": 1e-7, "eps_in_sqrt": True}

RULES: dict[str, dict[str, Rule]] = {
    "sgd": _sgd_rules(None),
    "momentum": _sgd_rules(0.9, nesterov=False),
    "nesterov": _sgd_rules(0.9, nesterov=True),
    "adagrad": _same(_adagrad, paper=_ADAGRAD_PAPER, pytorch=_ADAGRAD_PAPER,
                     keras=_ADAGRAD_OPTAX, optax=_ADAGRAD_OPTAX),
    "rmsprop": {"paper": Rule(_rmsprop, _RMS),
                "pytorch": Rule(_rmsprop_pytorch, {**_RMS, "decay": 0.99, "eps_in_sqrt": False}),
                "keras": Rule(_rmsprop, {**_RMS, "eps": 1e-7}),
                "optax": Rule(_rmsprop, _RMS)},
    "adadelta": _same(_adadelta, paper={"rho": 0.95, "eps": 1e-6},
                      pytorch={"rho": 0.9, "eps": 1e-6}, keras={"rho": 0.95, "eps": 1e-7},
                      optax={"rho": 0.9, "eps": 1e-6}),
    "adam": _same(_adam, paper=_ADAM, pytorch=_ADAM, keras=_ADAM_KERAS, optax=_ADAM),
    "adamw": _same(_adamw, paper={**_ADAM, "nesterov": False},
                   pytorch={**_ADAM, "nesterov": False}, keras={**_ADAM_KERAS, "nesterov": False},
                   optax={**_ADAM, "nesterov": False}),
    "nadam": _same(_nadam, paper=_NADAM, pytorch=_NADAM, keras={**_NADAM, "eps": 1e-7},
                   optax={**_NADAM, "momentum_decay": None}),
    "adamax": _same(_adamax, paper=_ADAMAX, pytorch={**_ADAMAX, "eps_in_max": True},
                    keras={**_ADAMAX, "eps": 1e-7}, optax={**_ADAMAX, "eps_in_max": True}),
    "amsgrad": _same(_amsgrad,
                     paper={**_AMS, "bias_correction_mu": False, "bias_correction_nu": False},
                     pytorch=_AMS, keras={**_AMS, "eps": 1e-7, "eps_hat": True},
                     optax={**_AMS, "max_of": "corrected"}),
    # PyTorch, Keras and optax have no AdaBound: only the authors' rule.
    "adabound": {"paper": Rule(adabound, {"final_lr": 0.1, "gamma": 1e-3, "b1": 0.9, "b2": 0.999,
                                          "eps": 1e-8, "amsbound": False})},
}
