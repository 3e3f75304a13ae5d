"""Tests for fnn.meanfield against closed forms, scipy quadrature, a simulated wide network and
published values of the tanh critical line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from fnn import meanfield as mf


def _quad(f, q):
    """Independent reference: E[f(sqrt(q) z)] by adaptive quadrature (scipy.integrate.quad)."""
    s = math.sqrt(q)
    return integrate.quad(lambda z: f(s * z) * stats.norm.pdf(z), -12, 12, points=[0.0],
                          limit=400, epsabs=1e-13)[0]


# --------------------------------------------------------------------------- integrals

@pytest.mark.parametrize("q", [0.1, 0.57, 2.0, 9.0])
def test_relu_integrals_match_closed_forms(q):
    relu = mf.activation("relu")
    # E[relu(u)^2] = q / 2 and E[relu'(u)^2] = 1/2 (half the Gaussian mass)
    np.testing.assert_allclose(mf.gaussian_expectation(lambda x: relu.phi(x) ** 2, q, relu.kinks),
                               q / 2, rtol=1e-12)
    np.testing.assert_allclose(mf.chi_1(1.7, 0.1, "relu", q_star=q), 1.7 / 2, rtol=1e-12)
    # correlation map: the arc-cosine kernel of degree 1 (Cho & Saul 2009),
    # E[relu(u1) relu(u2)] = q / (2 pi) * (sqrt(1 - c^2) + (pi - arccos c) c)
    for c in (-0.5, 0.0, 0.3, 0.9):
        kernel = q / (2 * math.pi) * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c)
        expected = (1.5 * kernel + 0.2) / q
        np.testing.assert_allclose(mf.correlation_map(c, 1.5, 0.2, "relu", q_star=q), expected,
                                   rtol=2e-3)


@pytest.mark.parametrize("q", [0.05, 0.5, 3.0])
def test_erf_integrals_match_williams_closed_forms(q):
    # Williams (1997): E[erf(u1) erf(u2)] = 2/pi asin(2 q c / (1 + 2 q)); c = 1 gives the length.
    np.testing.assert_allclose(mf.length_map(q, 1.3, 0.1, "erf"),
                               1.3 * 2 / math.pi * math.asin(2 * q / (1 + 2 * q)) + 0.1, rtol=1e-12)
    # E[erf'(u)^2] = 4/pi E[exp(-2 u^2)] = 4/pi / sqrt(1 + 4 q)
    np.testing.assert_allclose(mf.chi_1(1.3, 0.1, "erf", q_star=q),
                               1.3 * 4 / math.pi / math.sqrt(1 + 4 * q), rtol=1e-12)
    for c in (0.2, 0.8):
        expected = (1.3 * 2 / math.pi * math.asin(2 * q * c / (1 + 2 * q)) + 0.1) / q
        np.testing.assert_allclose(mf.correlation_map(c, 1.3, 0.1, "erf", q_star=q), expected,
                                   rtol=1e-8)


@pytest.mark.parametrize("q", [0.3, 1.0, 4.0])
def test_hard_tanh_integrals_match_closed_forms(q):
    a = 1 / math.sqrt(q)   # |u| < 1  <=>  |z| < a
    inside = 2 * stats.norm.cdf(a) - 1
    second = q * (inside - 2 * a * stats.norm.pdf(a)) + 2 * stats.norm.sf(a)   # E[clip(u)^2]
    np.testing.assert_allclose(mf.length_map(q, 1.0, 0.0, "hard_tanh"), second, rtol=1e-11)
    np.testing.assert_allclose(mf.chi_1(1.0, 0.0, "hard_tanh", q_star=q), inside, rtol=1e-11)


def test_tanh_and_any_function_match_adaptive_quadrature():
    for q in (0.2, 1.0, 5.0):
        np.testing.assert_allclose(mf.length_map(q, 1.0, 0.0, "tanh"),
                                   _quad(lambda x: np.tanh(x) ** 2, q), rtol=1e-10)
        softplus = lambda x: np.logaddexp(0.0, x)
        np.testing.assert_allclose(mf.length_map(q, 1.0, 0.0, softplus),
                                   _quad(lambda x: np.logaddexp(0.0, x) ** 2, q), rtol=1e-10)
        np.testing.assert_allclose(mf.chi_1(1.0, 0.0, softplus, q_star=q),
                                   _quad(lambda x: special.expit(x) ** 2, q), rtol=1e-7)


def test_fixed_point_is_a_fixed_point():
    for act in ("tanh", "erf", "hard_tanh", "relu", "sigmoid"):
        q = mf.fixed_point(1.2, 0.1, act)
        np.testing.assert_allclose(mf.length_map(q, 1.2, 0.1, act), q, rtol=1e-10)
    # relu: q* = sigma_b2 / (1 - sigma_w2 / 2) below the critical point, infinite at and above
    np.testing.assert_allclose(mf.fixed_point(1.5, 0.1, "relu"), 0.1 / (1 - 0.75), rtol=1e-9)
    np.testing.assert_allclose(mf.fixed_point(1.99, 0.1, "relu"), 0.1 / (1 - 0.995), rtol=1e-7)
    assert mf.fixed_point(2.5, 0.1, "relu") == math.inf


# --------------------------------------------------------------------------- critical points

def test_relu_critical_point_is_he():
    """He et al. (2015): sigma_w^2 = 2 keeps relu signals at constant length; it is chi_1 = 1."""
    for sb2 in (0.0, 0.05, 0.5):
        np.testing.assert_allclose(mf.critical_point("relu", sb2).sigma_w2, 2.0, rtol=1e-9)


def test_tanh_critical_point_matches_the_published_phase_diagram():
    """Schoenholz et al. 2017, "Deep Information Propagation" (ICLR), Fig. 1 and Sec. 3: for tanh at
    sigma_b^2 = 0.05 the order-to-chaos transition is at sigma_w^2 ~ 1.76 (read to two decimals);
    as sigma_b^2 -> 0 the critical line ends at sigma_w^2 = 1 (tanh'(0) = 1, q* -> 0)."""
    cp = mf.critical_point("tanh", 0.05)
    assert abs(cp.sigma_w2 - 1.76) < 0.01
    np.testing.assert_allclose(mf.chi_1(cp.sigma_w2, 0.05, "tanh"), 1.0, atol=1e-9)
    np.testing.assert_allclose(cp.gain, math.sqrt(cp.sigma_w2))
    assert abs(mf.critical_point("tanh", 1e-8).sigma_w2 - 1.0) < 1e-2
    # the critical line rises with the bias variance (the phase diagram's shape)
    lines = [mf.critical_point("tanh", sb2).sigma_w2 for sb2 in (0.01, 0.05, 0.1, 0.5)]
    assert lines == sorted(lines)


def test_phases_and_depth_scales():
    ordered = mf.signal_propagation("tanh", 1.0, 0.05)
    chaotic = mf.signal_propagation("tanh", 2.5, 0.05)
    critical = mf.signal_propagation("tanh", mf.critical_point("tanh", 0.05).sigma_w2, 0.05)
    assert (ordered.phase, chaotic.phase, critical.phase) == ("ordered", "chaotic", "critical")
    assert ordered.c_star == 1.0 and chaotic.c_star < 1.0 and critical.c_star == 1.0
    np.testing.assert_allclose(ordered.xi_c, -1 / math.log(ordered.chi_1))
    assert critical.xi_c == math.inf
    # c* is the fixed point of the correlation map in the chaotic phase, and chi_c < 1 there
    np.testing.assert_allclose(mf.correlation_map(chaotic.c_star, 2.5, 0.05, "tanh"),
                               chaotic.c_star, atol=1e-9)
    assert chaotic.chi_c < 1 < chaotic.chi_1
    # xi_q from the slope of the length map at q*, checked by a finite difference here
    h = 1e-6
    slope = (mf.length_map(ordered.q_star + h, 1.0, 0.05, "tanh")
             - mf.length_map(ordered.q_star - h, 1.0, 0.05, "tanh")) / (2 * h)
    np.testing.assert_allclose(ordered.xi_q, -1 / math.log(slope), rtol=1e-6)
    # relu: closed forms chi_1 = sigma_w2 / 2, length-map slope sigma_w2 / 2
    relu = mf.signal_propagation("relu", 1.5, 0.1)
    np.testing.assert_allclose([relu.chi_1, relu.xi_q, relu.xi_c],
                               [0.75, -1 / math.log(0.75), -1 / math.log(0.75)], rtol=1e-9)


def test_a_simulated_wide_network_follows_the_maps():
    """A 1000-wide random tanh MLP: empirical q^l and log-gradient decay match q* and chi_1."""
    rng = np.random.default_rng(0)
    n, sw2, sb2, depth = 1000, 1.3, 0.05, 25
    theory = mf.signal_propagation("tanh", sw2, sb2)
    h = rng.normal(size=n) * 2.0
    jac = np.eye(n)[:8]   # 8 random directions pushed forward through the Jacobian
    ratios, lengths = [], []
    for _ in range(depth):
        w = rng.normal(size=(n, n)) * math.sqrt(sw2 / n)
        b = rng.normal(size=n) * math.sqrt(sb2)
        d = 1 - np.tanh(h) ** 2
        new_jac = (jac * d) @ w.T
        ratios.append(np.sum(new_jac ** 2) / np.sum(jac ** 2))
        jac = new_jac
        h = w @ np.tanh(h) + b
        lengths.append(np.mean(h ** 2))
    np.testing.assert_allclose(np.mean(lengths[10:]), theory.q_star, rtol=0.05)
    np.testing.assert_allclose(np.mean(ratios[10:]), theory.chi_1, rtol=0.05)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown activation 'tahn'"):
        mf.activation("tahn")
    with pytest.raises(ValueError, match="sigma_w2 must be > 0"):
        mf.fixed_point(0.0, 0.1, "tanh")
    with pytest.raises(ValueError, match="sigma_b2 must be >= 0"):
        mf.signal_propagation("tanh", 1.0, -0.1)
