"""Multi-query associative recall (MQAR): the in-context retrieval that S-NIAH needs, in isolation.

A sequence lists `pairs` key–value pairs, then asks `queries` of the keys again, each followed by
its value (Zoology, Arora et al. 2023):

    k_1 v_1 … k_n v_n  [gap]  q_1 a_1 … q_m a_m      (q_j one of the k_i, a_j its v_i)

A model reads the whole sequence causally and is scored on predicting each a_j at the position of
q_j: that needs a memory written at the pairs and read at the queries, nothing else (keys within
a sequence are distinct, values are drawn independently, and the queried keys come in random
order). Keys and values come from disjoint halves of the token range `[first, first + vocab)`, so
chance per answer is 1/(vocab/2) for a model that has learned where values live.

Shapes: b batch, t = 2 (pairs + queries) + gap tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["RecallBatch", "mqar_batch"]


class RecallBatch(NamedTuple):
    """A batch of MQAR sequences, split for next-token training."""

    inputs: np.ndarray  # [b, t − 1] int32
    targets: np.ndarray  # [b, t − 1] int32: inputs shifted by one
    answer_mask: np.ndarray  # [b, t − 1] bool: True where the target is a queried value


def mqar_batch(
    rng: np.random.Generator,
    *,
    batch: int,
    pairs: int,
    queries: int,
    vocab: int,
    first: int = 0,
    gap: int = 0,
) -> RecallBatch:
    """`batch` MQAR sequences of `pairs` key–value pairs and `queries` queries.

    Args:
      rng: draws keys, values and query order.
      batch: sequences.
      pairs: key–value pairs per sequence (distinct keys).
      queries: queried keys per sequence, distinct, at most `pairs`.
      vocab: tokens used: keys from [first, first + vocab // 2), values from the upper half.
      first: the first token id used (e.g. 65 for byte models to stay in printable ASCII).
      gap: filler tokens (id `first + vocab`, so the model needs `first + vocab + 1` ids) between
        the pairs and the queries: with `gap` at least a model's local reach (short conv,
        attention window), only an in-context memory can carry a pair to its query.

    Raises:
      ValueError: a non-positive size, more queries than pairs, or more pairs than keys.
    """
    if min(batch, pairs, queries, vocab) < 1 or gap < 0:
        raise ValueError(
            f"batch, pairs, queries and vocab must be >= 1 and gap >= 0, got batch={batch}, "
            f"pairs={pairs}, queries={queries}, vocab={vocab}, gap={gap}"
        )
    half = vocab // 2
    if queries > pairs or pairs > half:
        raise ValueError(
            f"need queries <= pairs <= vocab // 2, got queries={queries}, pairs={pairs}, "
            f"vocab={vocab}"
        )
    keys = np.stack([rng.permutation(half)[:pairs] for _ in range(batch)])  # [b, n] distinct
    values = rng.integers(0, vocab - half, size=(batch, pairs)) + half  # [b, n]
    order = np.stack([rng.permutation(pairs)[:queries] for _ in range(batch)])  # [b, m]
    rows = np.arange(batch)[:, None]
    context = np.stack([keys, values], axis=-1).reshape(batch, 2 * pairs)
    asked = np.stack([keys[rows, order], values[rows, order]], axis=-1).reshape(batch, 2 * queries)
    filler = np.full((batch, gap), vocab)
    tokens = (np.concatenate([context, filler, asked], axis=1) + first).astype(np.int32)  # [b, t]
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[:, 2 * pairs + gap + 1 :: 2] = True  # the answers a_j
    return RecallBatch(tokens[:, :-1], tokens[:, 1:], mask[:, 1:])
