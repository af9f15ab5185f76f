"""One chunk of the Titans deep (2-layer MLP) memory, shared by every implementation.

Memory M(x) = W₁ σ(W₂ x) (+ x when residual, Hope Eqs. 89/91), σ = SiLU, W₁ [d_out, n],
W₂ [n, d_in] (column convention), loss ℓ(M; k, v) = ½‖M(k) − v‖² (Titans Eq. 12, the factor 2
of ‖·‖² absorbed into θ as in Titans Eq. 17 and ``nestlearn.memory.objectives.l2``). Inside a chunk
every gradient is taken at the chunk-start weights M_0 (Titans Eq. 16), and momentum and decay
combine them (Titans Eqs. 13–14, 18):

    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_0; k_t, v_t),    M_t = (1 − α_t) M_{t−1} + S_t,

so with the coefficients of :mod:`nestlearn.kernels.momentum_decay` (a = 1 − α, m = η)

    M_c = γ_c M_0 + φ_{c,0} S_0 − Σ_i θ_i φ_{c,i} ∇ℓ_i,
    S_c = ψ_{c,0} S_0 − Σ_i θ_i ψ_{c,i} ∇ℓ_i.

With H = K W₂ᵀ, A = σ(H), R = A W₁ᵀ (+K) − V, the weighted gradient sums are single matrix
products: Σ_i c_i ∇_{W₁}ℓ_i = Rᵀ diag(c) A and Σ_i c_i ∇_{W₂}ℓ_i = ((R W₁) ⊙ σ'(H))ᵀ diag(c) K.
Outputs read the chunk-start weights (docs/SEMANTICS.md §5.2): O = σ(Q W₂ᵀ) W₁ᵀ (+Q).

Shapes: c chunk size, d_in key/query width, d_out value width, n hidden width; stacked terms carry
leading [bh, n_chunks].
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from nestlearn.kernels.gated_delta.chunk import matmul, matmul_nt, matmul_tn, to_chunks
from nestlearn.kernels.momentum_decay import chunk_decay


class ChunkTerms(NamedTuple):
    """Inputs of the chunk step; per chunk [c, ...] (stacked: leading [bh, n_chunks])."""

    q: jax.Array  # [c, d_in] queries
    k: jax.Array  # [c, d_in] keys
    v: jax.Array  # [c, d_out] values
    weight_end: jax.Array  # [c, 1] θ_i φ_{c,i}: gradient i in the chunk-end weights
    momentum_end: jax.Array  # [c, 1] θ_i ψ_{c,i}: gradient i in the chunk-end momentum
    gamma_end: jax.Array  # [1, 1] γ_c = Π (1 − α)
    phi0_end: jax.Array  # [1, 1] φ_{c,0}: start momentum in the chunk-end weights
    psi0_end: jax.Array  # [1, 1] ψ_{c,0} = Π η: start momentum in the chunk-end momentum


class Weights(NamedTuple):
    """Weights (or momentum) of one 2-layer MLP memory."""

    w1: jax.Array  # [..., d_out, n] output-side layer
    w2: jax.Array  # [..., n, d_in] input-side layer


def silu_and_grad(h: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(σ(h), σ'(h)) for σ = SiLU: σ' = s (1 + h (1 − s)), s the logistic sigmoid."""
    s = 1.0 / (1.0 + jnp.exp(-h))
    return h * s, s * (1.0 + h * (1.0 - s))


def chunk_step(x: ChunkTerms, state: tuple[Weights, Weights], *, residual: bool):
    """One chunk of the MLP memory (module docstring).

    Args:
      x: the chunk's :class:`ChunkTerms` (unstacked, 2-D arrays).
      state: ``(weights, momentum)`` at the chunk start.
      residual: M(x) = x + W₁σ(W₂x) instead of W₁σ(W₂x).

    Returns:
      ``(o [c, d_out], (weights, momentum))`` at the chunk end.
    """
    w, s = state
    act_q, _ = silu_and_grad(matmul_nt(x.q, w.w2))  # [c, n]
    o = matmul_nt(act_q, w.w1)  # [c, d_out]
    h = matmul_nt(x.k, w.w2)  # [c, n]
    act, d_act = silu_and_grad(h)
    y = matmul_nt(act, w.w1)
    if residual:
        o = o + x.q
        y = y + x.k
    r = y - x.v  # ∂ℓ/∂y [c, d_out]
    dh = matmul(r, w.w1) * d_act  # ∂ℓ/∂h [c, n]

    def weighted_grad(coef):  # Σ_i coef_i ∇ℓ_i as Weights
        return Weights(matmul_tn(r * coef, act), matmul_tn(dh * coef, x.k))

    g_w, g_s = weighted_grad(x.weight_end), weighted_grad(x.momentum_end)
    w_end = jax.tree.map(lambda w_, s_, g: x.gamma_end * w_ + x.phi0_end * s_ - g, w, s, g_w)
    s_end = jax.tree.map(lambda s_, g: x.psi0_end * s_ - g, s, g_s)
    return o, (Weights(*w_end), Weights(*s_end))


def chunk_terms(q, k, v, theta, alpha, eta, *, chunk_size, d_in, d_out, dtype) -> ChunkTerms:
    """Stacked :class:`ChunkTerms` [b·h, n_chunks, c, ...] for the public layout.

    Args:
      q, k: [b, t, h, d_in₀]; v: [b, t, h, d_out₀]; theta, alpha, eta: [b, t, h].
      chunk_size: c.
      d_in, d_out: widths to zero-pad q/k and v to.
      dtype: compute dtype.

    Padded tokens get θ = 0, α = 0 (retention 1), η = 1 and w = 0: identity steps.
    """
    to_c = lambda x, **kw: to_chunks(x.astype(dtype), chunk_size, **kw)
    retention = to_c(1.0 - alpha.astype(dtype), pad_value=1.0)  # [bh, n, c]
    decay = chunk_decay(retention, to_c(eta, pad_value=1.0), to_c(jnp.ones_like(theta)))
    theta = to_c(theta)
    end = lambda x: x[..., -1:, None]
    return ChunkTerms(
        q=to_c(q, width=d_in),
        k=to_c(k, width=d_in),
        v=to_c(v, width=d_out),
        weight_end=(theta * decay.phi_end)[..., None],
        momentum_end=(theta * decay.psi_end)[..., None],
        gamma_end=end(decay.gamma),
        phi0_end=end(decay.phi0),
        psi0_end=end(decay.psi0),
    )
