"""The WY/UT chunk step of the gated delta rule with momentum, shared by every implementation.

One chunk of one (batch, head) sequence, rows r = 1..c (module docstring of
:mod:`nestlearn.kernels.momentum_decay` for the coefficients γ, φ, ψ). The token recurrence
(:func:`nestlearn.kernels.gated_delta.reference.gated_delta_recurrent`) is

    e_r = β_r (v_r − a_r S_{r−1} k_r),   Z_r = m_r Z_{r−1} + e_r k_rᵀ,   S_r = a_r S_{r−1} + Z_r.

Substituting the unrolled S_{r−1} into e_r gives a unit-lower-triangular system for the rows of
E = [e_1 … e_c]ᵀ (the UT transform, GDN §3.1 Eqs. 6–9 and Eq. 10; docs/kernels.md §2):

    (I + strictLower(diag(β)(Π ⊙ K Kᵀ))) E = diag(β)(V − diag(γ) K S_0ᵀ − diag(λ) K Z_0ᵀ),

with Π_{r,i} = a_r φ_{r−1,i} (``pred``) and λ_r = a_r φ_{r−1,0} (``pred0``). Then

    O   = diag(γ) Q S_0ᵀ + diag(φ_{·,0}) Q Z_0ᵀ + (Q Kᵀ ⊙ Φ) E
    S_c = γ_c S_0 + φ_{c,0} Z_0 + Eᵀ diag(φ_{c,·}) K,     Z_c = ψ_{c,0} Z_0 + Eᵀ diag(ψ_{c,·}) K.

Without momentum (m ≡ 0) Φ = Γ and Π = strictLower(Γ): exactly GDN's chunk form with
T = [I + strictLower(diag(β)(Γ ⊙ KKᵀ))]⁻¹ diag(β), E = U − W S_0ᵀ.

The unit-lower-triangular system is solved by :mod:`nestlearn.kernels.triangular`: blocked
substitution in XLA, masks and matrix products in the Pallas kernel bodies (``solve``), both as
accurate as substitution for any keys.

Shapes: b batch, t tokens, h heads, bh = b·h, n chunks, c chunk size, d_k/d_v key/value width.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from nestlearn.kernels import triangular
from nestlearn.kernels.momentum_decay import chunk_decay


class ChunkTerms(NamedTuple):
    """Inputs of the chunk step; per chunk [c, ...] (stacked: leading [bh, n])."""

    q: jax.Array  # [c, d_k] queries
    k: jax.Array  # [c, d_k] keys
    v: jax.Array  # [c, d_v] values
    beta: jax.Array  # [c, 1] step sizes β_r (0 on padding)
    gamma: jax.Array  # [c, 1] γ_r
    phi: jax.Array  # [c, c] Φ_{r,i}
    pred: jax.Array  # [c, c] Π_{r,i} = a_r φ_{r−1,i}
    phi_end: jax.Array  # [c, 1] φ_{c,i}
    gamma_end: jax.Array  # [1, 1] γ_c
    pred0: jax.Array | None  # [c, 1] λ_r = a_r φ_{r−1,0}; None without momentum
    phi0: jax.Array | None  # [c, 1] φ_{r,0}; None without momentum
    psi_end: jax.Array | None  # [c, 1] ψ_{c,i}; None without momentum
    phi0_end: jax.Array | None  # [1, 1] φ_{c,0}; None without momentum
    psi0_end: jax.Array | None  # [1, 1] ψ_{c,0}; None without momentum


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """a b for a [m, k], b [k, n], accumulated in the dtype of a."""
    return jnp.dot(a, b, preferred_element_type=a.dtype)


def matmul_nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a bᵀ for a [m, k], b [n, k]."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=a.dtype)


def matmul_tn(a: jax.Array, b: jax.Array) -> jax.Array:
    """aᵀ b for a [k, m], b [k, n]."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=a.dtype)


def xla_solve(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    """(I + L)⁻¹ rhs by blocked substitution (:func:`triangular.unit_lower_inverse`): XLA."""
    return matmul(triangular.unit_lower_inverse(lower), rhs)


def chunk_step(
    x: ChunkTerms, state: tuple[jax.Array, jax.Array | None], solve: Callable = xla_solve
):
    """One chunk of the gated delta rule with momentum (module docstring).

    Args:
      x: the chunk's :class:`ChunkTerms` (unstacked, 2-D arrays).
      state: ``(S_0, Z_0)`` at the chunk start, each [d_v, d_k]; Z_0 None without momentum.
      solve: ``solve(L, rhs)`` = (I + L)⁻¹ rhs for strictly lower L [c, c]:
        :func:`xla_solve`, or :func:`triangular.unit_lower_solve` inside a Pallas kernel.

    Returns:
      ``(o [c, d_v], (S_c, Z_c))``.
    """
    s0, z0 = state
    c = x.q.shape[0]
    rows = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    strict = cols < rows
    kk = matmul_nt(x.k, x.k)  # [c, c]
    lower = jnp.where(strict, x.beta * x.pred * kk, 0.0)
    read = x.gamma * matmul_nt(x.k, s0)  # [c, d_v], a_r S_{r−1} k_r from S_0
    if z0 is not None:
        read = read + x.pred0 * matmul_nt(x.k, z0)
    e = solve(lower, x.beta * (x.v - read))  # [c, d_v]
    qk = jnp.where(cols <= rows, matmul_nt(x.q, x.k) * x.phi, 0.0)
    o = x.gamma * matmul_nt(x.q, s0) + matmul(qk, e)
    s_end = x.gamma_end * s0 + matmul_tn(e, x.phi_end * x.k)
    z_end = None
    if z0 is not None:
        o = o + x.phi0 * matmul_nt(x.q, z0)
        s_end = s_end + x.phi0_end * z0
        z_end = x.psi0_end * z0 + matmul_tn(e, x.psi_end * x.k)
    return o, (s_end, z_end)


def to_chunks(x: jax.Array, chunk_size: int, width: int | None = None, pad_value=0.0):
    """[b, t, h, ...] -> [b·h, n, c, ...]; pads t up to n·c and the last axis up to ``width``."""
    b, t, h = x.shape[:3]
    n = -(-t // chunk_size)
    pads = [(0, 0), (0, n * chunk_size - t), (0, 0)] + [(0, 0)] * (x.ndim - 3)
    if width is not None:
        pads[-1] = (0, width - x.shape[-1])
    x = jnp.pad(x, pads, constant_values=pad_value)
    x = jnp.moveaxis(x, 2, 1)  # [b, h, t', ...]
    return x.reshape((b * h, n, chunk_size, *x.shape[3:]))


def from_chunks(o: jax.Array, b: int, t: int, d: int) -> jax.Array:
    """[b·h, n, c, d'] -> [b, t, h, d], dropping padded tokens and padded columns."""
    bh, n, c = o.shape[:3]
    o = o.reshape(b, bh // b, n * c, o.shape[-1])[:, :, :t, :d]
    return jnp.moveaxis(o, 1, 2)


def chunk_terms(q, k, v, alpha, beta, momentum, *, chunk_size, d_k, d_v, dtype) -> ChunkTerms:
    """Stacked :class:`ChunkTerms` [b·h, n, c, ...] for the public layout.

    Args:
      q, k: [b, t, h, d_k₀]; v: [b, t, h, d_v₀]; alpha, beta, momentum (or None): [b, t, h].
      chunk_size: c.
      d_k, d_v: widths to zero-pad the key and value axes to (≥ the input widths; zero columns
        leave the recurrence unchanged on the real columns).
      dtype: compute dtype.
    """
    valid = jnp.ones(beta.shape, dtype)
    to_c = lambda x, **kw: to_chunks(x.astype(dtype), chunk_size, **kw)
    a = to_c(alpha, pad_value=1.0)  # [bh, n, c]; padded steps keep the state
    w = to_c(valid)
    m = jnp.zeros_like(a) if momentum is None else to_c(momentum, pad_value=1.0)
    decay = chunk_decay(a, m, w)
    col = lambda x: x[..., None]  # [bh, n, c] -> [bh, n, c, 1]
    end = lambda x: x[..., -1:, None]  # [bh, n, c] -> [bh, n, 1, 1]
    has_m = momentum is not None
    return ChunkTerms(
        q=to_c(q, width=d_k),
        k=to_c(k, width=d_k),
        v=to_c(v, width=d_v),
        beta=col(to_c(beta)),
        gamma=col(decay.gamma),
        phi=decay.phi,
        pred=decay.pred,
        phi_end=col(decay.phi_end),
        gamma_end=end(decay.gamma),
        pred0=col(decay.pred0) if has_m else None,
        phi0=col(decay.phi0) if has_m else None,
        psi_end=col(decay.psi_end) if has_m else None,
        phi0_end=end(decay.phi0) if has_m else None,
        psi0_end=end(decay.psi0) if has_m else None,
    )
