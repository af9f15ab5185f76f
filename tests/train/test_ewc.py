"""nestlearn.train.ewc: the diagonal Fisher against per-example gradients, and the penalty."""

import jax
import jax.numpy as jnp
import numpy as np

from nestlearn.train.ewc import diagonal_fisher, ewc_penalty


def test_diagonal_fisher_is_the_mean_squared_per_example_gradient():
    """Logistic regression: ∂ log p(y|x)/∂w = (y − σ(wᵀx)) x, so F = mean((y − p)² x²)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(9, 3)), (rng.uniform(size=9) < 0.5).astype(np.float64)
    params = {"w": jnp.asarray(rng.normal(size=3))}

    def log_lik(p, xi, yi):  # xi [1, 3], yi [1]
        z = xi @ p["w"]
        return jnp.sum(yi * jax.nn.log_sigmoid(z) + (1 - yi) * jax.nn.log_sigmoid(-z))

    fisher = diagonal_fisher(log_lik, params, jnp.asarray(x), jnp.asarray(y))
    p = 1 / (1 + np.exp(-(x @ np.asarray(params["w"]))))
    want = np.mean(((y - p)[:, None] * x) ** 2, axis=0)
    np.testing.assert_allclose(fisher["w"], want, rtol=1e-5)


def test_penalty_weighs_each_parameter_by_its_fisher():
    params = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    anchor = {"a": jnp.array([0.0, 2.0]), "b": jnp.array(1.0)}
    fisher = {"a": jnp.array([2.0, 5.0]), "b": jnp.array(0.5)}
    np.testing.assert_allclose(ewc_penalty(params, anchor, fisher), 2.0 * 1 + 0 + 0.5 * 4)
    assert float(ewc_penalty(anchor, anchor, fisher)) == 0.0
