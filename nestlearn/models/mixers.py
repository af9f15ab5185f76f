"""Memory mixers: the shared mixer layout and streaming state, and the matrix-memory mixers.

This module holds what every memory mixer shares — the `Mixer` base class, its state
(`MixerState`, `ChunkStream` with `chunk_aligned`) and the parameter helpers (`gate_bias_init`,
`param_tree`, `param_values`, `broadcast_batch`) — and the mixers over a matrix memory:
`LinearAttention`, `DeltaNet` and `GatedDeltaNet`, thin NNX modules over `nestlearn.memory`.
The deep-memory mixers build on it: Titans' memory in `nestlearn.models.titans_mixer`
(`TitansMemory`), the self-modifying memory in `nestlearn.models.hope` (`SelfModifyingTitans`).

Every mixer follows the Titans §4.4 / Gated DeltaNet §3.4 layout (docs/SEMANTICS.md §6.1):

    x [b, t, d] → fused linear projection → short depthwise causal conv (window 4) → SiLU
      → per-head inputs [b, t, h, d_h] (q and k ℓ2-normalised) → per-head memory → o [b, t, h, d_h]
      → output RMSNorm ⊙ σ(x W_g) → output projection → y [b, t, d].

Data-dependent gates are linear projections of x with a learned bias, one scalar per token and head
(docs/SEMANTICS.md §2, §4): here β = sigmoid(·) (delta rules) and α = sigmoid(·) with a bias that
starts near full retention (Gated DeltaNet); Titans' θ, α and η are described in
`nestlearn.models.titans_mixer`.

The running memory is per sequence and lives in the mixer state (`MixerState`). Matrix memories
(linear attention, DeltaNet, Gated DeltaNet) are exact per token (o_t = S_t q_t), so their state is
the matrix S itself. Deep memories (Titans, self-modifying Titans) take every gradient of a chunk
at the chunk-start weights, so a chunk's writes depend on all of its tokens; their state is a
`ChunkStream`: the memory at the start of the current chunk plus the memory inputs of the chunk's
tokens seen so far, which the next call recomputes. Feeding a sequence in pieces of any length
therefore equals one call.

`kernel_impl` ("auto" | "xla" | "pallas", `nestlearn.kernels.kernel_impl`) picks where a memory
runs: "xla" is the pure-JAX memory of `nestlearn.memory`; "pallas" is the `nestlearn.kernels` op on
this platform's Pallas backend, failing loudly where it cannot run; "auto" is the op on GPU/TPU
when it covers the memory, else (always on CPU) the pure-JAX memory. Linear attention, DeltaNet and
Gated DeltaNet all run on `gated_delta`; Titans' 2-layer SiLU MLP memory on `mlp_memory`; the
linear Titans memory and the self-modifying memory have no kernel. Every path gives the same state
layout, so a stream may switch between them.

`writes` (the model config's `memory_writes`, docs/SEMANTICS.md §3) switches the in-context writes:
False keeps the memory at its initial state — a matrix memory reads o_t = S_0 q_t
(`matrix_memory.read_only`, before either path: the same on every `kernel_impl`), Titans reads
the meta-learned initial weights with zero momentum
(`nestlearn.memory.titans_memory(writes=False)`), the self-modifying memory its initial memories
(`SelfModifyingConfig.writes`) — while projections, conv, gates and output are computed as before.
It adds no parameters, so one parameter tree serves both settings.

Instruments (`nestlearn.models.instruments`): inside `capture_memory_stats` every mixer also runs
`memory_stats` and sows its `MemoryStats` — the matrix mixers from one more run of `memory` over
the doubled batch (queries k_t and k_{t+1}), Titans and the self-modifying memory from a run on
fresh sequences that reads the state at each chunk boundary (`self_modifying_memory(stats=True)`);
a chunk-parallel mixer continuing a stream records nothing. Outside it nothing of this is traced.

Shapes: b batch, t tokens, h heads, d model width, d_h head width, c chunk, g gates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from nestlearn.kernels import kernel_impl as kernel_switch
from nestlearn.kernels.gated_delta import GatedDeltaState, gated_delta
from nestlearn.memory import matrix_memory
from nestlearn.memory.instruments import MemoryStats
from nestlearn.memory.instruments import matrix_stats as _matrix_stats
from nestlearn.models import instruments
from nestlearn.models.layers import OutputGate, ShortConv, compute_dtype, l2_normalize
from nestlearn.parallel import sharded_kernel

# The kernel op, under `jax.shard_map` when a mesh is active (`nestlearn.parallel.mesh_context`).
_gated_delta = sharded_kernel(gated_delta)


class MixerState(NamedTuple):
    """Streaming state of a memory mixer."""

    conv: jax.Array  # [b, w−1, n·h·d_h] compute dtype; inputs preceding the next token (ShortConv)
    memory: Any  # matrix memories: S [b, h, d_h, d_h] float32; deep memories: a ChunkStream


class ChunkStream(NamedTuple):
    """State of a chunk-parallel deep memory between calls (see `chunk_aligned`)."""

    start: Any  # memory state at the start of the current chunk, leaves [b, ...]
    pending: Any  # memory inputs of the current chunk, leaves [b, c, ...]; the first `count` valid
    count: jax.Array  # [] int32; tokens of the current chunk already seen, 0 <= count < c


def _tree_slice(tree: Any, start: int, stop: int) -> Any:
    return jax.tree.map(lambda a: a[:, start:stop], tree)


def chunk_aligned(
    run: Callable[[Any, Any], tuple[jax.Array, Any]],
    inputs: Any,
    stream: ChunkStream | None,
    *,
    chunk: int,
    initial: Any,
) -> tuple[jax.Array, ChunkStream]:
    """Streams a chunk-parallel memory so that pieces of any length equal one call.

    `run(state, xs) -> (outputs, new_state)` runs the memory from `state` over `xs` (leaves
    [b, t', ...]) with chunk boundaries at multiples of `chunk` from the start of `xs`; each output
    may depend on its own and earlier inputs only. It is called with t' a multiple of `chunk` or
    t' < chunk. The state handed between calls is the memory at the last chunk boundary plus the
    inputs after it; a call prepends those inputs, recomputes from the boundary and keeps the state
    of the chunks it completes (`jnp.where` on the token count, so the count may be traced).

    Args:
      run: the memory, as above.
      inputs: memory inputs, leaves [b, t, ...].
      stream: the state of a previous call, or None for fresh sequences (start from `initial`).
      chunk: the alignment c (a multiple of every chunk size inside `run`).
      initial: the memory state of fresh sequences, leaves [b, ...].

    Returns:
      (outputs [b, t, ...], ChunkStream).
    """
    t = jax.tree.leaves(inputs)[0].shape[1]
    if stream is None:
        full = t // chunk * chunk
        state, outs = initial, []
        if full:
            out, state = run(state, _tree_slice(inputs, 0, full))
            outs.append(out)
        if full < t:
            outs.append(run(state, _tree_slice(inputs, full, t))[0])
        pad = full + chunk - t
        pending = jax.tree.map(
            lambda a: jnp.pad(a[:, full:], [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2)), inputs
        )
        outputs = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
        return outputs, ChunkStream(state, pending, jnp.asarray(t - full, jnp.int32))

    n = stream.count
    num = -(-(chunk - 1 + t) // chunk)  # chunks that the pending and new tokens can touch

    def buffer(pending, new):
        # One spare chunk, so that the next pending slice never runs past the end.
        buf = jnp.zeros((new.shape[0], (num + 1) * chunk, *new.shape[2:]), new.dtype)
        buf = buf.at[:, :chunk].set(pending.astype(new.dtype))
        return jax.lax.dynamic_update_slice_in_dim(buf, new, n, axis=1)

    buf = jax.tree.map(buffer, stream.pending, inputs)
    valid = n + t
    chunks = jax.tree.map(
        lambda a: a[:, : num * chunk].reshape(a.shape[0], num, chunk, *a.shape[2:]).swapaxes(0, 1),
        buf,
    )  # leaves [num, b, c, ...]

    def body(state, xs):
        index, chunk_inputs = xs
        out, new_state = run(state, chunk_inputs)
        complete = (index + 1) * chunk <= valid
        state = jax.tree.map(
            lambda new, old: jnp.where(complete, new.astype(old.dtype), old), new_state, state
        )
        return state, out

    state, outs = jax.lax.scan(body, stream.start, (jnp.arange(num, dtype=jnp.int32), chunks))
    outs = outs.swapaxes(0, 1).reshape(outs.shape[1], num * chunk, *outs.shape[3:])
    outputs = jax.lax.dynamic_slice_in_dim(outs, n, t, axis=1)
    pending = jax.tree.map(
        lambda a: jax.lax.dynamic_slice_in_dim(a, (valid // chunk) * chunk, chunk, axis=1), buf
    )
    return outputs, ChunkStream(state, pending, valid % chunk)


def gate_bias_init(biases: Sequence[float], num_heads: int):
    """Bias initialiser of a fused gate projection laid out as [g, h]."""

    def init(key, shape, dtype=jnp.float32):
        del key
        bias = jnp.repeat(jnp.asarray(biases, jnp.float32), num_heads)
        if bias.shape != tuple(shape):
            raise ValueError(f"gate bias shape {bias.shape} does not match {tuple(shape)}")
        return bias.astype(dtype)

    return init


def param_tree(tree: Any) -> nnx.Dict:
    """Nested dict of arrays → nested `nnx.Dict` of `nnx.Param`s (key paths kept)."""
    return nnx.Dict(
        {k: param_tree(v) if isinstance(v, dict) else nnx.Param(v) for k, v in tree.items()}
    )


def param_values(tree: nnx.Dict) -> dict:
    """The arrays of a nested `nnx.Dict` of `nnx.Param`s as a plain nested dict.

    Entries that are neither (`nnx.capture` adds its `__captures__` to every module) are skipped.
    """
    return {
        k: param_values(v) if isinstance(v, nnx.Dict) else v[...]
        for k, v in tree.items()
        if isinstance(v, nnx.Dict | nnx.Variable)
    }


def broadcast_batch(tree: Any, batch_size: int) -> Any:
    """Leaves [...] → [batch_size, ...] (one copy of the initial memory per sequence)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (batch_size, *a.shape)), tree)


class Mixer(nnx.Module):
    """Shared layout of the memory mixers (module docstring); subclasses supply the memory.

    Subclasses set `num_inputs` (per-head input streams after the conv, e.g. q, k, v) and
    `gate_biases` (initial bias of each gate, one gate per entry) and implement `memory_init` and
    `memory`; `memory` honours `writes` (False: the memory state is returned unchanged).
    """

    num_inputs: int = 3
    gate_biases: tuple[float, ...] = ()

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        head_dim: int,
        chunk_size: int,
        dtype: str = "float32",
        conv_window: int = 4,
        writes: bool = True,
        rngs: nnx.Rngs,
    ):
        if not isinstance(writes, bool):
            raise ValueError(f"writes must be a bool, got {writes!r}")
        self.writes = writes
        for name, value in (
            ("d_model", d_model),
            ("num_heads", num_heads),
            ("head_dim", head_dim),
            ("chunk_size", chunk_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.chunk_size = chunk_size
        self.dtype = compute_dtype(dtype)
        inner = num_heads * head_dim
        self.proj = nnx.Linear(d_model, self.num_inputs * inner, use_bias=False, rngs=rngs)
        self.conv = ShortConv(
            self.num_inputs * inner, window=conv_window, act="silu", dtype=self.dtype, rngs=rngs
        )
        if self.gate_biases:
            self.gates = nnx.Linear(
                d_model,
                len(self.gate_biases) * num_heads,
                use_bias=True,
                kernel_init=nnx.initializers.normal(0.02),
                bias_init=gate_bias_init(self.gate_biases, num_heads),
                rngs=rngs,
            )
        self.out_gate = OutputGate(
            d_model, num_heads=num_heads, head_dim=head_dim, dtype=self.dtype, rngs=rngs
        )
        self.out_proj = nnx.Linear(inner, d_model, use_bias=False, rngs=rngs)

    def features(
        self, x: jax.Array, conv_state: jax.Array | None
    ) -> tuple[tuple[jax.Array, ...], jax.Array | None, jax.Array]:
        """Per-head inputs and raw gates of x [b, t, d].

        Returns:
          (inputs: `num_inputs` arrays [b, t, h, d_h] after projection, conv and SiLU;
           gates: [b, t, g, h] float32 pre-activations, or None; new conv state).
        """
        b, t, _ = x.shape
        x = x.astype(self.dtype)
        h, conv_state = self.conv(x @ self.proj.kernel[...].astype(self.dtype), conv_state)
        h = h.reshape(b, t, self.num_inputs, self.num_heads, self.head_dim)
        inputs = tuple(h[:, :, i] for i in range(self.num_inputs))
        gates = None
        if self.gate_biases:
            raw = x @ self.gates.kernel[...].astype(self.dtype) + self.gates.bias[...].astype(
                self.dtype
            )
            gates = raw.astype(jnp.float32).reshape(b, t, len(self.gate_biases), self.num_heads)
        return inputs, gates, conv_state

    def memory_init(self, batch_size: int) -> Any:
        """The memory state of `batch_size` fresh sequences."""
        raise NotImplementedError

    def memory(
        self, inputs: tuple[jax.Array, ...], gates: jax.Array | None, state: Any
    ) -> tuple[jax.Array, Any]:
        """Runs the memory: returns (o [b, t, h, d_h], new memory state); state None is fresh."""
        raise NotImplementedError

    def memory_stats(
        self, inputs: tuple[jax.Array, ...], gates: jax.Array | None, state: Any
    ) -> dict[str, MemoryStats] | None:
        """Instruments of the memory over these inputs (`nestlearn.memory.instruments`).

        Called by `__call__` only while `nestlearn.models.instruments.recording()` (inside
        `capture_memory_stats`), with the memory state before the call; returns {memory name:
        MemoryStats}, or None where the mixer has none for this state (here: no memory).
        """
        del inputs, gates, state
        return None

    def init_state(self, batch_size: int) -> MixerState:
        """The state of `batch_size` fresh sequences."""
        return MixerState(self.conv.init_state(batch_size), self.memory_init(batch_size))

    def __call__(
        self, x: jax.Array, state: MixerState | None = None
    ) -> tuple[jax.Array, MixerState]:
        """Args: x [b, t, d]; state or None (fresh). Returns (y [b, t, d], new state)."""
        if x.ndim != 3:
            raise ValueError(f"x must be [b, t, d], got shape {x.shape}")
        conv_state, memory_state = (None, None) if state is None else state
        inputs, gates, conv_state = self.features(x, conv_state)
        if instruments.recording():
            instruments.record(self, self.memory_stats(inputs, gates, memory_state))
        o, memory_state = self.memory(inputs, gates, memory_state)
        y = self.out_gate(o.astype(self.dtype), x) @ self.out_proj.kernel[...].astype(self.dtype)
        return y, MixerState(conv_state, memory_state)


class _MatrixMixer(Mixer):
    """A mixer over a matrix memory S [b, h, d_h, d_h] that is exact per token.

    Every such memory is a case of the gated delta rule with momentum that
    `nestlearn.kernels.gated_delta` computes; `kernel_impl` (module docstring) chooses between it
    and the `nestlearn.memory.matrix_memory` form, `kernel_backend` resolves the choice.
    """

    def __init__(self, d_model: int, *, kernel_impl: str = "auto", **kwargs):
        self.kernel_impl = kernel_switch.check_kernel_impl(kernel_impl)
        super().__init__(d_model, **kwargs)

    def kernel_backend(self) -> kernel_switch.Backend | None:
        """The `gated_delta` backend for `kernel_impl`, or None for `nestlearn.memory`."""
        return kernel_switch.resolve(
            self.kernel_impl, what=type(self).__name__, chunk_size=self.chunk_size
        )

    def memory_init(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.num_heads, self.head_dim, self.head_dim), jnp.float32)

    def qkv(self, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k ℓ2-normalised per head, v as is (Titans §4.4)."""
        q, k, v = inputs
        return l2_normalize(q), l2_normalize(k), v

    def read_only(self, q, k, v, state):
        """The memory with `writes` off: o_t = S_0 q_t, S unchanged (`matrix_memory.read_only`)."""
        return matrix_memory.read_only(q, k, v, initial_state=state)

    def step_and_retention(self, gates: jax.Array | None, like: jax.Array):
        """(β_t, α_t) [b, t, h] float32 of the instruments: linear attention writes with 1, 1."""
        del gates
        ones = jnp.ones(like.shape[:3], jnp.float32)
        return ones, ones

    def memory_stats(self, inputs, gates, state):
        """`matrix_stats` from one run of `memory` over the batch doubled: queries k_t, k_{t+1}."""
        _, k, v = inputs
        b = k.shape[0]
        twice = lambda a: None if a is None else jnp.concatenate([a, a])
        following = jnp.roll(k, -1, axis=1)  # the query at t is k_{t+1}; the last is unused
        reads, final = self.memory(
            (jnp.concatenate([k, following]), twice(k), twice(v)), twice(gates), twice(state)
        )
        _, k_n, v_n = self.qkv(inputs)
        eta, alpha = self.step_and_retention(gates, k)
        start = self.memory_init(b) if state is None else state
        stats = _matrix_stats(
            k_n,
            v_n,
            reads[:b],
            reads[b:],
            initial_state=start,
            final_state=final[:b],
            eta=eta,
            alpha=alpha,
        )
        return {"memory": stats}


class LinearAttention(_MatrixMixer):
    """Linear attention, S_t = S_{t−1} + v_t k_tᵀ, o_t = S_t q_t (Eqs. 14–18, arXiv 2512.24695).

    On the kernel path this is `gated_delta` with α ≡ 0, β ≡ 1 and momentum decay m ≡ 1:
    e_t = v_t (the erase reads 0·S), Z_t = Z_{t−1} + v_t k_tᵀ and S_t = 0·S_{t−1} + Z_t = Z_t,
    exactly linear attention with the state carried as both S and Z.

    Example:
      >>> mixer = LinearAttention(32, num_heads=2, head_dim=16, chunk_size=16, rngs=nnx.Rngs(0))
      >>> y, state = mixer(jnp.ones((2, 10, 32)))
    """

    def memory(self, inputs, gates, state):
        del gates
        q, k, v = self.qkv(inputs)
        backend = self.kernel_backend()
        if not self.writes:
            return self.read_only(q, k, v, state)
        if backend is None:
            return matrix_memory.linear_attention(
                q, k, v, chunk_size=self.chunk_size, initial_state=state
            )
        s0 = self.memory_init(q.shape[0]) if state is None else state
        ones = jnp.ones(q.shape[:3], jnp.float32)
        o, final = _gated_delta(
            q,
            k,
            v,
            jnp.zeros_like(ones),
            ones,
            momentum=ones,
            chunk_size=self.chunk_size,
            initial_state=GatedDeltaState(s0, s0),
            **backend.kwargs(),
        )
        return o, final.memory


class DeltaNet(_MatrixMixer):
    """DeltaNet, S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, β_t = sigmoid(x_t w_β + b_β).

    Eq. 65, arXiv 2512.24695; GDN §3.1. On the kernel path: `gated_delta` with α ≡ 1. Example:
      >>> mixer = DeltaNet(32, num_heads=2, head_dim=16, chunk_size=16, rngs=nnx.Rngs(0))
      >>> y, state = mixer(jnp.ones((2, 10, 32)))
    """

    gate_biases = (0.0,)  # β

    def step_and_retention(self, gates, like):
        beta = jax.nn.sigmoid(gates[:, :, 0])
        return beta, jnp.ones_like(beta)

    def memory(self, inputs, gates, state):
        q, k, v = self.qkv(inputs)
        beta = jax.nn.sigmoid(gates[:, :, 0])
        backend = self.kernel_backend()
        if not self.writes:
            return self.read_only(q, k, v, state)
        if backend is None:
            return matrix_memory.delta_rule(
                q, k, v, beta, chunk_size=self.chunk_size, initial_state=state
            )
        return _gated_delta(
            q,
            k,
            v,
            jnp.ones_like(beta),
            beta,
            chunk_size=self.chunk_size,
            initial_state=state,
            **backend.kwargs(),
        )


class GatedDeltaNet(_MatrixMixer):
    """Gated DeltaNet, S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ (GDN Eq. 10).

    α_t = sigmoid(x_t w_α + b_α) with b_α = `alpha_bias` (default `ALPHA_BIAS` = 7: α ≈ 0.999 at
    init, a memory horizon of about 1,000 tokens; 4 gives α ≈ 0.98, about 50 tokens, too short to
    learn retrieval: docs/SEMANTICS.md §4), β_t = sigmoid(·).
    `kernel_impl` (module docstring): "xla" is `nestlearn.memory.gated_delta_rule`, the kernel
    path `nestlearn.kernels.gated_delta`.

    Example:
      >>> mixer = GatedDeltaNet(32, num_heads=2, head_dim=16, chunk_size=16, rngs=nnx.Rngs(0))
      >>> y, state = mixer(jnp.ones((2, 10, 32)))
    """

    ALPHA_BIAS = 7.0
    gate_biases = (ALPHA_BIAS, 0.0)  # α, β

    def __init__(self, d_model: int, *, alpha_bias: float = ALPHA_BIAS, **kwargs):
        self.gate_biases = (float(alpha_bias), 0.0)
        super().__init__(d_model, **kwargs)

    def step_and_retention(self, gates, like):
        return jax.nn.sigmoid(gates[:, :, 1]), jax.nn.sigmoid(gates[:, :, 0])

    def memory(self, inputs, gates, state):
        q, k, v = self.qkv(inputs)
        alpha = jax.nn.sigmoid(gates[:, :, 0])
        beta = jax.nn.sigmoid(gates[:, :, 1])
        backend = self.kernel_backend()
        if not self.writes:
            return self.read_only(q, k, v, state)
        if backend is None:
            return matrix_memory.gated_delta_rule(
                q, k, v, alpha, beta, chunk_size=self.chunk_size, initial_state=state
            )
        return _gated_delta(
            q,
            k,
            v,
            alpha,
            beta,
            chunk_size=self.chunk_size,
            initial_state=state,
            **backend.kwargs(),
        )
