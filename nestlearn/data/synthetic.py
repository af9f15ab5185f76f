"""A synthetic text corpus for smoke runs and tests (no network, learnable in a few steps).

Documents are sentences drawn from a first-order Markov chain over a small random vocabulary of
lowercase words: each word has only `branching` possible successors, so a model that learns the
chain reaches a loss far below that of the unigram distribution within a few dozen steps.
"""

from __future__ import annotations

import numpy as np

__all__ = ["synthetic_corpus"]


def synthetic_corpus(
    *, num_docs: int, doc_words: int, vocab_words: int = 24, branching: int = 3, seed: int = 0
) -> dict[str, str]:
    """Returns `num_docs` documents of `doc_words` words each, a pure function of the arguments.

    Raises:
      ValueError: a non-positive size or `branching > vocab_words`.
    """
    for arg, value in (
        ("num_docs", num_docs),
        ("doc_words", doc_words),
        ("vocab_words", vocab_words),
        ("branching", branching),
    ):
        if value < 1:
            raise ValueError(f"{arg}={value} must be >= 1")
    if branching > vocab_words:
        raise ValueError(f"branching={branching} must be <= vocab_words={vocab_words}")
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 7))) for _ in range(vocab_words)]
    successors = np.stack(
        [rng.choice(vocab_words, size=branching, replace=False) for _ in range(vocab_words)]
    )  # [vocab_words, branching]
    docs = {}
    for d in range(num_docs):
        w = int(rng.integers(vocab_words))
        out = []
        for i in range(doc_words):
            out.append(words[w])
            out.append(".\n" if i % 9 == 8 else " ")
            w = int(successors[w, rng.integers(branching)])
        docs[f"doc{d:04d}"] = "".join(out)
    return docs
