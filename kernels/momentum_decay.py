"""Decay coefficients of the two-level (memory + momentum) linear recurrence inside a chunk.

Both kernels in this package advance a memory S and a momentum buffer Z with per-token scalars:

    Z_r = m_r Z_{r−1} + X_r                 (momentum, Titans Eq. 10 / Eq. 14)
    S_r = a_r S_{r−1} + w_r Z_r             (retention, Titans Eq. 13)

where X_r is the token's write (a rank-one term e_r k_rᵀ for the gated delta rule, −θ_r ∇ℓ_r for
the MLP memory), a_r the retention (GDN's α_r, Titans' 1 − α_r), m_r the momentum decay (Titans'
η_r) and w_r ∈ {0, 1} marks real tokens (w_r = 0 on padding, together with a_r = m_r = 1 and
X_r = 0, makes a padded step the identity on (S, Z)). Unrolled over one chunk of C tokens:

    Z_r = ψ_{r,0} Z_0 + Σ_{i≤r} ψ_{r,i} X_i
    S_r = γ_r S_0 + φ_{r,0} Z_0 + Σ_{i≤r} φ_{r,i} X_i

with the row recurrences ψ_r = m_r ψ_{r−1} + δ_r (ψ_0 = δ_0), φ_r = a_r φ_{r−1} + w_r ψ_r
(φ_0 = 0), γ_r = a_r γ_{r−1} (γ_0 = 1). They are computed by a C-step scan of products and sums
only — no logarithms or quotients — so a_r = 0 or m_r = 0 is exact and the coefficients are
differentiable everywhere. With m ≡ 0 and w ≡ 1, ψ = I and φ_{r,i} = Π_{i<j≤r} a_j = Γ_{ri}, the
decay matrix of Gated DeltaNet's chunk form (GDN §3.3).

Shapes: leading axes ``...`` (e.g. [bh, n]), c chunk size.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class ChunkDecay(NamedTuple):
    """Decay coefficients of one chunk (module docstring), rows r and columns i 0-based."""

    gamma: jax.Array  # [..., c] γ_r, coefficient of S_0 in S_r
    phi: jax.Array  # [..., c, c] φ_{r,i}, coefficient of write i in S_r (zero for i > r)
    pred: jax.Array  # [..., c, c] a_r φ_{r−1,i}, write i in a_r S_{r−1} (zero for i ≥ r)
    phi0: jax.Array  # [..., c] φ_{r,0}, coefficient of Z_0 in S_r
    pred0: jax.Array  # [..., c] a_r φ_{r−1,0}, coefficient of Z_0 in a_r S_{r−1}
    psi0: jax.Array  # [..., c] ψ_{r,0}, coefficient of Z_0 in Z_r
    phi_end: jax.Array  # [..., c] φ_{c,i}, coefficient of write i in the chunk-end S
    psi_end: jax.Array  # [..., c] ψ_{c,i}, coefficient of write i in the chunk-end Z


def chunk_decay(a: jax.Array, m: jax.Array, w: jax.Array) -> ChunkDecay:
    """Coefficients of the two-level recurrence for every chunk at once.

    Args:
      a: retention a_r [..., c].
      m: momentum decay m_r [..., c] (zeros: no momentum).
      w: 1 for real tokens, 0 for padding [..., c].

    Returns:
      The :class:`ChunkDecay` of every chunk, in the dtype of ``a``.
    """
    c = a.shape[-1]
    lead = a.shape[:-1]
    dtype = a.dtype
    eye = jnp.eye(c + 1, dtype=dtype)  # column 0 is Z_0, column i ≥ 1 is write i − 1

    def step(carry, x):
        psi, phi, gamma = carry  # [..., c + 1], [..., c + 1], [...]
        a_r, m_r, w_r, delta = x
        pred = a_r[..., None] * phi  # a_r φ_{r−1}
        psi = m_r[..., None] * psi + delta
        phi = pred + w_r[..., None] * psi
        gamma = a_r * gamma
        return (psi, phi, gamma), (psi, phi, pred, gamma)

    init = (
        jnp.broadcast_to(eye[0], (*lead, c + 1)),
        jnp.zeros((*lead, c + 1), dtype),
        jnp.ones(lead, dtype),
    )
    xs = (
        jnp.moveaxis(a, -1, 0),
        jnp.moveaxis(m.astype(dtype), -1, 0),
        jnp.moveaxis(w.astype(dtype), -1, 0),
        eye[1:],
    )
    _, (psi, phi, pred, gamma) = lax.scan(step, init, xs)  # [c, ..., c + 1], gamma [c, ...]
    psi, phi, pred = (jnp.moveaxis(x, 0, -2) for x in (psi, phi, pred))  # [..., c, c + 1]
    return ChunkDecay(
        gamma=jnp.moveaxis(gamma, 0, -1),
        phi=phi[..., 1:],
        pred=pred[..., 1:],
        phi0=phi[..., 0],
        pred0=pred[..., 0],
        psi0=psi[..., 0],
        phi_end=phi[..., -1, 1:],
        psi_end=psi[..., -1, 1:],
    )
