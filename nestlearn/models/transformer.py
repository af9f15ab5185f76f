"""Transformer++ and Hope-Attention blocks (docs/SEMANTICS.md §6.1), registered as models.

- `transformer_pp`: pre-norm residual block, x + Attn(RMSNorm(x)), then x + SwiGLU(RMSNorm(x)),
  with RoPE attention (Llama style).
- `hope_attention`: Hope-Attention replaces Hope's self-modifying Titans with softmax attention and
  keeps the CMS in place of the MLP: x + Attn(RMSNorm(x)), then CMS (Eq. 70/74).
  With a single CMS level it is exactly the Transformer++ block.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from nestlearn.models.attention import Attention, KVCache
from nestlearn.models.cms import CMS, CMSOnlineState
from nestlearn.models.layers import RMSNorm, SwiGLU, compute_dtype, mlp_hidden_size
from nestlearn.models.registry import attention_config, base_config, cms_config, register


class TransformerBlock(nnx.Module):
    """Transformer++ block: attention then SwiGLU, each pre-norm residual.

    Example:
      >>> block = TransformerBlock(default_transformer_config(), rngs=nnx.Rngs(0))
      >>> y, cache = block(jnp.ones((2, 8, 128)), None)
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        d = config.d_model
        self.attn_norm = RMSNorm(d)
        self.attn = Attention.from_config(config, rngs=rngs)
        self.mlp_norm = RMSNorm(d)
        self.mlp = SwiGLU(
            d, mlp_hidden_size(d, config.mlp_ratio), dtype=compute_dtype(config.dtype), rngs=rngs
        )

    def init_state(self, batch_size: int) -> KVCache:
        """The attention KV cache of `batch_size` fresh sequences."""
        return self.attn.init_state(batch_size)

    def __call__(self, x: jax.Array, state: KVCache | None) -> tuple[jax.Array, KVCache]:
        """Args: x [b, t, d]; state: KV cache or None. Returns (y [b, t, d], new cache)."""
        h, cache = self.attn(self.attn_norm(x), state)
        x = x + h.astype(x.dtype)
        x = x + self.mlp(self.mlp_norm(x)).astype(x.dtype)
        return x, cache


class HopeAttentionBlock(nnx.Module):
    """Hope-Attention block: attention, then the CMS chain instead of the MLP.

    The state is `(kv_cache, cms_state)`; cms_state is None in scheduled mode and a
    `CMSOnlineState` in online mode.
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        self.attn_norm = RMSNorm(config.d_model)
        self.attn = Attention.from_config(config, rngs=rngs)
        self.cms = CMS.from_config(config, rngs=rngs)

    @classmethod
    def from_transformer(
        cls, block: TransformerBlock, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs
    ) -> HopeAttentionBlock:
        """A Hope-Attention block that starts as `block`: attention copied, CMS from its MLP.

        The CMS's level 0 copies the MLP and its norm and the other levels start as identities
        (`CMS.from_mlp`), so the new block initially computes what `block` computes (ad-hoc level
        stacking, arXiv 2512.24695 §7.3).
        """
        new = cls(config, rngs=rngs)
        new.attn_norm = nnx.clone(block.attn_norm)
        new.attn = nnx.clone(block.attn)
        cms = config.cms
        new.cms = CMS.from_mlp(
            block.mlp,
            norm=block.mlp_norm,
            periods=tuple(cms.periods),
            mode=cms.mode,
            variant=cms.variant,
            chunk_sizes=tuple(cms.chunk_sizes),
            inner_lr=cms.inner_lr,
            online_rule=cms.get("online_rule", "sgd"),
            dtype=config.dtype,
            rngs=rngs,
        )
        return new

    def init_state(self, batch_size: int) -> tuple[KVCache, CMSOnlineState | None]:
        """(KV cache, CMS state) of `batch_size` fresh sequences."""
        return self.attn.init_state(batch_size), self.cms.init_state(batch_size)

    def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Args: x [b, t, d]; state: (cache, cms_state) or None. Returns (y [b, t, d], state)."""
        cache, cms_state = (None, None) if state is None else state
        h, cache = self.attn(self.attn_norm(x), cache)
        x = x + h.astype(x.dtype)
        y, cms_state = self.cms(x, cms_state)
        return y.astype(x.dtype), (cache, cms_state)


def default_transformer_config() -> ml_collections.ConfigDict:
    """Default model config of `transformer_pp`."""
    config = base_config("transformer_pp")
    config.update(attention_config())
    return config


def default_hope_attention_config() -> ml_collections.ConfigDict:
    """Default model config of `hope_attention` (a 3-level scheduled sequential CMS)."""
    config = base_config("hope_attention")
    config.update(attention_config())
    config.cms = cms_config()
    return config


register("transformer_pp", TransformerBlock, default_transformer_config)
register("hope_attention", HopeAttentionBlock, default_hope_attention_config)
