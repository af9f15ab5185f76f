"""`nestlearn.kernels.triangular`: both forms of the unit-lower-triangular solve.

Oracle: `np.linalg.solve` / `np.linalg.inv` in float64. The hard case is the one the chunk forms
meet in training: correlated unit keys and steps that remove most of a token's error, where the
product of powers Π_j (I + N^{2^j}) loses every digit in float32.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from nestlearn.kernels import triangular

SIZES = [1, 5, 8, 12, 16, 32, 40, 64, 70]


def _random_lower(rng, c, scale=0.3, batch=()):
    return np.tril(scale * rng.normal(size=(*batch, c, c)), -1)


def _correlated_lower(rng, c):
    """L = strictLower(A Aᵀ diag(η′)) for rows a_t of cosine ≈ 0.99 and norm 3 and the normalised
    step η′ = η / (1 + η‖a‖²) at η = 4: each step removes 97% of its token's error."""
    a = rng.normal(size=64)[None] + 0.1 * rng.normal(size=(c, 64))
    a = 3.0 * a / np.linalg.norm(a, axis=1, keepdims=True)
    step = 4.0 / (1.0 + 4.0 * np.sum(a * a, axis=1))
    return np.tril(a @ a.T, -1) * step[None, :]


def _product_of_powers(lower, rhs):
    """(I + L)⁻¹ rhs = Π_j (I + (−L)^{2^j}) rhs: the unstable form, kept here as the contrast."""
    power, x, span = -lower, rhs - lower @ rhs, 2
    while span < lower.shape[0]:
        power = power @ power
        x = x + power @ x
        span *= 2
    return x


@pytest.mark.parametrize("c", SIZES)
def test_inverse_matches_float64(x64, c):
    # Row substitution (c ≤ 8 or not a multiple of 8) or blocks of 8, batched.
    rng = np.random.default_rng(c)
    lower = _random_lower(rng, c, batch=(2, 3))
    got = triangular.unit_lower_inverse(lower)
    np.testing.assert_allclose(got, np.linalg.inv(np.eye(c) + lower), atol=1e-12)


@pytest.mark.parametrize("c", SIZES)
def test_solve_matches_float64(x64, c):
    rng = np.random.default_rng(100 + c)
    lower, rhs = _random_lower(rng, c), rng.normal(size=(c, 3))
    got = triangular.unit_lower_solve(jnp.asarray(lower), jnp.asarray(rhs))
    np.testing.assert_allclose(got, np.linalg.solve(np.eye(c) + lower, rhs), atol=1e-12)


@pytest.mark.parametrize("c", [5, 16])
def test_gradients(x64, c):
    rng = np.random.default_rng(200 + c)
    lower, rhs = _random_lower(rng, c), rng.normal(size=(c, 2))
    # the custom VJP (the inverse's gradient) against finite differences, to second order
    check_grads(triangular.unit_lower_inverse, (lower,), order=2, modes=("rev",))
    strict = lambda m, r: triangular.unit_lower_solve(jnp.tril(m, -1), r)
    check_grads(strict, (lower, rhs), order=1, modes=("rev",))


@pytest.mark.parametrize("c", [32, 64, 128])
def test_correlated_keys_in_float32(c):
    # Both forms stay within 1e-4 of the float64 solution; the product of powers is off by far
    # more than the solution's size (so the case does test what it claims).
    rng = np.random.default_rng(300 + c)
    lower, rhs = _correlated_lower(rng, c), rng.normal(size=(c, 8))
    want = np.linalg.solve(np.eye(c) + lower, rhs)
    lower32, rhs32 = jnp.asarray(lower, jnp.float32), jnp.asarray(rhs, jnp.float32)
    scale = np.abs(want).max()
    solve = jax.jit(triangular.unit_lower_solve)(lower32, rhs32)
    inverse = jax.jit(triangular.unit_lower_inverse)(lower32) @ rhs32
    for got in (solve, inverse):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * scale)
    unstable = np.asarray(_product_of_powers(lower32, rhs32))
    assert not np.abs(unstable - want).max() < scale
