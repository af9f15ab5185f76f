"""Elastic Weight Consolidation (Kirkpatrick et al. 2017): a quadratic anchor to old tasks.

After a task, the diagonal empirical Fisher F = E_(x,y)[(∂ log p(y|x) / ∂θ)²] at the trained
parameters θ* measures how much each parameter mattered; training the next task adds
½ λ Σ_i F_i (θ_i − θ*_i)² to its loss. The continual-learning baseline of
`experiments/continual_fmnist.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["diagonal_fisher", "ewc_penalty"]


def diagonal_fisher(
    log_likelihood: Callable[[Any, jax.Array, jax.Array], jax.Array],
    params: Any,
    x: jax.Array,
    y: jax.Array,
) -> Any:
    """Mean over examples of the squared per-example gradient of log p(y|x), like `params`.

    Args:
      log_likelihood: `log_likelihood(params, x_i [1, ...], y_i [1]) -> scalar` of one example.
      params: the parameters θ* the Fisher is taken at.
      x: examples [n, ...]; y: labels [n].
    """
    grads = jax.vmap(lambda xi, yi: jax.grad(log_likelihood)(params, xi[None], yi[None]))(x, y)
    return jax.tree.map(lambda g: jnp.mean(g**2, axis=0), grads)


def ewc_penalty(params: Any, anchor: Any, fisher: Any) -> jax.Array:
    """Σ_i F_i (θ_i − θ*_i)² over every leaf (the loss adds ½ λ times it)."""
    return sum(
        jnp.sum(f * (p - a) ** 2)
        for f, p, a in zip(
            jax.tree.leaves(fisher), jax.tree.leaves(params), jax.tree.leaves(anchor)
        )
    )
