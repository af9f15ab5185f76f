"""Synthetic passkey retrieval in a natural-text haystack (docs/adapters.md, experiment (c)).

The task of Mohtashami & Jaggi (2023, "Landmark Attention") as used for long-context retrieval
(needle in a haystack): a random n-digit key is stated once in a long stretch of unrelated text and
asked for at the end. One example is, in tokens,

    haystack[:s] ‖ needle ‖ haystack[s : s + f] ‖ question ‖ " " d_1 … d_n
    needle   = " The pass key is {key}. Remember it. {key} is the pass key."
    question = " What is the pass key? The pass key is"

The targets d_1 … d_n are read at the positions of " ", d_1, …, d_{n−1} (teacher forcing: every
target position sees the true earlier digits, so "all n argmax right" equals a greedy decode of
the key). The **distance** of an example is the first target position minus the position of the
needle's last key digit: with sliding-window attention of window W (a query sees itself and the
W − 1 tokens before it) and distance ≥ W, no attention layer reads the needle directly at any
target position. SmolLM2's tokenizer splits digits one by one, so every key has n tokens and all
examples of a batch have the same length.

Shapes: b batch, t tokens, n key digits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nestlearn.data.tokenizer import Tokenizer

__all__ = [
    "NEEDLE",
    "QUESTION",
    "PasskeyBatch",
    "PasskeyPrompts",
    "min_distance",
    "min_length",
    "passkey_batch",
    "passkey_scores",
]

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


class PasskeyPrompts(NamedTuple):
    """Token layout of the fixed phrases for n-digit keys (from a tokenizer)."""

    digits: np.ndarray  # [10] int32; the token of "0" … "9"
    space: int  # the token of " " that precedes the answer digits
    needle_len: int  # tokens of the needle with an n-digit key
    needle_tail: int  # tokens of the needle after its last key digit
    question: np.ndarray  # [q] int32; the question's tokens
    num_digits: int  # n

    @classmethod
    def build(cls, tokenizer: Tokenizer, num_digits: int = 5) -> PasskeyPrompts:
        """Reads the layout off `tokenizer`; `ValueError` when digits are not single tokens."""
        if not isinstance(num_digits, int) or num_digits < 1:
            raise ValueError(f"num_digits must be an int >= 1, got {num_digits!r}")
        digits = [np.asarray(tokenizer.encode(str(i))) for i in range(10)]
        if any(d.shape != (1,) for d in digits):
            raise ValueError("the tokenizer must encode every digit 0-9 as one token")
        digits = np.asarray([int(d[0]) for d in digits], np.int32)
        key = "0" * num_digits
        answer = np.asarray(tokenizer.encode(" " + key))
        if answer.shape != (num_digits + 1,) or not np.all(answer[1:] == digits[0]):
            raise ValueError(f"the tokenizer must encode ' {key}' as ' ' + {num_digits} digits")
        needle = np.asarray(tokenizer.encode(NEEDLE.format(key=key)))
        where = np.flatnonzero(np.isin(needle, digits))
        if len(where) != 2 * num_digits:
            raise ValueError(f"the needle {NEEDLE!r} must hold the key's digits as single tokens")
        question = np.asarray(tokenizer.encode(QUESTION), np.int32)
        return cls(
            digits,
            int(answer[0]),
            len(needle),
            len(needle) - 1 - int(where[-1]),
            question,
            num_digits,
        )


class PasskeyBatch(NamedTuple):
    """A batch of passkey examples of one length."""

    tokens: np.ndarray  # [b, t] int32; the examples, ending with the key's last digit
    positions: np.ndarray  # [b, n] int32; positions whose next-token logits must give the key
    targets: np.ndarray  # [b, n] int32; the key's digit tokens
    needle: np.ndarray  # [b, n] int32; positions of the needle's second statement of the key
    distance: np.ndarray  # [b] int32; positions[:, 0] − needle[:, −1]


def min_distance(prompts: PasskeyPrompts) -> int:
    """Smallest distance: the needle's tail and the question directly follow the key."""
    return prompts.needle_tail + len(prompts.question) + 1


def min_length(prompts: PasskeyPrompts, distance: int) -> int:
    """Shortest example with the given distance (no haystack before the needle)."""
    return prompts.needle_len - 1 - prompts.needle_tail + distance + prompts.num_digits + 1


def passkey_batch(
    rng: np.random.Generator,
    haystack: np.ndarray,
    tokenizer: Tokenizer,
    prompts: PasskeyPrompts,
    *,
    length: int,
    distances: Sequence[int],
) -> PasskeyBatch:
    """Passkey examples of `length` tokens, one per entry of `distances` (see module docstring).

    Each example takes a contiguous random span of `haystack` and a uniformly random n-digit key;
    the needle is placed so that the example has the requested distance, the text before it is
    haystack too (so examples of different distances share one length).

    Args:
      rng: numpy generator (keys, haystack offsets).
      haystack: [N] int token stream of unrelated text.
      tokenizer: encodes the needle with its key.
      prompts: `PasskeyPrompts.build(tokenizer, n)`.
      length: t, tokens per example.
      distances: b ints in [min_distance(prompts), ...] with min_length(prompts, d) <= length.

    Raises:
      ValueError: a distance is too short or too long for `length`, or the haystack too short.
    """
    distances = np.asarray(distances, np.int64)
    n = prompts.num_digits
    q = len(prompts.question)
    lo = min_distance(prompts)
    if distances.ndim != 1 or len(distances) == 0:
        raise ValueError(f"distances must be a non-empty 1-D sequence, got shape {distances.shape}")
    bad = [int(d) for d in distances if d < lo or min_length(prompts, int(d)) > length]
    if bad:
        raise ValueError(
            f"distances {bad} must lie in [{lo}, {length - min_length(prompts, 0)}] for "
            f"length={length}"
        )
    fill = length - prompts.needle_len - q - n - 1  # haystack tokens per example
    haystack = np.asarray(haystack)
    if haystack.ndim != 1 or len(haystack) <= fill:
        raise ValueError(f"haystack of shape {haystack.shape} must hold more than {fill} tokens")
    answer_at = length - n - 1  # the " " before the digits: first target position
    tokens, needles = [], []
    keys = rng.integers(0, 10, (len(distances), n))
    for key, distance in zip(keys, distances):
        text = NEEDLE.format(key="".join(map(str, key)))
        needle = np.asarray(tokenizer.encode(text), np.int32)
        start = answer_at - int(distance) - (prompts.needle_len - 1 - prompts.needle_tail)
        offset = int(rng.integers(0, len(haystack) - fill))
        hay = np.asarray(haystack[offset : offset + fill], np.int32)
        answer = np.concatenate([[prompts.space], prompts.digits[key]]).astype(np.int32)
        tokens.append(np.concatenate([hay[:start], needle, hay[start:], prompts.question, answer]))
        last = start + prompts.needle_len - 1 - prompts.needle_tail
        needles.append(np.arange(last - n + 1, last + 1))
    tokens = np.stack(tokens).astype(np.int32)
    positions = np.broadcast_to(np.arange(answer_at, answer_at + n), (len(distances), n))
    needle = np.stack(needles).astype(np.int32)
    return PasskeyBatch(
        tokens=tokens,
        positions=positions.astype(np.int32),
        targets=prompts.digits[keys].astype(np.int32),
        needle=needle,
        distance=(positions[:, 0] - needle[:, -1]).astype(np.int32),
    )


def passkey_scores(logits: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Scores of the key's digits from logits [b, n, V] at the target positions.

    Returns:
      {"loss": mean cross-entropy per digit (chance over the 10 digits: ln 10 ≈ 2.30),
       "digit_accuracy": fraction of digits whose argmax over the whole vocabulary is right
       (chance 0.1 for a model that only guesses digits),
       "exact": fraction of examples with every digit right (= greedy decode of the key)}.
    """
    if logits.ndim != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {logits.shape} must be [b, n, V] with targets {targets.shape}")
    hit = jnp.argmax(logits, axis=-1) == targets
    return {
        "loss": jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets)),
        "digit_accuracy": jnp.mean(hit),
        "exact": jnp.mean(jnp.all(hit, axis=-1)),
    }
