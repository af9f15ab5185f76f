"""Titans' neural long-term memory (LMM) as a mixer, with its `memory` sub-config and gates.

`TitansMemory` runs `nestlearn.memory.titans_memory` (Titans §3, Eqs. 8–18) inside the shared
mixer layout of `nestlearn.models.mixers` (Titans §4.4). The Titans blocks of
`nestlearn.models.titans` (LMM, MAC, MAG, MAL) use it and the pieces it is built from:

- `titans_memory_config`: the `memory` sub-config; `titans_arch`: the memory architecture it
  names (`memory.depth` 1 is a linear memory, deeper ones an MLP, Titans §3.1), with each key
  checked;
- `check_titans_kernel`: `kernel_impl` (`nestlearn.models.mixers` module docstring) checked
  against that memory. The default 2-layer SiLU MLP memory runs on `nestlearn.kernels.mlp_memory`;
  "pallas" with a memory no kernel covers (`memory.depth` 1, `stop_gradient_writes`) is rejected
  at construction;
- `TitansGating`, `titans_inputs`, `TitansInputs`: raw gates and per-head streams → the memory's
  inputs. The gates are linear projections of x with a learned bias, one scalar per token and head
  (docs/SEMANTICS.md §2): θ = (chunk_step_max/C)·sigmoid(·) (a chunk's steps sum to at most
  chunk_step_max), the forget gate α = sigmoid(·) starting near zero forgetting, and the momentum
  decay η = momentum_max·sigmoid(·) (Titans Eqs. 13–14); v is ℓ2-normalised like q and k;
- `titans_record`: the instruments' `ChunkRecord` of one chunk (`nestlearn.memory.instruments`).

The memory takes every gradient of a chunk at the chunk-start weights, so its streaming state is
a `ChunkStream` (`chunk_aligned`). With `writes` False it reads its meta-learned initial weights
with zero momentum (`nestlearn.memory.titans_memory(writes=False)`, docs/SEMANTICS.md §3).

Shapes: b batch, t tokens, h heads, d_h head width, c chunk.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from nestlearn.kernels import kernel_impl as kernel_switch
from nestlearn.memory import architectures, titans
from nestlearn.memory.instruments import ChunkRecord, half_squared_error
from nestlearn.memory.instruments import chunk_stats as _chunk_stats
from nestlearn.models.layers import l2_normalize
from nestlearn.models.mixers import (
    ChunkStream,
    Mixer,
    broadcast_batch,
    chunk_aligned,
    param_tree,
    param_values,
)


def titans_memory_config() -> ml_collections.ConfigDict:
    """The `memory` sub-config of the Titans models (LMM, MAC, MAG, MAL)."""
    return ml_collections.ConfigDict(
        {
            "depth": 2,  # MLP layers L_M of the memory (Titans §3.1); 1 is a linear memory
            "expansion": 2.0,  # hidden width of the memory MLP / head width
            "activation": "silu",  # σ of the memory MLP
            "chunk_step_max": 1.0,  # Σ θ_t over one chunk: θ_t = chunk_step_max/C · sigmoid(·)
            "momentum_max": 0.5,  # momentum decay η_t = momentum_max · sigmoid(·)
            "normalize_v": True,  # ℓ2-normalise v per head, like q and k
            "stop_gradient_writes": False,  # no backprop through the inner writes
        }
    )


def titans_arch(memory: ml_collections.ConfigDict, head_dim: int) -> architectures.MemoryArch:
    """The memory architecture of a Titans `memory` sub-config; `ValueError` names a bad key."""
    unknown = sorted(set(memory.keys()) - set(titans_memory_config().keys()))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in memory; allowed: {sorted(titans_memory_config().keys())}"
        )
    if not isinstance(memory.depth, int) or memory.depth < 1:
        raise ValueError(f"memory.depth must be an int >= 1, got {memory.depth!r}")
    for key in ("expansion", "chunk_step_max"):
        if not memory[key] > 0:
            raise ValueError(f"memory.{key} must be > 0, got {memory[key]!r}")
    if not 0 <= memory.momentum_max < 1:
        raise ValueError(f"memory.momentum_max must be in [0, 1), got {memory.momentum_max!r}")
    if memory.depth == 1:
        return architectures.matrix()
    hidden = max(1, round(memory.expansion * head_dim))
    return architectures.mlp(memory.depth, hidden, memory.activation)


def check_titans_kernel(
    kernel_impl: str, memory: ml_collections.ConfigDict, arch: architectures.MemoryArch, params: Any
) -> str:
    """Returns `kernel_impl` once checked against a Titans `memory` sub-config.

    Raises:
      ValueError: `kernel_impl` is not one of `nestlearn.kernels.kernel_impl.KERNEL_IMPLS`, or
        is "pallas" for a memory that no kernel covers (`titans.kernel_support` gives the
        reason, e.g. `memory.depth` 1).
    """
    kernel_switch.check_kernel_impl(kernel_impl)
    if kernel_impl == "pallas":
        reason = titans.kernel_support(
            arch, params, stop_gradient_writes=bool(memory.stop_gradient_writes)
        )
        if reason:
            raise ValueError(
                f"kernel_impl='pallas' with memory.depth={memory.depth}, "
                f"memory.activation={memory.activation!r}, "
                f"memory.stop_gradient_writes={memory.stop_gradient_writes}: no Pallas kernel "
                f"covers this memory: {reason}; use 'auto' or 'xla'"
            )
    return kernel_impl


class TitansInputs(NamedTuple):
    """Per-token inputs of Titans' memory (the pending part of its `ChunkStream`)."""

    q: jax.Array  # [b, t, h, d_h] queries, ℓ2-normalised
    k: jax.Array  # [b, t, h, d_h] keys, ℓ2-normalised
    v: jax.Array  # [b, t, h, d_h] values, ℓ2-normalised when the gating says so
    theta: jax.Array  # [b, t, h] step sizes θ_t
    alpha: jax.Array  # [b, t, h] forget gates α_t
    eta: jax.Array  # [b, t, h] momentum decays η_t


class TitansGating(NamedTuple):
    """How raw gates and per-head streams become Titans' memory inputs (`titans_inputs`)."""

    theta_max: float  # largest step size θ_t: chunk_step_max / C
    momentum_max: float  # largest momentum decay η_t, < 1
    normalize_v: bool  # ℓ2-normalise v per head

    @classmethod
    def from_config(cls, memory: ml_collections.ConfigDict, chunk_size: int) -> TitansGating:
        """The gating of a `memory` sub-config for chunks of `chunk_size` tokens."""
        return cls(
            float(memory.chunk_step_max) / chunk_size,
            float(memory.momentum_max),
            bool(memory.normalize_v),
        )


def titans_inputs(
    q: jax.Array, k: jax.Array, v: jax.Array, gates: jax.Array, gating: TitansGating
) -> TitansInputs:
    """Titans' memory inputs from per-head streams [b, t, h, d_h] and raw gates [b, t, 3, h].

    q and k are ℓ2-normalised (Titans §4.4), v too when `gating.normalize_v`;
    θ = theta_max·sigmoid, α = sigmoid (forget gate), η = momentum_max·sigmoid (Eqs. 13–14).
    """
    return TitansInputs(
        l2_normalize(q),
        l2_normalize(k),
        l2_normalize(v) if gating.normalize_v else v,
        gating.theta_max * jax.nn.sigmoid(gates[:, :, 0]),
        jax.nn.sigmoid(gates[:, :, 1]),
        gating.momentum_max * jax.nn.sigmoid(gates[:, :, 2]),
    )


def run_titans_memory(owner: Any, state: Any, xs: TitansInputs, *, chunk_size: int):
    """`titans_memory` over xs from `state` with the memory a Titans module owns.

    `owner` (the `TitansMemory` mixer or the MAC block) holds the memory's `arch`, its
    meta-learned initial weights `memory_params` and the switches `stop_gradient_writes`,
    `kernel_impl` and `writes`. Returns (o [b, t, h, d_h], new `TitansState`).
    """
    return titans.titans_memory(
        *xs,  # q, k, v, θ, α, η
        arch=owner.arch,
        params=param_values(owner.memory_params),
        chunk_size=chunk_size,
        initial_state=state,
        stop_gradient_writes=owner.stop_gradient_writes,
        kernel_impl=owner.kernel_impl,
        writes=owner.writes,
    )


class TitansMemory(Mixer):
    """Titans' neural long-term memory (LMM) as a mixer (Titans §3, Eqs. 8–18; §4.4 layout).

    M_t = (1 − α_t) M_{t−1} + S_t, S_t = η_t S_{t−1} − θ_t ∇‖M_{t'}(k_t) − v_t‖²; y_t = M_{t'}(q_t)
    with t' the start of t's chunk (`nestlearn.memory.titans_memory`). The initial memory weights
    [h, ...] are meta-learned `nnx.Param`s under `memory_params/`. `kernel_impl` (module
    docstring) is passed to `titans_memory`; "pallas" with a memory no kernel covers (e.g.
    `memory.depth` 1) is rejected here, at construction.

    Example:
      >>> mixer = TitansMemory(32, num_heads=2, head_dim=16, chunk_size=8, rngs=nnx.Rngs(0))
      >>> y, state = mixer(jnp.ones((2, 10, 32)))
    """

    FORGET_BIAS = -4.0
    gate_biases = (0.0, FORGET_BIAS, 0.0)  # θ, α (forget), η (momentum decay)

    def __init__(
        self,
        d_model: int,
        *,
        memory: ml_collections.ConfigDict | None = None,
        kernel_impl: str = "auto",
        rngs: nnx.Rngs,
        **kwargs,
    ):
        super().__init__(d_model, rngs=rngs, **kwargs)
        memory = titans_memory_config() if memory is None else memory
        self.arch = titans_arch(memory, self.head_dim)
        self.gating = TitansGating.from_config(memory, self.chunk_size)
        self.stop_gradient_writes = bool(memory.stop_gradient_writes)
        params = self.arch.init(
            rngs.params(), heads=self.num_heads, d_in=self.head_dim, d_out=self.head_dim
        )
        self.kernel_impl = check_titans_kernel(kernel_impl, memory, self.arch, params)
        self.memory_params = param_tree(params)

    def memory_init(self, batch_size: int) -> ChunkStream:
        vector = jnp.zeros((batch_size, self.chunk_size, self.num_heads, self.head_dim), self.dtype)
        scalar = jnp.zeros((batch_size, self.chunk_size, self.num_heads), jnp.float32)
        pending = TitansInputs(vector, vector, vector, scalar, scalar, scalar)
        return ChunkStream(self.initial_memory(batch_size), pending, jnp.zeros((), jnp.int32))

    def initial_memory(self, batch_size: int) -> titans.TitansState:
        """Meta-learned initial weights broadcast over the batch, zero momentum."""
        weights = broadcast_batch(param_values(self.memory_params), batch_size)
        return titans.TitansState(weights, jax.tree.map(jnp.zeros_like, weights))

    def run(self, state: titans.TitansState, xs: TitansInputs):
        """`titans_memory` from `state` over xs; returns (o [b, t, h, d_h], new state)."""
        return run_titans_memory(self, state, xs, chunk_size=self.chunk_size)

    def memory(self, inputs, gates, state):
        q, k, v = inputs
        xs = titans_inputs(q, k, v, gates, self.gating)
        initial = self.initial_memory(q.shape[0]) if state is None else None
        return chunk_aligned(self.run, xs, state, chunk=self.chunk_size, initial=initial)

    def memory_stats(self, inputs, gates, state):
        """`chunk_stats` of the memory, rerun chunk by chunk; None when continuing a stream."""
        if state is not None:
            return None
        xs = titans_inputs(*inputs, gates, self.gating)

        def step(start, chunk_xs):
            end = self.run(start, chunk_xs)[1]
            return end, titans_record(self.arch, start, end, chunk_xs)

        initial = self.initial_memory(xs.q.shape[0])
        stats = _chunk_stats(step, initial, xs, chunk=self.chunk_size, weights=lambda s: s.weights)
        return {"memory": stats}


def titans_record(
    arch: architectures.MemoryArch,
    start: titans.TitansState,
    end: titans.TitansState,
    xs: TitansInputs,
) -> ChunkRecord:
    """The instruments' `ChunkRecord` of one chunk of Titans' memory (`chunk_stats`).

    ½‖M(k_t) − v_t‖² at the chunk's start and end weights, θ_t as the step size and 1 − α_t (α_t
    is the forget gate) as the retention; all [b, c, h].
    """
    read = lambda state: jax.vmap(lambda w, k: architectures.apply_heads(arch, w, k))(
        state.weights, xs.k
    )
    return ChunkRecord(
        half_squared_error(read(start), xs.v),
        half_squared_error(read(end), xs.v),
        xs.theta,
        1.0 - xs.alpha,
    )
