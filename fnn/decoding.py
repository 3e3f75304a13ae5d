"""Autoregressive decoding with key/value caches: :func:`init_cache` and :func:`generate`.

A decoder-only network maps tokens ``(batch, time)`` to logits ``(batch, time, vocab)`` with
causal attention (``MultiHeadAttention(causal=True)`` or ``TransformerBlock(causal=True)``).
:func:`init_cache` gives it a state in which each attention layer keeps the keys and values of
the steps seen so far and each position layer its step index (``fnn.layers.attention``); then
``net.apply`` on the next token alone computes that token's logits from the cache, so
generating ``T`` tokens costs one pass over the prompt and ``T - 1`` one-step passes, not ``T``
passes over the whole sequence. :func:`generate` does that under one ``jit``.

Example:
    >>> net = fnn.serial(fnn.Embedding(5, 8), fnn.LearnedPositions(16),
    ...                  fnn.TransformerBlock(2, 16, causal=True), fnn.Dense(5))
    >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
    >>> out = generate(net, params, state, jnp.array([[1, 2, 3]]), 5, temperature=0.0)
    >>> out.shape                                      # the prompt and 5 new tokens
    (1, 8)
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp

from fnn.arguments import positive_int
from fnn.core import Layer
from fnn.layers.attention import caching

__all__ = ["init_cache", "generate"]


def _merge(state: Any, extra: Any) -> Any:
    """``state`` with the entries of ``extra`` it lacks (nested dicts; ``state``'s values win)."""
    if not isinstance(state, dict) or not isinstance(extra, dict):
        return state
    out = dict(state)
    for key, value in extra.items():
        out[key] = _merge(state[key], value) if key in state else value
    return out


def _float_dtype(params: Any) -> Any:
    for leaf in jax.tree.leaves(params):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.float32


def init_cache(net: Layer, params: Any, state: Any, batch: int, max_len: int, *,
               input_shape: Any = None) -> Any:
    """``state`` plus empty decoding caches for ``batch`` sequences of up to ``max_len`` steps.

    ``input_shape`` is the network's input shape (default ``(batch, max_len)``, tokens); the
    caches take the dtype of ``params``' floats.

    Raises:
        ValueError: when no layer of ``net`` keeps a cache (no causal attention or position
            layer), or a layer cannot decode step by step (non-causal attention), naming it.

    Example:
        >>> net = fnn.serial(fnn.Embedding(5, 8), fnn.MultiHeadAttention(2, causal=True))
        >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
        >>> cache = init_cache(net, params, state, batch=2, max_len=10)
        >>> cache["multi_head_attention_0"]["cache_k"].shape
        (2, 10, 2, 4)
    """
    batch = positive_int("init_cache", "batch", batch)
    max_len = positive_int("init_cache", "max_len", max_len)
    shape = (batch, max_len) if input_shape is None else input_shape
    key = jax.random.key(0)
    with caching(batch, max_len):
        shapes = jax.eval_shape(lambda: net.init(key, shape)[2])
    if not any(getattr(path[-1], "key", None) == "index"
               for path, _ in jax.tree_util.tree_leaves_with_path(shapes)):
        raise ValueError("init_cache: no layer of the network keeps a decoding cache; decoding "
                         "needs causal attention (MultiHeadAttention or TransformerBlock with "
                         "causal=true)")
    dtype = _float_dtype(params)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating)
                                             else s.dtype), shapes)
    return _merge(state, zeros)


def _sample(logits: jax.Array, key: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(net: Layer, params: Any, state: Any, prompt: Any, steps: int, *,
             temperature: float = 1.0, top_k: int | None = None,
             rng: jax.Array | None = None, context: int | None = None) -> jax.Array:
    """Continue ``prompt`` by ``steps`` tokens, one cached step at a time.

    The network maps tokens ``(batch, time)`` to logits ``(batch, time, vocab)``. Each new token
    is drawn from ``softmax(logits / temperature)`` of the last step, restricted to the
    ``top_k`` largest logits when given; ``temperature=0`` takes the arg-max (greedy, the same
    tokens as re-running the whole sequence at every step, without the cache).

    ``context=L`` keeps the network within the length it was trained on: it never sees more
    than ``L`` tokens at once. When the cache is full, decoding starts again from the last
    ``L // 2`` tokens (read in one pass into a fresh cache), so every token is predicted from
    between ``L // 2`` and ``L - 1`` tokens before it (fewer only at the start), at positions
    ``0 .. L-1``. Without it the network sees the whole sequence: a model trained on windows
    of 128 tokens then reads positions it never saw after 128 steps (and ``LearnedPositions``
    refuses them).

    Shapes: ``prompt`` int ``(batch, T0)`` -> ``(batch, T0 + steps)`` int32 (prompt included).

    Args:
        net, params, state: a decoder-only network (causal attention) and its variables.
        prompt: the first tokens, the same number for every sequence.
        steps: how many tokens to add.
        temperature: ``>= 0``; 0 is greedy.
        top_k: sample among the ``top_k`` most likely tokens only.
        rng: the key of the sampling; needed when ``temperature > 0``.
        context: the most tokens the network sees at once (``>= 2``); ``None``: all of them.

    Example:
        >>> net = fnn.serial(fnn.Embedding(7, 8), fnn.TransformerBlock(2, 16, causal=True,
        ...                  rope="half"), fnn.Dense(7))
        >>> _, params, state = net.init(jax.random.key(0), (-1, 4))
        >>> out = generate(net, params, state, jnp.zeros((3, 2), int), 4, top_k=3,
        ...                rng=jax.random.key(1))
        >>> out.shape, bool((out[:, :2] == 0).all())
        ((3, 6), True)
    """
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"generate: prompt must be integer tokens (batch, time >= 1), got "
                         f"dtype {prompt.dtype} and shape {tuple(prompt.shape)}")
    steps = positive_int("generate", "steps", steps)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"generate: temperature must be a number >= 0, got {temperature!r}")
    top_k = None if top_k is None else positive_int("generate", "top_k", top_k)
    temperature = float(temperature)
    if temperature > 0.0 and rng is None:
        raise ValueError("generate: sampling with temperature > 0 needs rng=key "
                         "(or temperature=0 for greedy decoding)")
    if context is not None:
        context = positive_int("generate", "context", context)
        if context < 2:
            raise ValueError(f"generate: context must be an int >= 2, got {context}")
    key = jax.random.key(0) if rng is None else rng
    if context is None or prompt.shape[1] + steps <= context:
        return _continue(net, params, state, prompt, steps, temperature, top_k, key)
    keep, out, segment = context // 2, prompt.astype(jnp.int32), 0
    seed = out if out.shape[1] < context else out[:, -keep:]
    while out.shape[1] < prompt.shape[1] + steps:
        n = min(prompt.shape[1] + steps - out.shape[1], context - seed.shape[1])
        new = _continue(net, params, state, seed, n, temperature, top_k,
                        jax.random.fold_in(key, segment))
        out, segment = jnp.concatenate([out, new[:, seed.shape[1]:]], axis=1), segment + 1
        seed = out[:, -keep:]
    return out


def _continue(net: Layer, params: Any, state: Any, prompt: jax.Array, steps: int,
              temperature: float, top_k: int | None, key: jax.Array) -> jax.Array:
    """``prompt`` and ``steps`` tokens after it, decoded with a cache of their length."""
    cache = init_cache(net, params, state, prompt.shape[0], prompt.shape[1] + steps)
    return _compiled(net, steps, temperature, top_k)(params, cache, prompt, key)


_COMPILED: "collections.OrderedDict[tuple, tuple[Layer, Any]]" = collections.OrderedDict()


def _last_logits(logits: Any) -> jax.Array:
    if not hasattr(logits, "ndim") or logits.ndim != 3:
        raise ValueError(f"generate: the network must output logits (batch, time, vocab), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    return logits[:, -1]


def _compiled(net: Layer, steps: int, temperature: float, top_k: int | None) -> Any:
    """The jitted prompt-then-steps loop of ``net``, kept for the last few networks and settings
    (so that calling :func:`generate` again does not compile again)."""
    key = (id(net), steps, temperature, top_k)
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is net:  # the net is kept alive, so its id is not reused
        _COMPILED.move_to_end(key)
        return hit[1]

    def run(params, cache, prompt, key):
        logits, cache = net.apply(params, cache, prompt.astype(jnp.int32))
        keys = jax.random.split(key, steps)
        first = _sample(_last_logits(logits), keys[0], temperature, top_k)

        def step(carry, k):
            cache, token = carry
            logits, cache = net.apply(params, cache, token[:, None])
            nxt = _sample(_last_logits(logits), k, temperature, top_k)
            return (cache, nxt), nxt

        _, rest = jax.lax.scan(step, (cache, first), keys[1:])
        new = jnp.concatenate([first[:, None], rest.T], axis=1)
        return jnp.concatenate([prompt.astype(jnp.int32), new], axis=1)

    run = jax.jit(run)
    _COMPILED[key] = (net, run)
    while len(_COMPILED) > 8:
        _COMPILED.popitem(last=False)
    return run
