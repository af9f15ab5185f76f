"""Titans blocks (LMM, MAC, MAG, MAL) and the DeltaNet / Gated DeltaNet baselines, registered.

All blocks are pre-norm residual (Titans §4.4: residual connections in all blocks;
docs/SEMANTICS.md §6.1) and end with a SwiGLU feed-forward sub-layer, x ← x + SwiGLU(RMSNorm(x)).
The matrix mixers come from `nestlearn.models.mixers`; Titans' memory (`TitansMemory`, its
`memory` sub-config and gates) from `nestlearn.models.titans_mixer`.

- `linear_attention`, `deltanet`, `gated_deltanet` (GDN §3.4): x ← x + Mixer(RMSNorm(x)),
  Mixer = `LinearAttention` / `DeltaNet` / `GatedDeltaNet`.
- `titans_lmm` (Titans §4, "LMM"): the long-term memory alone, x ← x + `TitansMemory`(RMSNorm(x)).
- `titans_mac`, memory as context (Titans Eqs. 21–25): the sequence is cut into segments of
  C = `chunk_size` tokens. For segment s with memory M_{s−1} (the memory after segment s − 1):
  read h = M*_{s−1}(q) with q = SiLU(x W_Q) ℓ2-normalised, without writing; attend with causal
  attention (sliding-window when `window` > 0) over [persistent ‖ h ‖ segment], y = Attn(·) (the
  retrieved token h_j sits at the position of x_j, so token i sees h_j and x_j for j ≤ i only:
  causal for language modelling);
  write the memory with the attention output, M_s = M_{s−1}(y) (one chunk of Titans Eqs. 13–18 with
  k, v from y), and output o = y ⊗ M*(y), where M*(y) reads the segment-start memory (the causal
  reading of Titans Eq. 25, docs/SEMANTICS.md §5.2). Attention never crosses a segment boundary; the
  memory is the only path between segments.
- `titans_mag`, memory as gate (Titans Eqs. 26–28): y = SWA*(x) (sliding-window attention with
  persistent tokens) and m = LMM(x) on the same normalised input, o = RMSNorm(y) ⊙ σ(RMSNorm(m))
  (both branches normalised with learned vector weights, then the gate). The memory branch gets no
  persistent prefix: writing input-independent tokens first only re-parametrises the meta-learned
  initial memory.
- `titans_mal`, memory as layer (Titans Eqs. 29–31): x ← x + LMM(RMSNorm(x)), then
  x ← x + SWA*(RMSNorm(x)).

`kernel_impl` (`nestlearn.models.mixers` module docstring) selects the memory implementation of
every block: the matrix mixers run on `nestlearn.kernels.gated_delta`, the Titans memory (LMM,
MAC, MAG, MAL) with its default 2-layer SiLU MLP on `nestlearn.kernels.mlp_memory`; "pallas" with
`memory.depth` 1 (or `stop_gradient_writes`) is rejected at construction. Softmax attention
(MAC/MAG/MAL) is XLA whatever `kernel_impl` says.

`memory_writes` False keeps every memory at its initial state (docs/SEMANTICS.md §3): the matrix
mixers read S_0 q = 0 on fresh sequences, the Titans memory (LMM, MAG, MAL, and MAC's segment
reads h and M*(y)) reads its meta-learned initial weights; attention, conv and gates run as before.

Shapes: b batch, t tokens, h heads, d model width, d_h head width, C segment length.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from nestlearn.memory import titans as titans_lib
from nestlearn.memory.architectures import apply_heads
from nestlearn.memory.instruments import MemoryStats, chunk_stats
from nestlearn.models import instruments
from nestlearn.models.attention import Attention, KVCache, causal_attention
from nestlearn.models.layers import (
    RMSNorm,
    SwiGLU,
    compute_dtype,
    l2_normalize,
    matmul,
    mlp_hidden_size,
)
from nestlearn.models.mixers import (
    ChunkStream,
    DeltaNet,
    GatedDeltaNet,
    LinearAttention,
    Mixer,
    MixerState,
    broadcast_batch,
    chunk_aligned,
    gate_bias_init,
    param_tree,
    param_values,
)
from nestlearn.models.registry import attention_config, base_config, register
from nestlearn.models.titans_mixer import (
    TitansGating,
    TitansMemory,
    check_titans_kernel,
    run_titans_memory,
    titans_arch,
    titans_inputs,
    titans_memory_config,
    titans_record,
)


def _head_dim(config: ml_collections.ConfigDict) -> int:
    return config.head_dim or config.d_model // config.num_heads


def _mixer_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return dict(
        num_heads=config.num_heads,
        head_dim=_head_dim(config),
        chunk_size=config.chunk_size,
        dtype=config.dtype,
        writes=config.memory_writes,
    )


def _swa(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Attention:
    """Sliding-window attention with persistent tokens (Titans Eqs. 19, 26, 29)."""
    return Attention.from_config(config, rngs=rngs)


class _FeedForward(nnx.Module):
    """x + SwiGLU(RMSNorm(x)), the feed-forward sub-layer every block ends with."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = config.d_model
        self.norm = RMSNorm(d)
        self.mlp = SwiGLU(
            d, mlp_hidden_size(d, config.mlp_ratio), dtype=compute_dtype(config.dtype), rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.mlp(self.norm(x)).astype(x.dtype)


class MixerBlock(nnx.Module):
    """x ← x + Mixer(RMSNorm(x)), then the SwiGLU sub-layer; `mixer_cls` set by subclasses."""

    mixer_cls: type[Mixer] = Mixer
    in_context_memory = True  # the mixer's memory (registry: block protocol)

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(config.d_model)
        self.mixer = self.make_mixer(config, rngs=rngs)
        self.ffn = _FeedForward(config, rngs=rngs)

    def make_mixer(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> Mixer:
        """Builds the mixer of a model config."""
        return self.mixer_cls(
            config.d_model, kernel_impl=config.kernel_impl, **_mixer_kwargs(config), rngs=rngs
        )

    def init_state(self, batch_size: int) -> MixerState:
        """The mixer state of `batch_size` fresh sequences."""
        return self.mixer.init_state(batch_size)

    def __call__(self, x: jax.Array, state: MixerState | None) -> tuple[jax.Array, MixerState]:
        """Args: x [b, t, d]; state or None. Returns (y [b, t, d], new state)."""
        h, state = self.mixer(self.norm(x), state)
        return self.ffn(x + h.astype(x.dtype)), state


class LinearAttentionBlock(MixerBlock):
    """Linear-attention baseline block: `LinearAttention` mixer + SwiGLU (GDN §3.4 layout)."""

    mixer_cls = LinearAttention


class DeltaNetBlock(MixerBlock):
    """DeltaNet baseline block: `DeltaNet` mixer + SwiGLU (GDN §3.4 macro-architecture)."""

    mixer_cls = DeltaNet


class GatedDeltaNetBlock(MixerBlock):
    """Gated DeltaNet baseline block: `GatedDeltaNet` mixer + SwiGLU (GDN §3.4)."""

    mixer_cls = GatedDeltaNet

    def make_mixer(self, config, *, rngs):
        return GatedDeltaNet(
            config.d_model,
            alpha_bias=config.alpha_bias,
            kernel_impl=config.kernel_impl,
            **_mixer_kwargs(config),
            rngs=rngs,
        )


class TitansLMMBlock(MixerBlock):
    """Titans (LMM): the neural long-term memory as the mixer, + SwiGLU (Titans §4)."""

    mixer_cls = TitansMemory

    def make_mixer(self, config, *, rngs):
        return TitansMemory(
            config.d_model,
            memory=config.memory,
            kernel_impl=config.kernel_impl,
            **_mixer_kwargs(config),
            rngs=rngs,
        )


def _gate(norm_y: RMSNorm, norm_m: RMSNorm, y: jax.Array, m: jax.Array) -> jax.Array:
    """y ⊗ m of Titans MAC/MAG: RMSNorm(y) ⊙ σ(RMSNorm(m)) (Titans Eqs. 25, 28)."""
    return norm_y(y) * jax.nn.sigmoid(norm_m(m).astype(jnp.float32)).astype(y.dtype)


class MAGBlock(nnx.Module):
    """Titans MAG: gated sliding-window attention and long-term memory branches (Eqs. 26–28)."""

    in_context_memory = True

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = config.d_model
        self.norm = RMSNorm(d)
        self.attn = _swa(config, rngs=rngs)
        self.memory = TitansMemory(
            d,
            memory=config.memory,
            kernel_impl=config.kernel_impl,
            **_mixer_kwargs(config),
            rngs=rngs,
        )
        self.norm_y = RMSNorm(d)
        self.norm_m = RMSNorm(d)
        self.ffn = _FeedForward(config, rngs=rngs)

    def init_state(self, batch_size: int) -> tuple[KVCache, MixerState]:
        """(KV cache, memory state) of `batch_size` fresh sequences."""
        return self.attn.init_state(batch_size), self.memory.init_state(batch_size)

    def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Args: x [b, t, d]; state (cache, memory) or None. Returns (y [b, t, d], state)."""
        cache, memory = (None, None) if state is None else state
        h = self.norm(x)
        y, cache = self.attn(h, cache)
        m, memory = self.memory(h, memory)
        x = x + _gate(self.norm_y, self.norm_m, y, m).astype(x.dtype)
        return self.ffn(x), (cache, memory)


class MALBlock(nnx.Module):
    """Titans MAL: long-term memory layer, then sliding-window attention (Eqs. 29–31)."""

    in_context_memory = True

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = config.d_model
        self.memory_norm = RMSNorm(d)
        self.memory = TitansMemory(
            d,
            memory=config.memory,
            kernel_impl=config.kernel_impl,
            **_mixer_kwargs(config),
            rngs=rngs,
        )
        self.attn_norm = RMSNorm(d)
        self.attn = _swa(config, rngs=rngs)
        self.ffn = _FeedForward(config, rngs=rngs)

    def init_state(self, batch_size: int) -> tuple[MixerState, KVCache]:
        """(memory state, KV cache) of `batch_size` fresh sequences."""
        return self.memory.init_state(batch_size), self.attn.init_state(batch_size)

    def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Args: x [b, t, d]; state (memory, cache) or None. Returns (y [b, t, d], state)."""
        memory, cache = (None, None) if state is None else state
        m, memory = self.memory(self.memory_norm(x), memory)
        x = x + m.astype(x.dtype)
        y, cache = self.attn(self.attn_norm(x), cache)
        return self.ffn(x + y.astype(x.dtype)), (memory, cache)


class MACBlock(nnx.Module):
    """Titans MAC: memory as context, segment by segment (Titans Eqs. 21–25; module docstring).

    The state is a `ChunkStream` over segments: the memory after the last complete segment and the
    normalised inputs of the current segment so far, which the next call recomputes (attention is
    segment-local, so nothing else needs caching).
    """

    FORGET_BIAS = TitansMemory.FORGET_BIAS
    in_context_memory = True

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = config.d_model
        self.num_heads = config.num_heads
        self.head_dim = _head_dim(config)
        self.segment = config.chunk_size
        self.d_model = d
        self.dtype = compute_dtype(config.dtype)
        inner = self.num_heads * self.head_dim
        self.norm = RMSNorm(d)
        self.attn = Attention(
            d,
            num_heads=config.num_heads,
            head_dim=self.head_dim,
            max_len=self.segment,
            num_kv_heads=config.num_kv_heads,
            window=config.window,
            num_persistent=config.num_persistent,
            rope_theta=config.rope_theta,
            dtype=config.dtype,
            rngs=rngs,
        )
        self.read_q = nnx.Linear(d, inner, use_bias=False, rngs=rngs)  # q = x W_Q (Eq. 21)
        self.read_out = nnx.Linear(inner, d, use_bias=False, rngs=rngs)  # h tokens → width d
        self.write_qkv = nnx.Linear(d, 3 * inner, use_bias=False, rngs=rngs)  # from y
        self.write_gates = nnx.Linear(
            d,
            3 * self.num_heads,
            use_bias=True,
            kernel_init=nnx.initializers.normal(0.02),
            bias_init=gate_bias_init((0.0, self.FORGET_BIAS, 0.0), self.num_heads),
            rngs=rngs,
        )
        self.memory_out = nnx.Linear(inner, d, use_bias=False, rngs=rngs)
        self.arch = titans_arch(config.memory, self.head_dim)
        self.gating = TitansGating.from_config(config.memory, self.segment)
        self.stop_gradient_writes = bool(config.memory.stop_gradient_writes)
        self.writes = bool(config.memory_writes)
        params = self.arch.init(
            rngs.params(), heads=self.num_heads, d_in=self.head_dim, d_out=self.head_dim
        )
        self.kernel_impl = check_titans_kernel(config.kernel_impl, config.memory, self.arch, params)
        self.memory_params = param_tree(params)
        self.norm_y = RMSNorm(d)
        self.norm_m = RMSNorm(d)
        self.ffn = _FeedForward(config, rngs=rngs)

    def initial_memory(self, batch_size: int) -> titans_lib.TitansState:
        """Meta-learned initial memory broadcast over the batch, zero momentum."""
        weights = broadcast_batch(param_values(self.memory_params), batch_size)
        return titans_lib.TitansState(weights, jax.tree.map(jnp.zeros_like, weights))

    def init_state(self, batch_size: int) -> ChunkStream:
        """The state of `batch_size` fresh sequences."""
        pending = jnp.zeros((batch_size, self.segment, self.d_model), self.dtype)
        return ChunkStream(self.initial_memory(batch_size), pending, jnp.zeros((), jnp.int32))

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:2], self.num_heads, self.head_dim)

    def segment_step(
        self, memory: titans_lib.TitansState, x: jax.Array, *, with_inputs: bool = False
    ) -> tuple[jax.Array, titans_lib.TitansState]:
        """One segment (or its causal prefix): x [b, c, d] normalised, c <= C.

        Returns (o [b, c, d], memory after writing the segment), and with `with_inputs` the
        memory's `TitansInputs` of the segment third.
        """
        b, c, _ = x.shape
        x = x.astype(self.dtype)
        positions = jnp.arange(c, dtype=jnp.int32)
        # Read h = M*_{s−1}(q) without writing (Eqs. 21–22).
        q_read = l2_normalize(self._heads(jax.nn.silu(matmul(x, self.read_q.kernel[...]))))
        h = jax.vmap(lambda w, q: apply_heads(self.arch, w, q))(memory.weights, q_read)
        h_tokens = matmul(h.reshape(b, c, -1).astype(self.dtype), self.read_out.kernel[...])
        # Attention over [persistent ‖ h ‖ segment] (Eqs. 23–24); h_j sits at position j.
        q, k, v = self.attn.project(x, positions)
        _, k_h, v_h = self.attn.project(h_tokens, positions)
        persistent = {}
        if self.attn.num_persistent:
            persistent = {
                "persistent_k": self.attn.persistent_k[...],
                "persistent_v": self.attn.persistent_v[...],
            }
        o = causal_attention(
            q,
            jnp.concatenate([k_h, k], axis=1),
            jnp.concatenate([v_h, v], axis=1),
            q_pos=positions,
            k_pos=jnp.concatenate([positions, positions]),
            window=self.attn.window,
            **persistent,
        )
        y = matmul(o.reshape(b, c, -1), self.attn.wo.kernel[...])  # [b, c, d]
        # Write with y and read M*(y) at the segment start (Eq. 25, causal reading).
        qkv = jax.nn.silu(matmul(y, self.write_qkv.kernel[...])).reshape(
            b, c, 3, self.num_heads, self.head_dim
        )
        raw = matmul(y, self.write_gates.kernel[...]) + self.write_gates.bias[...].astype(y.dtype)
        gates = raw.astype(jnp.float32).reshape(b, c, 3, self.num_heads)
        xs = titans_inputs(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], gates, self.gating)
        m, memory = run_titans_memory(self, memory, xs, chunk_size=self.segment)
        m = matmul(m.reshape(b, c, -1).astype(self.dtype), self.memory_out.kernel[...])
        if with_inputs:
            return _gate(self.norm_y, self.norm_m, y, m), memory, xs
        return _gate(self.norm_y, self.norm_m, y, m), memory

    def memory_stats(self, x: jax.Array) -> dict[str, MemoryStats]:
        """Instruments of the memory on fresh sequences, x [b, t, d] normalised: `chunk_stats`
        over the segments (each one chunk of the memory)."""

        def step(start, segment):
            _, end, xs = self.segment_step(start, segment, with_inputs=True)
            return end, titans_record(self.arch, start, end, xs)

        initial = self.initial_memory(x.shape[0])
        stats = chunk_stats(step, initial, x, chunk=self.segment, weights=lambda s: s.weights)
        return {"memory": stats}

    def _run(self, memory: titans_lib.TitansState, x: jax.Array):
        """Segments of x [b, t, d] (t a multiple of C, or t < C) from `memory`."""
        b, t, d = x.shape
        if t <= self.segment:
            return self.segment_step(memory, x)
        segments = x.reshape(b, t // self.segment, self.segment, d).swapaxes(0, 1)

        def body(mem, seg):
            o, mem = self.segment_step(mem, seg)
            return mem, o

        memory, o = jax.lax.scan(body, memory, segments)
        return o.swapaxes(0, 1).reshape(b, t, -1), memory

    def __call__(self, x: jax.Array, state: ChunkStream | None) -> tuple[jax.Array, ChunkStream]:
        """Args: x [b, t, d]; state or None. Returns (y [b, t, d], new state)."""
        initial = self.initial_memory(x.shape[0]) if state is None else None
        h = self.norm(x).astype(self.dtype)
        if state is None and instruments.recording():
            instruments.record(self, self.memory_stats(h))
        o, state = chunk_aligned(self._run, h, state, chunk=self.segment, initial=initial)
        return self.ffn(x + o.astype(x.dtype)), state


def _titans_config(name: str, *, attention: bool) -> ml_collections.ConfigDict:
    config = base_config(name)
    config.chunk_size = 16  # memory chunk (MAC: segment length C)
    if attention:
        config.update(attention_config())
        config.window = 64  # sliding window of MAG/MAL; MAC attends within its segment
        config.num_persistent = 4  # persistent memory tokens N_p (Titans Eq. 19)
    config.memory = titans_memory_config()
    return config


def default_linear_attention_config() -> ml_collections.ConfigDict:
    """Default model config of `linear_attention`."""
    return base_config("linear_attention")


def default_deltanet_config() -> ml_collections.ConfigDict:
    """Default model config of `deltanet`."""
    return base_config("deltanet")


def default_gated_deltanet_config() -> ml_collections.ConfigDict:
    """Default model config of `gated_deltanet`; `alpha_bias` initialises the forget gate."""
    config = base_config("gated_deltanet")
    config.alpha_bias = GatedDeltaNet.ALPHA_BIAS
    return config


def default_titans_lmm_config() -> ml_collections.ConfigDict:
    """Default model config of `titans_lmm` (2-layer MLP memory, chunks of 16 tokens)."""
    return _titans_config("titans_lmm", attention=False)


def default_titans_mac_config() -> ml_collections.ConfigDict:
    """Default model config of `titans_mac` (segments of `chunk_size` = 64 tokens)."""
    config = _titans_config("titans_mac", attention=True)
    config.chunk_size = 64
    config.window = 0
    return config


def default_titans_mag_config() -> ml_collections.ConfigDict:
    """Default model config of `titans_mag`."""
    return _titans_config("titans_mag", attention=True)


def default_titans_mal_config() -> ml_collections.ConfigDict:
    """Default model config of `titans_mal`."""
    return _titans_config("titans_mal", attention=True)


register("linear_attention", LinearAttentionBlock, default_linear_attention_config)
register("deltanet", DeltaNetBlock, default_deltanet_config)
register("gated_deltanet", GatedDeltaNetBlock, default_gated_deltanet_config)
register("titans_lmm", TitansLMMBlock, default_titans_lmm_config)
register("titans_mac", MACBlock, default_titans_mac_config)
register("titans_mag", MAGBlock, default_titans_mag_config)
register("titans_mal", MALBlock, default_titans_mal_config)
