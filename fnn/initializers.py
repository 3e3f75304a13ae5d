"""Weight initializers: ``init(rng, shape, dtype) -> array``, by name, by name with arguments, or as functions.

Every initializer fnn makes is an :class:`Initializer`, a plain immutable record
``Initializer(name, args)`` that is called like a JAX initializer and turns back into the
plain data a config uses (``.spec``), so a network built with one can be saved with its
architecture::

    fnn.initializers.delta_orthogonal(gain=1.33)          # in Python
    {"delta_orthogonal": {"gain": 1.33}}                  # the same, in a config / .spec
    "he_normal"                                           # no arguments: just the name

Fan-in/fan-out follow JAX's convention: for a Dense kernel of shape ``(in, out)`` fan-in is
``in``; for a conv kernel ``(*window, in, out)`` it is ``prod(window) * in``.

======================================  ==============================================================
name (arguments, defaults)              distribution
======================================  ==============================================================
zeros, ones                             constants
constant(value)                         every entry ``value`` (a bare number means this too)
normal(stddev=0.01)                     N(0, stddev^2)
uniform(scale=0.05)                     U(-scale, scale)
glorot_uniform                          U(-a, a), a = sqrt(6 / (fan_in + fan_out))   (alias xavier_uniform)
glorot_normal                           truncated normal, var = 2 / (fan_in + fan_out) (alias xavier_normal)
he_uniform                              U(-a, a), a = sqrt(6 / fan_in)                (alias kaiming_uniform)
he_normal                               truncated normal, var = 2 / fan_in            (alias kaiming_normal)
lecun_uniform                           U(-a, a), a = sqrt(3 / fan_in)
lecun_normal                            truncated normal, var = 1 / fan_in
variance_scaling(scale=1.0,             var = scale / fan (``mode``: fan_in, fan_out, fan_avg);
  mode="fan_in",                        ``distribution``: truncated_normal, normal or uniform.
  distribution="truncated_normal")      ``scale`` = sigma_w^2 of mean-field theory (fnn.meanfield)
orthogonal(gain=1.0)                    gain * a (semi-)orthogonal matrix (Saxe et al. 2014); conv
                                        kernels are flattened to ``(prod(window) * in, out)``
delta_orthogonal(gain=1.0)              gain * orthogonal ``(in, out)`` at the centre tap of a conv
                                        kernel, zeros elsewhere (Xiao et al. 2018); needs in <= out
critical(activation, sigma_b2,          weights at the mean-field critical point (edge of chaos) of
                                        ``activation`` for biases of variance ``sigma_b2``:
  kernel="delta_orthogonal")            ``kernel`` (delta_orthogonal, orthogonal or normal) with
                                        sigma_w^2 = the critical value (fnn.meanfield.critical_point)
======================================  ==============================================================

``critical`` is the critical point by name, so a config (and a saved network) says what it
means rather than a number: ``{critical: {activation: tanh, sigma_b2: 1.0e-4}}`` is
``delta_orthogonal(gain=sqrt(critical_point("tanh", 1e-4).sigma_w2))``. The biases are set
apart: ``b_init: {normal: {stddev: sqrt(sigma_b2)}}``.

Example:
    >>> w = fnn.initializers.get("he_normal")(jax.random.key(0), (784, 800))
    >>> w.shape
    (784, 800)
    >>> init = fnn.initializers.get({"delta_orthogonal": {"gain": 1.33}})
    >>> init.spec, init == fnn.initializers.delta_orthogonal(gain=1.33)
    ({'delta_orthogonal': {'gain': 1.33}}, True)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.nn import initializers as jinit

from fnn import meanfield
from fnn.core import lookup

InitFn = Callable[..., jax.Array]

__all__ = ["Initializer", "get", "names", "zeros", "ones", "constant", "normal", "uniform",
           "glorot_uniform", "glorot_normal", "xavier_uniform", "xavier_normal", "he_uniform",
           "he_normal", "kaiming_uniform", "kaiming_normal", "lecun_uniform", "lecun_normal",
           "variance_scaling", "orthogonal", "delta_orthogonal", "critical"]


# --------------------------------------------------------------------------- the samplers
# ``name -> sampler(key, shape, dtype, **args)``; the record below calls them.

def _uniform(key, shape, dtype, scale=5e-2):
    return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)


def _variance_scaling(key, shape, dtype, scale=1.0, mode="fan_in", distribution="truncated_normal"):
    return jinit.variance_scaling(scale, mode, distribution)(key, shape, dtype)


_SAMPLERS: dict[str, Callable[..., jax.Array]] = {
    "zeros": lambda key, shape, dtype: jinit.zeros(key, shape, dtype),
    "ones": lambda key, shape, dtype: jinit.ones(key, shape, dtype),
    "constant": lambda key, shape, dtype, value: jinit.constant(value)(key, shape, dtype),
    "normal": lambda key, shape, dtype, stddev=1e-2: jinit.normal(stddev)(key, shape, dtype),
    "uniform": _uniform,
    "glorot_uniform": lambda key, shape, dtype: jinit.glorot_uniform()(key, shape, dtype),
    "glorot_normal": lambda key, shape, dtype: jinit.glorot_normal()(key, shape, dtype),
    "he_uniform": lambda key, shape, dtype: jinit.he_uniform()(key, shape, dtype),
    "he_normal": lambda key, shape, dtype: jinit.he_normal()(key, shape, dtype),
    "lecun_uniform": lambda key, shape, dtype: jinit.lecun_uniform()(key, shape, dtype),
    "lecun_normal": lambda key, shape, dtype: jinit.lecun_normal()(key, shape, dtype),
    "variance_scaling": _variance_scaling,
    "orthogonal": lambda key, shape, dtype, gain=1.0: jinit.orthogonal(gain)(key, shape, dtype),
    "delta_orthogonal": lambda key, shape, dtype, gain=1.0:
        jinit.delta_orthogonal(gain)(key, shape, dtype),
    "critical": lambda key, shape, dtype, activation, sigma_b2, kernel="delta_orthogonal":
        _critical_sampler(activation, sigma_b2, kernel)(key, shape, dtype),
}


@functools.lru_cache(maxsize=64)
def _critical_sampler(activation: str, sigma_b2: float, kernel: str) -> InitFn:
    """The initializer ``critical(activation, sigma_b2, kernel)`` stands for (the critical point
    is solved once per arguments)."""
    sigma_w2 = meanfield.critical_point(activation, sigma_b2).sigma_w2
    if kernel == "normal":
        return jinit.variance_scaling(sigma_w2, "fan_in", "normal")
    gain = math.sqrt(sigma_w2)
    return jinit.orthogonal(gain) if kernel == "orthogonal" else jinit.delta_orthogonal(gain)


# --------------------------------------------------------------------------- the record

@dataclasses.dataclass(frozen=True)
class Initializer:
    """An initializer as plain, immutable data: its ``name`` and its non-default ``args``.

    Called as ``init(key, shape, dtype=float32) -> array`` like any JAX initializer.
    ``spec`` gives the config form back: ``"he_normal"`` without arguments, otherwise
    ``{"delta_orthogonal": {"gain": 1.33}}``; ``fnn.initializers.get(init.spec) == init``.
    Records compare and hash by value. Build them with the factories of this module
    (``orthogonal(gain=2.0)``) or with :func:`get`, which check the arguments.

    Attributes:
        name: the initializer's name in the table of the module docstring.
        args: the arguments that differ from their defaults, as ``((key, value), ...)``.
    """

    name: str
    args: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        """``args`` as a dict."""
        return dict(self.args)

    @property
    def spec(self) -> str | dict[str, dict[str, Any]]:
        """The plain-data form: the name, or ``{name: {arg: value}}``."""
        return {self.name: self.kwargs} if self.args else self.name

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return _SAMPLERS[self.name](key, tuple(shape), dtype, **self.kwargs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.args)
        return f"{self.name}({inner})"


def _number(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where} must be > 0, got {value!r}")
    return float(value)


def _record(factory: Callable[..., Initializer], **args: Any) -> Initializer:
    """An ``Initializer`` named like ``factory`` keeping the ``args`` that differ from its defaults."""
    params = inspect.signature(factory).parameters
    kept = tuple((k, v) for k, v in args.items()
                 if params[k].default is inspect.Parameter.empty or v != params[k].default)
    return Initializer(factory.__name__, kept)


# --------------------------------------------------------------------------- factories (with arguments)

def constant(value: float) -> Initializer:
    """Every entry equal to ``value``."""
    return _record(constant, value=_number(value, "constant: value"))


def normal(stddev: float = 1e-2) -> Initializer:
    """N(0, stddev^2)."""
    return _record(normal, stddev=_number(stddev, "normal: stddev", positive=True))


def uniform(scale: float = 5e-2) -> Initializer:
    """U(-scale, scale) (note: ``jax.nn.initializers.uniform`` draws from [0, scale))."""
    return _record(uniform, scale=_number(scale, "uniform: scale", positive=True))


def variance_scaling(scale: float = 1.0, mode: str = "fan_in",
                     distribution: str = "truncated_normal") -> Initializer:
    """Zero-mean weights of variance ``scale / fan`` (``fan`` chosen by ``mode``).

    With ``mode="fan_in"`` and ``distribution="normal"``, ``scale`` is the weight variance
    ``sigma_w^2`` of mean-field theory: pre-activations have variance ``sigma_w^2 * E[phi^2]``.

    Example:
        >>> init = fnn.initializers.variance_scaling(1.76, distribution="normal")
        >>> init.spec
        {'variance_scaling': {'scale': 1.76, 'distribution': 'normal'}}
    """
    modes = ("fan_in", "fan_out", "fan_avg")
    dists = ("truncated_normal", "normal", "uniform")
    if mode not in modes:
        raise ValueError(f"variance_scaling: mode must be one of {', '.join(modes)}, got {mode!r}")
    if distribution not in dists:
        raise ValueError(f"variance_scaling: distribution must be one of {', '.join(dists)}, "
                         f"got {distribution!r}")
    return _record(variance_scaling, scale=_number(scale, "variance_scaling: scale", positive=True),
                   mode=mode, distribution=distribution)


def orthogonal(gain: float = 1.0) -> Initializer:
    """``gain`` times a (semi-)orthogonal matrix (Saxe et al. 2014).

    The kernel is drawn as a matrix ``(prod(shape[:-1]), shape[-1])`` with orthonormal columns
    (or rows, when it is wide) and reshaped; for a square Dense kernel every singular value
    is ``gain``, so ``gain^2`` plays the role of ``sigma_w^2`` in mean-field theory.

    Example:
        >>> w = fnn.initializers.orthogonal(gain=2.0)(jax.random.key(0), (4, 4))
        >>> bool(jnp.allclose(w.T @ w, 4 * jnp.eye(4), atol=1e-5))
        True
    """
    return _record(orthogonal, gain=_number(gain, "orthogonal: gain", positive=True))


def delta_orthogonal(gain: float = 1.0) -> Initializer:
    """A conv kernel that is ``gain`` times an orthogonal ``(in, out)`` matrix at its centre tap.

    Zeros at every other tap (Xiao et al. 2018, Algorithm 2): the convolution starts as an
    orthogonal map of the channels at every pixel, so a deep stack is as well conditioned as
    a deep orthogonal MLP. Needs a kernel of rank 3 to 5 with ``in <= out``. At the mean-field
    critical point of tanh, ``gain = sqrt(sigma_w^2)`` from :func:`fnn.meanfield.critical_point`.

    Example:
        >>> w = fnn.initializers.delta_orthogonal(gain=1.3)(jax.random.key(0), (3, 3, 16, 16))
        >>> float(jnp.abs(w[0, 0]).max()), bool(jnp.allclose(w[1, 1] @ w[1, 1].T, 1.69 * jnp.eye(16), atol=1e-5))
        (0.0, True)
    """
    return _record(delta_orthogonal, gain=_number(gain, "delta_orthogonal: gain", positive=True))


CRITICAL_KERNELS = ("delta_orthogonal", "orthogonal", "normal")


def critical(activation: str, sigma_b2: float, kernel: str = "delta_orthogonal") -> Initializer:
    """Weights at the mean-field critical point ("edge of chaos") of ``activation``.

    ``sigma_w^2`` is where ``chi_1 = 1`` for biases of variance ``sigma_b2``
    (:func:`fnn.meanfield.critical_point`); the weights are ``kernel``:

    * ``"delta_orthogonal"``: :func:`delta_orthogonal` with ``gain = sqrt(sigma_w^2)`` (conv
      kernels; Xiao et al. 2018);
    * ``"orthogonal"``: :func:`orthogonal` with that gain (Dense kernels, strided convs);
    * ``"normal"``: Gaussian of variance ``sigma_w^2 / fan_in`` (Schoenholz et al. 2017).

    The record keeps the activation's name and ``sigma_b2``, not the number they give, so a
    config and a saved network read as what they mean. Give the biases variance ``sigma_b2``
    yourself (``b_init=normal(stddev=sqrt(sigma_b2))``); ``sigma_b2=0`` with ``b_init="zeros"``.

    Args:
        activation: a name known to :func:`fnn.meanfield.activation` (tanh, relu, hard_tanh,
            erf, sigmoid, linear); a name, so that it can be saved.
        sigma_b2: the bias variance, >= 0.
        kernel: ``"delta_orthogonal"``, ``"orthogonal"`` or ``"normal"``.

    Raises:
        ValueError: an unknown activation or kernel, a bad ``sigma_b2``, or an activation
            without a critical point there (checked here, before any network is built).

    Example:
        >>> init = fnn.initializers.critical("tanh", sigma_b2=1e-4)
        >>> init.spec
        {'critical': {'activation': 'tanh', 'sigma_b2': 0.0001}}
        >>> w = init(jax.random.key(0), (3, 3, 16, 16))       # centre tap: gain * orthogonal
        >>> gain = fnn.meanfield.critical_point("tanh", 1e-4).gain
        >>> bool(jnp.allclose(w[1, 1] @ w[1, 1].T, gain ** 2 * jnp.eye(16), atol=1e-5))
        True
        >>> fnn.initializers.critical("relu", 0.0, kernel="normal").spec   # He et al. 2015
        {'critical': {'activation': 'relu', 'sigma_b2': 0.0, 'kernel': 'normal'}}
    """
    if activation not in meanfield.activation_names():
        raise ValueError(f"critical: activation must be one of "
                         f"{', '.join(meanfield.activation_names())} (a name, so that it can be "
                         f"saved), got {activation!r}")
    sigma_b2 = _number(sigma_b2, "critical: sigma_b2")
    if sigma_b2 < 0:
        raise ValueError(f"critical: sigma_b2 must be >= 0, got {sigma_b2!r}")
    if kernel not in CRITICAL_KERNELS:
        raise ValueError(f"critical: kernel must be one of {', '.join(CRITICAL_KERNELS)}, "
                         f"got {kernel!r}")
    try:
        _critical_sampler(activation, sigma_b2, kernel)
    except ValueError as e:
        raise ValueError(f"critical: {e}") from None
    return _record(critical, activation=activation, sigma_b2=sigma_b2, kernel=kernel)


# --------------------------------------------------------------------------- ready-made (no arguments)

zeros = Initializer("zeros")
ones = Initializer("ones")
glorot_uniform = Initializer("glorot_uniform")
glorot_normal = Initializer("glorot_normal")
xavier_uniform = glorot_uniform
xavier_normal = glorot_normal
he_uniform = Initializer("he_uniform")
he_normal = Initializer("he_normal")
kaiming_uniform = he_uniform
kaiming_normal = he_normal
lecun_uniform = Initializer("lecun_uniform")
lecun_normal = Initializer("lecun_normal")

_READY: dict[str, Initializer] = {
    "zeros": zeros, "ones": ones,
    "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "he_uniform": he_uniform, "he_normal": he_normal,
    "kaiming_uniform": kaiming_uniform, "kaiming_normal": kaiming_normal,
    "lecun_uniform": lecun_uniform, "lecun_normal": lecun_normal,
}
_FACTORIES: dict[str, Callable[..., Initializer]] = {
    "constant": constant, "normal": normal, "uniform": uniform,
    "variance_scaling": variance_scaling, "orthogonal": orthogonal,
    "delta_orthogonal": delta_orthogonal, "critical": critical,
}
# names that need arguments: ``constant`` a value, ``critical`` an activation and sigma_b2
_NEED_ARGUMENTS = {"constant": "a value: constant(0.1), or just 0.1",
                   "critical": "an activation and sigma_b2: critical('tanh', 1e-4), or "
                               "{critical: {activation: tanh, sigma_b2: 1.0e-4}}"}
# name -> the initializer with default arguments
_BY_NAME: dict[str, Initializer] = {
    **_READY, **{name: f() for name, f in _FACTORIES.items() if name not in _NEED_ARGUMENTS}}


def names() -> list[str]:
    """All initializer names accepted by :func:`get` on their own (``constant`` and ``critical``
    need arguments)."""
    return sorted(_BY_NAME)


def _with_arguments(name: str, args: Any) -> Initializer:
    key = str(name).lower()
    if key in _READY and not args:   # {"he_normal": {}} or {"he_normal": null}
        return _READY[key]
    if key in _READY:
        raise ValueError(f"initializer {name!r} takes no arguments, got {args!r}")
    factory = lookup({**_FACTORIES, **_READY}, key, "initializer")
    params = inspect.signature(factory).parameters
    if not isinstance(args, Mapping):   # {"normal": 0.1}: the first argument
        args = {next(iter(params)): args}
    for arg in args:
        if arg not in params:
            close = difflib.get_close_matches(str(arg), list(params), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"initializer {name!r}: unknown argument {arg!r}{hint} "
                             f"(takes: {', '.join(params)})")
    missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in args]
    if missing:
        raise ValueError(f"initializer {name!r}: missing argument {', '.join(map(repr, missing))} "
                         f"(takes: {', '.join(params)})")
    return factory(**args)


def get(init: str | Mapping[str, Any] | InitFn | float | int) -> InitFn:
    """Resolve an initializer given by name, by name with arguments, as a function, or as a number.

    * ``"he_normal"`` -> the ready-made initializer (``get("He_Normal") is he_normal``);
    * ``{"delta_orthogonal": {"gain": 1.33}}`` or ``{"normal": 0.1}`` (first argument) ->
      the factory called with those arguments;
    * an :class:`Initializer` or any other function ``(key, shape, dtype) -> array`` -> itself;
      a factory of this module passed uncalled (``orthogonal``) -> it with default arguments;
    * a number -> ``constant(number)``.

    Raises:
        ValueError: for an unknown name or argument (with the closest known ones) or a bad value.
        TypeError: for anything else.
    """
    if isinstance(init, Initializer):
        return init
    for name, what in _NEED_ARGUMENTS.items():
        if init is _FACTORIES[name] or (isinstance(init, str) and init.lower() == name):
            raise ValueError(f"the {name} initializer needs {what}")
    if any(init is f for f in _FACTORIES.values()):
        return init()
    if callable(init):
        return init
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        return constant(float(init))
    if isinstance(init, str):
        return lookup(_BY_NAME, init, "initializer")
    if isinstance(init, Mapping) and len(init) == 1:
        (name, args), = init.items()
        return _with_arguments(name, args)
    raise TypeError(f"an initializer is a name, {{name: {{argument: value}}}}, a number or a "
                    f"function, got {init!r}")
