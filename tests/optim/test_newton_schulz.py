"""Newton–Schulz (Eq. 44) and momentum through σ = Newton–Schulz (Eq. 52), arXiv 2512.24695."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no


def _ns_reference(x, steps, coeffs, eps=1e-8):
    """X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X after Frobenius normalization, on [r, c] = x's view."""
    a, b, c = coeffs
    mat = x.reshape(-1, x.shape[-1])
    mat = mat / (np.linalg.norm(mat) + eps)
    for _ in range(steps):
        gram = mat @ mat.T
        mat = a * mat + b * gram @ mat + c * gram @ gram @ mat
    return mat.reshape(x.shape)


@pytest.mark.parametrize("coefficients", ["cubic", "quintic"])
@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (2, 3, 5)])
def test_newton_schulz_matches_numpy(x64, coefficients, shape):
    x = np.random.default_rng(0).standard_normal(shape)
    coeffs = no.CUBIC if coefficients == "cubic" else no.QUINTIC
    out = no.newton_schulz(jnp.asarray(x), 4, coefficients)
    np.testing.assert_allclose(out, _ns_reference(x, 4, coeffs), rtol=1e-9, atol=1e-12)


def test_cubic_first_step_is_eq44_and_converges(x64):
    """Eq. 44 with ζ = 1/4 from O_0 = g: O_1 = O_0 − ζ(O_0 − g + 2 O_0(O_0ᵀO_0 − I))."""
    g = np.random.default_rng(1).standard_normal((5, 3))
    o0 = g / (np.linalg.norm(g) + 1e-8)  # the normalized g is the O_0 = g of Eq. 44
    zeta = 0.25
    o1 = o0 - zeta * (o0 - o0 + 2 * o0 @ (o0.T @ o0 - np.eye(3)))
    np.testing.assert_allclose(no.newton_schulz(jnp.asarray(g), 1, "cubic"), o1, rtol=1e-12)
    polar = no.newton_schulz(jnp.asarray(g), 60, "cubic")
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(polar, u @ vt, atol=1e-8)


def test_newton_schulz_rejects_vectors():
    with pytest.raises(ValueError, match=r"\(3,\)"):
        no.newton_schulz(jnp.ones(3))
    with pytest.raises(ValueError, match="coefficients"):
        no.newton_schulz(jnp.ones((3, 3)), 2, "septic")


@pytest.mark.parametrize("nesterov", [True, False])
def test_newton_schulz_momentum_matches_optax_muon(nesterov):
    """A linear memory read through σ = Newton–Schulz is Muon (Eq. 52): compare on 2-D leaves."""
    rng = np.random.default_rng(2)
    shapes = {"a": (6, 4), "b": (3, 8)}
    params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    ours_tx = no.newton_schulz_momentum(0.02, beta=0.9, ns_steps=5, nesterov=nesterov)
    muon_tx = optax.contrib.muon(0.02, beta=0.9, ns_steps=5, nesterov=nesterov)
    p_ours, p_muon = params, params
    s_ours, s_muon = ours_tx.init(params), muon_tx.init(params)
    ours_update, muon_update = jax.jit(ours_tx.update), jax.jit(muon_tx.update)
    for _ in range(8):
        g = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
        u_ours, s_ours = ours_update(g, s_ours, p_ours)
        u_muon, s_muon = muon_update(g, s_muon, p_muon)
        for k in shapes:
            np.testing.assert_allclose(u_ours[k], u_muon[k], rtol=2e-4, atol=2e-6)
        p_ours = optax.apply_updates(p_ours, u_ours)
        p_muon = optax.apply_updates(p_muon, u_muon)


def test_newton_schulz_momentum_vectors_pass_through(x64):
    """Leaves with ndim < 2 take the (bias-corrected) momentum itself: σ = identity."""
    g = jnp.asarray(np.random.default_rng(3).standard_normal(5))
    tx = no.scale_by_newton_schulz_momentum(0.5, nesterov=False)
    direction, _ = tx.update({"v": g}, tx.init({"v": g}))
    np.testing.assert_allclose(direction["v"], g, rtol=1e-12)
    jax.block_until_ready(direction)
