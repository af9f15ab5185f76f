"""nestlearn.models: Flax NNX language models built from registered blocks.

`available()`, `default_config(name)`, `build(config, rngs=...)`, `generate(...)`,
`count_params(...)`, `cms_level_selectors(config)` and `has_memory(config)` are the public entry
points; `register` adds a model (see `nestlearn.models.registry` for the block protocol).
"""

from nestlearn.models import hope, titans, transformer
from nestlearn.models.attention import (
    Attention,
    KVCache,
    blockwise_causal_attention,
    causal_attention,
    rope,
)
from nestlearn.models.cms import (
    CMS,
    CMSLevel,
    CMSOnlineState,
    cms_apply,
    cms_level_selectors,
    cms_online_init,
    cms_online_update,
    online_transform,
)
from nestlearn.models.generate import generate, sample_logits
from nestlearn.models.hope import HopeBlock, SelfModifyingTitans
from nestlearn.models.language_model import LanguageModel, LMState, OnlinePending, build
from nestlearn.models.layers import (
    MLP,
    OutputGate,
    RMSNorm,
    ShortConv,
    SwiGLU,
    l2_normalize,
    mlp_hidden_size,
)
from nestlearn.models.mixers import (
    ChunkStream,
    DeltaNet,
    GatedDeltaNet,
    LinearAttention,
    Mixer,
    MixerState,
    chunk_aligned,
)
from nestlearn.models.params import count_params
from nestlearn.models.registry import (
    MemoryState,
    ModelSpec,
    attention_config,
    available,
    base_config,
    cms_config,
    default_config,
    has_memory,
    register,
)
from nestlearn.models.titans import (
    DeltaNetBlock,
    GatedDeltaNetBlock,
    LinearAttentionBlock,
    MACBlock,
    MAGBlock,
    MALBlock,
    TitansLMMBlock,
)
from nestlearn.models.titans_mixer import TitansMemory
from nestlearn.models.transformer import HopeAttentionBlock, TransformerBlock

__all__ = [
    "CMS",
    "MLP",
    "Attention",
    "CMSLevel",
    "CMSOnlineState",
    "ChunkStream",
    "DeltaNet",
    "DeltaNetBlock",
    "GatedDeltaNet",
    "GatedDeltaNetBlock",
    "HopeAttentionBlock",
    "HopeBlock",
    "KVCache",
    "LMState",
    "LanguageModel",
    "LinearAttention",
    "LinearAttentionBlock",
    "MACBlock",
    "MAGBlock",
    "MALBlock",
    "MemoryState",
    "Mixer",
    "MixerState",
    "ModelSpec",
    "OnlinePending",
    "OutputGate",
    "RMSNorm",
    "SelfModifyingTitans",
    "ShortConv",
    "SwiGLU",
    "TitansLMMBlock",
    "TitansMemory",
    "TransformerBlock",
    "attention_config",
    "available",
    "base_config",
    "blockwise_causal_attention",
    "build",
    "causal_attention",
    "chunk_aligned",
    "cms_apply",
    "cms_config",
    "cms_level_selectors",
    "cms_online_init",
    "cms_online_update",
    "count_params",
    "default_config",
    "generate",
    "has_memory",
    "hope",
    "l2_normalize",
    "mlp_hidden_size",
    "online_transform",
    "register",
    "rope",
    "sample_logits",
    "titans",
    "transformer",
]
