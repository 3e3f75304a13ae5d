"""Attention, position encodings, Transformer blocks and cached decoding against independent
references: a float64 NumPy attention formula, NumPy RoPE / sinusoid formulas, finite differences,
and PyTorch's ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` in float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import fnn
from fnn.attention import attention_weights, dot_product_attention, rope, sinusoidal_positions
from fnn.decoding import generate, init_cache

B, TQ, TK, H, D = 3, 4, 5, 2, 6


# --------------------------------------------------------------------------- NumPy references

def np_attention(q, k, v, allowed=None, bias=None, scale=None):
    """softmax over the allowed keys of q k^T * scale + bias, times v; rows with no key -> 0."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    weights = np.zeros((q.shape[0], q.shape[2], q.shape[1], k.shape[1]))
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            for i in range(q.shape[1]):
                logits = np.array([q[b, i, h] @ k[b, j, h] * scale for j in range(k.shape[1])])
                if bias is not None:
                    logits = logits + np.broadcast_to(bias, weights.shape)[b, h, i]
                ok = (np.ones(k.shape[1], bool) if allowed is None
                      else np.broadcast_to(allowed, weights.shape)[b, h, i])
                if not ok.any():
                    continue
                e = np.where(ok, np.exp(logits - logits[ok].max()), 0.0)
                weights[b, h, i] = e / e.sum()
                out[b, i, h] = weights[b, h, i] @ v[b, :, h]
    return out, weights


def np_rope(x, positions, mode, base=10000.0):
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    y = np.empty_like(x)
    for t, p in enumerate(positions):
        for i in range(d // 2):
            angle = p * base ** (-2.0 * i / d)
            a, b = (2 * i, 2 * i + 1) if mode == "interleaved" else (i, i + d // 2)
            y[:, t, :, a] = x[:, t, :, a] * np.cos(angle) - x[:, t, :, b] * np.sin(angle)
            y[:, t, :, b] = x[:, t, :, a] * np.sin(angle) + x[:, t, :, b] * np.cos(angle)
    return y


def np_layer_norm(x, scale, offset, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * scale + offset


def _qkv(seed=0, tq=TQ, tk=TK):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, tq, H, D)), rng.normal(size=(B, tk, H, D)),
            rng.normal(size=(B, tk, H, D)))


LENGTHS = np.array([5, 2, 0])  # the last sequence has no real key: fully masked rows
KEY_MASK = np.arange(TK)[None, :] < LENGTHS[:, None]
FULL_MASK = np.random.default_rng(9).random((B, TQ, TK)) < 0.6
HEAD_MASK = np.random.default_rng(8).random((B, H, TQ, TK)) < 0.6
CAUSAL = np.arange(TK)[None, :] <= np.arange(TQ)[:, None] + (TK - TQ)


MASK_CASES = {
    "none": (None, False, None),
    "lengths": (LENGTHS, False, KEY_MASK[:, None, None, :]),
    "key_mask": (KEY_MASK, False, KEY_MASK[:, None, None, :]),
    "full_mask": (FULL_MASK, False, FULL_MASK[:, None]),
    "head_mask": (HEAD_MASK, False, HEAD_MASK),
    "causal": (None, True, CAUSAL[None, None]),
    "causal_and_lengths": (LENGTHS, True, KEY_MASK[:, None, None, :] & CAUSAL[None, None]),
}


@pytest.mark.parametrize("case", sorted(MASK_CASES))
@pytest.mark.parametrize("with_bias", [False, True])
def test_attention_equals_numpy_in_float64(case, with_bias):
    mask, causal, allowed = MASK_CASES[case]
    q, k, v = _qkv()
    bias = np.random.default_rng(5).normal(size=(1, H, TQ, TK)) if with_bias else None
    expected, expected_w = np_attention(q, k, v, allowed, bias)
    with jax.enable_x64(True):
        got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask=mask,
                                    bias=bias, causal=causal)
        w = attention_weights(jnp.asarray(q), jnp.asarray(k), mask=mask, bias=bias, causal=causal)
        assert got.dtype == jnp.float64 and w.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(w), expected_w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_float32_path_zeroes_fully_masked_rows(case):
    mask, causal, allowed = MASK_CASES[case]
    q, k, v = _qkv(1)
    expected, _ = np_attention(q, k, v, allowed, scale=0.3)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    got = dot_product_attention(f32(q), f32(k), f32(v), mask=mask, causal=causal, scale=0.3)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
    if case == "lengths":
        assert np.all(np.asarray(got)[2] == 0.0)


def test_scale_and_value_width_and_dropout():
    q, k, v = _qkv(2)
    v = np.random.default_rng(3).normal(size=(B, TK, H, 3))  # d_v != d
    expected, _ = np_attention(q, k, v, scale=0.5)
    with jax.enable_x64(True):
        got = dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), scale=0.5)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-10)
        # dropout: the kept weights are scaled by 1 / (1 - rate); same key, same result
        a = dot_product_attention(q, k, v, dropout_rate=0.5, rng=jax.random.key(0))
        b = dot_product_attention(q, k, v, dropout_rate=0.5, rng=jax.random.key(0))
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert not np.allclose(np.asarray(a), expected)
    with pytest.raises(ValueError, match="needs rng"):
        dot_product_attention(q, k, v, dropout_rate=0.1)


def test_gradients_match_finite_differences_with_a_fully_masked_row():
    q, k, v = _qkv(4)
    with jax.enable_x64(True):
        q, k, v = jnp.asarray(q), jnp.asarray(k), jnp.asarray(v)
        bias = jnp.asarray(np.random.default_rng(6).normal(size=(B, H, TQ, TK)))
        f = lambda q, k, v, b: dot_product_attention(q, k, v, mask=LENGTHS, bias=b, causal=True)  # noqa: E731
        jax.test_util.check_grads(f, (q, k, v, bias), order=1, modes=["rev"], eps=1e-6,
                                  atol=1e-7, rtol=1e-7)
        grads = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(grads[0])[2] == 0.0)  # the fully masked example: no gradient


def test_bad_masks_and_shapes_are_one_line_errors():
    q, k, v = (jnp.asarray(a, jnp.float32) for a in _qkv())
    with pytest.raises(ValueError, match=r"attention mask: expects lengths \(3,\)"):
        dot_product_attention(q, k, v, mask=np.ones((B, TQ), bool))
    with pytest.raises(ValueError, match="must be integers"):
        dot_product_attention(q, k, v, mask=np.ones(B))
    with pytest.raises(ValueError, match="do not fit"):
        dot_product_attention(q, k[:, :, :1], v)


# --------------------------------------------------------------------------- positions

@pytest.mark.parametrize("mode", ["interleaved", "half"])
def test_rope_equals_the_numpy_formula_of_its_convention(mode):
    x = np.random.default_rng(0).normal(size=(2, 7, 3, 8))
    positions = np.arange(7) + 3
    with jax.enable_x64(True):
        got = rope(jnp.asarray(x), positions, mode=mode)
    np.testing.assert_allclose(np.asarray(got), np_rope(x, positions, mode), rtol=0, atol=1e-10)
    other = "half" if mode == "interleaved" else "interleaved"
    assert not np.allclose(np.asarray(got), np_rope(x, positions, other))


def test_rope_keeps_relative_positions():
    x = np.random.default_rng(1).normal(size=(1, 2, 1, 8))
    with jax.enable_x64(True):
        a = rope(jnp.asarray(x), np.array([0, 3]), mode="half")
        b = rope(jnp.asarray(x), np.array([10, 13]), mode="half")
    a, b = np.asarray(a), np.asarray(b)
    assert abs(a[0, 0, 0] @ a[0, 1, 0] - b[0, 0, 0] @ b[0, 1, 0]) < 1e-10


def test_sinusoidal_positions_equal_vaswani_et_al():
    features, base = 7, 10000.0
    expected = np.zeros((12, features))
    for p in range(12):
        for j in range(features):
            angle = p / base ** (2 * (j // 2) / features)
            expected[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    with jax.enable_x64(True):
        got = sinusoidal_positions(jnp.arange(12), features, dtype=jnp.float64)
        x = np.random.default_rng(0).normal(size=(2, 12, features))
        y, _ = fnn.PositionalEncoding().apply({}, {}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(y), x + expected, rtol=0, atol=1e-10)


def test_learned_positions_and_patch_embed():
    layer = fnn.LearnedPositions(8)
    _, params, state = layer.init(jax.random.key(0), (-1, 5, 3))
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(np.asarray(y), x + np.asarray(params["w"])[:5], rtol=1e-6)
    with pytest.raises(fnn.LayerError, match="longer than max_len=8"):
        layer.apply(params, state, np.zeros((2, 9, 3), np.float32))

    patch = fnn.PatchEmbed((2, 3), 4)
    _, params, _ = patch.init(jax.random.key(0), (-1, 4, 6, 2))
    img = np.random.default_rng(1).normal(size=(2, 4, 6, 2))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        y, _ = patch.apply(p64, {}, jnp.asarray(img))
    w, b = np.asarray(p64["w"]), np.asarray(p64["b"])
    expected = np.stack([np.stack([img[n, 2 * r:2 * r + 2, 3 * c:3 * c + 3, :].reshape(-1) @ w + b
                                   for r in range(2) for c in range(2)]) for n in range(2)])
    np.testing.assert_allclose(np.asarray(y), expected, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- the layers

def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a, tree)


def test_multi_head_attention_equals_the_formula_with_rope_and_masks():
    mha = fnn.MultiHeadAttention(2, 4, out_features=5, rope="interleaved", return_weights=True)
    _, params, _ = mha.init(jax.random.key(0), ((-1, 4, 6), (-1,)))
    x = np.random.default_rng(0).normal(size=(3, 4, 6))
    lengths = np.array([4, 1, 3])
    with jax.enable_x64(True):
        p = _to64(params)
        (y, w), _ = mha.apply(p, {}, (jnp.asarray(x), lengths))
    p = jax.tree.map(np.asarray, p)
    split = lambda a: a.reshape(3, 4, 2, 4)  # noqa: E731
    q = np_rope(split(x @ p["w_q"] + p["b_q"]), range(4), "interleaved")
    k = np_rope(split(x @ p["w_k"] + p["b_k"]), range(4), "interleaved")
    v = split(x @ p["w_v"] + p["b_v"])
    allowed = (np.arange(4)[None, :] < lengths[:, None])[:, None, None, :]
    h, weights = np_attention(q, k, v, allowed)
    np.testing.assert_allclose(np.asarray(w), weights, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(y), h.reshape(3, 4, 8) @ p["w_o"] + p["b_o"],
                               rtol=0, atol=1e-10)


def test_mask_forms_agree_and_the_mask_is_passed_on():
    block = fnn.TransformerBlock(2, 8)
    _, params, state = block.init(jax.random.key(0), ((-1, 5, 4), (-1,)))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 4)), jnp.float32)
    lengths = jnp.array([5, 3])
    (a, m), _ = block.apply(params, state, (x, lengths))
    assert m is lengths
    apply = jax.jit(block.apply)
    (b, _), _ = apply(params, state, (x, jnp.arange(5)[None] < lengths[:, None]))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # real steps do not depend on what the padding holds
    (c, _), _ = apply(params, state, (x.at[1, 3:].set(100.0), jnp.arange(5)[None] < lengths[:, None]))
    np.testing.assert_allclose(np.asarray(a)[1, :3], np.asarray(c)[1, :3], rtol=1e-5, atol=1e-6)


def test_one_line_errors_before_compiling():
    with pytest.raises(fnn.LayerError, match=r"^MultiHeadAttention layer: num_heads=3 does not "
                                             r"divide the width 8"):
        fnn.MultiHeadAttention(3).init(jax.random.key(0), (-1, 5, 8))
    net = fnn.serial(fnn.Dense(8), fnn.TransformerBlock(3, 16))
    with pytest.raises(fnn.LayerError, match=r"layer .transformer_block_0/attention.: num_heads=3"):
        net.init(jax.random.key(0), (-1, 5, 4))
    with pytest.raises(fnn.LayerError, match="longer than max_len=4"):
        fnn.serial(fnn.LearnedPositions(4), fnn.Dense(2)).init(jax.random.key(0), (-1, 5, 3))
    with pytest.raises(fnn.LayerError, match=r"patch \(4, 4\) does not divide the image \(28, 30\)"):
        fnn.PatchEmbed(4, 8).init(jax.random.key(0), (-1, 28, 30, 1))
    with pytest.raises(ValueError, match="rope must be None, 'interleaved' or 'half'"):
        fnn.MultiHeadAttention(2, rope="neox")


def test_cross_attention_uses_the_context():
    mha = fnn.MultiHeadAttention(2)
    out_shape, params, _ = mha.init(jax.random.key(0), ((-1, 3, 4), (-1, 6, 5), (-1,)))
    assert out_shape == (-1, 3, 4) and params["w_k"].shape == (5, 4)
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 6, 5))
    with jax.enable_x64(True):
        p = _to64(params)
        y, _ = mha.apply(p, {}, (jnp.asarray(x), jnp.asarray(c), np.array([6, 2])))
    p = jax.tree.map(np.asarray, p)
    q = (x @ p["w_q"] + p["b_q"]).reshape(2, 3, 2, 2)
    k = (c @ p["w_k"] + p["b_k"]).reshape(2, 6, 2, 2)
    v = (c @ p["w_v"] + p["b_v"]).reshape(2, 6, 2, 2)
    allowed = (np.arange(6)[None, :] < np.array([6, 2])[:, None])[:, None, None, :]
    h, _ = np_attention(q, k, v, allowed)
    np.testing.assert_allclose(np.asarray(y), h.reshape(2, 3, 4) @ p["w_o"] + p["b_o"],
                               rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- PyTorch

def _torch_mha_params(m, use_bias=True):
    e = m.embed_dim
    w = m.in_proj_weight.detach().numpy()
    p = {"w_q": w[:e].T, "w_k": w[e:2 * e].T, "w_v": w[2 * e:].T,
         "w_o": m.out_proj.weight.detach().numpy().T}
    if use_bias:
        b = m.in_proj_bias.detach().numpy()
        p.update(b_q=b[:e], b_k=b[e:2 * e], b_v=b[2 * e:], b_o=m.out_proj.bias.detach().numpy())
    return p


def test_equals_torch_multihead_attention():
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=torch.float64)
    for prm in m.parameters():  # non-zero biases, so that a wrong bias mapping shows
        torch.nn.init.normal_(prm, std=0.3)
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    c = torch.randn(3, 7, 8, dtype=torch.float64)
    lengths = np.array([5, 3, 1])
    pad = torch.tensor(np.arange(5)[None, :] >= lengths[:, None])  # torch: True = ignore
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    ref, ref_w = m(x, x, x, key_padding_mask=pad, attn_mask=causal, average_attn_weights=False)
    ref_cross, _ = m(x, c, c)
    params = _torch_mha_params(m)
    with jax.enable_x64(True):
        mha = fnn.MultiHeadAttention(2, causal=True, return_weights=True)
        (y, w), _ = mha.apply(params, {}, (jnp.asarray(x.numpy()), lengths))
        y_cross, _ = fnn.MultiHeadAttention(2).apply(params, {}, (jnp.asarray(x.numpy()),
                                                                 jnp.asarray(c.numpy())))
    np.testing.assert_allclose(np.asarray(y), ref.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(w), ref_w.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(y_cross), ref_cross.detach().numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("norm_first", [True, False])
def test_equals_torch_transformer_encoder_layer(norm_first):
    torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch")
    torch.manual_seed(1)
    layer = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0,
                                             activation="gelu", batch_first=True,
                                             norm_first=norm_first, dtype=torch.float64)
    for prm in layer.parameters():
        torch.nn.init.normal_(prm, mean=0.1, std=0.3)
    layer.eval()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    lengths = np.array([5, 4, 2])
    pad = torch.tensor(np.arange(5)[None, :] >= lengths[:, None])
    ref = layer(x, src_key_padding_mask=pad).detach().numpy()  # grad enabled: no fused fast path
    t = lambda a: a.detach().numpy()  # noqa: E731
    params = {"attention": _torch_mha_params(layer.self_attn),
              "norm1": {"scale": t(layer.norm1.weight), "offset": t(layer.norm1.bias)},
              "norm2": {"scale": t(layer.norm2.weight), "offset": t(layer.norm2.bias)},
              "mlp_in": {"w": t(layer.linear1.weight).T, "b": t(layer.linear1.bias)},
              "mlp_out": {"w": t(layer.linear2.weight).T, "b": t(layer.linear2.bias)}}
    block = fnn.TransformerBlock(2, 16, norm_first=norm_first)
    with jax.enable_x64(True):
        (y, _), _ = block.apply(params, {}, (jnp.asarray(x.numpy()), lengths))
    real = np.arange(5)[None, :] < lengths[:, None]  # torch's fast path may zero padded steps
    np.testing.assert_allclose(np.asarray(y)[real], ref[real], rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- decoding

def _decoder(rope=None, positions="learned"):
    pos = {"learned": fnn.LearnedPositions(16), "sinusoidal": fnn.PositionalEncoding(),
           None: fnn.Identity()}[positions]
    return fnn.serial(fnn.Embedding(11, 8), pos,
                      fnn.TransformerBlock(2, 16, causal=True, rope=rope),
                      fnn.TransformerBlock(2, 16, causal=True, rope=rope, norm_first=False),
                      fnn.LayerNorm(), fnn.Dense(11))


@pytest.mark.parametrize("rope,positions", [(None, "learned"), ("half", None),
                                            ("interleaved", "sinusoidal")])
def test_cached_steps_equal_full_recomputation(rope, positions):
    net = _decoder(rope, positions)
    tokens = np.random.default_rng(0).integers(0, 11, size=(2, 9))
    with jax.enable_x64(True):
        _, params, state = net.init(jax.random.key(0), (-1, 9))
        params = _to64(params)
        apply = jax.jit(net.apply)
        full, _ = apply(params, state, jnp.asarray(tokens))
        cache = init_cache(net, params, state, 2, 9)
        logits, cache = apply(params, cache, jnp.asarray(tokens[:, :4]))  # a prompt of 4
        steps = [logits]
        for t in range(4, 9):
            logits, cache = apply(params, cache, jnp.asarray(tokens[:, t:t + 1]))
            steps.append(logits)
    np.testing.assert_allclose(np.concatenate([np.asarray(s) for s in steps], axis=1),
                               np.asarray(full), rtol=0, atol=1e-10)


def test_greedy_generate_equals_rerunning_the_whole_sequence():
    net = _decoder("half")
    _, params, state = net.init(jax.random.key(3), (-1, 12))
    prompt = np.random.default_rng(1).integers(0, 11, size=(3, 4))
    out = generate(net, params, state, prompt, 8, temperature=0.0)
    # the reference: the whole sequence through the network (no cache) at every step; the
    # sequence sits in a buffer of 12 steps (one compilation), where causal attention keeps
    # the steps after t from changing the logits of step t
    full = jax.jit(lambda seq: net.apply(params, state, seq)[0])
    seq = np.zeros((3, 12), np.int32)
    seq[:, :4] = prompt
    for t in range(4, 12):
        seq[:, t] = np.argmax(np.asarray(full(jnp.asarray(seq)))[:, t - 1], axis=-1)
    np.testing.assert_array_equal(np.asarray(out), seq)


def test_sampling_respects_top_k_and_needs_a_key():
    net = _decoder()
    _, params, state = net.init(jax.random.key(0), (-1, 4))
    prompt = np.zeros((64, 1), np.int32)
    out = generate(net, params, state, prompt, 1, top_k=2, rng=jax.random.key(5))
    logits, _ = jax.jit(net.apply)(params, state, jnp.asarray(prompt))
    top2 = set(np.argsort(np.asarray(logits[0, -1]))[-2:].tolist())
    assert set(np.asarray(out[:, 1]).tolist()) <= top2
    with pytest.raises(ValueError, match="needs rng=key"):
        generate(net, params, state, prompt, 3)
    with pytest.raises(ValueError, match="no layer of the network keeps a decoding cache"):
        init_cache(fnn.serial(fnn.Embedding(3, 4), fnn.Dense(3)), {}, {}, 1, 4)
    bidirectional = fnn.serial(fnn.Embedding(3, 4), fnn.MultiHeadAttention(2), fnn.Dense(3))
    with pytest.raises(fnn.LayerError, match="not causal"):
        init_cache(bidirectional, {}, {}, 1, 4)


# --------------------------------------------------------------------------- the block's declared layers

def test_transformer_block_declares_its_layers_and_keeps_its_spec_and_params():
    block = fnn.TransformerBlock(2, 16, epsilon=1e-3)
    # the spec a file holds is unchanged: the default sub-layers are left out
    assert block.spec == {"TransformerBlock": {"num_heads": 2, "mlp_features": 16,
                                               "epsilon": 0.001}}
    assert repr(block) == "TransformerBlock(2, 16, epsilon=0.001)"
    assert [keys for keys, _ in block.layout] == [("attention",), ("norm1",), ("norm2",),
                                                  ("mlp_in",), ("mlp_out",)]
    _, params, _ = block.init(jax.random.key(0), (-1, 3, 8))
    assert {k: sorted(v) for k, v in params.items()} == {
        "attention": ["b_k", "b_o", "b_q", "b_v", "w_k", "w_o", "w_q", "w_v"],
        "norm1": ["offset", "scale"], "norm2": ["offset", "scale"],
        "mlp_in": ["b", "w"], "mlp_out": ["b", "w"]}
    assert params["mlp_out"]["w"].shape == (16, 8)  # back to the block's width
    # a changed sub-layer is in the spec and survives the round trip
    frozen = fnn.freeze(block, "mlp_out")
    spec = frozen.spec["TransformerBlock"]
    assert spec["mlp_out"] == {"Frozen": {"layer": {"Dense": {"features": 16}}}}
    assert set(spec) == {"num_heads", "mlp_features", "epsilon", "mlp_out"}
    assert fnn.from_spec(frozen.spec).spec == frozen.spec


def test_map_layers_reaches_the_block_layers():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 8)), jnp.float32)
    block = fnn.TransformerBlock(2, 16)
    _, params, state = block.init(jax.random.key(0), (-1, 3, 8))
    # the norms' epsilon changed by map_layers: the same as the block built with it
    loose = fnn.map_layers(lambda l: l.replace(epsilon=0.5) if l.kind == "LayerNorm" else l, block)
    want = fnn.TransformerBlock(2, 16, epsilon=0.5).apply(params, state, x)[0]
    np.testing.assert_array_equal(loose.apply(params, state, x)[0], want)
    assert not np.allclose(block.apply(params, state, x)[0], want)
    seen = []
    fnn.map_layers(lambda l, path: seen.append("/".join(path)) or l, block, with_path=True)
    assert seen == ["attention", "norm1", "norm2", "mlp_in", "mlp_out", ""]


def test_transformer_block_takes_its_layers_and_says_when_mlp_out_has_the_wrong_width():
    block = fnn.TransformerBlock(2, 16, attention=fnn.MultiHeadAttention(4, use_bias=False))
    _, params, _ = block.init(jax.random.key(0), (-1, 3, 8))
    assert sorted(params["attention"]) == ["w_k", "w_o", "w_q", "w_v"]
    bad = fnn.TransformerBlock(2, 16, mlp_out=fnn.serial(fnn.Dense(5)))
    with pytest.raises(fnn.core.LayerError, match=r"^TransformerBlock layer: mlp_out gives shape "
                       r"\(-1, 3, 5\); it must give the block's shape \(-1, 3, 8\)$"):
        bad.init(jax.random.key(0), (-1, 3, 8))


@pytest.mark.parametrize("prompt_len, context", [(3, 6), (4, 5), (7, 6)])
def test_generate_within_a_context_restarts_from_its_last_half(prompt_len, context):
    """``context=L``: greedy tokens equal the whole network run on the window each token is
    predicted from: the prompt (or its last L//2 tokens when it fills L), then, each time L
    tokens are seen, the last L//2 tokens and what follows them."""
    net = _decoder("half")
    _, params, state = net.init(jax.random.key(3), (-1, context))
    prompt = np.random.default_rng(2).integers(0, 11, size=(2, prompt_len))
    steps = 13
    out = np.asarray(generate(net, params, state, prompt, steps, temperature=0.0,
                              context=context))
    assert out.shape == (2, prompt_len + steps)
    np.testing.assert_array_equal(out[:, :prompt_len], prompt)
    full = jax.jit(lambda seq: net.apply(params, state, seq)[0])
    seq, keep = [list(row) for row in prompt], context // 2
    start = 0 if prompt_len < context else prompt_len - keep  # the window's first token
    while len(seq[0]) < prompt_len + steps:
        if len(seq[0]) - start == context:  # the window is full: restart from its last half
            start = len(seq[0]) - keep
        window = jnp.asarray(np.array(seq)[:, start:])
        nxt = np.argmax(np.asarray(full(window))[:, -1], axis=-1)
        for row, token in zip(seq, nxt):
            row.append(int(token))
    np.testing.assert_array_equal(out, np.array(seq))
    with pytest.raises(ValueError, match="context must be an int >= 2"):
        generate(net, params, state, prompt, 2, temperature=0.0, context=1)
