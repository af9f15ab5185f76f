"""The byte-level BPE tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).

`tokenizer.ggml.tokens` is the vocabulary (id = position), `tokenizer.ggml.merges` the BPE merges
("a b", in priority order) and `tokenizer.ggml.token_type` marks control tokens (type 3, e.g.
`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`), which are registered as special tokens so that
they are matched whole and never split. The model is a `tokenizers` BPE with the GPT-2
byte-level pre-tokenizer and decoder; for `tokenizer.ggml.pre == "smollm"` digits are first
split one by one (`Digits(individual_digits=True)`, as SmolLM2's own tokenizer.json and
llama.cpp's "smollm" pre-tokenizer do).

It follows the `nestlearn.data.Tokenizer` protocol (`vocab_size`, `encode`, `decode`, `spec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CONTROL", "GGUFTokenizer"]

CONTROL = 3  # llama.cpp token type of control (special) tokens
_DIGIT_SPLIT_PRE = ("smollm",)  # pre-tokenizers that split digits individually


class GGUFTokenizer:
    """Byte-level BPE rebuilt from GGUF tokenizer metadata.

    Example:
      >>> tok = GGUFTokenizer.from_metadata(read_gguf(path).metadata)
      >>> ids = tok.encode("The capital of France is")
      >>> tok.decode(ids)
      'The capital of France is'
    """

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        *,
        token_types: Sequence[int] = (),
        pre: str = "gpt2",
        bos_id: int | None = None,
        eos_id: int | None = None,
        chat_template: str = "",
    ):
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        tokens = list(tokens)
        if not tokens:
            raise ValueError("tokens is empty")
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"tokens holds duplicates ({len(tokens) - len(set(tokens))})")
        if token_types and len(token_types) != len(tokens):
            raise ValueError(f"token_types has {len(token_types)} entries, tokens {len(tokens)}")
        pairs = []
        for i, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2:
                raise ValueError(f"merges[{i}]={merge!r} is not two space-separated symbols")
            pairs.append((parts[0], parts[1]))
        vocab = {token: i for i, token in enumerate(tokens)}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in _DIGIT_SPLIT_PRE:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        self.special_tokens = tuple(
            tokens[i] for i, kind in enumerate(token_types) if int(kind) == CONTROL
        )
        tok.add_special_tokens(
            [AddedToken(s, special=True, normalized=False) for s in self.special_tokens]
        )
        self._tok = tok
        self.tokens = tokens
        self.pre = pre
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.chat_template = chat_template
        self.vocab_size = len(tokens)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> GGUFTokenizer:
        """Builds the tokenizer from decoded GGUF metadata (`GGUFCheckpoint.metadata`)."""
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(
                f"tokenizer.ggml.model={model!r}; only byte-level BPE ('gpt2') is supported"
            )
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in metadata:
                raise ValueError(f"GGUF metadata has no {key}")
        return cls(
            metadata["tokenizer.ggml.tokens"],
            metadata["tokenizer.ggml.merges"],
            token_types=metadata.get("tokenizer.ggml.token_type", ()),
            pre=metadata.get("tokenizer.ggml.pre", "gpt2"),
            bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
            chat_template=metadata.get("tokenizer.chat_template", ""),
        )

    def token_id(self, token: str) -> int:
        """The id of a vocabulary entry (e.g. "<|im_end|>")."""
        if token not in self._tok.get_vocab():
            raise ValueError(f"token={token!r} is not in the vocabulary")
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> np.ndarray:
        """int32 [n] ids; special tokens written in the text map to their single ids."""
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        """The text of ids (any shape, flattened)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size - 1}], got [{ids.min()}, {ids.max()}]"
            )
        return self._tok.decode(ids.tolist(), skip_special_tokens=skip_special_tokens)

    def chat_prompt(self, user: str, *, system: str | None = None) -> str:
        """A one-turn ChatML prompt, `<|im_start|>role\\ntext<|im_end|>\\n` … `assistant\\n`.

        This is the format of SmolLM2-Instruct's chat template; with `system=None` the template's
        default system message is used when it has one.
        """
        if system is None:
            marker = "'<|im_start|>system\n"
            start = self.chat_template.find(marker)
            if start >= 0:
                end = self.chat_template.find("<|im_end|>", start)
                system = self.chat_template[start + len(marker) : end]
        turns = [("system", system)] if system else []
        turns.append(("user", user))
        text = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns)
        return text + "<|im_start|>assistant\n"

    def spec(self) -> dict[str, Any]:
        return {"kind": "gguf", "vocab_size": self.vocab_size, "pre": self.pre}
