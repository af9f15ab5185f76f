"""The Hope block: self-modifying Titans followed by a Continuum Memory System.

Eqs. 94–97 (§8.3 of arXiv 2512.24695), inside pre-norm residuals (docs/SEMANTICS.md §6.1):

    x ← x + SelfModifyingTitans(RMSNorm(x))      o_t of Eq. 94, memories written by Eq. 96
    y = CMS(x)                                   Eq. 97 (each level is x + MLP(RMSNorm(x)))

The self-modifying memory's options are the `self_modifying` sub-config (the fields of
`nestlearn.memory.SelfModifyingConfig`, so each ablation of Table 6 is one config switch), but for
two that come from the model config: the output-memory chunk (`memory_chunk_size`) is the model's
`chunk_size` and `writes` its `memory_writes`. The CMS comes from the `cms` sub-config (scheduled
or online mode, sequential / nested / independent variant).

`kernel_impl`: the self-modifying memory has residual-MLP memories, for which `nestlearn.kernels`
provides no op (its `gated_delta` kernel covers matrix memories), so "auto" and "xla" run
`nestlearn.memory.self_modifying_memory` and "pallas" is rejected with a `ValueError` rather than
silently ignored.

Shapes: b batch, t tokens, d model width.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from nestlearn.models.cms import CMS
from nestlearn.models.layers import RMSNorm
from nestlearn.models.mixers import (
    SelfModifyingTitans,
    default_self_modifying_config,
    self_modifying_config,
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
}


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
        if config.kernel_impl == "pallas":
            raise ValueError(
                "kernel_impl='pallas': nestlearn.kernels has no op for the "
                "self-modifying memory's residual-MLP memories; use 'auto' or 'xla'"
            )
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
