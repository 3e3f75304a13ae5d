"""Each optimizer under each convention against the published rule, written here in NumPy.

The problem: a quadratic ``0.5 (x - c)^T A (x - c)`` in one leaf plus the squared error of a
2-3-1 tanh MLP, its gradient derived by hand below. Ten steps of ``fnn.optim.make_optimizer``
(gradients by ``jax.grad``) must match ten steps of the NumPy rule (gradients by hand) to
1e-6 in float32 and 1e-12 in float64 (``jax.enable_x64``). The references name their source:
the paper's algorithm, ``torch.optim`` (PyTorch 2.x docs' pseudo-code and source), ``keras.
optimizers`` (Keras 3 source) and ``optax`` (0.2 source); none calls fnn or optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fnn.optim import make_optimizer

STEPS = 10
_rng = np.random.default_rng(0)
A = (lambda m: m @ m.T / 4 + np.eye(4))(_rng.normal(size=(4, 4)))
C = _rng.normal(size=4)
X = _rng.normal(size=(8, 2))
Y = np.sin(X[:, :1] * 2.0) + 0.5 * X[:, 1:]
P0 = {"mlp": {"dense_0": {"w": _rng.normal(size=(2, 3)), "b": 0.1 * _rng.normal(size=3)},
              "dense_1": {"w": _rng.normal(size=(3, 1)), "b": 0.1 * _rng.normal(size=1)}},
      "quadratic": {"x": _rng.normal(size=4)}}


def _leaves(tree, path=()):
    """(path, leaf) in sorted-key order: the order jax flattens dicts in."""
    if isinstance(tree, dict):
        return [item for k in sorted(tree) for item in _leaves(tree[k], path + (k,))]
    return [(path, tree)]


def flatten(tree) -> np.ndarray:
    return np.concatenate([np.ravel(leaf) for _, leaf in _leaves(tree)])


def unflatten(flat: np.ndarray) -> dict:
    out, i = {}, 0
    for path, leaf in _leaves(P0):
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = flat[i:i + leaf.size].reshape(leaf.shape)
        i += leaf.size
    return out


WEIGHTS = flatten(jax.tree_util.tree_map_with_path(
    lambda path, leaf: np.full(leaf.shape, float(path[-1].key == "w")), P0))


def numpy_grad(flat: np.ndarray) -> np.ndarray:
    """The loss's gradient by hand: quadratic A (x - c); MLP backprop of mean 0.5 (out - y)^2."""
    p = unflatten(flat)
    d0, d1 = p["mlp"]["dense_0"], p["mlp"]["dense_1"]
    h = np.tanh(X @ d0["w"] + d0["b"])
    err = (h @ d1["w"] + d1["b"] - Y) / len(X)
    dh = err @ d1["w"].T * (1 - h ** 2)
    return flatten({"mlp": {"dense_0": {"w": X.T @ dh, "b": dh.sum(0)},
                            "dense_1": {"w": h.T @ err, "b": err.sum(0)}},
                    "quadratic": {"x": A @ (p["quadratic"]["x"] - C)}})


def jax_loss(p, data):
    """The same loss in JAX; ``data = (A, C, X, Y)`` as arrays of the params' dtype."""
    a, c, x, y = data
    d0, d1 = p["mlp"]["dense_0"], p["mlp"]["dense_1"]
    out = jnp.tanh(x @ d0["w"] + d0["b"]) @ d1["w"] + d1["b"]
    e = p["quadratic"]["x"] - c
    return 0.5 * e @ a @ e + 0.5 * jnp.mean(jnp.sum((out - y) ** 2, axis=1))


def _data(dtype):
    return tuple(jnp.asarray(v, dtype) for v in (A, C, X, Y))


def test_hand_gradient_is_the_loss_gradient():
    with jax.enable_x64():
        params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), P0)
        got = flatten(jax.tree.map(np.asarray, jax.grad(jax_loss)(params, _data(jnp.float64))))
    np.testing.assert_allclose(got, numpy_grad(flatten(P0)), rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- NumPy rules
# Each is `rule(p, lr)`: a generator that receives the gradient g at the current params and
# yields the next params, t = 1, 2, ... (a closure keeps its own state).

def run_reference(rule, lr, steps=STEPS):
    p = flatten(P0).copy()
    gen = rule(p, lr)
    next(gen)
    out = []
    for _ in range(steps):
        p = gen.send(numpy_grad(p))
        out.append(p)
    return np.array(out)


def sgd(p, lr):
    while True:
        g = yield p
        p = p - lr * g


def polyak(p, lr, mu=0.9):
    """Heavy ball (Polyak 1964): p_{t+1} = p_t - lr g_t + mu (p_t - p_{t-1})."""
    prev = p
    while True:
        g = yield p
        p, prev = p - lr * g + mu * (p - prev), p


def momentum_torch(p, lr, mu=0.9, nesterov=False, decay=1.0):
    """torch.optim.SGD: b = mu b + g (b_1 = g); p -= lr_k (g + mu b if nesterov else b), with
    lr_k = lr decay^k (an exponential schedule, k from 0)."""
    b, k = np.zeros_like(p), 0
    while True:
        g = yield p
        b = mu * b + g
        p = p - lr * decay ** k * (g + mu * b if nesterov else b)
        k += 1


def momentum_keras(p, lr, mu=0.9, nesterov=False, decay=1.0):
    """keras.optimizers.SGD: m = mu m - lr_k g; p += mu m - lr_k g if nesterov else m."""
    m, k = np.zeros_like(p), 0
    while True:
        g = yield p
        m = mu * m - lr * decay ** k * g
        p = p + (mu * m - lr * decay ** k * g if nesterov else m)
        k += 1


def nesterov_sutskever(p, lr, mu=0.9):
    """Sutskever et al. 2013, eq. 3-4: v = mu v - lr grad(theta + mu v); theta += v. fnn stores
    the look-ahead point phi = theta + mu v, where the gradient is taken; yields phi."""
    theta, v = p, np.zeros_like(p)
    while True:
        g = yield theta + mu * v  # the caller evaluates the gradient at phi
        v = mu * v - lr * g
        theta = theta + v


def adagrad_duchi(p, lr, g0=0.0, eps=1e-10):
    """Duchi et al. 2011 (diagonal) = torch.optim.Adagrad: G += g^2; p -= lr g/(sqrt(G) + eps)."""
    G = np.full_like(p, g0)
    while True:
        g = yield p
        G = G + g * g
        p = p - lr * g / (np.sqrt(G) + eps)


def adagrad_keras(p, lr, g0=0.1, eps=1e-7):
    """keras.optimizers.Adagrad and optax.adagrad: G_0 = 0.1; p -= lr g / sqrt(G + eps)."""
    G = np.full_like(p, g0)
    while True:
        g = yield p
        G = G + g * g
        p = p - lr * g / np.sqrt(G + eps)


def rmsprop_hinton(p, lr, rho=0.9, eps=1e-8):
    """Tieleman & Hinton 2012 (lecture 6e), with eps under the root: MS = rho MS + (1-rho) g^2."""
    ms = np.zeros_like(p)
    while True:
        g = yield p
        ms = rho * ms + (1 - rho) * g * g
        p = p - lr * g / np.sqrt(ms + eps)


def rmsprop_torch(p, lr, alpha=0.99, eps=1e-8, momentum=0.0, centered=False):
    """torch.optim.RMSprop: v = a v + (1-a) g^2; avg = sqrt(v - g_ave^2) + eps;
    buf = mu buf + g / avg, p -= lr buf (or p -= lr g / avg without momentum)."""
    v, ga, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    while True:
        g = yield p
        v = alpha * v + (1 - alpha) * g * g
        if centered:
            ga = alpha * ga + (1 - alpha) * g
        avg = np.sqrt(v - ga * ga) + eps
        if momentum:
            buf = momentum * buf + g / avg
            p = p - lr * buf
        else:
            p = p - lr * g / avg


def rmsprop_keras(p, lr, rho=0.9, eps=1e-7, momentum=0.0, centered=False):
    """keras.optimizers.RMSprop (and optax.rmsprop with eps 1e-8): increment =
    lr g / sqrt(v - ga^2 + eps); m = mu m + increment; p -= m."""
    v, ga, m = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    while True:
        g = yield p
        v = rho * v + (1 - rho) * g * g
        if centered:
            ga = rho * ga + (1 - rho) * g
        inc = lr * g / np.sqrt(v - ga * ga + eps)
        m = momentum * m + inc
        p = p - m


def adadelta_zeiler(p, lr, rho=0.95, eps=1e-6):
    """Zeiler 2012, Algorithm 1, the step scaled by lr (PyTorch, Keras, optax)."""
    eg, ex = np.zeros_like(p), np.zeros_like(p)
    while True:
        g = yield p
        eg = rho * eg + (1 - rho) * g * g
        dx = np.sqrt(ex + eps) / np.sqrt(eg + eps) * g
        ex = rho * ex + (1 - rho) * dx * dx
        p = p - lr * dx


def adam_kingma(p, lr, b1=0.9, b2=0.999, eps=1e-8, l2=0.0, wd=0.0, mask=1.0):
    """Kingma & Ba 2015, Algorithm 1: p -= lr m_hat / (sqrt(v_hat) + eps). ``l2``: g += l2 p
    first (torch.optim.Adam weight_decay). ``wd``: AdamW, Loshchilov & Hutter 2019 Algorithm 2
    with eta_t = 1 and lambda = lr wd: p -= lr m_hat/(sqrt(v_hat) + eps) + lambda mask p."""
    m, v, t = np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        g = g + l2 * p
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps) \
            - lr * wd * mask * p


def adamw_torch(p, lr, wd=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.AdamW: p *= 1 - lr wd; denom = sqrt(v)/sqrt(bc2) + eps; p -= lr/bc1 m/denom."""
    m, v, t = np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / np.sqrt(1 - b2 ** t) + eps)


def adam_keras(p, lr, b1=0.9, b2=0.999, eps=1e-7, wd=0.0, amsgrad=False):
    """keras.optimizers.Adam / AdamW: var -= var wd lr (weight decay, every variable); alpha =
    lr sqrt(1 - b2^t) / (1 - b1^t); v_hat = max(v_hat, v) (amsgrad); var -= alpha m/(sqrt(v) +
    eps)."""
    m, v, vhat, t = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        p = p - p * wd * lr
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        if amsgrad:
            vhat = np.maximum(vhat, v)
        p = p - m * alpha / (np.sqrt(vhat if amsgrad else v) + eps)


def nadam_torch(p, lr, b1=0.9, b2=0.999, eps=1e-8, psi=4e-3):
    """torch.optim.NAdam (Dozat 2016's momentum schedule mu_t = b1 (1 - 0.5 0.96^(t psi)))."""
    m, v, prod, t = np.zeros_like(p), np.zeros_like(p), 1.0, 0
    while True:
        g = yield p
        t += 1
        mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        prod *= mu
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v / (1 - b2 ** t)) + eps
        p = p - lr * (1 - mu) / (1 - prod) * g / denom
        p = p - lr * mu_next / (1 - prod * mu_next) * m / denom


def nadam_keras(p, lr, b1=0.9, b2=0.999, eps=1e-7):
    """keras.optimizers.Nadam (written by Dozat): u_t = b1 (1 - 0.5 0.96^(0.004 t));
    m_hat = u_{t+1} m / (1 - prod_{t+1}) + (1 - u_t) g / (1 - prod_t)."""
    m, v, u_product, t = np.zeros_like(p), np.zeros_like(p), 1.0, 0
    while True:
        g = yield p
        t += 1
        u_t = b1 * (1.0 - 0.5 * 0.96 ** (t * 0.004))
        u_t1 = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * 0.004))
        u_product = u_product * u_t
        m = m + (g - m) * (1 - b1)
        v = v + (g * g - v) * (1 - b2)
        m_hat = u_t1 * m / (1 - u_product * u_t1) + (1 - u_t) * g / (1 - u_product)
        p = p - m_hat * lr / (np.sqrt(v / (1 - b2 ** t)) + eps)


def nadam_optax(p, lr, b1=0.9, b2=0.999, eps=1e-8):
    """optax.nadam: the schedule-free form, mu_t = b1:
    m_bar = b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)."""
    m, v, t = np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_bar = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
        p = p - lr * m_bar / (np.sqrt(v / (1 - b2 ** t)) + eps)


def adamax_kingma(p, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Kingma & Ba 2015, Algorithm 2 (u = max(b2 u, |g|); p -= lr/(1 - b1^t) m/u), with eps
    added to u (Keras' form, keras.optimizers.Adamax uses eps=1e-7)."""
    m, u, t = np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g))
        p = p - lr * m / ((1 - b1 ** t) * (u + eps))


def adamax_torch(p, lr, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adamax and optax.adamax: u = max(b2 u, |g| + eps); p -= lr/bc1 m/u."""
    m, u, t = np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        p = p - lr / (1 - b1 ** t) * m / u


def amsgrad_reddi(p, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Reddi et al. 2018, Algorithm 2 (constant step, no bias correction), eps added to the
    root: v_hat = max(v_hat, v); p -= lr m / (sqrt(v_hat) + eps)."""
    m, v, vhat = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    while True:
        g = yield p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vhat = np.maximum(vhat, v)
        p = p - lr * m / (np.sqrt(vhat) + eps)


def amsgrad_torch(p, lr, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam(amsgrad=True): v_max = max(v_max, v);
    p -= lr/bc1 m / (sqrt(v_max)/sqrt(bc2) + eps)."""
    m, v, vmax, t = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(vmax) / np.sqrt(1 - b2 ** t) + eps)


def amsgrad_optax(p, lr, b1=0.9, b2=0.999, eps=1e-8):
    """optax.amsgrad: the maximum of the bias-corrected v_hat = v/(1-b2^t);
    p -= lr m_hat / (sqrt(v_max) + eps)."""
    m, v, vmax, t = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v / (1 - b2 ** t))
        p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(vmax) + eps)


def adabound_luo(p, lr, final_lr=0.1, gamma=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """Luo et al. 2019 as the authors' code (github.com/Luolc/AdaBound), constant lr:
    step = clip(lr sqrt(bc2)/bc1 / (sqrt(v) + eps), lower_t, upper_t); p -= step m."""
    m, v, t = np.zeros_like(p), np.zeros_like(p), 0
    while True:
        g = yield p
        t += 1
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) / (np.sqrt(v) + eps)
        step = np.clip(step, final_lr * (1 - 1 / (gamma * t + 1)),
                       final_lr * (1 + 1 / (gamma * t)))
        p = p - step * m


def with_keyword(rule, **fixed):
    return lambda p, lr: rule(p, lr, **fixed)


_DECAY = {"name": "exponential", "decay_rate": 0.7, "decay_steps": 1}

# (config, reference rule, learning rate): every optimizer under every convention.
CASES = {
    "sgd": ({"name": "sgd"}, sgd, 0.1),
    "momentum/paper": ({"name": "momentum"}, polyak, 0.05),
    "momentum/pytorch": ({"name": "momentum", "convention": "pytorch"}, momentum_torch, 0.05),
    "momentum/keras": ({"name": "momentum", "convention": "keras"}, momentum_keras, 0.05),
    # A decaying learning rate tells the two momentum forms apart (equal at a constant rate).
    "momentum/pytorch+schedule": (
        {"name": "momentum", "convention": "pytorch", "schedule": _DECAY},
        with_keyword(momentum_torch, decay=0.7), 0.05),
    "momentum/keras+schedule": (
        {"name": "momentum", "convention": "keras", "schedule": _DECAY},
        with_keyword(momentum_keras, decay=0.7), 0.05),
    "nesterov/keras+schedule": (
        {"name": "nesterov", "convention": "keras", "schedule": _DECAY},
        with_keyword(momentum_keras, nesterov=True, decay=0.7), 0.05),
    "sgd+momentum/optax": ({"name": "sgd", "momentum": 0.8, "convention": "optax"},
                           with_keyword(momentum_torch, mu=0.8), 0.05),
    "momentum/optax+schedule": ({"name": "momentum", "convention": "optax", "schedule": _DECAY},
                                with_keyword(momentum_torch, decay=0.7), 0.05),
    "nesterov/optax": ({"name": "nesterov", "convention": "optax"},
                       with_keyword(momentum_torch, nesterov=True), 0.05),
    "nesterov/paper+schedule": ({"name": "nesterov", "schedule": _DECAY},
                                with_keyword(momentum_torch, nesterov=True, decay=0.7), 0.05),
    "nesterov/paper": ({"name": "nesterov"}, nesterov_sutskever, 0.05),
    "nesterov/pytorch": ({"name": "nesterov", "convention": "pytorch"},
                         with_keyword(momentum_torch, nesterov=True), 0.05),
    "nesterov/keras": ({"name": "nesterov", "convention": "keras"},
                       with_keyword(momentum_keras, nesterov=True), 0.05),
    "adagrad/paper": ({"name": "adagrad"}, adagrad_duchi, 0.1),
    "adagrad/pytorch": ({"name": "adagrad", "convention": "pytorch"}, adagrad_duchi, 0.1),
    "adagrad/keras": ({"name": "adagrad", "convention": "keras"}, adagrad_keras, 0.1),
    "adagrad/optax": ({"name": "adagrad", "convention": "optax"}, adagrad_keras, 0.1),
    "rmsprop/paper": ({"name": "rmsprop"}, rmsprop_hinton, 0.01),
    "rmsprop/pytorch": ({"name": "rmsprop", "convention": "pytorch"}, rmsprop_torch, 0.01),
    "rmsprop/pytorch+momentum+centered": (
        {"name": "rmsprop", "convention": "pytorch", "momentum": 0.5, "centered": True},
        with_keyword(rmsprop_torch, momentum=0.5, centered=True), 0.01),
    "rmsprop/keras": ({"name": "rmsprop", "convention": "keras"}, rmsprop_keras, 0.01),
    "rmsprop/keras+momentum+centered": (
        {"name": "rmsprop", "convention": "keras", "momentum": 0.5, "centered": True},
        with_keyword(rmsprop_keras, momentum=0.5, centered=True), 0.01),
    "rmsprop/optax": ({"name": "rmsprop", "convention": "optax"},
                      with_keyword(rmsprop_keras, eps=1e-8), 0.01),
    "adadelta/paper": ({"name": "adadelta"}, adadelta_zeiler, 1.0),
    "adadelta/pytorch": ({"name": "adadelta", "convention": "pytorch"},
                         with_keyword(adadelta_zeiler, rho=0.9), 1.0),
    "adadelta/keras": ({"name": "adadelta", "convention": "keras"},
                       with_keyword(adadelta_zeiler, eps=1e-7), 1.0),
    "adadelta/optax": ({"name": "adadelta", "convention": "optax"},
                       with_keyword(adadelta_zeiler, rho=0.9), 1.0),
    "adam/paper": ({"name": "adam"}, adam_kingma, 0.01),
    "adam/pytorch": ({"name": "adam", "convention": "pytorch"}, adam_kingma, 0.01),
    "adam/pytorch+weight_decay": ({"name": "adam", "convention": "pytorch", "weight_decay": 0.5},
                                  with_keyword(adam_kingma, l2=0.5), 0.01),
    "adam/keras": ({"name": "adam", "convention": "keras"}, adam_keras, 0.01),
    "adam/keras+weight_decay": ({"name": "adam", "convention": "keras", "weight_decay": 0.5},
                                with_keyword(adam_keras, wd=0.5), 0.01),
    "adam/optax": ({"name": "adam", "convention": "optax"}, adam_kingma, 0.01),
    "adamw/paper": ({"name": "adamw", "weight_decay": 0.5},
                    with_keyword(adam_kingma, wd=0.5, mask=WEIGHTS), 0.01),
    "adamw/paper(decay all)": ({"name": "adamw", "weight_decay": 0.5, "weight_decay_mask": "all"},
                               with_keyword(adam_kingma, wd=0.5), 0.01),
    "adamw/pytorch": ({"name": "adamw", "convention": "pytorch"}, adamw_torch, 0.01),
    "adamw/keras": ({"name": "adamw", "convention": "keras"}, with_keyword(adam_keras, wd=4e-3),
                    0.01),
    "adamw/optax": ({"name": "adamw", "convention": "optax"}, with_keyword(adam_kingma, wd=1e-4),
                    0.01),
    "nadam/paper": ({"name": "nadam"}, nadam_torch, 0.01),
    "nadam/pytorch(momentum_decay)": ({"name": "nadam", "convention": "pytorch",
                                       "momentum_decay": 0.01},
                                      with_keyword(nadam_torch, psi=0.01), 0.01),
    "nadam/keras": ({"name": "nadam", "convention": "keras"}, nadam_keras, 0.01),
    "nadam/optax": ({"name": "nadam", "convention": "optax"}, nadam_optax, 0.01),
    "adamax/paper": ({"name": "adamax"}, adamax_kingma, 0.01),
    "adamax/pytorch": ({"name": "adamax", "convention": "pytorch"}, adamax_torch, 0.01),
    "adamax/keras": ({"name": "adamax", "convention": "keras"},
                     with_keyword(adamax_kingma, eps=1e-7), 0.01),
    "adamax/optax": ({"name": "adamax", "convention": "optax"}, adamax_torch, 0.01),
    "amsgrad/paper": ({"name": "amsgrad", "b2": 0.9}, with_keyword(amsgrad_reddi, b2=0.9), 0.01),
    "amsgrad/pytorch": ({"name": "amsgrad", "convention": "pytorch", "b2": 0.9},
                        with_keyword(amsgrad_torch, b2=0.9), 0.01),
    "amsgrad/keras": ({"name": "amsgrad", "convention": "keras", "b2": 0.9},
                      with_keyword(adam_keras, b2=0.9, amsgrad=True), 0.01),
    "amsgrad/optax": ({"name": "amsgrad", "convention": "optax", "b2": 0.9},
                      with_keyword(amsgrad_optax, b2=0.9), 0.01),
    "adabound/paper": ({"name": "adabound", "gamma": 0.1}, with_keyword(adabound_luo, gamma=0.1),
                       0.01),
    # The lower bound binds for most entries: the bounds must be float64 under x64.
    "adabound/paper(bounds bind)": ({"name": "adabound", "final_lr": 1.0, "gamma": 0.5},
                                    with_keyword(adabound_luo, final_lr=1.0, gamma=0.5), 0.01),
}


_GRAD = jax.jit(jax.grad(jax_loss))  # compiled once per dtype; the optimizer runs eagerly
_APPLY = jax.jit(optax.apply_updates)


def run_fnn(config: dict, lr: float, dtype) -> np.ndarray:
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), P0)
    data = _data(dtype)
    opt = make_optimizer({**config, "learning_rate": lr})
    state = opt.init(params)
    out = []
    for _ in range(STEPS):
        updates, state = opt.update(_GRAD(params, data), state, params)
        params = _APPLY(params, updates)
        out.append(flatten(jax.tree.map(lambda a: np.asarray(a, np.float64), params)))
    return np.array(out)


@pytest.mark.parametrize("case", list(CASES))
def test_ten_steps_match_the_published_rule_float32(case):
    config, rule, lr = CASES[case]
    want = run_reference(rule, lr)
    np.testing.assert_allclose(run_fnn(config, lr, jnp.float32), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_ten_steps_match_the_published_rule_float64(case):
    config, rule, lr = CASES[case]
    want = run_reference(rule, lr)
    with jax.enable_x64():
        got = run_fnn(config, lr, jnp.float64)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# Pairs of cases whose rules differ on this problem (so the tests above can tell them apart).
DIFFERENT = [
    ("momentum/pytorch+schedule", "momentum/keras+schedule"),
    ("adagrad/paper", "adagrad/keras"), ("rmsprop/paper", "rmsprop/pytorch"),
    ("rmsprop/paper", "rmsprop/keras"), ("rmsprop/pytorch", "rmsprop/pytorch+momentum+centered"),
    ("rmsprop/keras", "rmsprop/keras+momentum+centered"),
    ("adadelta/paper", "adadelta/pytorch"), ("adadelta/paper", "adadelta/keras"),
    ("adam/paper", "adam/keras"), ("adam/paper", "adam/pytorch+weight_decay"),
    ("adam/pytorch+weight_decay", "adam/keras+weight_decay"),
    ("adamw/paper", "adamw/paper(decay all)"), ("adamw/paper", "adamw/pytorch"),
    ("adamw/pytorch", "adamw/keras"), ("adamw/paper", "adamw/optax"),
    ("nadam/paper", "nadam/keras"), ("nadam/paper", "nadam/optax"),
    ("nadam/paper", "nadam/pytorch(momentum_decay)"),
    ("adamax/paper", "adamax/pytorch"), ("adamax/paper", "adamax/keras"),
    ("amsgrad/paper", "amsgrad/pytorch"), ("amsgrad/pytorch", "amsgrad/keras"),
    ("amsgrad/pytorch", "amsgrad/optax"), ("adam/paper", "adabound/paper"),
]


@pytest.mark.parametrize("first, second", DIFFERENT)
def test_the_conventions_differ_on_this_problem(first, second):
    """Each pair differs by more than the float64 tolerance, most by far more."""
    (_, rule_a, lr_a), (_, rule_b, lr_b) = CASES[first], CASES[second]
    assert np.abs(run_reference(rule_a, lr_a) - run_reference(rule_b, lr_b)).max() > 1e-10


def test_amsgrad_maximum_binds():
    """With b2 = 0.9 the second moment shrinks, so AMSGrad's maximum is not plain Adam's v."""
    adam = run_reference(with_keyword(adam_kingma, b2=0.9), 0.01)
    assert np.abs(run_reference(CASES["amsgrad/pytorch"][1], 0.01) - adam).max() > 1e-6


def test_every_optimizer_and_convention_is_covered():
    from fnn.optim import CONVENTIONS, optimizer_names
    covered = {(c["name"], c.get("convention", "paper")) for c, _, _ in CASES.values()}
    want = {(name, conv) for name in optimizer_names() for conv in CONVENTIONS
            if name != "adabound"} | {("adabound", "paper")}
    # sgd's conventions are one rule without momentum; sgd with momentum is "momentum".
    assert want - covered <= {("sgd", "pytorch"), ("sgd", "keras"), ("sgd", "optax")}


def test_custom_rules_run_under_jit():
    """The transformations written in fnn (not optax's) trace: ten jitted steps of each, in
    one compiled function, equal the eager steps."""
    cases = ["adagrad/paper", "nadam/paper", "adamax/paper", "amsgrad/keras",
             "adabound/paper(bounds bind)"]
    opts = [make_optimizer({**CASES[c][0], "learning_rate": CASES[c][2]}) for c in cases]
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), P0)
    data = _data(jnp.float32)

    @jax.jit
    def run_all():
        finals = []
        for opt in opts:
            def step(_, carry, opt=opt):
                p, state = carry
                updates, state = opt.update(jax.grad(jax_loss)(p, data), state, p)
                return optax.apply_updates(p, updates), state
            finals.append(jax.lax.fori_loop(0, STEPS, step, (params, opt.init(params)))[0])
        return finals

    for case, final in zip(cases, run_all()):
        eager = run_fnn(CASES[case][0], CASES[case][2], jnp.float32)[-1]
        np.testing.assert_allclose(flatten(jax.tree.map(np.asarray, final)), eager,
                                   rtol=1e-6, atol=1e-6, err_msg=case)
