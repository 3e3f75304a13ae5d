"""Scaled dot-product attention and rotary position embeddings, as plain functions of arrays.

Layout: ``(batch, time, heads, head_dim)``, the layout of ``jax.nn.dot_product_attention``.

``dot_product_attention`` computes ``softmax(q k^T * scale + bias, masked) v`` per head. Masks
say which keys a query may attend to (True = attend). A query with no key left (a fully masked
row) gets zeros, and zero gradients, never NaN. The softmax runs in float32 for float32,
bfloat16 and float16 inputs and in float64 for float64 ones (under ``jax.enable_x64``), so
float64 stays float64 throughout.

It is two einsums and a softmax, the computation ``jax.nn.dot_product_attention`` runs by
default (its ``implementation=None`` is its XLA path; a cuDNN kernel only when asked for with
``implementation="cudnn"``, on NVIDIA GPUs). fnn does not call it: it computes the softmax in
float32 for float64 inputs, gives a fully masked row the mean of the values, and its layout
reshapes made the Transformer's train step ~3% slower on CPU than the plain einsums
(docs/PERFORMANCE.md). A layer that wants the cuDNN kernel calls ``jax.nn`` itself
(docs/LAYERS.md, "A custom attention variant").

Masks (``mask=``), in fnn's sequence-mask convention (see ``fnn.layers.sequences``):

* ``(batch,)`` integer lengths of the keys: key ``j`` is real where ``j < length``;
* ``(batch, time_k)`` bool key-padding mask, True = a real key;
* ``(batch, time_q, time_k)`` or ``(batch, heads, time_q, time_k)`` bool: any pattern (a rank-4
  mask may have size 1 on the batch, heads and query axes, to broadcast).

``causal=True`` also lets query ``i`` attend only to keys ``j <= i + time_k - time_q`` (the last
query sees every key: with ``time_q == time_k`` the usual lower triangle; with fewer queries
than keys, queries that continue a cached sequence).

Example:
    >>> q = k = v = jnp.ones((2, 3, 4, 8))                 # (batch, time, heads, head_dim)
    >>> dot_product_attention(q, k, v, mask=jnp.array([3, 0])).shape
    (2, 3, 4, 8)
    >>> float(jnp.abs(dot_product_attention(q, k, v, mask=jnp.array([3, 0]))[1]).max())
    0.0
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from fnn.arguments import ArgumentError
from fnn.core import draw

__all__ = ["dot_product_attention", "attention_weights", "attention_mask", "rope",
           "ROPE_MODES", "sinusoidal_positions"]

ROPE_MODES = ("interleaved", "half")


def _check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"dot_product_attention: q, k and v must be (batch, time, heads, head_dim), "
                         f"got shapes {q.shape}, {k.shape}, {v.shape}")
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2] \
            or q.shape[3] != k.shape[3]:
        raise ValueError(f"dot_product_attention: q {q.shape}, k {k.shape} and v {v.shape} do not "
                         f"fit: k and v need q's batch and heads, k needs q's head_dim, v needs "
                         f"k's time")


def attention_mask(mask: Any, batch: int, time_q: int, time_k: int, *,
                   causal: bool = False) -> jax.Array | None:
    """One bool mask broadcastable to ``(batch, heads, time_q, time_k)`` (True = attend), or ``None``.

    ``mask`` is ``None``, lengths ``(batch,)``, a key-padding mask ``(batch, time_k)``, or a full
    mask ``(batch, time_q, time_k)`` / ``(batch, heads, time_q, time_k)``; ``causal`` adds the
    causal pattern (see the module doc).

    Example:
        >>> attention_mask(jnp.array([1, 2]), 2, 2, 2).shape      # lengths: a key mask
        (2, 1, 1, 2)
        >>> attention_mask(jnp.array([1, 2]), 2, 2, 2)[:, 0, 0].astype(int).tolist()
        [[1, 0], [1, 1]]
        >>> attention_mask(None, 1, 2, 3, causal=True)[0, 0].astype(int).tolist()
        [[1, 1, 0], [1, 1, 1]]
    """
    allowed = None
    if mask is not None:
        m = jnp.asarray(mask)
        if m.ndim == 1 and m.shape == (batch,):
            if not jnp.issubdtype(m.dtype, jnp.integer):
                raise ArgumentError("attention mask", f"lengths (batch,) must be integers, got "
                                                      f"dtype {m.dtype}")
            allowed = (jnp.arange(time_k)[None, :] < m[:, None])[:, None, None, :]
        elif m.ndim == 2 and m.shape == (batch, time_k):
            allowed = m.astype(bool)[:, None, None, :]
        elif m.ndim == 3 and m.shape == (batch, time_q, time_k):
            allowed = m.astype(bool)[:, None]
        elif m.ndim == 4 and m.shape[0] in (1, batch) and m.shape[2] in (1, time_q) \
                and m.shape[3] == time_k:
            allowed = m.astype(bool)
        else:
            raise ArgumentError("attention mask", f"expects lengths ({batch},), a key mask "
                                                  f"({batch}, {time_k}) or a mask ({batch}, "
                                                  f"[heads,] {time_q}, {time_k}), got shape "
                                                  f"{tuple(m.shape)}")
    if causal:
        offset = time_k - time_q
        tri = jnp.arange(time_k)[None, :] <= jnp.arange(time_q)[:, None] + offset
        allowed = tri[None, None] if allowed is None else allowed & tri[None, None]
    return allowed


def _softmax_dtype(dtype: Any) -> Any:
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def attention_weights(q: jax.Array, k: jax.Array, *, mask: Any = None, bias: Any = None,
                      causal: bool = False, scale: float | None = None) -> jax.Array:
    """The attention weights ``softmax(q k^T * scale + bias)`` over the allowed keys.

    Shapes: ``q (batch, time_q, heads, d)``, ``k (batch, time_k, heads, d)`` ->
    ``(batch, heads, time_q, time_k)``; each row sums to 1, or is all zeros when no key is
    allowed. ``bias`` broadcasts to ``(batch, heads, time_q, time_k)``. The softmax is
    computed in float32, or float64 for float64 inputs.

    Example:
        >>> w = attention_weights(jnp.ones((1, 2, 1, 4)), jnp.ones((1, 2, 1, 4)), causal=True)
        >>> w[0, 0].tolist()
        [[1.0, 0.0], [0.5, 0.5]]
    """
    allowed = attention_mask(mask, q.shape[0], q.shape[1], k.shape[1], causal=causal)
    return _weights(q, k, allowed, bias, scale)


def _weights(q: jax.Array, k: jax.Array, allowed: jax.Array | None, bias: Any,
             scale: float | None) -> jax.Array:
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    compute = _softmax_dtype(jnp.result_type(q.dtype, k.dtype))
    # scale the (time_q, d) queries, not the (time_q, time_k) logits: the same product to
    # rounding, and the Transformer's step ~5% faster on CPU (docs/PERFORMANCE.md)
    q = (q * scale).astype(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=compute)
    if bias is not None:
        logits = logits + jnp.asarray(bias).astype(compute)
    if allowed is None:
        return jax.nn.softmax(logits, axis=-1)
    # masked logits get the smallest number (not -inf): a fully masked row stays finite, its
    # uniform softmax is then zeroed, and no gradient reaches the masked logits
    logits = jnp.where(allowed, logits, jnp.finfo(compute).min)
    return jnp.where(allowed, jax.nn.softmax(logits, axis=-1), 0.0)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: Any = None,
                          bias: Any = None, causal: bool = False, scale: float | None = None,
                          dropout_rate: float = 0.0, rng: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention: ``softmax(q k^T * scale + bias, masked) v`` per head.

    Shapes: ``q (batch, time_q, heads, d)``, ``k (batch, time_k, heads, d)``,
    ``v (batch, time_k, heads, d_v)`` -> ``(batch, time_q, heads, d_v)``.

    Args:
        q, k, v: queries, keys, values.
        mask: which keys each query may attend to (see the module doc for the forms).
        bias: added to the logits, broadcastable to ``(batch, heads, time_q, time_k)``.
        causal: query ``i`` attends to keys ``j <= i + time_k - time_q`` only.
        scale: multiplies ``q k^T``; default ``1 / sqrt(d)``.
        dropout_rate: drop attention weights with this probability (and scale the rest by
            ``1 / (1 - rate)``); needs ``rng``.
        rng: the key of the dropout.

    Example:
        >>> q = jnp.zeros((1, 2, 1, 4)); v = jnp.arange(8.0).reshape(1, 2, 1, 4)
        >>> dot_product_attention(q, q, v, causal=True)[0, :, 0].tolist()   # row 1 averages v
        [[0.0, 1.0, 2.0, 3.0], [2.0, 3.0, 4.0, 5.0]]
    """
    q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
    _check_qkv(q, k, v)
    if isinstance(dropout_rate, bool) or not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dot_product_attention: dropout_rate must be in [0, 1), got {dropout_rate!r}")
    if dropout_rate > 0.0 and rng is None:
        raise ValueError("dot_product_attention: dropout_rate > 0 needs rng=key")
    batch, time_q, time_k = q.shape[0], q.shape[1], k.shape[1]
    dtype = jnp.result_type(q.dtype, k.dtype, v.dtype)
    allowed = attention_mask(mask, batch, time_q, time_k, causal=causal)
    w = _weights(q, k, allowed, bias, scale)
    if dropout_rate > 0.0:
        # one key, or one key per example (what the training step passes): see fnn.core.draw
        keep = draw(rng, lambda k, shape: jax.random.bernoulli(k, 1.0 - dropout_rate, shape),
                    w.shape)
        w = jnp.where(keep, w / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", w.astype(dtype), v).astype(dtype)


def rope(x: jax.Array, positions: Any, *, mode: str = "half", base: float = 10000.0) -> jax.Array:
    """Rotary position embedding (Su et al., RoFormer) of queries or keys.

    Each pair of features ``(a, b)`` of a head is rotated by the angle ``p * base^(-2i/d)``
    (``p`` the position, ``i`` the pair's index, ``d = head_dim``, even):
    ``(a cos - b sin, a sin + b cos)``. The two conventions pair features differently:

    * ``"interleaved"`` (RoFormer, GPT-J, Mesh-TensorFlow): pairs ``(x[2i], x[2i+1])``;
    * ``"half"`` (GPT-NeoX, LLaMA, Hugging Face ``rotate_half``): pairs ``(x[i], x[i + d/2])``.

    Shapes: ``x (batch, time, heads, head_dim)``; ``positions (time,)`` or ``(batch, time)``.

    Example:
        >>> x = jnp.array([[[[1.0, 0.0]]]])                      # one pair (1, 0)
        >>> np.asarray(rope(x, jnp.array([1]), mode="half"), float).round(4).tolist()   # rotated by 1 radian
        [[[[0.5403, 0.8415]]]]
    """
    if mode not in ROPE_MODES:
        raise ValueError(f"rope: mode must be one of {', '.join(map(repr, ROPE_MODES))}, got {mode!r}")
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rope: head_dim must be even, got {d}")
    compute = _softmax_dtype(x.dtype)
    inv_freq = base ** (-jnp.arange(0, d, 2, dtype=compute) / d)                 # (d/2,)
    angles = jnp.asarray(positions).astype(compute)[..., None] * inv_freq       # (.., T, d/2)
    if angles.ndim == 2:
        angles = angles[None]
    cos, sin = jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]   # (B|1, T, 1, d/2)
    xc = x.astype(compute)
    if mode == "interleaved":
        a, b = xc[..., 0::2], xc[..., 1::2]
        y = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)
    else:
        a, b = xc[..., :d // 2], xc[..., d // 2:]
        y = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return y.astype(x.dtype)


def sinusoidal_positions(positions: Any, features: int, *, base: float = 10000.0,
                         dtype: Any = jnp.float32) -> jax.Array:
    """The sinusoidal position encodings of Vaswani et al. (2017), ``(len(positions), features)``.

    ``PE[p, 2i] = sin(p / base^(2i / features))``, ``PE[p, 2i + 1] = cos(p / base^(2i / features))``
    (interleaved sin/cos, as in the paper and in ``tensor2tensor``); an odd ``features`` drops
    the last cosine.

    Example:
        >>> np.asarray(sinusoidal_positions(jnp.arange(2), 4), float).round(3).tolist()
        [[0.0, 1.0, 0.0, 1.0], [0.841, 0.54, 0.01, 1.0]]
    """
    p = jnp.asarray(positions).astype(dtype)[:, None]
    inv_freq = base ** (-jnp.arange(0, features, 2, dtype=dtype) / features)
    angles = p * inv_freq                                                   # (T, ceil(F/2))
    pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(p.shape[0], -1)
    return pe[:, :features]
