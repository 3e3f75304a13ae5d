"""Tests for fnn.initializers: shapes, dtypes, and moments against the formulas in its table."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import initializers

KEY = jax.random.key(0)
TRUNCATED_STD = 0.87962566103423978   # std of N(0, 1) truncated to (-2, 2)


DENSE = (400, 600)   # one shape across tests, so jax's per-shape compilations are shared


def _shape_for(name):
    if name == "delta_orthogonal":
        return (3, 3, 4, 6)
    return (64, 32) if name == "orthogonal" else DENSE  # a QR of DENSE is slow


# CPU LAPACK has no bfloat16 QR, so the orthogonal initializers are checked in float32 only.
NAME_DTYPES = [(name, dtype) for name in initializers.names()
               for dtype in (jnp.float32, jnp.bfloat16)
               if not (dtype == jnp.bfloat16 and "orthogonal" in name)]


@pytest.mark.parametrize("name,dtype", NAME_DTYPES)
def test_every_name_gives_shape_and_dtype(name, dtype):
    shape = _shape_for(name)
    w = initializers.get(name)(KEY, shape, dtype)
    assert w.shape == shape
    assert w.dtype == dtype
    assert np.all(np.isfinite(np.asarray(w, np.float32)))


@pytest.mark.parametrize("name", initializers.names())
def test_deterministic_per_key(name):
    shape = _shape_for(name)
    init = initializers.get(name)
    np.testing.assert_array_equal(init(KEY, shape, jnp.float32), init(KEY, shape, jnp.float32))
    if name not in ("zeros", "ones"):
        other = init(jax.random.key(1), shape, jnp.float32)
        assert not np.array_equal(init(KEY, shape, jnp.float32), other)


def test_constants():
    np.testing.assert_array_equal(initializers.get("zeros")(KEY, (2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(initializers.get("ones")(KEY, (2, 3)), np.ones((2, 3)))
    np.testing.assert_array_equal(initializers.get(0.25)(KEY, (2, 3)), np.full((2, 3), 0.25))
    w = initializers.get(3)(KEY, (4,), jnp.float32)   # an int is a constant too
    np.testing.assert_array_equal(w, np.full(4, 3.0))
    assert w.dtype == jnp.float32


# Dense (in, out) and conv (kh, kw, in, out) shapes: fan_in = rf * in, fan_out = rf * out.
FANS = {DENSE: DENSE, (5, 5, 24, 40): (5 * 5 * 24, 5 * 5 * 40)}

# name -> (target variance, uniform bound or None) as functions of (fan_in, fan_out).
VARIANCE = {
    "glorot_uniform": (lambda i, o: 2 / (i + o), lambda i, o: math.sqrt(6 / (i + o))),
    "xavier_uniform": (lambda i, o: 2 / (i + o), lambda i, o: math.sqrt(6 / (i + o))),
    "glorot_normal": (lambda i, o: 2 / (i + o), None),
    "xavier_normal": (lambda i, o: 2 / (i + o), None),
    "he_uniform": (lambda i, o: 2 / i, lambda i, o: math.sqrt(6 / i)),
    "kaiming_uniform": (lambda i, o: 2 / i, lambda i, o: math.sqrt(6 / i)),
    "he_normal": (lambda i, o: 2 / i, None),
    "kaiming_normal": (lambda i, o: 2 / i, None),
    "lecun_uniform": (lambda i, o: 1 / i, lambda i, o: math.sqrt(3 / i)),
    "lecun_normal": (lambda i, o: 1 / i, None),
}


@pytest.mark.parametrize("shape", list(FANS), ids=["dense", "conv"])
@pytest.mark.parametrize("name", sorted(VARIANCE))
def test_variance_scaling_moments(name, shape):
    fan_in, fan_out = FANS[shape]
    target_var, bound_fn = VARIANCE[name]
    w = np.asarray(initializers.get(name)(jax.random.key(1), shape, jnp.float32), np.float64)
    var = target_var(fan_in, fan_out)
    # 240k samples: the sample variance is within ~0.3% (1 sigma) of the true one.
    assert abs(w.mean()) < 4 * math.sqrt(var / w.size)
    np.testing.assert_allclose(w.var(), var, rtol=0.02)
    if bound_fn is not None:      # uniform on [-a, a] with a^2 / 3 = var
        a = bound_fn(fan_in, fan_out)
        assert np.abs(w).max() <= a
        assert np.abs(w).max() > 0.99 * a
    else:                         # normal truncated at 2 of its own (pre-truncation) std
        cutoff = 2 * math.sqrt(var) / TRUNCATED_STD
        assert np.abs(w).max() <= cutoff * (1 + 1e-6)
        assert np.abs(w).max() > 0.95 * cutoff
        # The shape of a truncated normal (a uniform of that variance would give 1/sqrt(3)):
        # P(|w| < std) = P(|Z| < 0.8796 | |Z| < 2) for Z ~ N(0, 1).
        phi = lambda x: math.erf(x / math.sqrt(2))   # P(|Z| < x)
        inside = np.mean(np.abs(w) < math.sqrt(var))
        np.testing.assert_allclose(inside, phi(TRUNCATED_STD) / phi(2.0), atol=0.01)


def test_normal_and_uniform_defaults():
    w = np.asarray(initializers.get("normal")(KEY, DENSE, jnp.float32), np.float64)
    np.testing.assert_allclose(w.std(), 0.01, rtol=0.01)
    assert abs(w.mean()) < 4 * 0.01 / math.sqrt(w.size)
    u = np.asarray(initializers.get("uniform")(KEY, DENSE, jnp.float32), np.float64)
    assert u.min() >= -0.05 and u.max() <= 0.05
    assert u.min() < -0.049 and u.max() > 0.049   # symmetric: not jax's [0, scale)
    np.testing.assert_allclose(u.var(), 0.05 ** 2 / 3, rtol=0.02)
    assert abs(u.mean()) < 4 * math.sqrt(0.05 ** 2 / 3 / u.size)
    scaled = np.asarray(initializers.uniform(0.5)(KEY, DENSE), np.float64)
    assert scaled.min() >= -0.5 and scaled.max() <= 0.5 and scaled.min() < -0.4


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (40, 40)])
def test_orthogonal(shape):
    w = np.asarray(initializers.get("orthogonal")(KEY, shape, jnp.float32), np.float64)
    if shape[0] >= shape[1]:
        np.testing.assert_allclose(w.T @ w, np.eye(shape[1]), atol=1e-5)
    else:
        np.testing.assert_allclose(w @ w.T, np.eye(shape[0]), atol=1e-5)


def test_orthogonal_conv_kernel_has_orthonormal_columns():
    w = np.asarray(initializers.get("orthogonal")(KEY, (3, 3, 4, 8), jnp.float32), np.float64)
    flat = w.reshape(-1, 8)
    np.testing.assert_allclose(flat.T @ flat, np.eye(8), atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 5, 5), (3, 3, 4, 6), (3, 3, 3, 2, 2), (5, 4, 6, 6)])
def test_delta_orthogonal(shape):
    w = np.asarray(initializers.get("delta_orthogonal")(KEY, shape, jnp.float32), np.float64)
    centre = tuple((k - 1) // 2 for k in shape[:-2])
    c = w[centre]
    fan_in = shape[-2]
    np.testing.assert_allclose(c @ c.T, np.eye(fan_in), atol=1e-5)   # orthonormal rows
    rest = w.copy()
    rest[centre] = 0.0
    np.testing.assert_array_equal(rest, 0.0)


def test_delta_orthogonal_rejects_bad_shapes():
    with pytest.raises(ValueError):
        initializers.get("delta_orthogonal")(KEY, (4, 6))
    with pytest.raises(ValueError):
        initializers.get("delta_orthogonal")(KEY, (3, 3, 6, 4))   # fan_in > fan_out


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match="unknown initializer 'he_norml'.*did you mean.*he_normal"):
        initializers.get("he_norml")
    with pytest.raises(ValueError, match="known:"):
        initializers.get("qqqqqq")


def test_get_passes_functions_and_rejects_other_types():
    fn = initializers.he_normal
    assert initializers.get(fn) is fn
    assert initializers.get("He_Normal") is initializers.he_normal
    with pytest.raises(TypeError):
        initializers.get(True)
    with pytest.raises(TypeError):
        initializers.get(None)


def test_names_lists_every_documented_initializer():
    documented = {"zeros", "ones", "normal", "uniform", "glorot_uniform", "glorot_normal",
                  "xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "kaiming_uniform",
                  "kaiming_normal", "lecun_uniform", "lecun_normal", "orthogonal",
                  "delta_orthogonal", "variance_scaling"}
    assert documented == set(initializers.names())


# --------------------------------------------------------------------------- records with arguments

def test_variance_scaling_is_in_the_names():
    assert "variance_scaling" in initializers.names()


@pytest.mark.parametrize("gain", [0.5, 1.0, 1.33])
def test_orthogonal_gain_scales_singular_values(gain):
    w = np.asarray(initializers.orthogonal(gain=gain)(KEY, (40, 40)), np.float64)
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), gain, rtol=1e-5)
    tall = np.asarray(initializers.orthogonal(gain)(KEY, (64, 32)), np.float64)
    np.testing.assert_allclose(tall.T @ tall, gain ** 2 * np.eye(32), atol=1e-5)


@pytest.mark.parametrize("gain", [0.7, 1.33])
def test_delta_orthogonal_gain(gain):
    w = np.asarray(initializers.delta_orthogonal(gain=gain)(KEY, (3, 3, 8, 8)), np.float64)
    np.testing.assert_allclose(w[1, 1] @ w[1, 1].T, gain ** 2 * np.eye(8), atol=1e-5)
    rest = w.copy()
    rest[1, 1] = 0.0
    np.testing.assert_array_equal(rest, 0.0)
    # a 3x3 "SAME" conv with this kernel is the channel map gain * Q at every pixel:
    # the squared norm of every pixel's channel vector is multiplied by gain^2
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 8))
    y = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                     (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.sum(np.asarray(y, np.float64) ** 2, -1),
                               gain ** 2 * np.sum(x ** 2, -1), rtol=1e-4)


@pytest.mark.parametrize("dist", ["normal", "truncated_normal", "uniform"])
def test_variance_scaling_variance_is_scale_over_fan_in(dist):
    w = np.asarray(initializers.variance_scaling(1.76, distribution=dist)(KEY, (3, 3, 40, 60)),
                   np.float64)
    np.testing.assert_allclose(w.var(), 1.76 / (9 * 40), rtol=0.03)


def test_records_round_trip_through_their_spec():
    cases = {
        "he_normal": initializers.he_normal,
        "glorot_uniform": initializers.glorot_uniform,
        "orthogonal": initializers.orthogonal(),
        "delta_orthogonal": initializers.delta_orthogonal(gain=1.0),   # default: the bare name
    }
    for spec, init in cases.items():
        assert init.spec == spec
        assert initializers.get(spec) == init
    init = initializers.delta_orthogonal(gain=1.04)
    assert init.spec == {"delta_orthogonal": {"gain": 1.04}}
    assert initializers.get({"delta_orthogonal": {"gain": 1.04}}) == init
    assert initializers.get(init.spec) == init and hash(initializers.get(init.spec)) == hash(init)
    np.testing.assert_array_equal(initializers.get(init.spec)(KEY, (3, 3, 4, 4)),
                                  init(KEY, (3, 3, 4, 4)))
    assert initializers.get({"normal": 0.1}).spec == {"normal": {"stddev": 0.1}}
    assert initializers.get({"constant": {"value": 0.5}}).spec == {"constant": {"value": 0.5}}
    assert initializers.get({"he_normal": {}}) is initializers.he_normal
    assert initializers.get(initializers.orthogonal) == initializers.orthogonal()   # uncalled factory
    assert initializers.get(0.25).spec == {"constant": {"value": 0.25}}
    import json
    json.dumps(initializers.variance_scaling(2.0, mode="fan_avg").spec)   # plain data


def test_records_are_immutable():
    init = initializers.orthogonal(gain=2.0)
    with pytest.raises(Exception):
        init.name = "zeros"
    assert repr(init) == "orthogonal(gain=2.0)"


def test_bad_arguments_name_the_initializer_and_argument():
    with pytest.raises(ValueError, match=r"initializer 'delta_orthogonal': unknown argument 'gian'; "
                                         r"did you mean 'gain'"):
        initializers.get({"delta_orthogonal": {"gian": 1.0}})
    with pytest.raises(ValueError, match="delta_orthogonal: gain must be > 0"):
        initializers.get({"delta_orthogonal": {"gain": -1.0}})
    with pytest.raises(ValueError, match="initializer 'he_normal' takes no arguments"):
        initializers.get({"he_normal": {"gain": 2.0}})
    with pytest.raises(ValueError, match="unknown initializer 'delta_orthogonl'.*did you mean"):
        initializers.get({"delta_orthogonl": {"gain": 1.0}})
    with pytest.raises(ValueError, match="mode must be one of"):
        initializers.variance_scaling(1.0, mode="fan")
    with pytest.raises(ValueError, match="constant initializer needs a value"):
        initializers.get(initializers.constant)


def test_layers_take_initializers_with_arguments():
    import fnn
    conv = fnn.Conv2D(8, 3, w_init={"delta_orthogonal": {"gain": 1.5}})
    _, params, _ = conv.init(KEY, (-1, 5, 5, 8))
    c = np.asarray(params["w"][1, 1], np.float64)
    np.testing.assert_allclose(c @ c.T, 2.25 * np.eye(8), atol=1e-5)
    dense = fnn.Dense(4, w_init=initializers.orthogonal(gain=2.0))
    _, params, _ = dense.init(KEY, (-1, 4))
    np.testing.assert_allclose(np.asarray(params["w"]).T @ np.asarray(params["w"]), 4 * np.eye(4),
                               atol=1e-5)


def test_critical_is_the_mean_field_critical_point_by_name():
    """critical(activation, sigma_b2, kernel) draws what the explicit initializer with the
    critical sigma_w^2 draws, and saves as names, not numbers."""
    key = jax.random.key(3)
    cp = fnn.meanfield.critical_point("tanh", 0.05)
    assert abs(cp.sigma_w2 - 1.76) < 0.01                       # Schoenholz et al. 2017, Fig. 1
    for kernel, explicit, shape in (
            ("delta_orthogonal", initializers.delta_orthogonal(gain=cp.gain), (3, 3, 16, 16)),
            ("orthogonal", initializers.orthogonal(gain=cp.gain), (3, 3, 16, 32)),
            ("normal", initializers.variance_scaling(cp.sigma_w2, distribution="normal"),
             (64, 32))):
        init = initializers.critical("tanh", 0.05, kernel=kernel)
        np.testing.assert_allclose(init(key, shape), explicit(key, shape), rtol=1e-6, atol=1e-7)
        assert initializers.get(init.spec) == init
    spec = initializers.critical("tanh", 0.05).spec
    assert spec == {"critical": {"activation": "tanh", "sigma_b2": 0.05}}
    # relu at any bias variance: He's sigma_w^2 = 2, a variance of 2 / fan_in
    w = initializers.critical("relu", 0.0, kernel="normal")(key, (4000, 200))
    assert abs(float(jnp.var(w)) * 4000 - 2.0) < 0.02
    # mistakes, one line each
    for bad, message in (
            ("critical", "critical initializer needs an activation and sigma_b2"),
            ({"critical": {"activation": "tanh"}}, "missing argument 'sigma_b2'"),
            ({"critical": {"activation": "swish", "sigma_b2": 0.0}}, "activation must be one of"),
            ({"critical": {"activation": "tanh", "sigma_b2": -1.0}}, "sigma_b2 must be >= 0"),
            ({"critical": {"activation": "tanh", "sigma_b2": 0.0, "kernel": "delta"}},
             "kernel must be one of delta_orthogonal, orthogonal, normal")):
        with pytest.raises(ValueError, match=message):
            initializers.get(bad)


def test_a_network_with_critical_init_saves_and_loads_its_architecture(tmp_path):
    w = initializers.critical("tanh", 1e-4)
    net = fnn.serial(fnn.Conv2D(8, 3, w_init=w, b_init=initializers.normal(0.01)), fnn.Tanh)
    _, params, state = net.init(jax.random.key(0), (-1, 7, 7, 8))
    fnn.save(tmp_path / "net.safetensors", net, params, state)
    loaded, params2, _ = fnn.load(tmp_path / "net.safetensors")
    assert loaded.spec == net.spec
    conv = loaded.spec["serial"]["layers"][0]["Conv2D"]
    assert conv["w_init"] == {"critical": {"activation": "tanh", "sigma_b2": 0.0001}}
    np.testing.assert_array_equal(params2["conv2d_0"]["w"], params["conv2d_0"]["w"])
