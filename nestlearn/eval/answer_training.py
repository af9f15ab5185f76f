"""Training on retrieval tasks: next-token loss plus a weighted loss on the answer tokens.

Used by `experiments/niah.py` (S-NIAH in natural-text haystacks) and `experiments/recall.py`
(multi-query associative recall). The loss of a batch with answer mask m is

    lm_weight · mean_t CE_t + answer_weight · Σ_t m_t CE_t / Σ_t m_t,

with CE_t the next-token cross-entropy; the metrics are that loss, both terms, the answer
per-token accuracy (argmax) and the fraction of sequences whose every answer token is right.

Shapes: b batch, t tokens, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

__all__ = ["make_logits_fn", "make_train_step"]


def _loss(graphdef, params, rest, inputs, targets, mask, lm_weight, answer_weight):
    model = nnx.merge(graphdef, params, rest)
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


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    grad_clip: float,
    answer_weight: float,
    lm_weight: float = 1.0,
):
    """Jitted `step(params, opt_state, rest, inputs, targets, mask) -> (params, opt_state, m)`.

    The loss of the module docstring, global-norm clipping to `grad_clip`, then `tx` (e.g. the
    model's nested training levels). `m` holds "loss" and the metrics of the module docstring.
    """
    grad_fn = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)

    @jax.jit
    def step(params, opt_state, rest, inputs, targets, mask):
        (loss, aux), grads = grad_fn(params, rest, inputs, targets, mask, lm_weight, answer_weight)
        norm = optax.tree.norm(grads)
        scale = jnp.minimum(1.0, grad_clip / jnp.maximum(norm, 1e-12))
        grads = jax.tree.map(lambda g: g * scale, grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": loss, **aux}

    return step


def make_logits_fn(graphdef: nnx.GraphDef):
    """Jitted `logits_fn(params, rest, inputs) -> logits [b, t, V]` of a fresh sequence."""

    @jax.jit
    def logits_fn(params: Any, rest: Any, inputs: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params, rest)(inputs)[0]

    return logits_fn
