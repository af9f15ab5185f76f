"""An independent plain-numpy forward pass of a Llama checkpoint, straight from the GGUF tensors.

It shares no code with `nestlearn.models`: it reads the GGUF tensors in their stored layout
([out, in] weights, q/k rows in llama.cpp's interleaved-pair RoPE layout) and rotates adjacent
pairs (2i, 2i+1), as llama.cpp does, so agreement with the nestlearn model also checks the q/k
row permutation of `gguf_loader`. Everything runs in float64.

Per block (Llama / Transformer++, pre-norm residual):
  h = RMSNorm(x)·g_attn;  x ← x + Attn(h) W_oᵀ;  h = RMSNorm(x)·g_ffn;
  x ← x + (silu(h W_gateᵀ) ⊙ h W_upᵀ) W_downᵀ;
then logits = (RMSNorm(x)·g_out) Eᵀ (tied) or W_outputᵀ.

Shapes: b batch, t tokens, h heads, g kv heads, d width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from nestlearn.pretrained.gguf_loader import LlamaHParams

__all__ = ["llama_forward"]


def _rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _rope_interleaved(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotates the pairs (x[2i], x[2i+1]) of x [b, t, h, d] by angle p·θ^(−2i/d) at position p."""
    t, d = x.shape[1], x.shape[-1]
    freqs = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)  # [d/2]
    angle = np.arange(t, dtype=np.float64)[:, None] * freqs[None, :]  # [t, d/2]
    cos, sin = np.cos(angle)[None, :, None, :], np.sin(angle)[None, :, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def llama_forward(
    tensors: Mapping[str, np.ndarray],
    hparams: LlamaHParams,
    tokens: np.ndarray,
    *,
    window: int = 0,
) -> np.ndarray:
    """Logits [b, t, V] float64 of integer tokens [b, t] under the GGUF tensors.

    Args:
      tensors: GGUF name -> array in GGUF layout (`GGUFCheckpoint.tensors`).
      hparams: the architecture (`GGUFCheckpoint.hparams`); its `num_layers` blocks are run.
      tokens: [b, t] integer token ids.
      window: 0 for full causal attention, else a query at position i sees keys j with
        i − window < j ≤ i.
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [b, t], got shape {tokens.shape}")
    w = {name: np.asarray(a, np.float64) for name, a in tensors.items()}
    b, t = tokens.shape
    nh, ng, dh, eps = hparams.num_heads, hparams.num_kv_heads, hparams.head_dim, hparams.norm_eps
    x = w["token_embd.weight"][tokens]  # [b, t, d]
    pos = np.arange(t)
    mask = pos[None, :] <= pos[:, None]  # [t query, t key]
    if window > 0:
        mask &= pos[:, None] - pos[None, :] < window
    for i in range(hparams.num_layers):
        p = f"blk.{i}."
        h = _rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(b, t, nh, dh)
        k = (h @ w[p + "attn_k.weight"].T).reshape(b, t, ng, dh)
        v = (h @ w[p + "attn_v.weight"].T).reshape(b, t, ng, dh)
        q = _rope_interleaved(q, hparams.rope_theta)
        k = _rope_interleaved(k, hparams.rope_theta)
        o = np.empty_like(q)
        for head in range(nh):
            kv = head // (nh // ng)  # query head → its kv group
            scores = np.einsum("bqd,bkd->bqk", q[:, :, head], k[:, :, kv]) / np.sqrt(dh)
            scores = np.where(mask[None], scores, -np.inf)
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            probs = scores / scores.sum(axis=-1, keepdims=True)
            o[:, :, head] = np.einsum("bqk,bkd->bqd", probs, v[:, :, kv])
        x = x + o.reshape(b, t, nh * dh) @ w[p + "attn_output.weight"].T
        h = _rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate = _silu(h @ w[p + "ffn_gate.weight"].T)
        x = x + (gate * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = _rms_norm(x, w["output_norm.weight"], eps)
    head_w = w.get("output.weight", w["token_embd.weight"])
    return x @ head_w.T
