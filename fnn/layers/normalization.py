"""Normalization layers: batch normalization (with running statistics), and the per-example
norms: layer, group, instance and RMS normalization.

* ``BatchNorm`` (Ioffe & Szegedy 2015) normalizes each feature over the batch (and the spatial
  axes of conv inputs) with the batch statistics in training, and with running averages of
  them at test. The running averages live in ``state``; ``axis_name`` averages the batch
  statistics across devices (synchronised batch norm under ``pmap``/``vmap``/``shard_map``).
* ``LayerNorm`` (Ba et al. 2016) normalizes each example over its last axis; no state.
* ``GroupNorm`` (Wu & He 2018) normalizes each example over its spatial axes and a group of
  consecutive channels; ``InstanceNorm`` (Ulyanov et al. 2016) over its spatial axes, channel by
  channel (``GroupNorm`` with one channel per group); ``RMSNorm`` (Zhang & Sennrich 2019)
  divides each example's last axis by its root mean square, without centring. No state.

**epsilon** is ``1e-5`` in every norm here: PyTorch's default (``BatchNorm*d``, ``LayerNorm``,
``GroupNorm``, ``InstanceNorm*d``), kept for all of them so that a network ported from PyTorch
computes the same numbers with the defaults, and one value is the rule (Flax uses ``1e-6``, and
PyTorch's ``RMSNorm`` the dtype's machine epsilon: pass ``epsilon=`` to match those).

Statistics are computed in float32 (or wider) whatever the input dtype, with the centred
variance ``E[(x - mean)^2]`` rather than ``E[x^2] - mean^2``, which cancels catastrophically
when ``|mean| >> std``; the output has the input's dtype.

Example:
    >>> net = fnn.serial(fnn.Dense(16), fnn.BatchNorm(), fnn.Relu, fnn.Dense(10))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 8))
    >>> jax.tree.map(jnp.shape, state)                        # running statistics
    {'batch_norm_0': {'mean': (16,), 'var': (16,)}}
    >>> x = jax.random.normal(jax.random.key(1), (32, 8))
    >>> y, new_state = net.apply(params, state, x, train=True)  # updates the running statistics
    >>> y, _ = net.apply(params, new_state, x)                # test: uses them
    >>> y.shape
    (32, 10)
"""

from __future__ import annotations

import functools

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fnn import initializers
from fnn.arguments import ArgumentError, flag
from fnn.core import Layer, LayerError, check_shape, layer_type

__all__ = ["BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm", "RMSNorm"]


def _stat_dtype(dtype: Any) -> Any:
    """The dtype statistics are computed in: float32, or float64 for float64 inputs."""
    return jnp.promote_types(dtype, jnp.float32)


def _out_dtype(dtype: Any) -> Any:
    """Outputs keep a floating input's dtype; integer inputs give float32."""
    return dtype if jnp.issubdtype(dtype, jnp.floating) else _stat_dtype(dtype)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_axes(axis: int | Sequence[int]) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
    if (not isinstance(axes, (tuple, list)) or not axes
            or not all(isinstance(a, int) and not isinstance(a, bool) for a in axes)):
        raise ArgumentError("BatchNorm", f"axis must be an int or a non-empty tuple of ints, "
                                         f"got {axis!r}")
    return tuple(axes)


def _feature_axes(axes: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """``axes`` made non-negative and sorted for an input of ``shape``; ``LayerError`` if bad."""
    rank = len(shape)
    if rank < 2:
        raise LayerError(f"expects an input of rank >= 2 (batch, ..., features), got shape {shape}")
    if any(not -rank <= a < rank for a in axes):
        raise LayerError(f"feature axis {axes} is out of range for an input of rank {rank}, "
                         f"got shape {shape}")
    feats = sorted({a % rank for a in axes})
    if len(feats) != len(axes):
        raise LayerError(f"feature axes {axes} repeat an axis, got shape {shape}")
    if 0 in feats:
        raise LayerError(f"axis 0 is the batch axis and cannot be a feature axis (axis={axes}), "
                         f"got shape {shape}")
    return tuple(feats)


@layer_type("BatchNorm")
def BatchNorm(axis: int | Sequence[int] = -1, *, momentum: float = 0.99, epsilon: float = 1e-5,
              use_scale: bool = True, use_offset: bool = True, scale_init: Any = "ones",
              offset_init: Any = "zeros", axis_name: str | tuple[str, ...] | None = None,
              unbiased_running_var: bool = False) -> Layer:
    """Batch normalization: ``y = scale * (x - mean) / sqrt(var + epsilon) + offset``.

    ``mean`` and ``var`` are per feature, taken over every axis except the feature axis
    (or axes): over ``N`` for ``(N, C)`` inputs, over ``N, H, W`` for ``(N, H, W, C)``.

    * Training (``train=True``): normalizes with the batch mean and biased variance
      ``E[(x - mean)^2]`` (Ioffe & Szegedy 2015, Algorithm 1); the running statistics are
      updated with **the Keras / TensorFlow / Flax convention**
      ``running = momentum * running + (1 - momentum) * batch``: ``momentum`` is the weight
      of the *old* value. **PyTorch's** ``momentum`` is the weight of the *new* batch,
      ``running = (1 - m) * running + m * batch``, so PyTorch's ``momentum=0.1`` (its default)
      is ``momentum=0.9`` here, and ``momentum=0.99`` (the default here, Keras') is PyTorch's
      ``momentum=0.01``.
    * The running variance takes the biased batch variance (Keras, TensorFlow, Flax), or with
      ``unbiased_running_var=True`` the unbiased one, ``n / (n - 1)`` times it with ``n`` the
      number of values per feature in the batch (over all devices with ``axis_name``), as
      PyTorch does and as Ioffe & Szegedy's Algorithm 2 uses for inference. Normalization in
      training uses the biased variance either way. PyTorch's ``BatchNorm*d(momentum=0.1,
      eps=1e-5)`` is ``BatchNorm(momentum=0.9, epsilon=1e-5, unbiased_running_var=True)``.
    * Test (``train=False``): the running statistics; ``state`` is returned unchanged.

    Shapes: output shape = input shape. With ``F`` the sizes of the feature axes (``(C,)``):
    Params ``{"scale": F, "offset": F}`` (each only if enabled);
    State ``{"mean": F, "var": F}``, initialised to 0 and 1, float32.

    Args:
        axis: the feature axis, or a tuple of them, kept (not reduced); not the batch axis 0.
        momentum: running-average decay in ``[0, 1]``.
        epsilon: added to the variance, ``> 0``.
        use_scale, use_offset: learn ``scale`` (gamma) and ``offset`` (beta).
        scale_init, offset_init: their initializers, by name or as functions.
        axis_name: a mapped axis name (``pmap``/``vmap``/``shard_map``); the batch mean is
            averaged over it with ``lax.pmean``, then the variance about that global mean is
            averaged too. This equals the statistics of the whole batch when every device
            holds the same number of examples. ``None``: per-device statistics.
        unbiased_running_var: update the running variance with the unbiased batch variance
            (PyTorch); needs more than one value per feature in a training batch.

    Example:
        >>> bn = fnn.BatchNorm()
        >>> _, params, state = bn.init(jax.random.key(0), (-1, 3))
        >>> y, state = bn.apply(params, state, jnp.arange(12.0).reshape(4, 3), train=True)
        >>> state["mean"]  # 0.01 * batch mean
        Array([0.045, 0.055, 0.065], dtype=float32)
    """
    axes = _check_axes(axis)
    if not _is_number(momentum) or not 0.0 <= momentum <= 1.0:
        raise ArgumentError("BatchNorm", f"momentum must be a number in [0, 1], got {momentum!r}")
    if not _is_number(epsilon) or not epsilon > 0.0:
        raise ArgumentError("BatchNorm", f"epsilon must be a positive number, got {epsilon!r}")
    flag("BatchNorm", "unbiased_running_var", unbiased_running_var)
    scale_initializer = initializers.get(scale_init)
    offset_initializer = initializers.get(offset_init)

    def init(rng, input_shape):
        shape = check_shape(input_shape, min_rank=2)
        feats = _feature_axes(axes, shape)
        fshape = tuple(shape[a] for a in feats)
        if any(d < 1 for d in fshape):
            raise LayerError(f"needs known sizes on the feature axes {axes}, got shape {shape}")
        s_rng, o_rng = jax.random.split(rng)
        params = {}
        if use_scale:
            params["scale"] = scale_initializer(s_rng, fshape, jnp.float32)
        if use_offset:
            params["offset"] = offset_initializer(o_rng, fshape, jnp.float32)
        state = {"mean": jnp.zeros(fshape, jnp.float32), "var": jnp.ones(fshape, jnp.float32)}
        return shape, params, state

    def apply(params, state, x, *, rng=None, train=False):
        shape = tuple(x.shape)
        feats = _feature_axes(axes, shape)
        fshape = tuple(shape[a] for a in feats)
        expected = tuple(state["mean"].shape)
        if fshape != expected:
            raise LayerError(f"expects size {expected} on feature axes {axes} (as at init), "
                             f"got shape {shape}")
        reduce_axes = tuple(i for i in range(x.ndim) if i not in feats)
        bshape = tuple(d if i in feats else 1 for i, d in enumerate(shape))
        xs = x.astype(_stat_dtype(x.dtype))
        if train:
            mean = jnp.mean(xs, axis=reduce_axes, keepdims=True)
            if axis_name is not None:
                mean = jax.lax.pmean(mean, axis_name)
            var = jnp.mean(jnp.square(xs - mean), axis=reduce_axes, keepdims=True)
            if axis_name is not None:
                var = jax.lax.pmean(var, axis_name)
            running_var = var
            if unbiased_running_var:
                n = 1
                for a in reduce_axes:
                    n *= shape[a]
                if axis_name is not None:
                    n = n * jax.lax.psum(1, axis_name)
                elif n < 2:
                    raise LayerError(f"unbiased_running_var needs more than one value per "
                                     f"feature in a training batch, got shape {shape}")
                running_var = var * (n / (n - 1))
            new_state = {
                k: (momentum * state[k] + (1.0 - momentum)
                    * jax.lax.stop_gradient(v).reshape(expected)).astype(state[k].dtype)
                for k, v in (("mean", mean), ("var", running_var))
            }
        else:
            mean = state["mean"].reshape(bshape)
            var = state["var"].reshape(bshape)
            new_state = state
        y = (xs - mean) * jax.lax.rsqrt(var + epsilon)
        if use_scale:
            y = y * params["scale"].reshape(bshape)
        if use_offset:
            y = y + params["offset"].reshape(bshape)
        return y.astype(_out_dtype(x.dtype)), new_state

    return Layer(init, apply)


@layer_type("LayerNorm")
def LayerNorm(*, epsilon: float = 1e-5, use_scale: bool = True, use_offset: bool = True) -> Layer:
    """Layer normalization over the last axis, per example.

    ``y = scale * (x - m) / sqrt(v + epsilon) + offset``, where ``m`` and ``v`` are the mean
    and biased variance of each example's last axis. The same computation in training and at
    test; no state.

    Shapes: output shape = input shape ``(batch, ..., C)``.
    Params: ``{"scale": (C,), "offset": (C,)}`` (each only if enabled), initialised to 1 and 0.

    Args:
        epsilon: added to the variance, ``> 0``.
        use_scale, use_offset: learn ``scale`` and ``offset``.

    Example:
        >>> ln = fnn.LayerNorm()
        >>> _, params, state = ln.init(jax.random.key(0), (-1, 4))
        >>> y, _ = ln.apply(params, state, jnp.array([[1.0, 2.0, 3.0, 4.0]]))
        >>> round(float(y.mean()), 4), round(float(y.var()), 4)   # ~0 and ~1 (epsilon)
        (0.0, 1.0)
    """
    return _per_example("LayerNorm", epsilon, use_scale, use_offset, min_rank=2,
                        layout="(batch, ..., C)", statistics=lambda x: _standardize(x, (-1,),
                                                                                    epsilon))


@layer_type("GroupNorm")
def GroupNorm(groups: int = 32, *, epsilon: float = 1e-5, use_scale: bool = True,
              use_offset: bool = True) -> Layer:
    """Group normalization: per example, over the spatial axes and ``C // groups`` consecutive
    channels at a time (channel ``c`` is in group ``c // (C // groups)``, as in PyTorch).

    ``y = scale * (x - m) / sqrt(v + epsilon) + offset`` with the mean ``m`` and biased variance
    ``v`` of each (example, group); ``scale`` and ``offset`` are per channel. Independent of the
    batch, the same in training and at test; no state. ``groups=1`` normalizes each example
    over all its axes; ``groups=C`` is :func:`InstanceNorm`.

    Shapes: output shape = input shape ``(batch, *spatial, C)`` (rank >= 2), ``groups``
    dividing ``C``.
    Params: ``{"scale": (C,), "offset": (C,)}`` (each only if enabled), initialised to 1 and 0.

    Args:
        groups: number of channel groups (32 in Wu & He 2018; PyTorch has no default).
        epsilon: added to the variance, ``> 0``.
        use_scale, use_offset: learn ``scale`` and ``offset`` (PyTorch's ``affine``).

    Example:
        >>> gn = fnn.GroupNorm(2)
        >>> _, params, state = gn.init(jax.random.key(0), (-1, 5, 5, 4))
        >>> y, _ = gn.apply(params, state, jnp.arange(100.0).reshape(1, 5, 5, 4))
        >>> y.shape, round(float(y[..., :2].mean()), 4), round(float(y[..., :2].var()), 4)
        ((1, 5, 5, 4), 0.0, 1.0)
    """
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ArgumentError("GroupNorm", f"groups must be a positive int, got {groups!r}")

    def check(shape):
        if shape[-1] % groups:
            raise LayerError(f"groups={groups} must divide the {shape[-1]} channels, "
                             f"got shape {shape}")

    def statistics(x):
        xg = x.reshape((*x.shape[:-1], groups, x.shape[-1] // groups))
        axes = (*range(1, x.ndim - 1), x.ndim)
        return _standardize(xg, axes, epsilon).reshape(x.shape)

    return _per_example("GroupNorm", epsilon, use_scale, use_offset, min_rank=2,
                        layout="(batch, *spatial, C)", statistics=statistics, check=check)


@layer_type("InstanceNorm")
def InstanceNorm(*, epsilon: float = 1e-5, use_scale: bool = True,
                 use_offset: bool = True) -> Layer:
    """Instance normalization: each channel of each example normalized over the spatial axes.

    ``y = scale * (x - m) / sqrt(v + epsilon) + offset`` with the mean ``m`` and biased variance
    ``v`` over the spatial axes of one (example, channel). No running statistics: the same in
    training and at test (PyTorch's ``InstanceNorm*d`` default, ``track_running_stats=False``).
    PyTorch's default ``affine=False`` is ``use_scale=False, use_offset=False``; the learned
    ``scale``/``offset`` start at 1 and 0, so the two agree at initialisation.

    Shapes: output shape = input shape ``(batch, *spatial, C)``, rank >= 3.
    Params: ``{"scale": (C,), "offset": (C,)}`` (each only if enabled).

    Args:
        epsilon: added to the variance, ``> 0``.
        use_scale, use_offset: learn ``scale`` and ``offset``.

    Example:
        >>> norm = fnn.InstanceNorm()
        >>> _, params, state = norm.init(jax.random.key(0), (-1, 8, 3))
        >>> y, _ = norm.apply(params, state, jnp.arange(24.0).reshape(1, 8, 3) ** 2)
        >>> [abs(round(float(v), 4)) for v in y.mean(axis=1)[0]]
        [0.0, 0.0, 0.0]
    """
    return _per_example("InstanceNorm", epsilon, use_scale, use_offset, min_rank=3,
                        layout="(batch, *spatial, C)",
                        statistics=lambda x: _standardize(x, tuple(range(1, x.ndim - 1)),
                                                          epsilon))


@layer_type("RMSNorm")
def RMSNorm(*, epsilon: float = 1e-5, use_scale: bool = True) -> Layer:
    """Root-mean-square normalization over the last axis, per example (no centring, no offset).

    ``y = scale * x / sqrt(mean(x^2) + epsilon)``, the mean over each example's last axis
    (PyTorch's ``nn.RMSNorm(C, eps=epsilon)``; its default ``eps=None`` is the dtype's machine
    epsilon, fnn's ``1e-5`` is the rule of every norm here). No state.

    Shapes: output shape = input shape ``(batch, ..., C)``.
    Params: ``{"scale": (C,)}`` (if enabled), initialised to 1.

    Args:
        epsilon: added to the mean square, ``> 0``.
        use_scale: learn ``scale``.

    Example:
        >>> norm = fnn.RMSNorm()
        >>> _, params, state = norm.init(jax.random.key(0), (-1, 2))
        >>> y, _ = norm.apply(params, state, jnp.array([[3.0, 4.0]]))   # rms = sqrt(12.5)
        >>> [round(float(v), 4) for v in y[0]]
        [0.8485, 1.1314]
    """
    def statistics(x):
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon)

    return _per_example("RMSNorm", epsilon, use_scale, False, min_rank=2,
                        layout="(batch, ..., C)", statistics=statistics)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _standardize(x: jax.Array, axes: tuple[int, ...], epsilon: float) -> jax.Array:
    """``(x - mean) / sqrt(var + epsilon)`` over ``axes``, with the centred (biased) variance.

    Its derivative is the closed form ``r * (dx - mean(dx) - xh * mean(dx * xh))`` (``xh`` the
    output, ``r = 1 / sqrt(var + epsilon)``), linear in ``dx``, so JAX transposes it for the
    gradient: two reductions instead of the chain rule through the mean and the variance
    (about 25% less time for a LayerNorm's forward and backward on the CPU; forward mode and
    higher derivatives work as for any function)."""
    return _standardized(x, axes, epsilon)[0]


def _standardized(x, axes, epsilon):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=axes, keepdims=True)
    inverse = jax.lax.rsqrt(var + epsilon)
    return (x - mean) * inverse, inverse


@_standardize.defjvp
def _standardize_jvp(axes, epsilon, primals, tangents):
    (x,), (dx,) = primals, tangents
    xh, inverse = _standardized(x, axes, epsilon)
    mean = functools.partial(jnp.mean, axis=axes, keepdims=True)
    return xh, inverse * (dx - mean(dx) - xh * mean(dx * xh))


def _per_example(kind: str, epsilon: float, use_scale: bool, use_offset: bool, *,
                 min_rank: int, layout: str, statistics: Any, check: Any = None) -> Layer:
    """A norm without state: ``statistics`` normalizes ``x`` (in the statistics dtype), then a
    per-channel ``scale`` and ``offset`` (last axis) are applied. ``check(shape)`` raises a
    ``LayerError`` for a shape the norm cannot take, at init and apply."""
    if not _is_number(epsilon) or not epsilon > 0.0:
        raise ArgumentError(kind, f"epsilon must be a positive number, got {epsilon!r}")
    flag(kind, "use_scale", use_scale)
    flag(kind, "use_offset", use_offset)

    def check_input(shape: tuple[int, ...]) -> None:
        if len(shape) < min_rank:
            raise LayerError(f"expects inputs {layout} of rank >= {min_rank}, got shape {shape}")
        if check is not None:
            check(shape)

    def init(rng, input_shape):
        shape = check_shape(input_shape, min_rank=2)
        check_input(shape)
        c = shape[-1]
        if c < 1:
            raise LayerError(f"needs a known feature size on the last axis, got shape {shape}")
        params = {}
        if use_scale:
            params["scale"] = jnp.ones((c,), jnp.float32)
        if use_offset:
            params["offset"] = jnp.zeros((c,), jnp.float32)
        return shape, params, {}

    def apply(params, state, x, *, rng=None, train=False):
        check_input(tuple(x.shape))
        for k in ("scale", "offset"):
            if k in params and params[k].shape != (x.shape[-1],):
                raise LayerError(f"expects inputs (batch, ..., {params[k].shape[0]}), "
                                 f"got shape {tuple(x.shape)}")
        y = statistics(x.astype(_stat_dtype(x.dtype)))
        if use_scale:
            y = y * params["scale"]
        if use_offset:
            y = y + params["offset"]
        return y.astype(_out_dtype(x.dtype)), state

    return Layer(init, apply)
