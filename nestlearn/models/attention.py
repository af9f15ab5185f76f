"""Causal softmax attention with RoPE, sliding windows, persistent memory and a KV cache.

Softmax attention is the non-parametric solution of an associative-memory objective (Eqs. 62–63,
arXiv 2512.24695); limiting it to the last `window` tokens gives sliding-window attention (SWA).
Persistent memory (Titans Eq. 19) prepends N_p learned, input-independent tokens; here they enter
as learned key/value pairs that every query sees (no position, no mask), which is what prepending
them to the attention input amounts to.

The KV cache is a ring buffer of `window` slots (SWA) or `max_len` slots (full attention). Each slot
records the absolute position of the token it holds, so masks are exact for any piece sizes; a
full-attention stream longer than `max_len` keeps the last `max_len` tokens.

Shapes: b batch, t query tokens, s key tokens, h query heads, g kv heads, d head width.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from nestlearn.models.layers import accumulation_dtype, compute_dtype, matmul


class KVCache(NamedTuple):
    """Streaming state of one attention layer."""

    k: jax.Array  # [b, L, g, d] compute dtype; keys after RoPE, slot i holds position pos[i]
    v: jax.Array  # [b, L, g, d] compute dtype
    pos: jax.Array  # [L] int32; absolute position held by each slot, −1 when empty
    length: jax.Array  # [] int32; tokens seen so far


def rope(x: jax.Array, positions: jax.Array, *, theta: float = 10_000.0) -> jax.Array:
    """Rotary position embedding, rotate-half convention (pairs (i, i + d/2)).

    Args:
      x: [b, t, h, d] with d even.
      positions: [t] integer positions.
      theta: base of the frequencies θ^(−2i/d).
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even head width, got x.shape={x.shape}")
    acc = accumulation_dtype(x.dtype)
    freqs = theta ** (-jnp.arange(0, d // 2, dtype=acc) * 2.0 / d)  # [d/2]
    angles = positions.astype(acc)[:, None] * freqs[None, :]  # [t, d/2]
    cos = jnp.cos(angles)[None, :, None, :]
    sin = jnp.sin(angles)[None, :, None, :]
    x32 = x.astype(acc)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_pos: jax.Array,
    k_pos: jax.Array,
    window: int = 0,
    persistent_k: jax.Array | None = None,
    persistent_v: jax.Array | None = None,
) -> jax.Array:
    """Masked softmax attention, o_i = Σ_j softmax_j(q_i·k_j/√d) v_j over the visible keys.

    Key j is visible to query i when k_pos[j] ≥ 0, k_pos[j] ≤ q_pos[i] and, for window > 0,
    q_pos[i] − k_pos[j] < window. Persistent keys (Titans Eq. 19) are always visible. Query heads
    are grouped over kv heads (h = g·r). Logits and softmax run in float32.

    Args:
      q: [b, t, h, d]. k, v: [b, s, g, d]. q_pos: [t] int. k_pos: [s] int (−1: empty slot).
      window: 0 for full causal attention, else the number of positions a query sees (itself
        included).
      persistent_k, persistent_v: [n_p, g, d] or None.

    Returns:
      o: [b, t, h, d] in q's dtype.
    """
    b, t, h, d = q.shape
    g = k.shape[2]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % g:
        raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
    if q_pos.shape != (t,) or k_pos.shape != (k.shape[1],):
        raise ValueError(
            f"q_pos {q_pos.shape} / k_pos {k_pos.shape} must be [{t}] / [{k.shape[1]}]"
        )
    if g != h:  # grouped-query attention: each kv head serves h/g consecutive query heads
        k, v = jnp.repeat(k, h // g, axis=2), jnp.repeat(v, h // g, axis=2)
    acc = accumulation_dtype(q.dtype)
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])  # [t, s]
    if window > 0:
        visible &= q_pos[:, None] - k_pos[None, :] < window
    # The mask enters as an additive [t, s] bias and the scale is applied to q: on XLA:CPU a
    # select over the [b, h, t, s] logits costs more than the two matmuls in the backward pass.
    bias = jnp.where(visible, 0.0, -jnp.inf).astype(acc)
    q = q * jnp.asarray(d**-0.5, q.dtype)
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=acc) + bias
    values = v
    if persistent_k is not None:
        n_p = persistent_k.shape[0]
        pk = jnp.repeat(persistent_k.astype(k.dtype), h // g, axis=1)  # [n_p, h, d]
        p_logits = jnp.einsum("bthd,shd->bhts", q, pk, preferred_element_type=acc)
        logits = jnp.concatenate([p_logits, logits], axis=-1)
        pv = jnp.repeat(persistent_v.astype(v.dtype), h // g, axis=1)
        values = jnp.concatenate([jnp.broadcast_to(pv, (b, n_p, h, d)), v], axis=1)
    # A query always sees itself, so no row is all −inf.
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhts,bshd->bthd", weights, values)


class Attention(nnx.Module):
    """Multi-head causal self-attention with RoPE, optional SWA, persistent memory and KV cache.

    Example:
      >>> attn = Attention(32, num_heads=4, head_dim=8, max_len=64, rngs=nnx.Rngs(0))
      >>> y, cache = attn(jnp.ones((2, 10, 32)))          # fresh sequence
      >>> y2, cache = attn(jnp.ones((2, 1, 32)), cache)   # next token, reading the cache
    """

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        head_dim: int,
        max_len: int,
        num_kv_heads: int = 0,
        window: int = 0,
        num_persistent: int = 0,
        rope_theta: float = 10_000.0,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        num_kv_heads = num_kv_heads or num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads={num_heads} must be a multiple of {num_kv_heads=}")
        if window < 0 or num_persistent < 0 or max_len < 1:
            raise ValueError(
                f"need window >= 0, num_persistent >= 0, max_len >= 1, got "
                f"{window=}, {num_persistent=}, {max_len=}"
            )
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.window = window
        self.cache_len = window if window else max_len
        self.rope_theta = rope_theta
        self.dtype = compute_dtype(dtype)
        self.wq = nnx.Linear(d_model, num_heads * head_dim, use_bias=False, rngs=rngs)
        self.wk = nnx.Linear(d_model, num_kv_heads * head_dim, use_bias=False, rngs=rngs)
        self.wv = nnx.Linear(d_model, num_kv_heads * head_dim, use_bias=False, rngs=rngs)
        self.wo = nnx.Linear(num_heads * head_dim, d_model, use_bias=False, rngs=rngs)
        self.num_persistent = num_persistent
        if num_persistent:
            shape = (num_persistent, num_kv_heads, head_dim)
            self.persistent_k = nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32))
            self.persistent_v = nnx.Param(
                0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
            )

    @classmethod
    def from_config(cls, config, *, rngs: nnx.Rngs) -> Attention:
        """Builds the attention layer of a model config (see `registry.base_config`)."""
        return cls(
            config.d_model,
            num_heads=config.num_heads,
            head_dim=config.head_dim or config.d_model // config.num_heads,
            max_len=config.max_len,
            num_kv_heads=config.get("num_kv_heads", 0),
            window=config.get("window", 0),
            num_persistent=config.get("num_persistent", 0),
            rope_theta=config.get("rope_theta", 10_000.0),
            dtype=config.dtype,
            rngs=rngs,
        )

    def init_state(self, batch_size: int) -> KVCache:
        """An empty cache for `batch_size` fresh sequences."""
        shape = (batch_size, self.cache_len, self.num_kv_heads, self.head_dim)
        return KVCache(
            k=jnp.zeros(shape, self.dtype),
            v=jnp.zeros(shape, self.dtype),
            pos=jnp.full((self.cache_len,), -1, jnp.int32),
            length=jnp.zeros((), jnp.int32),
        )

    def project(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, ...]:
        """q [b,t,h,d], k and v [b,t,g,d] for inputs x [b,t,d] at absolute `positions` [t]."""
        b, t, _ = x.shape
        x = x.astype(self.dtype)
        q = matmul(x, self.wq.kernel[...]).reshape(b, t, self.num_heads, self.head_dim)
        k = matmul(x, self.wk.kernel[...]).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = matmul(x, self.wv.kernel[...]).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = rope(q, positions, theta=self.rope_theta)
        k = rope(k, positions, theta=self.rope_theta)
        return q, k, v

    def __call__(self, x: jax.Array, state: KVCache | None = None) -> tuple[jax.Array, KVCache]:
        """Args: x [b, t, d]; state: KVCache or None (fresh). Returns (y [b, t, d], new cache)."""
        if x.ndim != 3:
            raise ValueError(f"x must be [b, t, d], got shape {x.shape}")
        b, t, _ = x.shape
        fresh = state is None
        if fresh:
            state = self.init_state(b)
        positions = state.length + jnp.arange(t, dtype=jnp.int32)  # [t]
        q, k, v = self.project(x, positions)
        if fresh:  # nothing cached: attend within the input only
            keys, values, k_pos = k, v, positions
        else:
            keys = jnp.concatenate([state.k, k], axis=1)
            values = jnp.concatenate([state.v, v], axis=1)
            k_pos = jnp.concatenate([state.pos, positions])
        persistent = {}
        if self.num_persistent:
            persistent = {
                "persistent_k": self.persistent_k[...],
                "persistent_v": self.persistent_v[...],
            }
        o = causal_attention(
            q, keys, values, q_pos=positions, k_pos=k_pos, window=self.window, **persistent
        )
        y = matmul(o.reshape(b, t, -1), self.wo.kernel[...])
        # Only the last cache_len tokens can survive in the ring; writing fewer avoids duplicate
        # scatter indices.
        keep = min(t, self.cache_len)
        slots = positions[t - keep :] % self.cache_len
        new_state = KVCache(
            k=state.k.at[:, slots].set(k[:, t - keep :].astype(state.k.dtype)),
            v=state.v.at[:, slots].set(v[:, t - keep :].astype(state.v.dtype)),
            pos=state.pos.at[slots].set(positions[t - keep :]),
            length=state.length + t,
        )
        return y, new_state
