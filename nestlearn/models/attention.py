"""Causal softmax attention with RoPE, sliding windows, persistent memory and a KV cache.

Softmax attention is the non-parametric solution of an associative-memory objective (Eqs. 62–63,
arXiv 2512.24695); limiting it to the last `window` tokens gives sliding-window attention (SWA).
Persistent memory (Titans Eq. 19) prepends N_p learned, input-independent tokens; here they enter
as learned key/value pairs that every query sees (no position, no mask), which is what prepending
them to the attention input amounts to.

Speed (XLA:CPU, the shapes of the small benchmark): a fresh sequence (no cache) takes
`blockwise_causal_attention`, which splits the queries into blocks and never computes the key
blocks above the diagonal, with RoPE tables and masks as compile-time constants; both attention
paths share one softmax attention with a custom VJP (`_attend`) whose backward keeps the
probabilities and uses the row term dO·O instead of a [t, s] reduction.

The KV cache is a ring buffer of `window` slots (SWA) or `max_len` slots (full attention). Each slot
records the absolute position of the token it holds, so masks are exact for any piece sizes; a
full-attention stream longer than `max_len` keeps the last `max_len` tokens.

Shapes: b batch, t query tokens, s key tokens, h query heads, g kv heads, d head width.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nestlearn.models.layers import accumulation_dtype, compute_dtype, matmul


class KVCache(NamedTuple):
    """Streaming state of one attention layer."""

    k: jax.Array  # [b, L, g, d] compute dtype; keys after RoPE, slot i holds position pos[i]
    v: jax.Array  # [b, L, g, d] compute dtype
    pos: jax.Array  # [L] int32; absolute position held by each slot, −1 when empty
    length: jax.Array  # [] int32; tokens seen so far


def rope(x: jax.Array, positions: jax.Array | np.ndarray, *, theta: float = 10_000.0) -> jax.Array:
    """Rotary position embedding, rotate-half convention (pairs (i, i + d/2)).

    Args:
      x: [b, t, h, d] with d even.
      positions: [t] integer positions; a numpy array makes the cos/sin tables compile-time
        constants (XLA:CPU otherwise recomputes them inside every fusion that reads them).
      theta: base of the frequencies θ^(−2i/d).
    """
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"RoPE needs an even head width, got x.shape={x.shape}")
    acc = accumulation_dtype(x.dtype)
    if isinstance(positions, np.ndarray):
        freqs = theta ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)  # [d/2]
        angles = positions.astype(np.float64)[:, None] * freqs[None, :]  # [t, d/2]
        cos, sin = (jnp.asarray(f(angles), acc) for f in (np.cos, np.sin))
    else:
        freqs = theta ** (-jnp.arange(0, d // 2, dtype=acc) * 2.0 / d)  # [d/2]
        angles = positions.astype(acc)[:, None] * freqs[None, :]  # [t, d/2]
        cos, sin = jnp.cos(angles), jnp.sin(angles)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x32 = x.astype(acc)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2 :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def default_block_size(t: int) -> int:
    """Query block of `blockwise_causal_attention` for t tokens.

    Measured on the 2-core CPU (forward + backward of b 4, h 4, d 32, same softmax core): 64 is
    fastest at t = 256 (1.6x one [t, t] block), 128 at t = 512 and 1024 (1.8x and 2.4x).
    """
    return 64 if t <= 256 else 128


@jax.custom_vjp
def _attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """o = softmax(q kᵀ + bias) v (Eq. 63), with a backward pass that keeps the probabilities.

    Args:
      q: [b, t, h, d], already scaled by 1/√d. k, v: [b, s, h, d].
      bias: [t, s] additive mask in the accumulation dtype (0 visible, −inf hidden); every row
        has a visible key.

    Returns:
      o: [b, t, h, d] in v's dtype.
    """
    return _attend_fwd(q, k, v, bias)[0]


def _attend_fwd(q, k, v, bias):
    acc = accumulation_dtype(q.dtype)
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=acc) + bias
    p = jax.nn.softmax(logits, axis=-1)  # [b, h, t, s] float32
    o = jnp.einsum("bhts,bshd->bthd", p.astype(v.dtype), v)
    return o, (q, k, v, p, o)


def _attend_bwd(residuals, do):
    """Softmax backward with the row term D_i = Σ_j P_ij dP_ij computed as dO_i · O_i.

    dS = P ⊙ (dP − D) with dP = dO Vᵀ; rowsum(P ⊙ dP) = dO · (P V) = dO · O, a [t, d]
    reduction instead of a [t, s] one (the identity FlashAttention's backward uses).
    """
    q, k, v, p, o = residuals
    acc = p.dtype
    dv = jnp.einsum("bhts,bthd->bshd", p.astype(do.dtype), do).astype(v.dtype)
    dp = jnp.einsum("bthd,bshd->bhts", do, v, preferred_element_type=acc)
    row = jnp.einsum("bthd,bthd->bht", do.astype(acc), o.astype(acc))[..., None]
    ds = p * (dp - row)  # [b, h, t, s]
    dq = jnp.einsum("bhts,bshd->bthd", ds.astype(q.dtype), k).astype(q.dtype)
    dk = jnp.einsum("bhts,bthd->bshd", ds.astype(q.dtype), q).astype(k.dtype)
    return dq, dk, dv, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _check_qkv(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")
    b, _, h, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or h % k.shape[2]:
        raise ValueError(f"incompatible q {q.shape}, k {k.shape}, v {v.shape}")


def _group_heads(
    k: jax.Array,
    v: jax.Array,
    persistent_k: jax.Array | None,
    persistent_v: jax.Array | None,
    num_heads: int,
) -> tuple[jax.Array, ...]:
    """Repeats kv heads (and persistent ones) to `num_heads` query heads (h = g·r)."""
    r = num_heads // k.shape[2]
    if r > 1:  # grouped-query attention: each kv head serves r consecutive query heads
        k, v = jnp.repeat(k, r, axis=2), jnp.repeat(v, r, axis=2)
    if persistent_k is not None:
        persistent_k = jnp.repeat(persistent_k.astype(k.dtype), r, axis=1)  # [n_p, h, d]
        persistent_v = jnp.repeat(persistent_v.astype(v.dtype), r, axis=1)
    return k, v, persistent_k, persistent_v


def _with_persistent(
    k: jax.Array, v: jax.Array, bias: jax.Array, pk: jax.Array | None, pv: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Prepends persistent keys/values [n_p, h, d] (Titans Eq. 19), always visible."""
    if pk is None:
        return k, v, bias
    b, n_p = k.shape[0], pk.shape[0]
    k = jnp.concatenate([jnp.broadcast_to(pk, (b, *pk.shape)), k], axis=1)
    v = jnp.concatenate([jnp.broadcast_to(pv, (b, *pv.shape)), v], axis=1)
    bias = jnp.concatenate([jnp.zeros((bias.shape[0], n_p), bias.dtype), bias], axis=1)
    return k, v, bias


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
    _check_qkv(q, k, v)
    t, h, d = q.shape[1:]
    if q_pos.shape != (t,) or k_pos.shape != (k.shape[1],):
        raise ValueError(
            f"q_pos {q_pos.shape} / k_pos {k_pos.shape} must be [{t}] / [{k.shape[1]}]"
        )
    k, v, pk, pv = _group_heads(k, v, persistent_k, persistent_v, h)
    acc = accumulation_dtype(q.dtype)
    visible = (k_pos[None, :] >= 0) & (k_pos[None, :] <= q_pos[:, None])  # [t, s]
    if window > 0:
        visible &= q_pos[:, None] - k_pos[None, :] < window
    # The mask enters as an additive [t, s] bias and the scale is applied to q: on XLA:CPU a
    # select over the [b, h, t, s] logits costs more than the two matmuls in the backward pass.
    bias = jnp.where(visible, 0.0, -jnp.inf).astype(acc)
    k, v, bias = _with_persistent(k, v, bias, pk, pv)
    # A query always sees itself, so no row is all −inf.
    return _attend(q * jnp.asarray(d**-0.5, q.dtype), k, v, bias).astype(q.dtype)


def blockwise_causal_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    window: int = 0,
    persistent_k: jax.Array | None = None,
    persistent_v: jax.Array | None = None,
    block_size: int = 0,
) -> jax.Array:
    """Causal self-attention of fresh sequences, skipping the key blocks no query sees.

    Equals `causal_attention` with q_pos = k_pos = 0…t−1: key j is visible to query i when
    j ≤ i and, for window > 0, i − j < window. Queries are split into blocks of `block_size`;
    the block [i, e) attends to the keys [max(0, i − window + 1), e) only, so the masked upper
    triangle beyond each block's diagonal is never computed (3/4 of the full [t, t] work at two
    blocks, ≈ 1/2 at many). The masks are compile-time constants.

    Args:
      q: [b, t, h, d]. k, v: [b, t, g, d], the keys and values of the same t tokens.
      window, persistent_k, persistent_v: as in `causal_attention`.
      block_size: query block; 0 picks `default_block_size(t)`.

    Returns:
      o: [b, t, h, d] in q's dtype.
    """
    _check_qkv(q, k, v)
    t, h, d = q.shape[1:]
    if k.shape[1] != t:
        raise ValueError(f"keys must be the queries' tokens: q {q.shape}, k {k.shape}")
    if block_size < 0 or window < 0:
        raise ValueError(f"need block_size >= 0 and window >= 0, got {block_size=}, {window=}")
    if t == 0:
        return q
    block = block_size or default_block_size(t)
    k, v, pk, pv = _group_heads(k, v, persistent_k, persistent_v, h)
    acc = np.dtype(accumulation_dtype(q.dtype))
    q = q * jnp.asarray(d**-0.5, q.dtype)
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        lo = max(0, start - window + 1) if window else 0
        rows = np.arange(start, end)[:, None]
        cols = np.arange(lo, end)[None, :]
        visible = cols <= rows
        if window:
            visible &= rows - cols < window
        bias = jnp.asarray(np.where(visible, 0.0, -np.inf).astype(acc))  # [e − i, e − lo]
        keys, values, bias = _with_persistent(k[:, lo:end], v[:, lo:end], bias, pk, pv)
        outs.append(_attend(q[:, start:end], keys, values, bias))
    return jnp.concatenate(outs, axis=1).astype(q.dtype)


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

    def project(self, x: jax.Array, positions: jax.Array | np.ndarray) -> tuple[jax.Array, ...]:
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
        if fresh:  # static positions 0…t−1: RoPE tables and masks are constants
            state = self.init_state(b)
            positions = np.arange(t, dtype=np.int32)
        else:
            positions = state.length + jnp.arange(t, dtype=jnp.int32)  # [t]
        q, k, v = self.project(x, positions)
        persistent = {}
        if self.num_persistent:
            persistent = {
                "persistent_k": self.persistent_k[...],
                "persistent_v": self.persistent_v[...],
            }
        if fresh:  # nothing cached: causal attention within the input, positions 0…t−1
            o = blockwise_causal_attention(q, k, v, window=self.window, **persistent)
        else:
            keys = jnp.concatenate([state.k, k], axis=1)
            values = jnp.concatenate([state.v, v], axis=1)
            k_pos = jnp.concatenate([state.pos, positions])
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
