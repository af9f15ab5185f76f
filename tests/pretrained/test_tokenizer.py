"""The GGUF-metadata tokenizer: byte-level BPE, merges, control tokens, digit splitting."""

import numpy as np
import pytest

from nestlearn.pretrained import GGUFTokenizer, load_gguf


def test_roundtrip_merges_and_specials(tiny_gguf, tiny_vocab):
    path, _ = tiny_gguf
    _, tok = load_gguf(path)
    text = "the cat in the hat said: 1234 — ok?\n<|im_end|>"
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == text
    assert tok.token_id("Ġthe") in ids.tolist()  # merges "Ġ t", then "Ġt he"
    assert tok.encode("<|im_start|>").tolist() == [tok.token_id("<|im_start|>")] == [1]
    assert tok.special_tokens == tiny_vocab[3]
    assert tok.decode(ids, skip_special_tokens=True) == text.removesuffix("<|im_end|>")
    digits = tok.encode("1234").tolist()
    assert len(digits) == 4  # smollm pre-tokenizer: one token per digit


def test_bad_metadata(tiny_vocab):
    tokens, types, merges, _ = tiny_vocab
    with pytest.raises(ValueError, match="merges"):
        GGUFTokenizer(tokens, ["a b c"], token_types=types)
    with pytest.raises(ValueError, match="token_types"):
        GGUFTokenizer(tokens, merges, token_types=types[:-1])
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model"):
        GGUFTokenizer.from_metadata({"tokenizer.ggml.model": "llama"})
    tok = GGUFTokenizer(tokens, merges, token_types=types)
    with pytest.raises(ValueError, match="ids must lie"):
        tok.decode([len(tokens)])


def test_chat_prompt(tiny_vocab):
    tokens, types, merges, _ = tiny_vocab
    template = "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}"
    tok = GGUFTokenizer(tokens, merges, token_types=types, chat_template=template)
    assert tok.chat_prompt("Hi?") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
