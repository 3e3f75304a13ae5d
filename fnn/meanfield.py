"""Mean-field theory of signal propagation at initialisation (Poole et al. 2016, Schoenholz et al. 2017).

A wide network ``h^{l+1} = W^l phi(h^l) + b^l`` with weights of variance ``sigma_w2 / fan_in`` and
biases of variance ``sigma_b2`` carries, layer to layer, two numbers per input pair:

* the **length** ``q^l`` (mean squared pre-activation) follows the length map
  ``q^{l+1} = sigma_w2 * E[phi(sqrt(q^l) z)^2] + sigma_b2`` (``z ~ N(0, 1)``) to a fixed point
  ``q*``, at a rate given by the depth scale ``xi_q``;
* the **correlation** ``c^l`` of two inputs follows the correlation map
  ``c^{l+1} = (sigma_w2 * E[phi(u1) phi(u2)] + sigma_b2) / q*`` with ``u1, u2`` Gaussian of
  variance ``q*`` and correlation ``c^l``, to a fixed point ``c*``, at the depth scale ``xi_c``.

The slope ``chi_1 = sigma_w2 * E[phi'(sqrt(q*) z)^2]`` of the correlation map at ``c = 1`` splits
the ``(sigma_w2, sigma_b2)`` plane: ``chi_1 < 1`` is the **ordered** phase (all inputs end up
alike, ``c* = 1``, gradients vanish like ``chi_1^depth``); ``chi_1 > 1`` the **chaotic** phase
(``c* < 1``, gradients explode). On the **critical** line ``chi_1 = 1`` the depth scale
``xi_c = -1 / log(chi_c)`` diverges and signals cross any depth; with orthogonal weights
(delta-orthogonal kernels for CNNs, Xiao et al. 2018) the whole singular-value spectrum of the
input-output Jacobian stays near 1 (dynamical isometry), which is what trains 10,000 layers.

Integrals are one- and two-dimensional Gaussian expectations, computed by composite
Gauss-Legendre quadrature on ``z in [-10, 10]`` with panel edges at the activation's kinks
(``relu`` at 0, ``hard_tanh`` at +-1): exact to ~1e-12 for the 1-D integrals of every
activation here. Plain Gauss-Hermite rules misplace the jump of ``relu'`` or ``hard_tanh'``
by up to 3% (measured), hence panels. Any elementwise function works (derivative by central
differences); name its kinks with :class:`Activation` for full accuracy.

Example:
    >>> cp = fnn.meanfield.critical_point("tanh", sigma_b2=0.05)
    >>> round(cp.sigma_w2, 2), round(cp.q_star, 2)
    (1.76, 0.57)
    >>> fnn.meanfield.critical_point("relu", sigma_b2=0.0).sigma_w2
    2.0
    >>> s = fnn.meanfield.signal_propagation("tanh", sigma_w2=1.0, sigma_b2=0.05)
    >>> s.phase, round(s.xi_c, 1)
    ('ordered', 3.6)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence

import numpy as np
from scipy import optimize, special

__all__ = ["Activation", "activation", "gaussian_expectation", "length_map", "fixed_point",
           "chi_1", "correlation_map", "correlation_fixed_point", "critical_point",
           "signal_propagation", "CriticalPoint", "SignalPropagation"]

ArrayFn = Callable[[np.ndarray], np.ndarray]
Z_MAX = 10.0          # N(0, 1) mass beyond 10 is 1.5e-23
_PANELS = 64          # panels on [-Z_MAX, Z_MAX] (plus one edge per kink)
_ORDER = 16           # Gauss-Legendre nodes per panel
_PANELS_2D = 24       # per axis in 2-D integrals
_ORDER_2D = 12


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise activation for mean-field integrals.

    Attributes:
        name: for messages.
        phi: ``x -> phi(x)`` on float64 numpy arrays.
        dphi: its derivative (``None``: central differences of ``phi``).
        kinks: the points where ``phi`` or ``phi'`` jump (quadrature panels end there).
    """

    name: str
    phi: ArrayFn
    dphi: ArrayFn | None = None
    kinks: tuple[float, ...] = ()

    def derivative(self, x: np.ndarray) -> np.ndarray:
        if self.dphi is not None:
            return self.dphi(x)
        h = 1e-5 * np.maximum(1.0, np.abs(x))
        return (self.phi(x + h) - self.phi(x - h)) / (2 * h)


def _sigmoid(x):
    return special.expit(x)


_KNOWN: dict[str, Activation] = {
    "tanh": Activation("tanh", np.tanh, lambda x: 1.0 / np.cosh(x) ** 2),
    "relu": Activation("relu", lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float), (0.0,)),
    "hard_tanh": Activation("hard_tanh", lambda x: np.clip(x, -1.0, 1.0),
                            lambda x: (np.abs(x) < 1).astype(float), (-1.0, 1.0)),
    "erf": Activation("erf", special.erf, lambda x: 2.0 / math.sqrt(math.pi) * np.exp(-x * x)),
    "sigmoid": Activation("sigmoid", _sigmoid, lambda x: _sigmoid(x) * (1 - _sigmoid(x))),
    "linear": Activation("linear", lambda x: x, lambda x: np.ones_like(x)),
}


def activation_names() -> list[str]:
    """The activations known by name: ``['erf', 'hard_tanh', 'linear', 'relu', 'sigmoid', 'tanh']``."""
    return sorted(_KNOWN)


def activation(act: str | Activation | ArrayFn) -> Activation:
    """An :class:`Activation` from a name (tanh, relu, hard_tanh, erf, sigmoid, linear), itself,
    or any elementwise function of a numpy array (derivative by central differences, no kinks)."""
    if isinstance(act, Activation):
        return act
    if isinstance(act, str):
        key = act.lower().replace("-", "_").replace("hardtanh", "hard_tanh")
        if key not in _KNOWN:
            raise ValueError(f"unknown activation {act!r} for mean-field theory; known: "
                             f"{', '.join(sorted(_KNOWN))}, or pass a function")
        return _KNOWN[key]
    if callable(act):
        phi = lambda x, f=act: np.asarray(f(x), np.float64)
        return Activation(getattr(act, "__name__", "phi"), phi)
    raise TypeError(f"an activation is a name, an Activation or a function, got {act!r}")


# --------------------------------------------------------------------------- quadrature

@functools.lru_cache(maxsize=None)
def _legendre(order: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(order)


def _rule(edges_inside: Sequence[float], panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E_{z ~ N(0,1)}[f(z)] on [-Z_MAX, Z_MAX], panels split at the edges."""
    edges = np.linspace(-Z_MAX, Z_MAX, panels + 1)
    inside = [e for e in edges_inside if -Z_MAX < e < Z_MAX]
    edges = np.unique(np.concatenate([edges, inside]))
    x, w = _legendre(order)
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = (lo + hi) / 2 + (hi - lo) / 2 * x
    weights = (hi - lo) / 2 * w * np.exp(-nodes ** 2 / 2) / math.sqrt(2 * math.pi)
    return nodes.ravel(), weights.ravel()


def gaussian_expectation(f: ArrayFn, q: float, kinks: Sequence[float] = ()) -> float:
    """``E[f(sqrt(q) z)]`` for ``z ~ N(0, 1)``; ``kinks``: points in x where ``f`` is not smooth.

    Example:
        >>> round(gaussian_expectation(lambda x: x ** 2, 2.0), 12)
        2.0
    """
    if q < 0:
        raise ValueError(f"q must be >= 0, got {q}")
    if q == 0:
        return float(f(np.zeros(1))[0])
    s = math.sqrt(q)
    z, w = _rule([k / s for k in kinks], _PANELS, _ORDER)
    return float(np.sum(w * f(s * z)))


def _pair_expectation(f: ArrayFn, g: ArrayFn, q: float, c: float, kinks: Sequence[float]) -> float:
    """``E[f(u1) g(u2)]``, ``u1, u2`` of variance ``q`` and correlation ``c``."""
    s = math.sqrt(q)
    z, w = _rule([k / s for k in kinks], _PANELS_2D, _ORDER_2D)
    u1 = s * z[:, None]
    u2 = s * (c * z[:, None] + math.sqrt(max(1.0 - c * c, 0.0)) * z[None, :])
    return float(np.sum(w[:, None] * w[None, :] * f(u1) * g(u2)))


# --------------------------------------------------------------------------- the maps

def _check(sigma_w2: float, sigma_b2: float) -> None:
    if not sigma_w2 > 0:
        raise ValueError(f"sigma_w2 must be > 0, got {sigma_w2}")
    if not sigma_b2 >= 0:
        raise ValueError(f"sigma_b2 must be >= 0, got {sigma_b2}")


def length_map(q: float, sigma_w2: float, sigma_b2: float, act: str | Activation | ArrayFn) -> float:
    """One layer of the length map: ``sigma_w2 * E[phi(sqrt(q) z)^2] + sigma_b2``."""
    a = activation(act)
    return sigma_w2 * gaussian_expectation(lambda x: a.phi(x) ** 2, q, a.kinks) + sigma_b2


def _length_slope(q: float, sigma_w2: float, a: Activation) -> float:
    """``d length_map / dq`` at ``q`` (Stein: ``sigma_w2 E[phi(u) phi'(u) u] / q``)."""
    if q == 0:
        return sigma_w2 * float(a.derivative(np.zeros(1))[0]) ** 2
    return sigma_w2 * gaussian_expectation(lambda x: a.phi(x) * a.derivative(x) * x, q, a.kinks) / q


_CRITICAL_TOL = 1e-9  # |chi - 1| below this is the critical line (what brentq resolves)
_Q_INF = 1e12  # a length map that passes this has no finite fixed point


def fixed_point(sigma_w2: float, sigma_b2: float, act: str | Activation | ArrayFn, *,
                q0: float = 1.0) -> float:
    """The fixed point ``q*`` of the length map reached from ``q0``; ``inf`` if lengths grow
    without bound (e.g. relu with ``sigma_w2 >= 2`` and ``sigma_b2 > 0``)."""
    _check(sigma_w2, sigma_b2)
    a = activation(act)
    q = float(q0)
    for _ in range(300):
        new = length_map(q, sigma_w2, sigma_b2, a)
        if not math.isfinite(new) or new > _Q_INF:
            return math.inf
        if abs(new - q) <= 1e-13 * max(q, 1e-300) or new == q:
            return new
        q = new
    # slow convergence near a critical point: solve length_map(q) = q on a bracket
    g = lambda x: length_map(x, sigma_w2, sigma_b2, a) - x
    lo, hi = q, q
    while g(hi) > 0:
        hi *= 2
        if hi > _Q_INF:
            return math.inf
    while g(lo) < 0 and lo > 1e-300:
        lo /= 2
    if g(lo) < 0:
        return 0.0
    return float(optimize.brentq(g, lo, hi, xtol=1e-15, rtol=1e-13))


def chi_1(sigma_w2: float, sigma_b2: float, act: str | Activation | ArrayFn,
          q_star: float | None = None) -> float:
    """``chi_1 = sigma_w2 * E[phi'(sqrt(q*) z)^2]``: the slope of the correlation map at ``c = 1``,
    and the factor by which a gradient's mean squared norm changes per layer."""
    a = activation(act)
    q = fixed_point(sigma_w2, sigma_b2, a) if q_star is None else q_star
    q = min(q, _Q_INF)  # q* = inf: the large-q limit (relu's chi_1 does not depend on q)
    return sigma_w2 * gaussian_expectation(lambda x: a.derivative(x) ** 2, q, a.kinks)


def correlation_map(c: float, sigma_w2: float, sigma_b2: float, act: str | Activation | ArrayFn,
                    q_star: float | None = None) -> float:
    """One layer of the correlation map at length ``q*``:
    ``(sigma_w2 * E[phi(u1) phi(u2)] + sigma_b2) / q*``."""
    a = activation(act)
    q = fixed_point(sigma_w2, sigma_b2, a) if q_star is None else q_star
    if not 0 < q < math.inf:
        raise ValueError(f"the correlation map needs a finite q* > 0, got {q}")
    return (sigma_w2 * _pair_expectation(a.phi, a.phi, q, c, a.kinks) + sigma_b2) / q


def correlation_fixed_point(sigma_w2: float, sigma_b2: float, act: str | Activation | ArrayFn,
                            q_star: float | None = None) -> float:
    """The stable fixed point ``c*`` of the correlation map: 1 in the ordered phase, < 1 in the chaotic."""
    a = activation(act)
    q = fixed_point(sigma_w2, sigma_b2, a) if q_star is None else q_star
    if chi_1(sigma_w2, sigma_b2, a, q) <= 1.0 + _CRITICAL_TOL:
        return 1.0
    c = 0.0
    for _ in range(2000):
        new = correlation_map(c, sigma_w2, sigma_b2, a, q)
        if abs(new - c) < 1e-12:
            return min(new, 1.0)
        c = new
    return min(c, 1.0)


# --------------------------------------------------------------------------- results

@dataclasses.dataclass(frozen=True)
class CriticalPoint:
    """The point of the critical line at a bias variance: ``chi_1(sigma_w2, sigma_b2) = 1``."""

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float

    @property
    def gain(self) -> float:
        """``sqrt(sigma_w2)``: the gain of an orthogonal / delta-orthogonal init at this point."""
        return math.sqrt(self.sigma_w2)


@dataclasses.dataclass(frozen=True)
class SignalPropagation:
    """Fixed points, slopes and depth scales at ``(sigma_w2, sigma_b2)``.

    Attributes:
        q_star, c_star: fixed points of the length and correlation maps.
        chi_1: slope of the correlation map at ``c = 1`` (the per-layer gradient factor).
        chi_c: slope of the correlation map at ``c*`` (``= chi_1`` in the ordered phase).
        xi_q: ``-1 / log(length_map'(q*))``, layers for lengths to settle.
        xi_c: ``-1 / log(chi_c)``, layers over which correlations (information about the
            input) survive; ``inf`` on the critical line.
        phase: ``"ordered"`` (chi_1 < 1), ``"chaotic"`` (chi_1 > 1) or ``"critical"``.
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    q_star: float
    c_star: float
    chi_1: float
    chi_c: float
    xi_q: float
    xi_c: float
    phase: str


def _depth(slope: float) -> float:
    if slope <= 0:
        return 0.0
    return math.inf if abs(math.log(slope)) <= _CRITICAL_TOL else -1.0 / math.log(slope)


def critical_point(act: str | Activation | ArrayFn, sigma_b2: float) -> CriticalPoint:
    """The critical ``sigma_w2`` at bias variance ``sigma_b2`` (``chi_1 = 1``), and its ``q*``.

    Example:
        >>> cp = critical_point("tanh", 0.05)
        >>> round(cp.sigma_w2, 2), round(cp.gain, 3)
        (1.76, 1.327)
    """
    a = activation(act)
    _check(1.0, sigma_b2)
    f = lambda s: chi_1(s, sigma_b2, a) - 1.0
    lo, hi = 1e-3, 1.0
    while f(hi) < 0:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"{a.name}: chi_1 stays below 1 up to sigma_w2 = 1e6 at sigma_b2 = "
                             f"{sigma_b2}; no critical point")
    if f(lo) > 0:
        raise ValueError(f"{a.name}: chi_1 > 1 already at sigma_w2 = {lo}; no critical point found")
    s = float(optimize.brentq(f, lo, hi, xtol=1e-13, rtol=1e-12))
    return CriticalPoint(a.name, s, float(sigma_b2), fixed_point(s, sigma_b2, a))


def signal_propagation(act: str | Activation | ArrayFn, sigma_w2: float,
                       sigma_b2: float) -> SignalPropagation:
    """Fixed points and depth scales at ``(sigma_w2, sigma_b2)`` (see :class:`SignalPropagation`).

    Example:
        >>> s = signal_propagation("tanh", sigma_w2=2.5, sigma_b2=0.05)
        >>> s.phase, s.c_star < 1
        ('chaotic', True)
    """
    a = activation(act)
    q = fixed_point(sigma_w2, sigma_b2, a)
    x1 = chi_1(sigma_w2, sigma_b2, a, q)
    finite = 0 < q < math.inf
    c = correlation_fixed_point(sigma_w2, sigma_b2, a, q) if finite else 1.0
    if c < 1.0:
        chi_c = sigma_w2 * _pair_expectation(a.derivative, a.derivative, q, c, a.kinks)
    else:
        chi_c = x1
    xi_q = _depth(_length_slope(q, sigma_w2, a)) if q < math.inf else 0.0
    phase = "critical" if abs(x1 - 1.0) <= _CRITICAL_TOL else ("ordered" if x1 < 1 else "chaotic")
    return SignalPropagation(a.name, float(sigma_w2), float(sigma_b2), q, c, x1, chi_c, xi_q,
                             _depth(chi_c), phase)
