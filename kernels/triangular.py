"""Unit-lower-triangular systems of the chunk forms: (I + L) x = rhs, L strictly lower.

Every chunk-parallel delta rule (the gated delta rule's UT transform, the self-modifying memory's
per-token writes) solves such a system per chunk, L [c, c]: row r of x is the error of token r
after the writes of tokens 1 … r − 1. Two forms, both as accurate as substitution:

* :func:`unit_lower_inverse` — (I + L)⁻¹ by blocked forward substitution (``lax.fori_loop`` over
  rows inside blocks of :data:`BLOCK`, then block rows). The XLA form (batched
  ``jax.scipy.linalg.solve_triangular`` runs far slower under ``vmap`` on the CPU).
* :func:`unit_lower_solve` — (I + L)⁻¹ rhs in masks and matrix products only, so that it lowers
  unchanged to Triton and Mosaic (the Pallas kernel bodies): the diagonal blocks by the product of
  powers, then recursive block inversion, ⌈log₂(c / BLOCK)⌉ doublings of c × c products.

The tempting third form, the product of powers (I + L)⁻¹ = Π_j (I + (−L)^{2^j}) (⌈log₂ c⌉
products), is unstable in float32 and is not used: the powers of a matrix with entries near 1
(correlated unit keys and steps that remove most of a token's error — a delta rule with β ≈ 1, a
normalised memory step) hold entries up to C(c − 1, j) (≈ 10¹⁸ at c = 64), whose cancellation
leaves errors of 10⁸ and more where the solution is O(1) (docs/kernels.md §2).
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

#: Size of the diagonal blocks: solved row by row (:func:`unit_lower_inverse`) or by the product
#: of powers, whose entries stay below C(BLOCK − 1, j) = 35 (:func:`unit_lower_solve`).
BLOCK = 8


def _substitute_rows(lower: jax.Array) -> jax.Array:
    """(I + L)⁻¹ for strictly lower-triangular L [..., c, c], by forward substitution: one row
    per step of a ``lax.fori_loop``, X_i = e_i − Σ_{j<i} L_ij X_j."""
    c = lower.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=lower.dtype), lower.shape)

    def substitute(i, x):  # x: [..., c, c]; rows < i already hold rows of the inverse
        row = lax.dynamic_index_in_dim(lower, i, axis=-2)  # [..., 1, c]
        new = lax.dynamic_index_in_dim(eye, i, axis=-2) - row @ x
        return lax.dynamic_update_index_in_dim(x, new, i, axis=-2)

    return lax.fori_loop(0, c, substitute, eye)


@jax.custom_vjp
def unit_lower_inverse(lower: jax.Array) -> jax.Array:
    """(I + L)⁻¹ for the strictly lower-triangular part L of ``lower`` [..., c, c].

    Blocked forward substitution: the diagonal blocks D_i = (I + L_ii)⁻¹ (b × b, b = :data:`BLOCK`)
    by row substitution, all blocks at once; then block-row by block-row, X_ij = −D_i Σ_{l<i} L_il
    X_lj for j < i and X_ii = D_i. At c = 32 this is 8 + 2·3 dependent steps instead of 32.

    The gradient is that of the inverse, not of the substitution: with X = (I + L)⁻¹,
    dX = −X dL X, so L̄ = −strictLower(Xᵀ X̄ Xᵀ) — two c × c products instead of the transposed
    loop (reverse mode only; it is itself differentiable, so second order works).
    """
    return _inverse(lower)


def _inverse(lower: jax.Array) -> jax.Array:
    lower = jnp.tril(lower, -1)
    c, bs = lower.shape[-1], BLOCK
    if c % bs or c == bs:
        return _substitute_rows(lower)
    blocks = range(c // bs)
    diag = jnp.stack([lower[..., i * bs : (i + 1) * bs, i * bs : (i + 1) * bs] for i in blocks], -3)
    diag = _substitute_rows(diag)  # D_i [..., c / b, b, b]
    x = jnp.zeros_like(lower).at[..., :bs, :bs].set(diag[..., 0, :, :])
    for i in blocks[1:]:
        rows, done = slice(i * bs, (i + 1) * bs), slice(0, i * bs)
        left = -(diag[..., i, :, :] @ (lower[..., rows, done] @ x[..., done, done]))
        x = x.at[..., rows, done].set(left).at[..., rows, rows].set(diag[..., i, :, :])
    return x


def _inverse_fwd(lower: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = _inverse(lower)
    return x, x


def _inverse_bwd(x: jax.Array, x_bar: jax.Array) -> tuple[jax.Array]:
    xt = jnp.swapaxes(x, -1, -2)
    return (-jnp.tril(xt @ x_bar @ xt, -1),)


unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.dot(a, b, preferred_element_type=a.dtype)


def unit_lower_solve(lower: jax.Array, rhs: jax.Array, *, block: int = BLOCK) -> jax.Array:
    """(I + L)⁻¹ rhs for strictly lower-triangular L [c, c] and rhs [c, d], in products only.

    Recursive block inversion with masks: T, the inverse of the diagonal blocks of size
    ``block``, is the product of powers Π_j (I + N^{2^j}) of those blocks (N = −L; entries of the
    powers at most C(block − 1, j)); then each doubling of the block size joins pairs of blocks,
    [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [D⁻¹CA⁻¹, D⁻¹]] for I − N, i.e. T ← T + T N_C T with N_C the
    lower-left blocks of the doubled size. Only inverses of blocks meet, never high powers of N,
    so the errors are those of substitution; the work is ⌈log₂ c⌉ − 1 rounds of c × c products,
    as many as the product of powers.

    Args:
      lower: [c, c] strictly lower triangular (entries on and above the diagonal must be zero).
      rhs: [c, d] right-hand side.
      block: size of the diagonal blocks inverted by the product of powers.

    Returns:
      x [c, d] with (I + L) x = rhs, in the dtype of ``lower``.
    """
    n = -lower  # (I − N) x = rhs
    c = n.shape[0]
    row = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    col = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    block_of = lambda i, size: lax.div(i, jnp.int32(size))
    within = lambda size: block_of(row, size) == block_of(col, size)  # same block of this size
    power = jnp.where(within(block), n, 0.0)  # N restricted to the diagonal blocks
    t = (row == col).astype(n.dtype) + power  # Π_j (I + power^{2^j}), j = 0
    for _ in range(products(min(block, c)) - 1):
        power = _matmul(power, power)
        t = t + _matmul(power, t)
    for level in range(doublings(c, block)):  # join pairs of blocks: T ← T + T N_C T
        size = block * 2**level
        joins = jnp.where(within(2 * size) & ~within(size), n, 0.0)
        t = t + _matmul(t, _matmul(joins, t))
    return _matmul(t, rhs)


def products(m: int) -> int:
    """Factors (I + N^{2^j}) of the product of powers for N nilpotent of order m: ⌈log₂ m⌉ (at
    least one)."""
    return max(1, math.ceil(math.log2(m)))


def doublings(c: int, block: int = BLOCK) -> int:
    """Block doublings of :func:`unit_lower_solve` for c rows: ⌈log₂(c / block)⌉, 0 if c ≤ block."""
    return max(0, math.ceil(math.log2(c / block))) if c > block else 0
