"""Attention layers: ``MultiHeadAttention``, ``TransformerBlock``, position encodings, ``PatchEmbed``.

Sequences are ``(batch, time, features)``, with fnn's sequence-mask convention
(``fnn.layers.sequences``): a layer takes ``x`` or ``(x, mask)``, ``mask`` being ``(batch, time)``
bool (True = a real step) or ``(batch,)`` integer lengths, and keeps the mask in its output,
``(y, mask)``, so blocks stack in ``fnn.serial``. The mask hides padded keys; outputs at padded
positions are computed but meaningless (a loss should weight them out).

**Decoding with a cache.** A causal self-attention layer can run one step at a time: in a state
made by :func:`caching` (used by ``fnn.decoding.init_cache`` and ``fnn.generate``) it keeps the
keys and values of the steps seen so far, ``{"cache_k", "cache_v": (batch, max_len, heads,
head_dim), "index": ()}``, so each new step attends to them instead of recomputing them; the
position layers keep ``{"index"}`` to add the right positions. In the ordinary state (``{}``,
from ``init``) the layers compute on whole sequences: training is unaffected.

Example:
    >>> net = fnn.serial(fnn.PositionalEncoding(), fnn.TransformerBlock(2, 32), fnn.Dense(3))
    >>> net.init(jax.random.key(0), (-1, 10, 16))[0]
    (-1, 10, 3)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp

from fnn import activations, initializers
from fnn.arguments import ArgumentError, flag, number, positive_int
from fnn.attention import ROPE_MODES, attention_mask, dot_product_attention, rope as apply_rope
from fnn.attention import attention_weights, sinusoidal_positions
from fnn.core import (Layer, LayerError, apply_child, check_shape, draw, init_child, layer_type,
                      map_layers, split_rng)
from fnn.layers.conv import as_tuple
from fnn.layers.dense import Dense, kernel_params, matmul_last
from fnn.layers.dropout import Dropout
from fnn.layers.normalization import LayerNorm
from fnn.layers.sequences import check_mask_shape

# caching and CacheSize are public here but not re-exported as fnn.caching (fnn.decoding uses them)
__all__ = ["MultiHeadAttention", "TransformerBlock", "PositionalEncoding", "LearnedPositions",
           "PatchEmbed"]


# --------------------------------------------------------------------------- decoding caches

class CacheSize(NamedTuple):
    """The size of the decoding caches :func:`caching` asks ``init`` for."""

    batch: int
    max_len: int


_CACHE: contextvars.ContextVar[CacheSize | None] = contextvars.ContextVar("fnn_cache", default=None)


@contextlib.contextmanager
def caching(batch: int, max_len: int) -> Iterator[CacheSize]:
    """Within this block, ``init`` of the attention and position layers returns decoding state:
    key/value caches of ``(batch, max_len, heads, head_dim)`` and a step ``index`` of 0.

    Example:
        >>> layer = fnn.MultiHeadAttention(2, causal=True)
        >>> with caching(batch=3, max_len=16):
        ...     _, _, state = layer.init(jax.random.key(0), (-1, 1, 8))
        >>> state["cache_k"].shape, int(state["index"])
        ((3, 16, 2, 4), 0)
    """
    size = CacheSize(positive_int("caching", "batch", batch), positive_int("caching", "max_len", max_len))
    token = _CACHE.set(size)
    try:
        yield size
    finally:
        _CACHE.reset(token)


def _index_state() -> dict:
    return {"index": jnp.zeros((), jnp.int32)}


# --------------------------------------------------------------------------- inputs

def _seq_shape(shape: Any, what: str = "input") -> tuple[int, ...]:
    s = check_shape(shape, min_rank=3, what=what)
    if len(s) != 3 or s[2] < 1:
        raise LayerError(f"expects {what} (batch, time, features) with known features, got shape {s}")
    return s


def _is_mask_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and len(s) <= 2 and all(isinstance(d, int) for d in s)


def _split_shapes(input_shape: Any) -> tuple[Any, Any, Any]:
    """``x | (x, mask) | (x, context) | (x, context, mask)`` shapes -> ``(x, context, mask)``."""
    if isinstance(input_shape, (tuple, list)) and input_shape and not all(
            isinstance(d, int) for d in input_shape):
        if len(input_shape) == 2:
            if _is_mask_shape(input_shape[1]):
                return input_shape[0], None, input_shape[1]
            return input_shape[0], input_shape[1], None
        if len(input_shape) == 3:
            return tuple(input_shape)
        raise LayerError(f"expects x, (x, mask), (queries, context) or (queries, context, mask), "
                         f"got {len(input_shape)} shapes: {input_shape!r}")
    return input_shape, None, None


def _split_inputs(inputs: Any) -> tuple[Any, Any, Any]:
    """The arrays of :func:`_split_shapes`: a second array of rank <= 2 is a mask."""
    if isinstance(inputs, (tuple, list)):
        if len(inputs) == 2:
            if jnp.ndim(inputs[1]) <= 2:
                return inputs[0], None, inputs[1]
            return inputs[0], inputs[1], None
        if len(inputs) == 3:
            return tuple(inputs)
        raise LayerError(f"expects x, (x, mask), (queries, context) or (queries, context, mask), "
                         f"got a {type(inputs).__name__} of length {len(inputs)}")
    return inputs, None, None


def _seq_and_mask_shape(input_shape: Any) -> tuple[tuple[int, ...], Any]:
    """``x`` or ``(x, mask)`` shapes of a layer that keeps the mask."""
    x, context, mask = _split_shapes(input_shape)
    if context is not None:
        raise LayerError(f"expects x (batch, time, features) or (x, mask), got {input_shape!r}")
    s = _seq_shape(x)
    check_mask_shape(mask, s[0], s[1])
    return s, mask


def _with_mask(y: Any, mask: Any) -> Any:
    return y if mask is None else (y, mask)


# --------------------------------------------------------------------------- MultiHeadAttention

@layer_type("MultiHeadAttention")
def MultiHeadAttention(num_heads: int, head_dim: int | None = None, out_features: int | None = None,
                       *, use_bias: bool = True, causal: bool = False, dropout: float = 0.0,
                       rope: str | None = None, return_weights: bool = False,
                       w_init: Any = "glorot_uniform", b_init: Any = "zeros") -> Layer:
    """Multi-head scaled dot-product attention (Vaswani et al. 2017), self or cross.

    ``q = x w_q + b_q``, ``k = c w_k + b_k``, ``v = c w_v + b_v`` split into ``num_heads`` heads of
    ``head_dim``; ``y = concat_h(softmax(q_h k_h^T / sqrt(head_dim)) v_h) w_o + b_o``, where ``c``
    is ``x`` (self-attention) or the context (cross-attention).

    Inputs: ``x``; ``(x, mask)`` (self-attention over the real steps; the output keeps the mask,
    ``(y, mask)``); ``(queries, context)``; ``(queries, context, mask)`` (the mask over the
    context's steps). ``mask``: ``(batch, time)`` bool or ``(batch,)`` lengths.

    Shapes: ``x (batch, T, F)``, context ``(batch, S, F_c)`` -> ``y (batch, T, out_features)``.
    ``return_weights=True`` makes the output ``(y, weights)``, ``weights (batch, heads, T, S)``
    (after any dropout; the mask is then not passed on).
    Params: ``w_q (F, H*D)``, ``w_k``, ``w_v (F_c, H*D)``, ``w_o (H*D, out_features)``, and
    ``b_q``, ``b_k``, ``b_v (H*D,)``, ``b_o (out_features,)`` with ``use_bias``.

    Args:
        num_heads: the number of heads ``H``.
        head_dim: ``D``; default ``F // num_heads`` (``num_heads`` must divide ``F``).
        out_features: width of ``y``; default ``F``.
        use_bias: learn the four biases.
        causal: step ``t`` attends only to steps ``<= t`` (decoders; needed to decode with a cache).
        dropout: rate of dropout on the attention weights in training (as PyTorch's ``dropout``).
        rope: rotary position embeddings on queries and keys: ``"interleaved"`` (RoFormer, GPT-J:
            pairs ``(2i, 2i+1)``) or ``"half"`` (GPT-NeoX, LLaMA: pairs ``(i, i + D/2)``); see
            ``fnn.attention.rope``.
        return_weights: also return the attention weights.
        w_init, b_init: initializers of the projections and biases.

    Example:
        >>> mha = fnn.MultiHeadAttention(4, causal=True)
        >>> _, params, state = mha.init(jax.random.key(0), (-1, 5, 16))
        >>> params["w_q"].shape, params["w_o"].shape
        ((16, 16), (16, 16))
        >>> y, _ = mha.apply(params, state, jnp.ones((2, 5, 16)))
        >>> y.shape
        (2, 5, 16)
    """
    who = "MultiHeadAttention"
    num_heads = positive_int(who, "num_heads", num_heads)
    head_dim = None if head_dim is None else positive_int(who, "head_dim", head_dim)
    out_features = None if out_features is None else positive_int(who, "out_features", out_features)
    use_bias, causal = flag(who, "use_bias", use_bias), flag(who, "causal", causal)
    return_weights = flag(who, "return_weights", return_weights)
    rate = number(who, "dropout", dropout)
    if not 0.0 <= rate < 1.0:
        raise ArgumentError(who, f"dropout must be in [0, 1), got {dropout!r}")
    if rope is not None and rope not in ROPE_MODES:
        raise ArgumentError(who, f"rope must be None, 'interleaved' or 'half', got {rope!r}")
    w_initializer, b_initializer = initializers.get(w_init), initializers.get(b_init)

    def init(rng, input_shape):
        x_shape, c_shape, m_shape = _split_shapes(input_shape)
        xs = _seq_shape(x_shape, "queries")
        cs = xs if c_shape is None else _seq_shape(c_shape, "context")
        check_mask_shape(m_shape, cs[0], cs[1])
        features = xs[-1]
        if head_dim is None and features % num_heads:
            raise LayerError(f"num_heads={num_heads} does not divide the width {features}; "
                             f"choose num_heads dividing {features} or give head_dim")
        d = head_dim or features // num_heads
        if rope is not None and d % 2:
            raise LayerError(f"rope needs an even head_dim, got {d}")
        width, out = num_heads * d, out_features or features
        keys = jax.random.split(rng, 8)
        params = {"w_q": w_initializer(keys[0], (features, width), jnp.float32),
                  "w_k": w_initializer(keys[1], (cs[-1], width), jnp.float32),
                  "w_v": w_initializer(keys[2], (cs[-1], width), jnp.float32),
                  "w_o": w_initializer(keys[3], (width, out), jnp.float32)}
        if use_bias:
            for i, (name, n) in enumerate((("b_q", width), ("b_k", width), ("b_v", width),
                                           ("b_o", out))):
                params[name] = b_initializer(keys[4 + i], (n,), jnp.float32)
        state = {}
        size = _CACHE.get()
        if size is not None:
            if c_shape is not None:
                raise LayerError("decoding caches self-attention only; cross-attention has no cache")
            if not causal:
                raise LayerError("cannot decode step by step: the attention is not causal "
                                 "(causal=true)")
            cache = jnp.zeros((size.batch, size.max_len, num_heads, d), jnp.float32)
            state = {"cache_k": cache, "cache_v": cache, **_index_state()}
        out_shape = xs[:2] + (out,)
        if return_weights:
            return (out_shape, (xs[0], num_heads, xs[1], cs[1])), params, state
        return _with_mask(out_shape, m_shape if c_shape is None else None), params, state

    def project(params, x, name):
        y = matmul_last(x, params[f"w_{name}"])
        if use_bias:
            y = y + params[f"b_{name}"]
        return y.reshape(x.shape[:2] + (num_heads, -1))

    def apply(params, state, inputs, *, rng=None, train=False):
        x, context, mask = _split_inputs(inputs)
        c = x if context is None else context
        for what, a, w in (("queries", x, "w_q"), ("context", c, "w_k")):
            if jnp.ndim(a) != 3 or a.shape[-1] != params[w].shape[0]:
                raise LayerError(f"expects {what} (batch, time, {params[w].shape[0]}), got shape "
                                 f"{tuple(jnp.shape(a))}")
        q, k, v = project(params, x, "q"), project(params, c, "k"), project(params, c, "v")
        use_dropout = train and rate > 0.0
        key = None
        if use_dropout:
            if rng is None:
                raise LayerError("needs an rng because its attention dropout is random in "
                                 "training; call apply(..., rng=key, train=True)")
            key = rng
        if "cache_k" in state:
            return _decode_step(params, state, q, k, v, mask, key)
        if rope is not None:
            q = apply_rope(q, jnp.arange(q.shape[1]), mode=rope)
            k = apply_rope(k, jnp.arange(k.shape[1]), mode=rope)
        try:
            allowed = attention_mask(mask, x.shape[0], q.shape[1], k.shape[1], causal=causal)
        except ArgumentError as e:  # a mask of the wrong shape: the layer names its path
            raise LayerError(e.detail) from None
        weights = None
        if return_weights:
            weights = attention_weights(q, k, mask=allowed)
            if use_dropout:
                keep = draw(key, lambda k, shape: jax.random.bernoulli(k, 1.0 - rate, shape), weights.shape)
                weights = jnp.where(keep, weights / (1.0 - rate), 0.0)
            h = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
        else:
            h = dot_product_attention(q, k, v, mask=allowed, dropout_rate=rate if use_dropout else 0.0,
                                      rng=key)
        y = project_out(params, h)
        if return_weights:
            return (y, weights), state
        return _with_mask(y, mask if context is None else None), state

    def project_out(params, h):
        y = matmul_last(h.reshape(h.shape[:2] + (-1,)), params["w_o"])
        return y + params["b_o"] if use_bias else y

    def _decode_step(params, state, q, k, v, mask, key):
        if mask is not None:
            raise LayerError("decoding with a cache takes no mask; give prompts of one length")
        t, max_len = q.shape[1], state["cache_k"].shape[1]
        if t > max_len:
            raise LayerError(f"{t} steps do not fit the cache of {max_len} steps")
        index = state["index"].astype(jnp.int32)
        if rope is not None:
            positions = index + jnp.arange(t)
            q, k = apply_rope(q, positions, mode=rope), apply_rope(k, positions, mode=rope)
        zero = jnp.zeros((), jnp.int32)
        cache_k = jax.lax.dynamic_update_slice(state["cache_k"], k.astype(state["cache_k"].dtype),
                                               (zero, index, zero, zero))
        cache_v = jax.lax.dynamic_update_slice(state["cache_v"], v.astype(state["cache_v"].dtype),
                                               (zero, index, zero, zero))
        # query i (at position index + i) sees the cached keys at positions <= index + i
        allowed = jnp.arange(max_len)[None, :] <= index + jnp.arange(t)[:, None]
        weights = attention_weights(q, cache_k.astype(q.dtype), mask=allowed[None, None])
        if key is not None:
            keep = draw(key, lambda k, shape: jax.random.bernoulli(k, 1.0 - rate, shape), weights.shape)
            weights = jnp.where(keep, weights / (1.0 - rate), 0.0)
        h = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), cache_v.astype(v.dtype))
        y = project_out(params, h)
        new_state = {"cache_k": cache_k, "cache_v": cache_v, "index": index + t}
        return ((y, weights) if return_weights else y), new_state

    return Layer(init, apply)


# --------------------------------------------------------------------------- TransformerBlock

BLOCK_LAYERS = ("attention", "norm1", "norm2", "mlp_in", "mlp_out")  # a TransformerBlock's


def _block_defaults(args: Any) -> dict[str, Layer]:
    """The sub-layers a :func:`TransformerBlock` makes from its hyper-parameters."""
    epsilon = args["epsilon"]
    return {"attention": MultiHeadAttention(args["num_heads"], causal=args["causal"],
                                            dropout=args["dropout"], rope=args["rope"]),
            "norm1": LayerNorm(epsilon=epsilon), "norm2": LayerNorm(epsilon=epsilon),
            "mlp_in": Dense(args["mlp_features"]), "mlp_out": Dense(args["mlp_features"])}


def _with_width(layer: Layer, features: int) -> Layer:
    """``layer`` with the ``Dense`` at its own level (itself, or inside ``Frozen`` /
    ``DtypePolicy``) giving ``features`` outputs."""
    return map_layers(lambda lay, path: lay.replace(features=features)
                      if not path and lay.kind == "Dense" else lay, layer, with_path=True)


@layer_type("TransformerBlock", sublayers=BLOCK_LAYERS,
            layout=lambda args: [((key,), args[key]) for key in BLOCK_LAYERS],
            defaults=_block_defaults)
def TransformerBlock(num_heads: int, mlp_features: int, *, norm_first: bool = True,
                     activation: str = "gelu", dropout: float = 0.0, causal: bool = False,
                     rope: str | None = None, epsilon: float = 1e-5,
                     attention: Layer | None = None, norm1: Layer | None = None,
                     norm2: Layer | None = None, mlp_in: Layer | None = None,
                     mlp_out: Layer | None = None) -> Layer:
    """A Transformer encoder block: self-attention and an MLP, each with a residual and a LayerNorm.

    ``norm_first=True`` (pre-LN, GPT-2 and ViT; trains without warm-up):
    ``x = x + drop(attn(norm1(x)))``; ``x = x + drop(mlp(norm2(x)))``.
    ``norm_first=False`` (post-LN, Vaswani et al. 2017 and PyTorch's default):
    ``x = norm1(x + drop(attn(x)))``; ``x = norm2(x + drop(mlp(x)))``.
    ``mlp(x) = mlp_out(drop(activation(mlp_in(x))))``. ``dropout`` is also applied to the attention
    weights, as in ``torch.nn.TransformerEncoderLayer``.

    Inputs ``x`` or ``(x, mask)`` (``mask`` hides padded keys; it is passed on).
    Shapes: ``(batch, T, F)`` -> ``(batch, T, F)``.
    Params: ``{"norm1": LayerNorm, "attention": MultiHeadAttention, "norm2": LayerNorm,
    "mlp_in": Dense(mlp_features), "mlp_out": Dense(F)}``.

    The five are declared sub-layers (``attention``, ``norm1``, ``norm2``, ``mlp_in``,
    ``mlp_out``, the keys ``fnn.summary`` prints): ``fnn.freeze(net, "block/attention")``
    freezes one, ``fnn.map_layers`` reaches them, and each may be given in place of its default.

    Args:
        num_heads: attention heads; must divide ``F``.
        mlp_features: hidden width of the MLP (often ``4 F``).
        norm_first: pre-LN (True) or post-LN (False).
        activation: of the MLP, by name (``"gelu"`` is the exact erf form, as PyTorch's).
        dropout: rate of every dropout in the block.
        causal: causal self-attention (decoders).
        rope: rotary embeddings in the attention (``"interleaved"`` or ``"half"``).
        epsilon: of the LayerNorms (PyTorch's ``layer_norm_eps``).
        attention: the self-attention; default ``MultiHeadAttention(num_heads, causal=causal,
            dropout=dropout, rope=rope)`` (so these four arguments shape only the default).
        norm1, norm2: default ``LayerNorm(epsilon=epsilon)``.
        mlp_in: default ``Dense(mlp_features)``.
        mlp_out: default ``Dense``; the block sets the ``features`` of the ``Dense`` at its level
            (itself, or inside ``Frozen``) to ``F``, so that the MLP returns to the block's width.

    Example:
        >>> block = fnn.TransformerBlock(2, 32, causal=True)
        >>> _, params, state = block.init(jax.random.key(0), (-1, 6, 8))
        >>> sorted(params)
        ['attention', 'mlp_in', 'mlp_out', 'norm1', 'norm2']
        >>> block.apply(params, state, jnp.ones((3, 6, 8)))[0].shape
        (3, 6, 8)
        >>> fnn.finetune.frozen_paths(fnn.freeze(block, "attention", "mlp_in"))
        [('attention',), ('mlp_in',)]
    """
    who = "TransformerBlock"
    num_heads = positive_int(who, "num_heads", num_heads)
    mlp_features = positive_int(who, "mlp_features", mlp_features)
    norm_first = flag(who, "norm_first", norm_first)
    act = activations.get(activation)
    rate = number(who, "dropout", dropout)
    if not 0.0 <= rate < 1.0:
        raise ArgumentError(who, f"dropout must be in [0, 1), got {dropout!r}")
    declared = {"attention": attention, "norm1": norm1, "norm2": norm2, "mlp_in": mlp_in}
    drop = Dropout(rate)
    widths: dict[int, Layer] = {}  # mlp_out at the block's width F, by F

    def children(features: int) -> dict[str, Layer]:
        if features not in widths:
            widths[features] = _with_width(mlp_out, features)
        return {**declared, "mlp_out": widths[features]}

    def init(rng, input_shape):
        shape, mask = _seq_and_mask_shape(input_shape)
        kids = children(shape[-1])
        shapes = {"attention": input_shape, "norm1": shape, "norm2": shape, "mlp_in": shape}
        params, state = {}, {}
        for (key, layer), r in zip(kids.items(), split_rng(rng, len(kids))):
            out, p, s = init_child(key, layer, r, shapes[key])
            if key == "mlp_in":
                shapes["mlp_out"] = out
            if key == "mlp_out" and tuple(out) != tuple(shape):
                raise LayerError(f"mlp_out gives shape {tuple(out)}; it must give the block's "
                                 f"shape {tuple(shape)}")
            if p:
                params[key] = p
            if s:
                state[key] = s
        return _with_mask(shape, mask), params, state

    def apply(params, state, inputs, *, rng=None, train=False):
        x, _, mask = _split_inputs(inputs)
        if jnp.ndim(x) != 3:
            raise LayerError(f"expects x (batch, time, features) or (x, mask), got shape "
                             f"{tuple(jnp.shape(x))}")
        kids = children(x.shape[-1])
        r = iter(split_rng(rng, 8))

        def run(key, h):
            out, s = apply_child(key, kids[key], params.get(key, {}), state.get(key, {}), h,
                                 rng=next(r), train=train)
            if key == "attention":
                new_state.update({"attention": s} if s else {})
            return out

        def dropped(h):
            return apply_child("dropout", drop, {}, {}, h, rng=next(r), train=train)[0]

        def attend(h):
            y = run("attention", _with_mask(h, mask))
            return dropped(y[0] if mask is not None else y)

        def mlp(h):
            return dropped(run("mlp_out", dropped(act(run("mlp_in", h)))))

        new_state: dict = {}
        if norm_first:
            x = x + attend(run("norm1", x))
            x = x + mlp(run("norm2", x))
        else:
            x = run("norm1", x + attend(x))
            x = run("norm2", x + mlp(x))
        return _with_mask(x, mask), new_state

    return Layer(init, apply)


# --------------------------------------------------------------------------- positions

def _positions(state: dict, t: int) -> tuple[jax.Array, dict]:
    """The positions of ``t`` new steps: ``0..t-1``, or after the decoding ``index`` in ``state``."""
    if "index" in state:
        return state["index"] + jnp.arange(t), {"index": state["index"] + t}
    return jnp.arange(t), state


@layer_type("PositionalEncoding")
def PositionalEncoding(*, base: float = 10000.0) -> Layer:
    """Add the sinusoidal position encodings of Vaswani et al. (2017) to a sequence.

    ``y[:, p, 2i] = x[:, p, 2i] + sin(p / base^(2i/F))``, ``y[:, p, 2i+1] = x[:, p, 2i+1] +
    cos(p / base^(2i/F))`` (see ``fnn.attention.sinusoidal_positions``). No params; any length.
    Inputs ``x`` or ``(x, mask)`` (passed on). Shapes: ``(batch, T, F)`` -> ``(batch, T, F)``.

    Example:
        >>> y, _ = fnn.PositionalEncoding().apply({}, {}, jnp.zeros((1, 2, 2)))
        >>> np.asarray(y, float).round(3).tolist()       # sin and cos of 0 and of 1
        [[[0.0, 1.0], [0.841, 0.54]]]
    """
    base = number("PositionalEncoding", "base", base)

    def init(rng, input_shape):
        shape, mask = _seq_and_mask_shape(input_shape)
        return _with_mask(shape, mask), {}, (_index_state() if _CACHE.get() else {})

    def apply(params, state, inputs, *, rng=None, train=False):
        x, _, mask = _split_inputs(inputs)
        if jnp.ndim(x) != 3:
            raise LayerError(f"expects x (batch, time, features), got shape {tuple(jnp.shape(x))}")
        positions, state = _positions(state, x.shape[1])
        dtype = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
        pe = sinusoidal_positions(positions, x.shape[-1], base=base, dtype=dtype)
        return _with_mask((x + pe).astype(x.dtype), mask), state

    return Layer(init, apply)


@layer_type("LearnedPositions")
def LearnedPositions(max_len: int, *, w_init: Any = "normal") -> Layer:
    """Add a learned vector per position (GPT, BERT, ViT): ``y[:, p] = x[:, p] + w[p]``.

    Inputs ``x`` or ``(x, mask)`` (passed on). Shapes: ``(batch, T, F)`` -> ``(batch, T, F)``,
    ``T <= max_len``. Params: ``{"w": (max_len, F)}`` (``w_init`` default ``normal``: std 0.01).

    Example:
        >>> layer = fnn.LearnedPositions(16)
        >>> _, params, _ = layer.init(jax.random.key(0), (-1, 10, 4))
        >>> params["w"].shape
        (16, 4)
        >>> layer.init(jax.random.key(0), (-1, 20, 4))
        Traceback (most recent call last):
        fnn.core.LayerError: LearnedPositions layer: sequences of 20 steps are longer than max_len=16
    """
    max_len = positive_int("LearnedPositions", "max_len", max_len)
    w_initializer = initializers.get(w_init)

    def check_len(t: int) -> None:
        if t > max_len:
            raise LayerError(f"sequences of {t} steps are longer than max_len={max_len}")

    def init(rng, input_shape):
        shape, mask = _seq_and_mask_shape(input_shape)
        check_len(shape[1])
        size = _CACHE.get()
        if size is not None:
            check_len(size.max_len)
        params = {"w": w_initializer(rng, (max_len, shape[-1]), jnp.float32)}
        return _with_mask(shape, mask), params, (_index_state() if size else {})

    def apply(params, state, inputs, *, rng=None, train=False):
        x, _, mask = _split_inputs(inputs)
        w = params["w"]
        if jnp.ndim(x) != 3 or x.shape[-1] != w.shape[1]:
            raise LayerError(f"expects x (batch, time, {w.shape[1]}), got shape {tuple(jnp.shape(x))}")
        t = x.shape[1]
        check_len(t)
        if "index" in state:
            pe = jax.lax.dynamic_slice_in_dim(w, state["index"].astype(jnp.int32), t)
            state = {"index": state["index"] + t}
        else:
            pe = w[:t]
        return _with_mask(x + pe, mask), state

    return Layer(init, apply)


# --------------------------------------------------------------------------- PatchEmbed

@layer_type("PatchEmbed")
def PatchEmbed(patch: int | tuple[int, int], features: int, *, use_bias: bool = True,
               w_init: Any = "glorot_uniform", b_init: Any = "zeros") -> Layer:
    """Cut images into non-overlapping patches and project each to ``features`` (ViT's stem).

    Patches are taken row by row (top-left first); each patch is flattened in ``(row, column,
    channel)`` order and multiplied by ``w``: the same as a ``Conv2D(features, patch,
    strides=patch, padding="VALID")`` whose kernel is ``w.reshape(ph, pw, C, features)``.

    Shapes: ``(batch, H, W, C)`` -> ``(batch, (H/ph) * (W/pw), features)``.
    Params: ``{"w": (ph * pw * C, features), "b": (features,)}``.

    Example:
        >>> layer = fnn.PatchEmbed(7, 32)
        >>> layer.init(jax.random.key(0), (-1, 28, 28, 1))[0]
        (-1, 16, 32)
        >>> layer.init(jax.random.key(0), (-1, 30, 28, 1))
        Traceback (most recent call last):
        fnn.core.LayerError: PatchEmbed layer: patch (7, 7) does not divide the image (30, 28); crop or pad the image, or choose another patch
    """
    ph, pw = as_tuple(patch, 2, "patch", "PatchEmbed")
    features = positive_int("PatchEmbed", "features", features)
    use_bias = flag("PatchEmbed", "use_bias", use_bias)
    w_initializer, b_initializer = initializers.get(w_init), initializers.get(b_init)

    def check(shape: tuple[int, ...]) -> None:
        h, w = shape[1], shape[2]
        if h % ph or w % pw:
            raise LayerError(f"patch {(ph, pw)} does not divide the image {(h, w)}; crop or pad "
                             f"the image, or choose another patch")

    def init(rng, input_shape):
        shape = check_shape(input_shape, min_rank=4)
        if len(shape) != 4 or min(shape[1:]) < 1:
            raise LayerError(f"expects images (batch, H, W, C) of known size, got shape {shape}")
        check(shape)
        params = kernel_params(rng, w_initializer, b_initializer,
                               (ph * pw * shape[3], features), use_bias)
        n = (shape[1] // ph) * (shape[2] // pw)
        return (shape[0], n, features), params, {}

    def apply(params, state, x, *, rng=None, train=False):
        w = params["w"]
        if jnp.ndim(x) != 4 or ph * pw * x.shape[3] != w.shape[0]:
            raise LayerError(f"expects images (batch, H, W, {w.shape[0] // (ph * pw)}), got shape "
                             f"{tuple(jnp.shape(x))}")
        check(x.shape)
        b, h, wd, c = x.shape
        patches = x.reshape(b, h // ph, ph, wd // pw, pw, c).transpose(0, 1, 3, 2, 4, 5)
        y = matmul_last(patches.reshape(b, (h // ph) * (wd // pw), ph * pw * c), w)
        return (y + params["b"] if use_bias else y), state

    return Layer(init, apply)
