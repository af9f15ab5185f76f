"""Loader contracts on a tiny GGUF: layout, dequantisation, RoPE permutation, numpy agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn.models import rope
from nestlearn.pretrained import (
    half_to_interleaved,
    interleaved_to_half,
    llama_forward,
    load_gguf,
    read_gguf,
)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@nnx.jit
def _logits(model, tokens):
    return model(tokens)[0]


def _tokens(vocab, shape, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def test_read_gguf_hparams_and_tensors(tiny_gguf):
    path, written = tiny_gguf
    ck = read_gguf(path)
    hp = ck.hparams
    assert (hp.d_model, hp.num_layers, hp.num_heads, hp.num_kv_heads, hp.head_dim) == (
        32,
        2,
        4,
        2,
        8,
    )
    assert (
        hp.ffn_hidden == 48 and hp.tied and hp.vocab_size == written["token_embd.weight"].shape[0]
    )
    assert hp.norm_eps == pytest.approx(1e-5) and hp.rope_theta == pytest.approx(1e4)
    for name, w in written.items():
        assert ck.tensors[name].shape == w.shape, name
        assert ck.tensors[name].dtype == np.float32
    np.testing.assert_array_equal(ck.tensors["blk.1.attn_q.weight"], written["blk.1.attn_q.weight"])
    # quantised tensors: dequantised within the quantisation step
    assert _rel(ck.tensors["token_embd.weight"], written["token_embd.weight"]) < 1e-2
    assert _rel(ck.tensors["blk.0.ffn_up.weight"], written["blk.0.ffn_up.weight"]) < 0.1


def test_truncation_and_bad_inputs(tiny_gguf, tmp_path):
    path, _ = tiny_gguf
    ck = read_gguf(path, num_layers=1)
    assert ck.hparams.num_layers == 1
    assert not any(name.startswith("blk.1.") for name in ck.tensors)
    with pytest.raises(ValueError, match="num_layers"):
        read_gguf(path, num_layers=3)
    with pytest.raises(ValueError, match="is not a file"):
        read_gguf(tmp_path / "missing.gguf")


def test_rope_permutation_preserves_attention_logits(x64):
    """q·k after interleaved-pair RoPE (GGUF) == q·k after rotate-half RoPE of permuted rows."""
    rng = np.random.default_rng(0)
    heads, dh, d_in, t = 2, 8, 5, 6
    wq = rng.normal(size=(heads * dh, d_in))
    wk = rng.normal(size=(heads * dh, d_in))
    x = rng.normal(size=(1, t, d_in))
    np.testing.assert_array_equal(interleaved_to_half(half_to_interleaved(wq, heads), heads), wq)

    def rope_pairs(v):  # adjacent pairs (2i, 2i+1), written from the definition
        freqs = 1e4 ** (-np.arange(dh // 2) * 2.0 / dh)
        ang = np.arange(t)[:, None] * freqs
        c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
        out = v.copy()
        out[..., 0::2] = v[..., 0::2] * c - v[..., 1::2] * s
        out[..., 1::2] = v[..., 0::2] * s + v[..., 1::2] * c
        return out

    q = rope_pairs((x @ wq.T).reshape(1, t, heads, dh))
    k = rope_pairs((x @ wk.T).reshape(1, t, heads, dh))
    expected = np.einsum("bqhd,bkhd->bhqk", q, k)
    pos = jnp.arange(t)
    q2 = rope(
        jnp.asarray((x @ interleaved_to_half(wq, heads).T).reshape(1, t, heads, dh)), pos, theta=1e4
    )
    k2 = rope(
        jnp.asarray((x @ interleaved_to_half(wk, heads).T).reshape(1, t, heads, dh)), pos, theta=1e4
    )
    got = np.einsum("bqhd,bkhd->bhqk", np.asarray(q2), np.asarray(k2))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="even width"):
        interleaved_to_half(np.zeros((9, 3)), 3)


@pytest.mark.parametrize("window", [0, 5])
def test_logits_match_numpy_reference(tiny_gguf, window):
    path, _ = tiny_gguf
    ck = read_gguf(path)
    model, _ = load_gguf(path, max_len=64, window=window)
    tokens = _tokens(ck.hparams.vocab_size, (2, 12))
    expected = llama_forward(ck.tensors, ck.hparams, tokens, window=window)
    got = _logits(model, jnp.asarray(tokens))
    assert got.shape == expected.shape
    assert _rel(got, expected) < 1e-4


def test_streaming_and_gradient_match_reference(tiny_gguf, x64):
    """Pieces with a carried KV cache equal the reference; d(logit)/d(embedding) agrees too."""
    path, _ = tiny_gguf
    ck = read_gguf(path)
    model, _ = load_gguf(path, max_len=64)
    tokens = _tokens(ck.hparams.vocab_size, (1, 9), seed=1)
    expected = llama_forward(ck.tensors, ck.hparams, tokens)

    @nnx.jit
    def pieces(model, a, b):
        first, state = model(a)
        return jnp.concatenate([first, model(b, state)[0]], axis=1)

    assert (
        _rel(pieces(model, jnp.asarray(tokens[:, :4]), jnp.asarray(tokens[:, 4:])), expected) < 1e-4
    )

    # backward: d(one logit)/d(output-norm scale), jax vs central differences of the reference
    graphdef, params = nnx.split(model)

    def jax_logit(p):
        return nnx.merge(graphdef, p)(jnp.asarray(tokens))[0][0, -1, 7]

    grad = np.asarray(jax.jit(jax.grad(jax_logit))(params)["final_norm"]["scale"][...])
    tensors = dict(ck.tensors)
    base = tensors["output_norm.weight"].astype(np.float64)
    fd = np.zeros(grad.shape)
    for j in range(grad.shape[0]):
        step = np.zeros_like(base)
        step[j] = 1e-5
        tensors["output_norm.weight"] = base + step
        up = llama_forward(tensors, ck.hparams, tokens)[0, -1, 7]
        tensors["output_norm.weight"] = base - step
        down = llama_forward(tensors, ck.hparams, tokens)[0, -1, 7]
        fd[j] = (up - down) / 2e-5
    np.testing.assert_allclose(grad, fd, rtol=1e-3, atol=1e-4)


def test_untied_head(tiny_untied_gguf):
    path, written = tiny_untied_gguf
    ck = read_gguf(path)
    assert not ck.hparams.tied
    model, _ = load_gguf(path)
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), written["output.weight"].T)
    tokens = _tokens(ck.hparams.vocab_size, (1, 7))
    expected = llama_forward(ck.tensors, ck.hparams, tokens)
    assert _rel(_logits(model, jnp.asarray(tokens)), expected) < 1e-4
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)  # nothing left abstract
