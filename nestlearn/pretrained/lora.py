"""Low-rank adaptation (LoRA) as a reparameterisation of a frozen parameter tree.

W' = W + (α / r) · A B for every selected kernel W [in, out], with A [in, r] ~ N(0, 1/in) and
B [r, out] = 0, so W' = W at step 0 (Hu et al., 2021). Only A and B train. Because nestlearn's
modules read their kernels directly, LoRA is applied to the parameter tree (`lora_merge`) rather
than by wrapping layers: the train step merges the factors into the frozen weights and runs the
unchanged model (`make_adapter_step(..., transform=lora_transform(...))`).
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nestlearn.core import flatten_with_paths

__all__ = ["lora_init", "lora_merge", "lora_param_count", "lora_transform"]


def lora_init(params: nnx.State, pattern: str, *, rank: int, seed: int = 0) -> dict[str, dict]:
    """LoRA factors {path: {"a": [in, r], "b": [r, out]}} for every 2-D kernel matching `pattern`.

    Args:
      params: the (frozen) parameter state, e.g. from `split_trainable`.
      pattern: regex searched in the `/`-joined path of each leaf (e.g. r"attn/w[qv]/kernel").
      rank: r >= 1.
      seed: initialisation of the A factors.

    Raises:
      ValueError: bad rank, or the pattern selects no 2-D kernel.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an int >= 1, got {rank!r}")
    regex = re.compile(pattern)
    leaves, _ = flatten_with_paths(params)
    chosen = [(path, leaf) for path, leaf in leaves if regex.search(path)]
    chosen = [(p, leaf) for p, leaf in chosen if jnp.ndim(leaf) == 2]
    if not chosen:
        raise ValueError(f"pattern={pattern!r} selects no 2-D kernel")
    keys = jax.random.split(jax.random.key(seed), len(chosen))
    factors = {}
    for key, (path, leaf) in zip(keys, chosen):
        d_in, d_out = leaf.shape
        factors[path] = {
            "a": jax.random.normal(key, (d_in, rank), jnp.float32) / jnp.sqrt(d_in),
            "b": jnp.zeros((rank, d_out), jnp.float32),
        }
    return factors


def lora_merge(params: Any, factors: dict[str, dict], *, alpha: float) -> Any:
    """params with W ← W + (alpha / r) A B at every path in `factors` (differentiable in them)."""
    leaves, treedef = flatten_with_paths(params)
    missing = sorted(set(factors) - {path for path, _ in leaves})
    if missing:
        raise ValueError(f"LoRA factors for paths not in params: {missing[:3]}")
    merged = []
    for path, leaf in leaves:
        if path in factors:
            a, b = factors[path]["a"], factors[path]["b"]
            leaf = leaf + (alpha / a.shape[1]) * (a @ b).astype(leaf.dtype)
        merged.append(leaf)
    return jax.tree.unflatten(treedef, merged)


def lora_transform(alpha: float):
    """The `transform` of `make_adapter_step` for LoRA: (factors, frozen) -> (merged params,)."""

    def transform(factors, frozen):
        return (lora_merge(frozen, factors, alpha=alpha),)

    return transform


def lora_param_count(factors: dict[str, dict]) -> int:
    """Scalars in the LoRA factors."""
    return int(sum(x.size for x in jax.tree.leaves(factors)))
