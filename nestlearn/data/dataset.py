"""One call from the `data` section of an experiment config to tokenized train/val/test streams."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from nestlearn.data import corpora, fetch, synthetic, tokenizer

__all__ = ["Dataset", "load_dataset"]

_SEPARATOR = "\n\n"


class Dataset(NamedTuple):
    """Tokenized splits of a corpus, split by whole document."""

    tokenizer: tokenizer.Tokenizer  # encodes/decodes every split
    split: corpora.Split  # document names of each split
    train: np.ndarray  # [n_train] int32 token stream (documents joined by a blank line)
    val: np.ndarray  # [n_val] int32
    test: np.ndarray  # [n_test] int32
    chars_per_token: dict[str, float]  # split name -> characters per token (for bits per char)


def _documents(data) -> dict[str, str]:
    if data.corpus == "synthetic":
        return synthetic.synthetic_corpus(
            num_docs=data.synthetic.num_docs,
            doc_words=data.synthetic.doc_words,
            seed=data.split_seed,
        )
    cache = fetch.cache_dir(data.cache_dir or None)
    # The byte tokenizer reads a file that is not UTF-8 byte for byte; text tokenizers refuse it.
    invalid_utf8 = "escape" if data.tokenizer == "byte" else "error"
    return corpora.load_corpus(data.corpus, cache=cache, path=data.path, invalid_utf8=invalid_utf8)


def _check_lengths(data, split: corpora.Split, streams: dict[str, np.ndarray]) -> None:
    """ValueError naming a split (and its documents) too short for one window of `seq_len`.

    A split left empty on purpose (its fraction 0) is not checked, nor anything without a
    `seq_len` in `data`.
    """
    if "seq_len" not in data:
        return
    need = data.seq_len + 1
    for name, names in split._asdict().items():
        n = len(streams[name])
        fraction = {"val": "val_fraction", "test": "test_fraction"}.get(name)
        if n >= need or (fraction and data[fraction] == 0):
            continue
        where = f"data.path={data.path!r}" if data.corpus == "text_dir" else "corpus"
        docs = [f"{d}.txt" for d in names] if data.corpus == "text_dir" else list(names)
        shown = f"{docs[:8]}{' ...' if len(docs) > 8 else ''}"
        hint = f"; data.{fraction}={data[fraction]}" if fraction else ""
        raise ValueError(
            f"the {name} split of data.corpus={data.corpus!r} has {n} tokens, fewer than "
            f"data.seq_len + 1 = {need}: its {len(docs)} document(s) of the {where} are "
            f"{shown}{hint}. Add text, lower data.seq_len, or change the split fractions"
        )


def load_dataset(data) -> Dataset:
    """Loads, splits and tokenizes the corpus named by a `data` config section.

    Args:
      data: a ConfigDict with `corpus`, `path`, `cache_dir`, `tokenizer`, `val_fraction`,
        `test_fraction`, `split_seed`, `synthetic.{num_docs, doc_words}` and optionally
        `seq_len` (each split is then checked to hold one window) (see
        `nestlearn.train.config.default_config`).

    Raises:
      ValueError: an unknown corpus/tokenizer, a split that cannot be made, or a split shorter
        than one window of `data.seq_len` + 1 tokens (naming the split and its documents).
      DataError: the corpus could not be fetched or is malformed, or a file is not UTF-8 for a
        text tokenizer (naming the file and byte offset).
    """
    docs = _documents(data)
    split = corpora.split_documents(
        docs, val_fraction=data.val_fraction, test_fraction=data.test_fraction, seed=data.split_seed
    )
    texts = {
        name: _SEPARATOR.join(docs[d] for d in names) for name, names in split._asdict().items()
    }
    cache = Path(data.cache_dir) if data.cache_dir else None
    tok = tokenizer.make_tokenizer(
        data.tokenizer, text="".join(texts.values()) + _SEPARATOR, cache=cache
    )
    streams = {name: tok.encode(text) for name, text in texts.items()}
    _check_lengths(data, split, streams)
    ratio = {name: len(texts[name]) / max(1, len(streams[name])) for name in streams}
    return Dataset(tok, split, streams["train"], streams["val"], streams["test"], ratio)
