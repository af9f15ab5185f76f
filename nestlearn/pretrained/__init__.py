"""nestlearn.pretrained: pretrained Llama-family checkpoints (GGUF) and adapter surgery.

`load_gguf(path) -> (model, tokenizer)` turns a GGUF file (e.g. SmolLM2-135M-Instruct, fetched by
`fetch_smollm2()`) into a nestlearn `LanguageModel`; `llama_forward` is an independent numpy
forward pass of the same weights; `nestlearn.pretrained.adapters` converts blocks to
Hope-Attention (CMS from the pretrained MLPs) or adds gated Titans / self-modifying memory
pathways, `nestlearn.pretrained.lora` is the low-rank baseline and `nestlearn.pretrained.passkey`
the synthetic passkey-retrieval task (experiment c of docs/adapters.md).
"""

from nestlearn.pretrained.gguf_loader import (
    GGUFCheckpoint,
    LlamaHParams,
    fetch_smollm2,
    half_to_interleaved,
    interleaved_to_half,
    llama_config,
    load_gguf,
    model_from_checkpoint,
    read_gguf,
    set_norm_eps,
)
from nestlearn.pretrained.reference import llama_forward
from nestlearn.pretrained.tokenizer import GGUFTokenizer

__all__ = [
    "GGUFCheckpoint",
    "GGUFTokenizer",
    "LlamaHParams",
    "fetch_smollm2",
    "half_to_interleaved",
    "interleaved_to_half",
    "llama_config",
    "llama_forward",
    "load_gguf",
    "model_from_checkpoint",
    "read_gguf",
    "set_norm_eps",
]
