"""Adam as the optimal element-wise associative memory (App. B, Eqs. 101–105, arXiv 2512.24695)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest


@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_memory_optimum_reproduces_optax_adam(x64, eps):
    """Builds m* = (H + λ)⁻¹ ⊙ M̃ ⊙ P (Eq. 102) from the accumulations and steps W ← W − η m*.

    Mapping from App. B to `optax.adam` (b1, b2, eps):

    - Accumulations. Eq. 102 prints undecayed sums M̃ ← M̃ + β1 g, H ← H + β2 g². Adam keeps
      the same memory with retention: the sample i of Eq. 101 is weighted by b^{t−i}, which turns
      the sums into EMAs, M̃_t = b1 M̃_{t−1} + (1 − b1) g_t and H_t = b2 H_t−1 + (1 − b2) g_t²
      (β = 1 − b is the write strength). The weights (1 − b) b^{t−i} sum to 1 − b^t, so
      normalizing them (a weighted mean over the t samples seen) is the bias correction
      M̂ = M̃ / (1 − b1^t), Ĥ = H / (1 − b2^t).
    - Values. P = Ĥ^{1/2} (Eq. 105 with the write strength folded into the normalization).
    - Ridge. λ → 0 gives m* = M̂ / Ĥ^{1/2}; the element-wise ridge λ = ε Ĥ^{1/2} gives
      Ĥ^{1/2} / (Ĥ + ε Ĥ^{1/2}) = 1 / (Ĥ^{1/2} + ε): Adam's ε exactly.
    - Sign. App. B uses g = −∇L and W ← W + η m*; with g = +∇L the step is W ← W − η m*.
    """
    rng = np.random.default_rng(0)
    b1, b2, lr = 0.9, 0.99, 0.05
    w = rng.standard_normal((3, 4))
    tx = optax.adam(lr, b1=b1, b2=b2, eps=eps)
    state, w_adam = tx.init(jnp.asarray(w)), jnp.asarray(w)
    m_tilde, h = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, 9):
        g = rng.standard_normal(w.shape)
        updates, state = tx.update(jnp.asarray(g), state, w_adam)
        w_adam = optax.apply_updates(w_adam, updates)
        m_tilde = b1 * m_tilde + (1 - b1) * g
        h = b2 * h + (1 - b2) * g**2
        m_hat, h_hat = m_tilde / (1 - b1**t), h / (1 - b2**t)
        values = np.sqrt(h_hat)  # P
        ridge = eps * np.sqrt(h_hat)  # λ
        optimum = m_hat * values / (h_hat + ridge)  # (H + λ)⁻¹ ⊙ M̃ ⊙ P
        w = w - lr * optimum
        np.testing.assert_allclose(np.asarray(jax.device_get(w_adam)), w, rtol=1e-10, atol=1e-13)
