"""Training on retrieval tasks: next-token loss plus a weighted loss on the answer tokens.

Used by `experiments/niah.py` (S-NIAH in natural-text haystacks) and `experiments/recall.py`
(multi-query associative recall). The loss of a batch with answer mask m is

    lm_weight · mean_t CE_t + answer_weight · Σ_t m_t CE_t / Σ_t m_t,

with CE_t the next-token cross-entropy; the metrics are that loss, both terms, the answer
per-token accuracy (argmax) and the fraction of sequences whose every answer token is right.
`answer_loss` is that loss for the library's train step (`nestlearn.train.build_train_step`:
levels, clipping, the non-finite guard).

Shapes: b batch, t tokens, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["answer_loss", "make_logits_fn"]


def answer_loss(*, answer_weight: float, lm_weight: float = 1.0):
    """`loss(model, inputs, targets, mask) -> (loss, metrics)` of the module docstring, for
    `nestlearn.train.build_train_step(..., loss=answer_loss(...))`.

    inputs, targets [b, t] int32; mask [b, t] bool (the answer tokens). The metrics are `lm`,
    `answer`, `exact` and `byte_acc`.
    """

    def loss(model: nnx.Module, inputs: jax.Array, targets: jax.Array, mask: jax.Array):
        logits, _ = model(inputs)  # [b, t, V]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [b, t]
        lm = ce.mean()
        answer = (ce * mask).sum() / jnp.maximum(mask.sum(), 1)
        right = (jnp.argmax(logits, axis=-1) == targets) & mask  # [b, t]
        metrics = {
            "lm": lm,
            "answer": answer,
            "exact": jnp.mean(jnp.all(right | ~mask, axis=1)),
            "byte_acc": right.sum() / jnp.maximum(mask.sum(), 1),
        }
        return lm_weight * lm + answer_weight * answer, metrics

    return loss


def make_logits_fn(graphdef: nnx.GraphDef):
    """Jitted `logits_fn(params, rest, inputs) -> logits [b, t, V]` of a fresh sequence."""

    @jax.jit
    def logits_fn(params: Any, rest: Any, inputs: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(inputs)[0]

    return logits_fn
