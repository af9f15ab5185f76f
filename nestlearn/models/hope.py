"""The Hope block, self-modifying Titans followed by a Continuum Memory System, and its mixer.

Eqs. 94–97 (§8.3 of arXiv 2512.24695), inside pre-norm residuals (docs/SEMANTICS.md §6.1):

    x ← x + SelfModifyingTitans(RMSNorm(x))      o_t of Eq. 94, memories written by Eq. 96
    y = CMS(x)                                   Eq. 97 (each level is x + MLP(RMSNorm(x)))

`SelfModifyingTitans` is the self-modifying memory (`nestlearn.memory.self_modifying_memory`,
Hope Eqs. 83–93) inside the shared mixer layout of `nestlearn.models.mixers`; it takes every
gradient of a chunk at the chunk-start weights, so its streaming state is a `ChunkStream` aligned
to both of its chunk sizes (`chunk_aligned`).

The self-modifying memory's options are the `self_modifying` sub-config (the fields of
`nestlearn.memory.SelfModifyingConfig`, so each ablation of Table 6 is one config switch), but for
two that come from the model config: the output-memory chunk (`memory_chunk_size`) is the model's
`chunk_size` and `writes` its `memory_writes`. `default_self_modifying_config` gives the
sub-config and `self_modifying_config` turns it and those two fields into a `SelfModifyingConfig`.
The CMS comes from the `cms` sub-config (scheduled or online mode, sequential / nested /
independent variant).

`kernel_impl`: "pallas" runs the generators' and the output memory's chunk scans on the Pallas
kernels (`self_modifying_memory(kernel_impl="pallas")`: forward and backward kernels of
`nestlearn.kernels.per_sequence`; generators too large for one Triton program stay in XLA, with
a warning) and raises a `ValueError` where none can run; "auto" and "xla" run the XLA path —
"auto" picks only kernels that have been compiled and checked on a device, and these have run in
the Pallas interpreters only.

Shapes: b batch, t tokens, h heads, d model width, d_h head width.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from nestlearn.kernels.kernel_impl import check_kernel_impl
from nestlearn.memory import self_modifying
from nestlearn.models.cms import CMS
from nestlearn.models.layers import RMSNorm
from nestlearn.models.mixers import (
    ChunkStream,
    Mixer,
    broadcast_batch,
    chunk_aligned,
    param_tree,
    param_values,
)
from nestlearn.models.registry import base_config, cms_config, register

GENERATOR_CHUNK = 32
#: The `hope` model's write rule (`self_modifying` keys that differ from `SelfModifyingConfig`).
HOPE_WRITES = {
    "chunk_size": GENERATOR_CHUNK,
    "dgd_step": "token_normalized",
    "eta_max": 4.0,
    "use_dgd": False,
    "stop_gradient_vhat": False,
    "momentum": 0.0,
    "alpha_bias_init": 7.0,
    "retention_target": "initial",
}


#: `SelfModifyingConfig` fields that come from the model config, not its `self_modifying` section.
_MODEL_FIELDS = {"memory_chunk_size": "chunk_size", "writes": "memory_writes"}


def self_modifying_config(
    sub: ml_collections.ConfigDict, memory_chunk_size: int, *, writes: bool = True
) -> self_modifying.SelfModifyingConfig:
    """`SelfModifyingConfig` from a model's `self_modifying` sub-config and two model fields.

    Args:
      sub: the `self_modifying` sub-config (`default_self_modifying_config`).
      memory_chunk_size: the model's `chunk_size`.
      writes: the model's `memory_writes`.

    Raises `ValueError` naming an unknown key or a bad value.
    """
    fields = {f for f in self_modifying.SelfModifyingConfig.__dataclass_fields__}
    allowed = fields - set(_MODEL_FIELDS)
    unknown = sorted(set(sub.keys()) - allowed)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in self_modifying; allowed: {sorted(allowed)} "
            "(memory_chunk_size is the model's chunk_size, writes its memory_writes)"
        )
    return self_modifying.SelfModifyingConfig(
        **sub.to_dict(), memory_chunk_size=memory_chunk_size, writes=writes
    )


def default_self_modifying_config() -> ml_collections.ConfigDict:
    """The `self_modifying` sub-config: the `SelfModifyingConfig` fields the model doesn't set.

    memory_chunk_size is the model's `chunk_size` and writes its `memory_writes`.
    """
    defaults = self_modifying.SelfModifyingConfig()
    fields = self_modifying.SelfModifyingConfig.__dataclass_fields__
    return ml_collections.ConfigDict(
        {f: getattr(defaults, f) for f in fields if f not in _MODEL_FIELDS}
    )


class SelfModifyingInputs(NamedTuple):
    """Per-token inputs of the self-modifying memory (the pending part of its `ChunkStream`)."""

    x: jax.Array  # [b, t, h, d_h] inputs of the generator memories M_k, M_v, M_η, M_α (, M_q)
    q: jax.Array  # [b, t, h, d_h] static queries (Eq. 83)


class SelfModifyingTitans(Mixer):
    """Self-modifying (self-referential) Titans as a mixer (Hope Eqs. 83–93, arXiv 2512.24695).

    x is projected to two per-head streams (memory input x and static query q), each through the
    short conv and SiLU; `nestlearn.memory.self_modifying_memory` generates k, v, η, α (and q when
    adaptive) from its own memories, ℓ2-normalises q and k, and writes every memory with DGD
    (Eq. 88). The meta-learned initial memories are `nnx.Param`s under `memory_params/`.
    `kernel_impl` ("xla" or "pallas") is `self_modifying_memory`'s.

    Example:
      >>> config = SelfModifyingConfig(chunk_size=4, memory_chunk_size=8)
      >>> mixer = SelfModifyingTitans(32, num_heads=2, head_dim=16, config=config,
      ...                             rngs=nnx.Rngs(0))
      >>> y, state = mixer(jnp.ones((2, 10, 32)))
    """

    num_inputs = 2

    def __init__(
        self,
        d_model: int,
        *,
        num_heads: int,
        head_dim: int,
        config: self_modifying.SelfModifyingConfig,
        dtype: str = "float32",
        kernel_impl: str = "xla",
        rngs: nnx.Rngs,
    ):
        if not isinstance(config, self_modifying.SelfModifyingConfig):
            raise ValueError(f"config must be a SelfModifyingConfig, got {type(config).__name__}")
        self.memory_config = config
        self.kernel_impl = kernel_impl
        self.align = math.lcm(config.chunk_size, config.memory_chunk_size)
        super().__init__(
            d_model,
            num_heads=num_heads,
            head_dim=head_dim,
            chunk_size=config.memory_chunk_size,
            dtype=dtype,
            writes=config.writes,
            rngs=rngs,
        )
        params = self_modifying.self_modifying_init(
            rngs.params(), heads=num_heads, dim=head_dim, config=config
        )
        self.memory_params = param_tree(params)

    def initial_memory(self, batch_size: int) -> self_modifying.SelfModifyingState:
        """Meta-learned initial memories broadcast over the batch, zero momentum."""
        params = param_values(self.memory_params)
        # The self-modifying memories are the residual MLPs {"w1", "w2"}; static k/v projections
        # ({"w"}) and the η/α biases are not part of the running state.
        memories = {n: p for n, p in params.items() if isinstance(p, dict) and "w1" in p}
        weights = broadcast_batch(memories, batch_size)
        weights = jax.tree.map(lambda a: a.astype(jnp.float32), weights)
        return self_modifying.SelfModifyingState(weights, jax.tree.map(jnp.zeros_like, weights))

    def memory_init(self, batch_size: int) -> ChunkStream:
        shape = (batch_size, self.align, self.num_heads, self.head_dim)
        pending = SelfModifyingInputs(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype))
        return ChunkStream(self.initial_memory(batch_size), pending, jnp.zeros((), jnp.int32))

    def run(self, state, xs: SelfModifyingInputs):
        """`self_modifying_memory` from `state` over xs; returns (o [b, t, h, d_h], new state)."""
        return self_modifying.self_modifying_memory(
            xs.x,
            xs.q,
            params=param_values(self.memory_params),
            config=self.memory_config,
            initial_state=state,
            kernel_impl=self.kernel_impl,
        )

    def memory(self, inputs, gates, state):
        del gates
        xs = SelfModifyingInputs(*inputs)
        initial = self.initial_memory(xs.x.shape[0]) if state is None else None
        return chunk_aligned(self.run, xs, state, chunk=self.align, initial=initial)

    def memory_stats(self, inputs, gates, state):
        """`self_modifying_memory(stats=True)` on fresh sequences: {"memory", "generators"}."""
        del gates
        if state is not None:
            return None
        xs = SelfModifyingInputs(*inputs)
        return self_modifying.self_modifying_memory(
            xs.x,
            xs.q,
            params=param_values(self.memory_params),
            config=self.memory_config,
            initial_state=self.initial_memory(xs.x.shape[0]),
            stats=True,
        )[2]


class HopeBlock(nnx.Module):
    """Hope block: self-modifying Titans → CMS (Eqs. 94–97), pre-norm residual around both.

    The state is `(mixer_state, cms_state)`; cms_state is None in scheduled mode and a
    `CMSOnlineState` in online mode.

    Example:
      >>> block = HopeBlock(default_hope_config(), rngs=nnx.Rngs(0))
      >>> y, state = block(jnp.ones((2, 8, 128)), None)
    """

    in_context_memory = True  # the self-modifying memory (registry: block protocol)

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        memory_config = self_modifying_config(
            config.self_modifying, config.chunk_size, writes=config.memory_writes
        )
        self.norm = RMSNorm(config.d_model)
        self.mixer = SelfModifyingTitans(
            config.d_model,
            num_heads=config.num_heads,
            head_dim=config.head_dim or config.d_model // config.num_heads,
            config=memory_config,
            dtype=config.dtype,
            kernel_impl="pallas" if check_kernel_impl(config.kernel_impl) == "pallas" else "xla",
            rngs=rngs,
        )
        self.cms = CMS.from_config(config, rngs=rngs)

    def init_state(self, batch_size: int) -> tuple[Any, Any]:
        """(mixer state, CMS state) of `batch_size` fresh sequences."""
        return self.mixer.init_state(batch_size), self.cms.init_state(batch_size)

    def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Args: x [b, t, d]; state (mixer, cms) or None. Returns (y [b, t, d], new state)."""
        mixer_state, cms_state = (None, None) if state is None else state
        h, mixer_state = self.mixer(self.norm(x), mixer_state)
        x = x + h.astype(x.dtype)
        y, cms_state = self.cms(x, cms_state)
        return y.astype(x.dtype), (mixer_state, cms_state)


def default_hope_config() -> ml_collections.ConfigDict:
    """Default model config of `hope`: 3-level scheduled sequential CMS, output-memory chunk 64.

    The self-modifying memory's write rule differs from the `SelfModifyingConfig` defaults so
    that the memory learns in context (docs/SEMANTICS.md §1.3 "Why the `hope` model's writes
    differ"; measured with `experiments/configs/memory_study.py`):

    * `dgd_step="token_normalized"`, `eta_max=4.0`: each token's output-layer write is Eq. 57's
      step, removing up to η‖a‖²/(1 + η‖a‖²) of its own error and contracting for any η;
    * `use_dgd=False`: no DGD erase of the input-side weight W₂, which applied token by token
      with unit keys shrinks W₂, and with it every hidden feature, towards zero;
    * `stop_gradient_vhat=False`: the inner gradient also flows through v̂ = M(v), so the step
      contracts the error M(k) − M(v) the memory actually sees; `momentum=0` (Eq. 88);
    * `alpha_bias_init=7.0`: retention α ≈ 0.999 at initialisation (~1,000-token horizon).

    The generator memories write every `GENERATOR_CHUNK` = 32 tokens (fewer sequential chunk
    steps; 8 trains about 3× slower on the CPU).
    """
    config = base_config("hope")
    config.cms = cms_config()
    config.self_modifying = default_self_modifying_config()
    config.self_modifying.update(HOPE_WRITES)
    return config


register("hope", HopeBlock, default_hope_config)
