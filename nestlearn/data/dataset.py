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
    return corpora.load_corpus(data.corpus, cache=cache, path=data.path)


def load_dataset(data) -> Dataset:
    """Loads, splits and tokenizes the corpus named by a `data` config section.

    Args:
      data: a ConfigDict with `corpus`, `path`, `cache_dir`, `tokenizer`, `val_fraction`,
        `test_fraction`, `split_seed` and `synthetic.{num_docs, doc_words}` (see
        `nestlearn.train.config.default_config`).

    Raises:
      ValueError: an unknown corpus/tokenizer or a split that cannot be made.
      DataError: the corpus could not be fetched or is malformed.
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
    ratio = {name: len(texts[name]) / max(1, len(streams[name])) for name in streams}
    return Dataset(tok, split, streams["train"], streams["val"], streams["test"], ratio)
