"""nestlearn.models.classifier: the MLP classifier against a numpy forward pass."""

import jax
import numpy as np
import pytest

from nestlearn.models import classifier


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_logits_and_loss_match_numpy(activation):
    params = classifier.mlp_init(jax.random.key(0), (6, 5, 4, 3), activation=activation)
    assert [params[f"w{i}"].shape for i in range(3)] == [(6, 5), (5, 4), (4, 3)]
    x = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0])
    sigma = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh}[activation]
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = sigma(sigma(x @ p["w0"] + p["b0"]) @ p["w1"] + p["b1"])
    logits = h @ p["w2"] + p["b2"]
    np.testing.assert_allclose(
        classifier.mlp_logits(params, x, activation=activation), logits, rtol=1e-5, atol=1e-5
    )
    z = logits - logits.max(-1, keepdims=True)
    nll = -(z[np.arange(7), y] - np.log(np.exp(z).sum(-1))).mean()
    loss = classifier.mlp_loss(params, x, y, activation=activation)
    np.testing.assert_allclose(loss, nll, rtol=1e-5)


def test_initial_variance_and_errors():
    w = classifier.mlp_init(jax.random.key(1), (400, 300, 2))["w0"]
    np.testing.assert_allclose(np.var(np.asarray(w)), 2.0 / 400, rtol=0.05)  # He (ReLU)
    with pytest.raises(ValueError, match="activation='gelu'"):
        classifier.mlp_init(jax.random.key(0), (4, 2), activation="gelu")
    with pytest.raises(ValueError, match="sizes"):
        classifier.mlp_init(jax.random.key(0), (4,))
