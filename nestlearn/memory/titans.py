"""Titans' neural long-term memory (arXiv 2501.00663, §3).

The configuration "deep memory × ℓ2 bias × momentum with a forget gate" of the generic machinery
in ``nestlearn.memory.scan``: per head, the memory M (an MLP by default) is written with

    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; k_t, v_t),   M_t = (1 − α_t) M_{t−1} + S_t   (Eqs. 13–14)

with ℓ(M; k, v) = ½‖M(k) − v‖² (Eq. 12, factor 2 absorbed into θ) and the gradients of a chunk
taken at its start weights M_{t'} (chunk-parallel form, Eqs. 16–18). Token t reads
y_t = M_{t'}(q_t) (Eq. 15) from the weights at the end of the previous chunk.

Fast path. The rule combines the chunk's gradients only through two weighted sums
Σ_i coef_i ∇ℓ(M_{t'}; k_i, v_i) (one for S, one for M), so ``scan`` computes them as gradients of
coefficient-weighted chunk losses (``rules.TokenGradients``): for an MLP memory, one matmul
(coef ⊙ δ)ᵀ H per layer, never the [c, *weight_shape] per-token gradients. This holds for every
architecture and objective; the decay/momentum coefficients come from a recursive-doubling scan
over the chunk's scalars (``rules._momentum_coefficients``).

Layout: b batch, t tokens, h heads, d width.
"""

from typing import Any, NamedTuple

import jax

from nestlearn.memory import objectives, rules
from nestlearn.memory.architectures import MemoryArch
from nestlearn.memory.objectives import Objective
from nestlearn.memory.scan import MemoryState, scan


class TitansState(NamedTuple):
    """State of Titans' memory, per sequence and head."""

    weights: Any  # pytree like params with leading [b, h, ...]: memory weights M_t
    momentum: Any  # pytree like params with leading [b, h, ...]: momentum S_t (Eq. 10)


def titans_memory(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    theta: jax.Array,
    alpha: jax.Array,
    eta: jax.Array,
    *,
    arch: MemoryArch,
    params: Any,
    chunk_size: int,
    initial_state: TitansState | None = None,
    objective: str | Objective = "l2",
    stop_gradient_writes: bool = False,
    remat: bool = True,
) -> tuple[jax.Array, TitansState]:
    """Titans' memory layer: write with momentum and forgetting, read the chunk-start weights.

    Args:
      q: queries [b, t, h, d_in].
      k: keys [b, t, h, d_in].
      v: values [b, t, h, d_out].
      theta: step sizes θ_t [b, t, h].
      alpha: forget gates α_t ∈ [0, 1] [b, t, h] (retention 1 − α_t).
      eta: momentum decays η_t [b, t, h].
      arch: memory architecture (``architectures.mlp(...)`` in Titans).
      params: meta-learned initial weights [h, ...] shared by all sequences.
      chunk_size: tokens per chunk (1: token-by-token recurrence).
      initial_state: state to continue a stream from; None starts from ``params`` and zero momentum.
      objective: the attentional bias, ``"l2"`` (Eq. 12) by default.
      stop_gradient_writes: do not backpropagate through the writes (DESIGN §4).
      remat: rematerialize each chunk in the backward pass (default: on CPU the recomputed
        forward costs less than storing and copying the per-chunk activations; results are
        identical either way).

    Returns:
      ``(o [b, t, h, d_out], TitansState)``.
    """
    inputs = {
        "q": q,
        "k": k,
        "v": v,
        "step_size": theta,
        "retention": alpha,
        "momentum_decay": eta,
    }
    state = None
    if initial_state is not None:
        if not isinstance(initial_state, TitansState):
            raise ValueError(f"initial_state must be a TitansState, got {type(initial_state)}")
        state = MemoryState(
            initial_state.weights, rules.MomentumState(initial_state.momentum), None
        )
    o, final = scan(
        arch,
        objectives.get(objective),
        rules.titans(),
        params,
        inputs,
        chunk_size=chunk_size,
        initial_state=state,
        stop_gradient_writes=stop_gradient_writes,
        remat=remat,
    )
    return o, TitansState(final.weights, final.rule.momentum)
