"""jax.grad through an fnn sigmoid MLP against closed-form error back-propagation in NumPy.

Network: 4 -> 5 -> 3 -> 2, every layer ``Dense + Sigmoid``:
``a^0 = x``, ``z^l = a^{l-1} W^l + b^l``, ``a^l = sigmoid(z^l)``.

Loss: ``L = c * sum_batch sum_outputs 1/2 (y - a^L)^2`` with ``c = 1`` ("sum" over the batch)
or ``c = 1 / batch`` ("mean" over the batch). The reference (float64 NumPy):

* ``delta^L = c (a^L - y) * a^L * (1 - a^L)``
* ``delta^l = (delta^{l+1} W^{l+1 T}) * a^l * (1 - a^l)``
* ``dL/dW^l = a^{l-1 T} delta^l`` and ``dL/db^l = sum_batch delta^l``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn

SIZES = (4, 5, 3, 2)
BATCH = 6


def _mlp() -> fnn.Layer:
    layers = []
    for width in SIZES[1:]:
        layers += [fnn.Dense(width), fnn.Sigmoid]
    return fnn.serial(*layers)


def _data(dtype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH, SIZES[0]))
    y = rng.uniform(0.0, 1.0, size=(BATCH, SIZES[-1]))
    return x.astype(dtype), y.astype(dtype)


def _loss_fn(net, reduction):
    def loss(params, x, y):
        a, _ = net.apply(params, {}, x)
        total = 0.5 * jnp.sum((y - a) ** 2)
        return total / x.shape[0] if reduction == "mean" else total

    return loss


def _numpy_backprop(params, x, y, reduction):
    """Closed-form gradients of the loss above, in float64 NumPy."""
    ws = [np.asarray(params[f"dense_{i}"]["w"], np.float64) for i in range(len(SIZES) - 1)]
    bs = [np.asarray(params[f"dense_{i}"]["b"], np.float64) for i in range(len(SIZES) - 1)]
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    acts = [x]
    for w, b in zip(ws, bs):
        acts.append(1.0 / (1.0 + np.exp(-(acts[-1] @ w + b))))
    c = 1.0 / x.shape[0] if reduction == "mean" else 1.0
    a_out = acts[-1]
    delta = c * (a_out - y) * a_out * (1.0 - a_out)
    grads = {}
    for l in reversed(range(len(ws))):  # layer l maps acts[l] -> acts[l + 1]
        grads[f"dense_{l}"] = {"w": acts[l].T @ delta, "b": delta.sum(axis=0)}
        if l > 0:
            delta = (delta @ ws[l].T) * acts[l] * (1.0 - acts[l])
    return grads


def _assert_grads_close(got, expected, *, rtol, atol, dtype):
    assert sorted(got) == sorted(expected)
    for layer in expected:
        assert sorted(got[layer]) == ["b", "w"]
        for leaf in ("w", "b"):
            g = got[layer][leaf]
            assert g.dtype == dtype, (layer, leaf, g.dtype)
            assert g.shape == expected[layer][leaf].shape
            np.testing.assert_allclose(np.asarray(g, np.float64), expected[layer][leaf],
                                       rtol=rtol, atol=atol, err_msg=f"{layer}/{leaf}")


def test_reference_is_not_trivial():
    # Guard against a vacuous comparison: the gradients are well scaled and nonzero.
    net = _mlp()
    _, params, _ = net.init(jax.random.key(0), (-1, SIZES[0]))
    x, y = _data(np.float32)
    grads = _numpy_backprop(params, x, y, "sum")
    for layer in grads.values():
        for g in layer.values():
            assert 1e-4 < np.max(np.abs(g)) < 10.0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_grad_matches_backprop_float32(reduction):
    net = _mlp()
    _, params, state = net.init(jax.random.key(0), (-1, SIZES[0]))
    assert state == {}
    x, y = _data(np.float32)
    grads = jax.grad(_loss_fn(net, reduction))(params, jnp.asarray(x), jnp.asarray(y))
    expected = _numpy_backprop(params, x, y, reduction)
    _assert_grads_close(grads, expected, rtol=1e-6, atol=1e-6, dtype=jnp.float32)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_grad_matches_backprop_float64(reduction):
    net = _mlp()
    _, params32, _ = net.init(jax.random.key(0), (-1, SIZES[0]))
    x, y = _data(np.float64)
    with jax.enable_x64(True):
        params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params32)
        out, _ = net.apply(params, {}, jnp.asarray(x))
        assert out.dtype == jnp.float64  # Dense and Sigmoid keep float64 params/inputs
        loss = jax.jit(_loss_fn(net, reduction))
        grads = jax.grad(loss)(params, jnp.asarray(x), jnp.asarray(y))
        expected = _numpy_backprop(params, x, y, reduction)
        _assert_grads_close(grads, expected, rtol=1e-10, atol=1e-12, dtype=jnp.float64)
