"""Language-model metrics from a mean cross-entropy: perplexity and bits per character."""

from __future__ import annotations

import math

__all__ = ["bits_per_char", "perplexity"]


def perplexity(loss_nats: float) -> float:
    """exp(mean cross-entropy per token in nats)."""
    return math.exp(min(loss_nats, 700.0))


def bits_per_char(loss_nats: float, chars_per_token: float) -> float:
    """Bits per character: the per-token loss in bits spread over the characters of a token.

    Args:
      loss_nats: mean cross-entropy per token, in nats.
      chars_per_token: characters of text per token (1 for a char tokenizer, ≈1 for bytes of
        ASCII text, ≈3–4 for GPT-2 BPE on English).

    Raises:
      ValueError: a non-positive `chars_per_token`.
    """
    if not chars_per_token > 0:
        raise ValueError(f"chars_per_token={chars_per_token} must be > 0")
    return loss_nats / math.log(2.0) / chars_per_token
