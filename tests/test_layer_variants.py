"""Layer and loss variants of other frameworks, each against a NumPy reference written here.

* ``AvgPool1D/2D(count_include_pad=True)`` (PyTorch's default) and ``False`` (Keras) on inputs
  padded at every border;
* ``GRUCell/GRU(reset_after=False)`` (Cho et al. 2014, Keras) and ``True`` (PyTorch, cuDNN)
  for several steps with given weights;
* the multi-class hinge losses of Weston & Watkins 1999 and Crammer & Singer 2001;
* ``BatchNorm(unbiased_running_var=True)`` (PyTorch) and PyTorch's momentum convention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn.core import LayerError
from fnn.layers.normalization import BatchNorm
from fnn.layers.pooling import AvgPool1D, AvgPool2D
from fnn.layers.recurrent import GRU, GRUCell

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- average pooling

def same_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: out = ceil(n / s), the extra input split low-first."""
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def avg_pool_reference(x: np.ndarray, window, strides, pads, count_include_pad: bool):
    """Mean over each window of the zero-padded input; divided by the window size or by the
    number of real (unpadded) entries in the window. x: (N, *spatial, C)."""
    ndim = x.ndim - 2
    padded = np.pad(x, [(0, 0), *pads, (0, 0)])
    real = np.pad(np.ones(x.shape[1:-1]), pads)
    out_shape = [(padded.shape[1 + a] - window[a]) // strides[a] + 1 for a in range(ndim)]
    out = np.zeros((x.shape[0], *out_shape, x.shape[-1]))
    for idx in np.ndindex(*out_shape):
        sl = tuple(slice(i * s, i * s + k) for i, s, k in zip(idx, strides, window))
        total = padded[(slice(None), *sl, slice(None))].sum(axis=tuple(range(1, ndim + 1)))
        count = np.prod(window) if count_include_pad else real[sl].sum()
        out[(slice(None), *idx, slice(None))] = total / count
    return out


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("padding", [1, ((1, 2), (2, 1)), "SAME"])
def test_avg_pool_2d_with_padding_at_every_border(count_include_pad, padding):
    x = RNG.normal(size=(2, 5, 6, 3))
    window, strides = (3, 3), (2, 2)
    if padding == "SAME":
        pads = [same_pads(5, 3, 2), same_pads(6, 3, 2)]
    elif isinstance(padding, int):
        pads = [(padding, padding)] * 2
    else:
        pads = list(padding)
    layer = AvgPool2D(window, strides, padding, count_include_pad=count_include_pad)
    out_shape, params, state = layer.init(jax.random.key(0), (-1, 5, 6, 3))
    y, _ = layer.apply(params, state, jnp.asarray(x, jnp.float32))
    want = avg_pool_reference(x, window, strides, pads, count_include_pad)
    assert tuple(y.shape[1:]) == tuple(out_shape[1:]) == want.shape[1:]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def test_avg_pool_1d_count_include_pad():
    x = RNG.normal(size=(3, 7, 2))
    for include in (True, False):
        layer = AvgPool1D(3, 2, (2, 1), count_include_pad=include)
        _, params, state = layer.init(jax.random.key(0), (-1, 7, 2))
        y, _ = layer.apply(params, state, jnp.asarray(x, jnp.float32))
        np.testing.assert_allclose(
            y, avg_pool_reference(x, (3,), (2,), [(2, 1)], include), rtol=1e-6, atol=1e-6)


def test_avg_pool_count_include_pad_differs_only_at_the_border():
    x = jnp.ones((1, 4, 4, 1))
    y, _ = AvgPool2D(3, 1, 1, count_include_pad=True).apply({}, {}, x)
    assert float(y[0, 0, 0, 0]) == pytest.approx(4 / 9) and float(y[0, 1, 1, 0]) == 1.0
    with pytest.raises(ValueError, match="AvgPool2D: count_include_pad must be true or false"):
        AvgPool2D(2, count_include_pad="yes")


# --------------------------------------------------------------------------- GRU variants

def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def gru_reference(xs, h, w_x, w_h, b, b_hn, reset_after: bool):
    """Blocks [r, z, n] of w_x (F, 3u), w_h (u, 3u), b (3u,). reset_after=True (PyTorch
    nn.GRU): n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); False (Cho et al. 2014 eq. 5-8,
    Keras reset_after=False): n = tanh(W x + b_n + U (r * h)). h' = (1 - z) n + z h."""
    u = h.shape[-1]
    wr, wz, wn = w_x[:, :u], w_x[:, u:2 * u], w_x[:, 2 * u:]
    ur, uz, un = w_h[:, :u], w_h[:, u:2 * u], w_h[:, 2 * u:]
    br, bz, bn = b[:u], b[u:2 * u], b[2 * u:]
    out = []
    for x in xs:
        r = sigmoid(x @ wr + br + h @ ur)
        z = sigmoid(x @ wz + bz + h @ uz)
        if reset_after:
            n = np.tanh(x @ wn + bn + r * (h @ un + b_hn))
        else:
            n = np.tanh(x @ wn + bn + (r * h) @ un)
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)  # (batch, time, units)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_variants_match_reference_for_several_steps(reset_after):
    batch, time, features, units = 2, 5, 3, 4
    xs = RNG.normal(size=(time, batch, features))
    w_x, w_h = RNG.normal(size=(features, 3 * units)), RNG.normal(size=(units, 3 * units))
    b, b_hn = 0.5 * RNG.normal(size=3 * units), 0.5 * RNG.normal(size=units)
    h0 = 0.3 * RNG.normal(size=(batch, units))
    params = {"w_x": w_x, "w_h": w_h, "b": b}
    if reset_after:
        params["b_hn"] = b_hn
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    want = gru_reference(xs, h0, w_x, w_h, b, b_hn, reset_after)

    cell = GRUCell(units, reset_after=reset_after)
    assert sorted(cell.init(jax.random.key(0), (-1, features))) == sorted(params)
    h, got = jnp.asarray(h0, jnp.float32), []
    for x in xs:
        h, y = cell.step(params, h, jnp.asarray(x, jnp.float32))
        got.append(y)
    np.testing.assert_allclose(np.stack(got, axis=1), want, rtol=1e-5, atol=1e-6)

    layer = GRU(units, reset_after=reset_after)
    seq = jnp.asarray(xs.transpose(1, 0, 2), jnp.float32)
    mask = jnp.ones((batch, time), bool)
    (ys, _), _ = layer.apply(params, {}, (seq, mask, jnp.asarray(h0, jnp.float32)))
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-6)


def test_the_two_gru_variants_differ_and_reset_after_is_in_the_spec():
    xs = RNG.normal(size=(3, 2, 3))
    w_x, w_h, b = RNG.normal(size=(3, 12)), RNG.normal(size=(4, 12)), RNG.normal(size=12)
    h0 = RNG.normal(size=(2, 4))
    a = gru_reference(xs, h0, w_x, w_h, b, np.zeros(4), True)
    c = gru_reference(xs, h0, w_x, w_h, b, np.zeros(4), False)
    assert np.abs(a - c).max() > 1e-2
    assert "reset_after" in str(GRU(4, reset_after=False).spec)
    with pytest.raises(ValueError, match="GRU: reset_after must be true or false"):
        GRU(4, reset_after=0)


# --------------------------------------------------------------------------- multi-class hinge

def weston_watkins_reference(scores, labels, margin=1.0):
    return np.array([sum(max(0.0, margin + s[c] - s[y]) for c in range(len(s)) if c != y)
                     for s, y in zip(scores, labels)])


def crammer_singer_reference(scores, labels, margin=1.0):
    return np.array([max(0.0, margin + max(s[c] for c in range(len(s)) if c != y) - s[y])
                     for s, y in zip(scores, labels)])


@pytest.mark.parametrize("name, reference", [
    ("weston_watkins_hinge", weston_watkins_reference),
    ("multiclass_hinge", weston_watkins_reference),
    ("crammer_singer_hinge", crammer_singer_reference)])
def test_multiclass_hinge_losses(name, reference):
    scores = RNG.normal(size=(7, 4))
    labels = RNG.integers(0, 4, size=7)
    loss = fnn.losses.get(name)
    want = reference(scores, labels)
    per_example = loss(jnp.asarray(scores, jnp.float32), jnp.asarray(labels),
                       reduction="none")
    np.testing.assert_allclose(per_example, want, rtol=1e-6, atol=1e-6)
    one_hot = np.eye(4)[labels]
    np.testing.assert_allclose(loss(jnp.asarray(scores), jnp.asarray(one_hot)), want.mean(),
                               rtol=1e-6)
    margin = fnn.losses.get(name, margin=0.3)(jnp.asarray(scores), jnp.asarray(labels),
                                              reduction="sum")
    np.testing.assert_allclose(margin, reference(scores, labels, 0.3).sum(), rtol=1e-5)
    # (batch, time, classes): averaged over time
    seq = RNG.normal(size=(3, 2, 4))
    seq_labels = RNG.integers(0, 4, size=(3, 2))
    want_seq = reference(seq.reshape(6, 4), seq_labels.reshape(6)).reshape(3, 2).mean(1)
    np.testing.assert_allclose(loss(jnp.asarray(seq), jnp.asarray(seq_labels), reduction="none"),
                               want_seq, rtol=1e-6, atol=1e-6)


def test_multiclass_hinge_gradient_and_errors():
    scores = jnp.array([[2.0, 1.5, -1.0], [0.0, 0.2, 0.1]])
    grad = jax.grad(lambda s: fnn.losses.crammer_singer_hinge(s, jnp.array([0, 2])))(scores)
    # example 0: 1 + 1.5 - 2 > 0 -> d/ds = (-1, +1, 0) / 2; example 1: best wrong is class 1
    np.testing.assert_allclose(grad, [[-0.5, 0.5, 0.0], [0.0, 0.5, -0.5]])
    with pytest.raises(ValueError, match="weston_watkins_hinge: margin must be"):
        fnn.losses.weston_watkins_hinge(scores, jnp.array([0, 1]), margin=-1.0)
    with pytest.raises(ValueError, match=r"crammer_singer_hinge: labels must be in \[0, 3\)"):
        fnn.losses.crammer_singer_hinge(scores, jnp.array([0, 3]))


# --------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 3, 4)])
def test_batchnorm_unbiased_running_var_as_pytorch(shape):
    """PyTorch BatchNorm(momentum=0.1): running = 0.9 running + 0.1 batch, the running
    variance unbiased (ddof=1), the normalization biased (ddof=0)."""
    x = RNG.normal(size=shape) * 2.0 + 1.0
    layer = BatchNorm(momentum=0.9, unbiased_running_var=True)
    _, params, state = layer.init(jax.random.key(0), (-1, *shape[1:]))
    y, new = layer.apply(params, state, jnp.asarray(x, jnp.float32), train=True)
    flat = x.reshape(-1, shape[-1])
    np.testing.assert_allclose(new["mean"], 0.1 * flat.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
    want_y = (x - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
    _, biased = BatchNorm(momentum=0.9).apply(params, state, jnp.asarray(x, jnp.float32),
                                               train=True)
    np.testing.assert_allclose(biased["var"], 0.9 + 0.1 * flat.var(0), rtol=1e-5)


def test_batchnorm_unbiased_running_var_counts_every_device():
    """Under vmap with axis_name, n is the number of values over all devices."""
    x = RNG.normal(size=(3, 4, 2))  # 3 devices x 4 examples x 2 features
    layer = BatchNorm(momentum=0.0, axis_name="d", unbiased_running_var=True)
    _, params, state = layer.init(jax.random.key(0), (-1, 2))
    apply = jax.vmap(lambda xd: layer.apply(params, state, xd, train=True)[1], axis_name="d")
    new = apply(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(new["var"][0], x.reshape(12, 2).var(0, ddof=1), rtol=1e-5)


def test_batchnorm_unbiased_needs_two_values():
    layer = BatchNorm(unbiased_running_var=True)
    _, params, state = layer.init(jax.random.key(0), (-1, 3))
    with pytest.raises(LayerError, match="more than one value per feature"):
        layer.apply(params, state, jnp.ones((1, 3)), train=True)
    with pytest.raises(ValueError, match="unbiased_running_var must be true or false"):
        BatchNorm(unbiased_running_var=1)
