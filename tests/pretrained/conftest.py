"""A tiny Llama GGUF file in SmolLM2's tensor naming and metadata, written with `gguf.GGUFWriter`.

Random weights, small dims (d 32, 4 query / 2 kv heads of width 8, SwiGLU 48, vocab 3 control
tokens + 256 byte symbols + a few merges); `token_embd` is stored as Q8_0 and one FFN weight as
Q4_1 so the loader's dequantisation runs as on the real checkpoint.
"""

import numpy as np
import pytest

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = ("Ġ t", "h e", "Ġt he", "i n", "Ġ a")
TINY = dict(d=32, heads=4, kv_heads=2, ffn=48, eps=1e-5, theta=10_000.0)


def _tiny_vocab() -> tuple[list[str], list[int]]:
    """Tokens (control tokens, the 256 byte-level symbols, merge results) and llama.cpp types."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merged = [m.replace(" ", "") for m in MERGES]
    tokens = list(SPECIALS) + alphabet + merged
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    return tokens, types


def write_tiny_gguf(path, *, num_layers: int = 2, tied: bool = True, seed: int = 0) -> dict:
    """Writes the tiny GGUF to `path`; returns the float32 weights written (before quantisation)."""
    import gguf

    rng = np.random.default_rng(seed)
    d, h, g, f = TINY["d"], TINY["heads"], TINY["kv_heads"], TINY["ffn"]
    dh = d // h
    tokens, types = _tiny_vocab()
    vocab = len(tokens)
    weights = {"token_embd.weight": rng.normal(0, 1.0, (vocab, d))}
    for i in range(num_layers):
        p = f"blk.{i}."
        weights[p + "attn_norm.weight"] = 1.0 + 0.1 * rng.normal(size=d)
        weights[p + "attn_q.weight"] = rng.normal(0, d**-0.5, (h * dh, d))
        weights[p + "attn_k.weight"] = rng.normal(0, d**-0.5, (g * dh, d))
        weights[p + "attn_v.weight"] = rng.normal(0, d**-0.5, (g * dh, d))
        weights[p + "attn_output.weight"] = rng.normal(0, d**-0.5, (d, h * dh))
        weights[p + "ffn_norm.weight"] = 1.0 + 0.1 * rng.normal(size=d)
        weights[p + "ffn_gate.weight"] = rng.normal(0, d**-0.5, (f, d))
        weights[p + "ffn_up.weight"] = rng.normal(0, d**-0.5, (f, d))
        weights[p + "ffn_down.weight"] = rng.normal(0, f**-0.5, (d, f))
    weights["output_norm.weight"] = 1.0 + 0.1 * rng.normal(size=d)
    if not tied:
        weights["output.weight"] = rng.normal(0, d**-0.5, (vocab, d))
    weights = {k: v.astype(np.float32) for k, v in weights.items()}

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(num_layers)
    writer.add_context_length(256)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(f)
    writer.add_head_count(h)
    writer.add_head_count_kv(g)
    writer.add_rope_freq_base(TINY["theta"])
    writer.add_layer_norm_rms_eps(TINY["eps"])
    writer.add_rope_dimension_count(dh)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    quantized = {
        "token_embd.weight": gguf.GGMLQuantizationType.Q8_0,
        "blk.0.ffn_up.weight": gguf.GGMLQuantizationType.Q4_1,
    }
    for name, w in weights.items():
        qtype = quantized.get(name)
        if qtype is None:
            writer.add_tensor(name, w)
        else:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory):
    """(path, float32 weights written) of a 2-layer tied tiny GGUF."""
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


@pytest.fixture(scope="session")
def tiny_untied_gguf(tmp_path_factory):
    """(path, float32 weights written) of a 1-layer tiny GGUF with its own output.weight."""
    path = tmp_path_factory.mktemp("gguf") / "tiny_untied.gguf"
    return path, write_tiny_gguf(path, num_layers=1, tied=False, seed=1)


@pytest.fixture(scope="session")
def tiny_vocab():
    """(tokens, token types, merges, control tokens) of the tiny GGUF's tokenizer."""
    tokens, types = _tiny_vocab()
    return tokens, types, list(MERGES), SPECIALS
