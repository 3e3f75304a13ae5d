"""Tests for fnn.optim: optimizers, schedules, clipping, weight decay and freezing from config.

Every optimizer is checked against its published update rule written here in NumPy (float64),
with optax's parameter conventions where the papers leave a choice (noted per rule).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from fnn.optim import (adabound, current_learning_rate, learning_rate_of, make_optimizer,
                       make_schedule, optimizer_names, schedule_names, weights_only)

LR = 0.1
STEPS = 3


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"dense_0": {"w": (2, 3), "b": (3,)}, "dense_1": {"w": (3, 1), "b": (1,)}}
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


P0 = _params()
P0_FLAT, UNRAVEL = ravel_pytree(P0)
N = P0_FLAT.size


def _grads() -> list[np.ndarray]:
    """Three fixed gradient vectors: entry magnitudes from 0.03 to 10, shrinking over steps
    (so AMSGrad's running maximum and AdaBound's bounds are both exercised)."""
    rng = np.random.default_rng(1)
    magnitude = rng.permutation(np.logspace(-1.5, 1.0, N))
    return [scale * magnitude * rng.choice([-1.0, 1.0], N) * rng.uniform(0.5, 1.5, N)
            for scale in (1.0, 0.2, 0.1)]


GRADS = _grads()
# 1 where the leaf is a weight ("w"), 0 for biases: built by hand, independent of fnn.optim.
WEIGHT_MASK = np.asarray(ravel_pytree(
    {"dense_0": {"w": np.ones((2, 3)), "b": np.zeros(3)},
     "dense_1": {"w": np.ones((3, 1)), "b": np.zeros(1)}})[0])


def _run(opt: optax.GradientTransformation, steps: int = STEPS, params=P0, grads=GRADS):
    """Params (flat, float64) after each step, and the final state."""
    state = opt.init(params)
    out = []
    for g in grads[:steps]:
        g_tree = ravel_pytree(params)[1](jnp.asarray(g, jnp.float32))
        updates, state = opt.update(g_tree, state, params)
        params = optax.apply_updates(params, updates)
        out.append(np.asarray(ravel_pytree(params)[0], np.float64))
    return out, state


# --------------------------------------------------------------------------- NumPy references
# Each takes the initial flat params, the gradients and the learning rate(s); returns the flat
# params after each step. Updates are subtracted: p <- p - step.

def ref_sgd(p, gs, lr):
    out = []
    for g in gs:
        p = p - lr * g
        out.append(p)
    return out


def ref_momentum(p, gs, lr, momentum):
    """Heavy ball (Polyak), PyTorch/optax form: v <- mu v + g; p <- p - lr v."""
    v, out = 0.0, []
    for g in gs:
        v = momentum * v + g
        p = p - lr * v
        out.append(p)
    return out


def ref_nesterov(p, gs, lr, momentum):
    """Nesterov (Sutskever et al. 2013, PyTorch form): v <- mu v + g; p <- p - lr (g + mu v)."""
    v, out = 0.0, []
    for g in gs:
        v = momentum * v + g
        p = p - lr * (g + momentum * v)
        out.append(p)
    return out


def ref_adagrad(p, gs, lr, initial_accumulator_value=0.1, eps=1e-7):
    """Duchi et al. 2011 (diagonal): G <- G + g^2; p <- p - lr g / sqrt(G + eps); optax starts
    G at initial_accumulator_value and puts eps inside the root."""
    acc, out = initial_accumulator_value, []
    for g in gs:
        acc = acc + g ** 2
        p = p - lr * g / np.sqrt(acc + eps)
        out.append(p)
    return out


def ref_rmsprop(p, gs, lr, decay=0.9, eps=1e-8, momentum=None, centered=False):
    """Tieleman & Hinton 2012; centered and momentum forms as in Graves 2013 / TensorFlow:
    v <- d v + (1-d) g^2; mg <- d mg + (1-d) g; step = lr g / sqrt(v - mg^2 + eps);
    with momentum buf <- mu buf + step, p <- p - buf."""
    v, mg, buf, out = 0.0, 0.0, 0.0, []
    for g in gs:
        v = decay * v + (1 - decay) * g ** 2
        if centered:
            mg = decay * mg + (1 - decay) * g
        step = lr * g / np.sqrt(v - mg ** 2 + eps)
        if momentum is not None:
            buf = momentum * buf + step
            step = buf
        p = p - step
        out.append(p)
    return out


def ref_adadelta(p, gs, lr, rho=0.9, eps=1e-6):
    """Zeiler 2012, Algorithm 1, the update scaled by lr."""
    eg, ex, out = 0.0, 0.0, []
    for g in gs:
        eg = rho * eg + (1 - rho) * g ** 2
        dx = np.sqrt(ex + eps) / np.sqrt(eg + eps) * g
        ex = rho * ex + (1 - rho) * dx ** 2
        p = p - lr * dx
        out.append(p)
    return out


def ref_adam(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mask=1.0):
    """Kingma & Ba 2015, Algorithm 1 (bias-corrected moments). With weight_decay: AdamW
    (Loshchilov & Hutter 2019, Algorithm 2) in the optax/PyTorch form where the decay is
    scaled by the learning rate: p <- p - lr (m_hat / (sqrt(v_hat) + eps) + wd * mask * p)."""
    m, v, out = 0.0, 0.0, []
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * mask * p)
        out.append(p)
    return out


def ref_nadam(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Dozat 2016, Algorithm 2 with a constant momentum schedule (as optax and Keras):
    m_bar = b1 m_t / (1 - b1^(t+1)) + (1 - b1) g_t / (1 - b1^t); v_hat = v / (1 - b2^t)."""
    m, v, out = 0.0, 0.0, []
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        m_bar = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
        p = p - lr * m_bar / (np.sqrt(v / (1 - b2 ** t)) + eps)
        out.append(p)
    return out


def ref_adamax(p, gs, lr, b1=0.9, b2=0.999):
    """Kingma & Ba 2015, Algorithm 2: u <- max(b2 u, |g|); p <- p - lr / (1 - b1^t) m / u.
    (optax adds eps=1e-8 to |g| inside the max; the gradients here are >= 0.01.)"""
    m, u, out = 0.0, 0.0, []
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g))
        p = p - lr / (1 - b1 ** t) * m / u
        out.append(p)
    return out


def ref_amsgrad(p, gs, lr, b1=0.9, b2=0.999, eps=1e-8, bias_corrected=True):
    """Reddi et al. 2018, Algorithm 2: v_max <- max(v_max, v); p <- p - lr m / (sqrt(v_max)
    + eps). bias_corrected: optax's default, the maximum of the bias-corrected v_hat, and
    m_hat in place of m."""
    m, v, v_max, out = 0.0, 0.0, 0.0, []
    for t, g in enumerate(gs, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        if bias_corrected:
            v_max = np.maximum(v_max, v / (1 - b2 ** t))
            p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v_max) + eps)
        else:
            v_max = np.maximum(v_max, v)
            p = p - lr * m / (np.sqrt(v_max) + eps)
        out.append(p)
    return out


def ref_adabound(p, gs, lrs, base_lr, final_lr=0.1, gamma=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                 amsbound=False):
    """Luo et al. 2019, as the authors' PyTorch code (github.com/Luolc/AdaBound), step t >= 1:
    step = lr_t sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps), clipped to
    f (1 - 1/(gamma t + 1)) .. f (1 + 1/(gamma t)), f = final_lr lr_t / base_lr; p -= step * m."""
    m, v, v_max, out = 0.0, 0.0, 0.0, []
    for t, (g, lr) in enumerate(zip(gs, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        v_max = np.maximum(v_max, v)
        denom = np.sqrt(v_max if amsbound else v) + eps
        step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) / denom
        final = final_lr * lr / base_lr
        step = np.clip(step, final * (1 - 1 / (gamma * t + 1)), final * (1 + 1 / (gamma * t)))
        p = p - step * m
        out.append(p)
    return out


# (optimizer config beyond name and learning rate, reference, reference's keyword arguments)
CASES = {
    "sgd": ({}, ref_sgd, {}),
    "sgd+momentum": ({"name": "sgd", "momentum": 0.7}, ref_momentum, {"momentum": 0.7}),
    "momentum": ({"momentum": 0.8}, ref_momentum, {"momentum": 0.8}),
    "momentum(default 0.9)": ({"name": "momentum"}, ref_momentum, {"momentum": 0.9}),
    "nesterov": ({"momentum": 0.8}, ref_nesterov, {"momentum": 0.8}),
    "adagrad": ({"convention": "optax", "initial_accumulator_value": 0.2, "eps": 1e-6},
                ref_adagrad,
                {"initial_accumulator_value": 0.2, "eps": 1e-6}),
    "rmsprop": ({"decay": 0.8}, ref_rmsprop, {"decay": 0.8}),
    "rmsprop+momentum": ({"name": "rmsprop", "momentum": 0.5}, ref_rmsprop, {"momentum": 0.5}),
    "rmsprop+centered": ({"name": "rmsprop", "centered": True, "eps": 1e-6}, ref_rmsprop,
                         {"centered": True, "eps": 1e-6}),
    "adadelta": ({"rho": 0.8}, ref_adadelta, {"rho": 0.8}),
    "adam": ({"b1": 0.8, "b2": 0.95, "eps": 1e-6}, ref_adam, {"b1": 0.8, "b2": 0.95,
                                                             "eps": 1e-6}),
    "adamw": ({"b2": 0.95, "weight_decay": 0.5}, ref_adam,
              {"b2": 0.95, "weight_decay": 0.5, "mask": WEIGHT_MASK}),
    "adamw(decay all)": ({"name": "adamw", "weight_decay": 0.5, "weight_decay_mask": "all"},
                         ref_adam, {"weight_decay": 0.5}),
    "nadam": ({"convention": "optax", "b1": 0.8, "b2": 0.95}, ref_nadam, {"b1": 0.8, "b2": 0.95}),
    "adamax": ({"b1": 0.8, "b2": 0.95}, ref_adamax, {"b1": 0.8, "b2": 0.95}),
    "amsgrad": ({"convention": "optax", "b2": 0.9}, ref_amsgrad, {"b2": 0.9}),
    "amsgrad(Reddi et al.)": ({"name": "amsgrad", "b2": 0.9, "bias_correction_mu": False,
                               "bias_correction_nu": False}, ref_amsgrad,
                              {"b2": 0.9, "bias_corrected": False}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_first_steps_match_published_rule(case):
    extra, reference, kwargs = CASES[case]
    config = {"name": case, "learning_rate": LR, **extra}
    got, _ = _run(make_optimizer(config))
    want = reference(np.asarray(P0_FLAT, np.float64), GRADS, LR, **kwargs)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_reference_cases_discriminate():
    """The fixed gradients make AMSGrad's maximum bind (so it differs from Adam)."""
    p = np.asarray(P0_FLAT, np.float64)
    for bias_corrected in (True, False):
        assert not np.allclose(ref_amsgrad(p, GRADS, LR, b2=0.9, bias_corrected=bias_corrected),
                               ref_adam(p, GRADS, LR, b2=0.9), rtol=1e-4)


# Bounds at t=1: [0.033, 0.3] * lr / base_lr; b2=0.9 lets v shrink, so AMSBound's max binds.
ADABOUND = {"final_lr": 0.1, "gamma": 0.5, "b2": 0.9}


@pytest.mark.parametrize("amsbound", [False, True])
def test_adabound_matches_reference_implementation(amsbound):
    lr = 0.01
    # Sanity of the data: at t=1 the unclipped step lr / ((1 - b1) |g|) falls below, inside
    # and above the bounds, so all three branches of the clip are exercised; and AMSBound
    # differs from AdaBound.
    raw = lr / (0.1 * np.abs(GRADS[0]))
    assert (raw < 0.1 / 3).any() and (raw > 0.3).any() and ((raw > 0.1 / 3) & (raw < 0.3)).any()
    p0 = np.asarray(P0_FLAT, np.float64)
    assert not np.allclose(ref_adabound(p0, GRADS, [lr] * STEPS, lr, amsbound=True, **ADABOUND),
                           ref_adabound(p0, GRADS, [lr] * STEPS, lr, **ADABOUND), rtol=1e-4)
    config = {"name": "adabound", "learning_rate": lr, "amsbound": amsbound, **ADABOUND}
    got, _ = _run(make_optimizer(config))
    want = ref_adabound(np.asarray(P0_FLAT, np.float64), GRADS, [lr] * STEPS, base_lr=lr,
                        amsbound=amsbound, **ADABOUND)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_adabound_final_lr_follows_the_schedule():
    lr = 0.01
    config = {"name": "adabound", "learning_rate": lr, **ADABOUND,
              "schedule": {"name": "exponential", "decay_rate": 0.5, "decay_steps": 1}}
    got, state = _run(make_optimizer(config))
    lrs = [lr * 0.5 ** k for k in range(STEPS)]
    want = ref_adabound(np.asarray(P0_FLAT, np.float64), GRADS, lrs, base_lr=lr, **ADABOUND)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert current_learning_rate(state) == pytest.approx(lrs[-1])


def test_adabound_function_needs_base_rate_with_a_schedule():
    with pytest.raises(ValueError, match="base_learning_rate"):
        adabound(optax.constant_schedule(1e-3))
    opt = adabound(optax.constant_schedule(1e-3), base_learning_rate=1e-3)
    updates, _ = opt.update(P0, opt.init(P0), P0)
    chex.assert_trees_all_equal_shapes(updates, P0)


def test_every_optimizer_is_covered():
    tested = {extra.get("name", case) for case, (extra, _, _) in CASES.items()} | {"adabound"}
    assert tested == set(optimizer_names())


# --------------------------------------------------------------------------- schedules

T = np.array([0, 1, 3, 7, 10, 15, 25, 60])
SCHEDULES = {
    "constant": ({"name": "constant"}, lambda t: np.full(t.shape, LR)),
    "none": (None, lambda t: np.full(t.shape, LR)),
    "step/boundaries": ({"name": "step", "boundaries": [5, 20], "scales": [0.5, 0.1]},
                        lambda t: LR * np.where(t >= 5, 0.5, 1) * np.where(t >= 20, 0.1, 1)),
    "piecewise": ({"name": "piecewise", "boundaries": [10], "scales": [0.3]},
                  lambda t: LR * np.where(t >= 10, 0.3, 1)),
    "step/step_size": ({"name": "step", "step_size": 7, "gamma": 0.5},
                       lambda t: LR * 0.5 ** np.floor(t / 7)),
    "exponential": ({"name": "exponential", "decay_rate": 0.9, "decay_steps": 4},
                    lambda t: LR * 0.9 ** (t / 4)),
    "exponential/staircase": ({"name": "exponential", "decay_rate": 0.9, "decay_steps": 4,
                               "staircase": True}, lambda t: LR * 0.9 ** np.floor(t / 4)),
    "inverse_time": ({"name": "inverse_time", "decay_rate": 0.5, "decay_steps": 3},
                     lambda t: LR / (1 + 0.5 * t / 3)),
    "inverse_time/staircase": ({"name": "inverse_time", "decay_rate": 0.5, "decay_steps": 3,
                                "staircase": True}, lambda t: LR / (1 + 0.5 * np.floor(t / 3))),
    "inverse_sqrt": ({"name": "inverse_sqrt", "decay_steps": 2},
                     lambda t: LR / np.sqrt(1 + t / 2)),
    "cosine": ({"name": "cosine", "decay_steps": 20, "alpha": 0.1},
               lambda t: LR * (0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(t, 20) / 20)) + 0.1)),
}


@pytest.mark.parametrize("case", list(SCHEDULES))
def test_schedule_matches_closed_form(case):
    config, closed_form = SCHEDULES[case]
    schedule = make_schedule(LR, config)
    got = np.array([float(schedule(int(t))) for t in T])
    np.testing.assert_allclose(got, closed_form(T.astype(np.float64)), rtol=1e-5)


def _cosine(t, lr, d, alpha=0.0):
    return lr * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * np.minimum(t, d) / d)) + alpha)


@pytest.mark.parametrize("init_value", [0.0, 0.02])
def test_warmup_then_cosine_joins(init_value):
    w, d = 10, 40
    schedule = make_schedule(LR, {"name": "cosine", "decay_steps": d, "warmup_steps": w,
                                  "init_value": init_value})
    t = np.arange(0, w + d + 5)
    want = np.where(t < w, init_value + (LR - init_value) * t / w, _cosine(t - w, LR, d))
    got = np.array([float(schedule(int(s))) for s in t])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert got[w] == pytest.approx(LR)  # the peak is reached at the end of warmup, no jump


def test_warmup_then_step_decay():
    schedule = make_schedule(LR, {"name": "step", "step_size": 5, "gamma": 0.1,
                                  "warmup_steps": 4})
    got = np.array([float(schedule(s)) for s in (0, 2, 4, 8, 9, 14)])
    np.testing.assert_allclose(got, [0, LR / 2, LR, LR, LR * 0.1, LR * 0.01], rtol=1e-5)


def test_optimizer_follows_its_schedule_and_reports_the_rate():
    config = {"name": "sgd", "learning_rate": LR,
              "schedule": {"name": "inverse_sqrt", "decay_steps": 1, "warmup_steps": 1,
                           "init_value": 0.05}}
    opt = make_optimizer(config)
    state = opt.init(P0)
    assert current_learning_rate(state) == pytest.approx(0.05)  # the first step's rate
    lrs = [0.05, LR, LR / math.sqrt(2)]
    got, state = _run(opt)
    p, want = np.asarray(P0_FLAT, np.float64), []
    for g, lr in zip(GRADS, lrs):
        p = p - lr * g
        want.append(p)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert current_learning_rate(state) == pytest.approx(lrs[-1])
    assert current_learning_rate(optax.adam(1e-3).init(P0)) is None


# --------------------------------------------------------------------------- clipping

def _updates(config, grads, params=None):
    params = P0 if params is None else params
    opt = make_optimizer(config)
    updates, _ = opt.update(grads, opt.init(params), params)
    return updates


def test_clip_by_value():
    grads = UNRAVEL(jnp.asarray(GRADS[0], jnp.float32))
    updates = _updates({"name": "sgd", "learning_rate": 1.0, "clip_value": 0.5}, grads)
    np.testing.assert_allclose(ravel_pytree(updates)[0], -np.clip(GRADS[0], -0.5, 0.5),
                               rtol=1e-6)
    assert np.abs(GRADS[0]).max() > 0.5 > np.abs(GRADS[0]).min()


@pytest.mark.parametrize("max_norm", [1.0, 100.0])
def test_clip_by_global_norm(max_norm):
    grads = UNRAVEL(jnp.asarray(GRADS[0], jnp.float32))
    updates = _updates({"name": "sgd", "learning_rate": 1.0, "clip_norm": max_norm}, grads)
    norm = np.sqrt(np.sum(GRADS[0] ** 2))
    want = -GRADS[0] * min(1.0, max_norm / norm)
    np.testing.assert_allclose(ravel_pytree(updates)[0], want, rtol=1e-5)
    assert np.linalg.norm(ravel_pytree(updates)[0]) <= max_norm * (1 + 1e-6)


def test_clip_value_is_applied_before_clip_norm():
    grads = {"a": jnp.array([3.0, 4.0])}
    params = {"a": jnp.zeros(2)}
    updates = _updates({"name": "sgd", "learning_rate": 1.0, "clip_value": 3.5,
                        "clip_norm": 1.0}, grads, params)
    np.testing.assert_allclose(updates["a"], -np.array([3.0, 3.5]) / math.hypot(3.0, 3.5),
                               rtol=1e-6)


def test_clip_norm_counts_trainable_params_only():
    grads = {"dense_0": jax.tree.map(lambda x: 1e3 * jnp.ones_like(x), P0["dense_0"]),
             "dense_1": jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), P0["dense_1"])}
    updates = _updates({"name": "sgd", "learning_rate": 1.0, "clip_norm": 1.0,
                        "freeze": ["dense_0"]}, grads)
    chex.assert_trees_all_close(updates["dense_1"], jax.tree.map(jnp.negative, grads["dense_1"]))


# --------------------------------------------------------------------------- weight decay

def test_weights_only_mask():
    tree = {"dense_0": {"w": 1, "b": 2}, "lstm": {"w_ih": 3, "bias": 4},
            "norm": {"scale": 5, "offset": 6}, "widen": {"wide": 7}}
    assert weights_only(tree) == {"dense_0": {"w": True, "b": False},
                                  "lstm": {"w_ih": True, "bias": False},
                                  "norm": {"scale": False, "offset": False},
                                  "widen": {"wide": False}}


@pytest.mark.parametrize("mask_kind", ["weights", "all"])
def test_l2_weight_decay_for_sgd(mask_kind):
    grads = UNRAVEL(jnp.asarray(GRADS[0], jnp.float32))
    updates = _updates({"name": "sgd", "learning_rate": LR, "weight_decay": 0.3,
                        "weight_decay_mask": mask_kind}, grads)
    mask = WEIGHT_MASK if mask_kind == "weights" else 1.0
    p = np.asarray(P0_FLAT, np.float64)
    np.testing.assert_allclose(ravel_pytree(updates)[0], -LR * (GRADS[0] + 0.3 * mask * p),
                               rtol=1e-5, atol=1e-7)


def test_adamw_default_weight_decay_is_optax_default():
    got, _ = _run(make_optimizer({"name": "adamw", "learning_rate": LR}), steps=1)
    want = ref_adam(np.asarray(P0_FLAT, np.float64), GRADS[:1], LR, weight_decay=1e-4,
                    mask=WEIGHT_MASK)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


# --------------------------------------------------------------------------- freezing

def test_frozen_layer_gets_zero_updates_and_no_state():
    config = {"name": "adam", "learning_rate": LR, "freeze": ["dense_0"]}
    opt = make_optimizer(config, params=P0)
    state = opt.init(P0)
    params = P0
    for g in GRADS:
        updates, state = opt.update(UNRAVEL(jnp.asarray(g, jnp.float32)), state, params)
        chex.assert_trees_all_equal(updates["dense_0"],
                                    jax.tree.map(jnp.zeros_like, P0["dense_0"]))
        params = optax.apply_updates(params, updates)
    # dense_1 follows Adam on its own gradients.
    d1_p0, _ = ravel_pytree(P0["dense_1"])
    n0 = ravel_pytree(P0["dense_0"])[0].size  # dense_0 comes first in the flat vector
    d1_grads = [g[n0:] for g in GRADS]
    assert d1_grads[0].size == d1_p0.size
    want = ref_adam(np.asarray(d1_p0, np.float64), d1_grads, LR)[-1]
    np.testing.assert_allclose(ravel_pytree(params["dense_1"])[0], want, rtol=2e-5, atol=1e-6)
    chex.assert_trees_all_equal(params["dense_0"], P0["dense_0"])
    # Adam keeps two moments, for dense_1's 4 entries only.
    state_entries = sum(x.size for x in jax.tree.leaves(state) if jnp.ndim(x) >= 1)
    assert state_entries == 2 * d1_p0.size


NESTED = {"encoder": {"dense_0": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)},
                      "dense_1": {"w": jnp.ones((2, 2))}},
          "head": {"dense_0": {"w": jnp.ones((2, 1))}}}


@pytest.mark.parametrize("freeze, frozen", [
    (["encoder"], {"encoder/dense_0", "encoder/dense_1"}),
    (["encoder/dense_0"], {"encoder/dense_0"}),
    ("head", {"head/dense_0"}),
    (["dense_0"], {"encoder/dense_0", "head/dense_0"}),  # a bare name matches at any depth
])
def test_freeze_nested_layers(freeze, frozen):
    grads = jax.tree.map(jnp.ones_like, NESTED)
    updates = _updates({"name": "sgd", "learning_rate": 1.0, "freeze": freeze}, grads, NESTED)
    for top, layers in updates.items():
        for layer, leaves in layers.items():
            want = 0.0 if f"{top}/{layer}" in frozen else -1.0
            for leaf in leaves.values():
                np.testing.assert_array_equal(leaf, np.full(leaf.shape, want))


def test_unknown_frozen_layer_is_an_error_now_or_at_init():
    config = {"name": "sgd", "learning_rate": 1.0, "freeze": ["dense_3"]}
    with pytest.raises(ValueError, match=r"optimizer\.freeze: no layer 'dense_3'.*dense_"):
        make_optimizer(config, params=P0)
    opt = make_optimizer(config)
    with pytest.raises(ValueError, match=r"optimizer\.freeze: no layer 'dense_3'"):
        opt.init(P0)


def test_jitted_step_with_everything():
    config = {"name": "adamw", "learning_rate": LR, "weight_decay": 0.01, "clip_norm": 1.0,
              "clip_value": 5.0, "freeze": ["dense_0"],
              "schedule": {"name": "cosine", "decay_steps": 4, "warmup_steps": 2}}
    opt = make_optimizer(config)

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, learning_rate_of(state)

    params, state, lrs = P0, opt.init(P0), []
    for g in GRADS:
        params, state, lr = step(params, state, UNRAVEL(jnp.asarray(g, jnp.float32)))
        lrs.append(float(lr))
    np.testing.assert_allclose(lrs, [0.0, LR / 2, LR], atol=1e-7)
    chex.assert_trees_all_equal(params["dense_0"], P0["dense_0"])
    assert not np.allclose(params["dense_1"]["w"], P0["dense_1"]["w"])


# --------------------------------------------------------------------------- config errors

@pytest.mark.parametrize("config, message", [
    ({"name": "adamm", "learning_rate": 1e-3},
     r"optimizer\.name: unknown optimizer 'adamm'; did you mean adam.*known: adabound"),
    ({"name": "adam", "learning_rate": 1e-3, "betta1": 0.9},
     r"optimizer\.betta1: unknown key; did you mean b1\?.*valid keys: b1, b2"),
    ({"name": "adam", "learning_rate": 1e-3, "beta_2": 0.9},
     r"optimizer\.beta_2: unknown key; did you mean b2\?"),
    ({"name": "adam", "lr": 1e-3}, r"optimizer\.lr: unknown key; did you mean learning_rate\?"),
    ({"name": "adam", "learning_rate": 1e-3, "momentum": 0.9},
     r"optimizer\.momentum: unknown key.*valid keys:"),
    ({"name": "rmsprop", "learning_rate": 1e-3, "rho": 0.9},
     r"optimizer\.rho: unknown key; did you mean decay\?"),
    ({"learning_rate": 1e-3}, r"optimizer\.name: required"),
    ({"name": "adam", "learning_rate": 1e-3, "convention": "pytoch"},
     r"optimizer\.convention: expected one of paper, pytorch, keras, optax, got 'pytoch'; "
     r"did you mean pytorch\?"),
    ({"name": "adabound", "learning_rate": 1e-3, "convention": "keras"},
     r"optimizer\.convention: adabound has no 'keras' convention"),
    ({"name": "nadam", "learning_rate": 1e-3, "momentum_decai": 4e-3},
     r"optimizer\.momentum_decai: unknown key; did you mean momentum_decay"),
    ({"name": "nadam", "learning_rate": 1e-3, "momentum_decay": -1},
     r"optimizer\.momentum_decay: must be >= 0"),
    ({"name": "amsgrad", "learning_rate": 1e-3, "max_of": "max"},
     r"optimizer\.max_of: expected one of raw, corrected, got 'max'"),
    ({"name": "adagrad", "learning_rate": 1e-3, "eps_in_sqrt": "yes"},
     r"optimizer\.eps_in_sqrt: expected true or false"),
    ({"name": "adamw", "learning_rate": 1e-3, "eps_hat": True, "nesterov": True},
     r"optimizer: adamw: nesterov is not available with eps_hat"),
    ({"name": "amsgrad", "learning_rate": 1e-3, "eps_hat": True, "max_of": "corrected"},
     r"optimizer: amsgrad: eps_hat needs max_of: raw"),
    ({"name": "sgd"}, r"optimizer\.learning_rate: required"),
    ({"name": "sgd", "learning_rate": -1.0}, r"optimizer\.learning_rate: must be > 0"),
    ({"name": "adam", "learning_rate": 1e-3, "b1": "high"}, r"optimizer\.b1: expected a number"),
    ({"name": "adam", "learning_rate": 1e-3, "b2": 1.0}, r"optimizer\.b2: must be < 1"),
    ({"name": "rmsprop", "learning_rate": 1e-3, "centered": 1},
     r"optimizer\.centered: expected true or false"),
    ({"name": "sgd", "learning_rate": 1e-3, "clip_norm": 0}, r"optimizer\.clip_norm: must be > 0"),
    ({"name": "sgd", "learning_rate": 1e-3, "weight_decay_mask": "biases"},
     r"optimizer\.weight_decay_mask: expected 'weights' or 'all'"),
    ({"name": "sgd", "learning_rate": 1e-3, "freeze": [3]}, r"optimizer\.freeze: expected a list"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "cosin", "decay_steps": 3}},
     r"optimizer\.schedule\.name: unknown schedule 'cosin'; did you mean cosine"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "cosine", "decay_stesp": 3}},
     r"optimizer\.schedule\.decay_stesp: unknown key; did you mean decay_steps"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "cosine"}},
     r"optimizer\.schedule\.decay_steps: required for the 'cosine' schedule"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "exponential",
                                                         "decay_rate": 0.5, "decay_steps": 0}},
     r"optimizer\.schedule\.decay_steps: must be >= 1"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "step", "boundaries": [5, 3],
                                                         "scales": [0.1, 0.1]}},
     r"optimizer\.schedule\.boundaries: must be increasing"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "step", "step_size": 5,
                                                         "boundaries": [3], "scales": [0.1]}},
     r"optimizer\.schedule: a step schedule takes either"),
    ({"name": "sgd", "learning_rate": 1e-3, "schedule": {"name": "cosine", "decay_steps": 3,
                                                         "init_value": 0.0}},
     r"optimizer\.schedule\.init_value: .*needs warmup_steps"),
])
def test_config_errors_name_the_key(config, message):
    with pytest.raises(ValueError, match=message) as info:
        make_optimizer(config)
    assert "\n" not in str(info.value)


def test_yaml_style_values_are_accepted():
    """PyYAML reads ``1e-3`` (no dot) as a string; numeric strings are taken as numbers."""
    opt = make_optimizer({"name": "Adam", "learning_rate": "1e-3", "eps": "1e-7"})
    assert current_learning_rate(opt.init(P0)) == pytest.approx(1e-3)


def test_names_are_listed():
    assert "adabound" in optimizer_names() and "cosine" in schedule_names()
    assert "piecewise" in schedule_names()
