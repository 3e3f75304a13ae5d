"""Dtype policy: the dtype params are stored in, the dtype a network computes in, and the dtype of
its outputs, set for a whole network or for one layer by wrapping it in :func:`DtypePolicy`.

* ``params``: the stored params (what the optimizer updates and checkpoints keep). ``float32``
  unless asked; ``float64`` needs JAX's x64 mode (``JAX_ENABLE_X64=1`` or
  ``jax.config.update("jax_enable_x64", True)``).
* ``compute``: params and floating inputs are cast to it on every call, so matmuls and
  convolutions run in it (``bfloat16`` for mixed precision). Gradients flow back through the
  casts to the stored params: ``bfloat16`` compute with ``float32`` params is training with
  float32 master weights.
* ``output``: floating outputs are cast to it; by default to at least float32, so the loss
  that follows is computed in float32 (or float64) whatever the compute dtype.

State (batch-norm running statistics) is kept in float32, or float64 with float64 params, and
never in the compute dtype; batch normalization computes its statistics in float32 (or wider)
for any input dtype. Integer inputs (embedding ids, sequence lengths) are never cast.

The policy is transparent: the wrapped network has the same params and state trees (same keys)
as the network itself, so freeze lists, regularizer selections and checkpoints name the same
layers. Initial values are drawn by the layers' initializers in float32 and then cast to the
param dtype, as ``torch.nn.Module.double()`` and ``.bfloat16()`` do.

Example:
    >>> net = fnn.DtypePolicy(fnn.serial(fnn.Dense(800), fnn.Relu, fnn.Dense(10)),
    ...                       compute="bfloat16")
    >>> _, params, state = net.init(jax.random.key(0), (-1, 784))
    >>> params["dense_0"]["w"].dtype, net.apply(params, state, jnp.ones((2, 784)))[0].dtype
    (dtype('float32'), dtype('float32'))
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from fnn.core import Layer, LayerError, layer_type, transparent

__all__ = ["DtypePolicy", "with_model_dtype", "DTYPES"]

#: The floating dtypes a policy accepts, by name.
DTYPES = ("bfloat16", "float16", "float32", "float64")


def _dtype(value: Any, what: str) -> Any:
    """The numpy dtype named by ``value`` (``None`` stays ``None``); ``ValueError`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"DtypePolicy: {what} must be a dtype name, one of {', '.join(DTYPES)}, "
                         f"got {value!r}; give it by name, e.g. {what}='bfloat16'")
    if value not in DTYPES:
        raise ValueError(f"DtypePolicy: {what} must be one of {', '.join(DTYPES)}, got {value!r}")
    return jnp.dtype(value)


def _need_x64(dtype: Any, what: str) -> None:
    if dtype == jnp.float64 and jax.dtypes.canonicalize_dtype(jnp.float64) != jnp.float64:
        raise LayerError(f"{what}='float64' needs JAX's 64-bit mode, which is off: set "
                         f"JAX_ENABLE_X64=1 or call jax.config.update('jax_enable_x64', True) "
                         f"first (otherwise float64 arrays are silently float32)")


def _cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` cast to ``dtype``; other leaves (ints, keys) unchanged."""
    def cast(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != dtype:
            return jnp.asarray(leaf).astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def _like(new: Any, old: Any) -> Any:
    """``new`` with each floating leaf cast back to the dtype of the same leaf in ``old``."""
    def cast(n, o):
        if hasattr(n, "dtype") and jnp.issubdtype(n.dtype, jnp.floating) and n.dtype != o.dtype:
            return n.astype(o.dtype)
        return n

    try:
        return jax.tree.map(cast, new, old)
    except ValueError:  # the layer changed the structure of its state: leave it as it is
        return new


def _nested_policy(layer: Layer) -> bool:
    return any(child.kind == "DtypePolicy" or _nested_policy(child) for child in layer.children)


@layer_type("DtypePolicy", sublayers="layer", layout=transparent("layer"))
def DtypePolicy(layer: Layer, *, params: str | None = None, compute: str | None = None,
                output: str | None = None) -> Layer:
    """Run ``layer`` (a layer or a whole network) with a dtype policy.

    * ``init``: the floating params are cast to ``params`` and the floating state to
      ``params`` widened to at least float32 (running statistics stay float32 for bfloat16
      params). ``params=None`` leaves the params as the layers create them (float32).
    * ``apply``: the floating params and inputs are cast to ``compute`` (``None``: the
      ``params`` dtype, or no cast when that is ``None`` too); the new state keeps the dtypes
      of the old; floating outputs are cast to ``output`` (``None``: ``compute`` widened to at
      least float32, so losses are computed in float32).

    Shapes, params and state: those of ``layer``, with the same keys (the policy adds no level).
    A policy cannot contain another one (wrap either the network or some of its layers).

    Args:
        layer: the layer or network to run under the policy.
        params: the stored param dtype, one of ``bfloat16``, ``float16``, ``float32``,
            ``float64`` (float64 needs ``jax_enable_x64``).
        compute: the dtype matmuls and convolutions run in, e.g. ``bfloat16``.
        output: the dtype of the floating outputs.

    Example:
        >>> net = fnn.DtypePolicy(fnn.Dense(3), compute="bfloat16")
        >>> _, p, s = net.init(jax.random.key(0), (-1, 4))
        >>> y, _ = net.apply(p, s, jnp.ones((2, 4)))
        >>> p["w"].dtype, y.dtype   # float32 master weights, float32 outputs; bf16 matmul
        (dtype('float32'), dtype('float32'))
    """
    param_dtype = _dtype(params, "params")
    compute_dtype = _dtype(compute, "compute") or param_dtype
    if output is not None:
        output_dtype = _dtype(output, "output")
    elif compute_dtype is not None:
        output_dtype = jnp.promote_types(compute_dtype, jnp.float32)
    else:
        output_dtype = None
    state_dtype = None if param_dtype is None else jnp.promote_types(param_dtype, jnp.float32)
    if _nested_policy(layer):
        raise ValueError("DtypePolicy: the wrapped network contains another DtypePolicy; wrap "
                         "either the whole network or some of its layers, not both")

    def init(rng, input_shape):
        if param_dtype is not None:
            _need_x64(param_dtype, "params")
        if compute_dtype is not None:
            _need_x64(compute_dtype, "compute")
        if output_dtype is not None:
            _need_x64(output_dtype, "output")
        out_shape, p, s = layer.init(rng, input_shape)
        if param_dtype is not None:
            p, s = _cast_floats(p, param_dtype), _cast_floats(s, state_dtype)
        return out_shape, p, s

    def apply(p, s, x, *, rng=None, train=False):
        if compute_dtype is not None:
            p, x = _cast_floats(p, compute_dtype), _cast_floats(x, compute_dtype)
        y, new_s = layer.apply(p, s, x, rng=rng, train=train)
        if output_dtype is not None:
            y = _cast_floats(y, output_dtype)
        return y, _like(new_s, s)

    return Layer(init, apply)


def with_model_dtype(net: Layer, model_dtype: Mapping[str, Any] | None) -> Layer:
    """``net`` under the policy of a config's ``model_dtype`` section (``{params, compute,
    output}``, each a dtype name or ``None``); ``net`` itself when every entry is ``None``.

    Raises:
        ValueError: a bad dtype name, or float64 without ``jax_enable_x64`` (the message
            names the key).

    Example:
        >>> with_model_dtype(fnn.Dense(3), {"params": "float32", "compute": "bfloat16"})
        DtypePolicy(
          Dense(3),
          params='float32',
          compute='bfloat16',
        )
    """
    chosen = {k: v for k, v in (model_dtype or {}).items() if v is not None}
    if not chosen:
        return net
    for key in ("params", "compute", "output"):
        if chosen.get(key) == "float64":
            try:
                _need_x64(jnp.dtype("float64"), key)
            except LayerError as e:
                raise ValueError(e.detail) from None
    return DtypePolicy(net, **chosen)
