"""Attentional biases: gradients for a matrix memory against their closed forms (float64)."""

import jax
import numpy as np
import pytest

from nestlearn.memory import objectives

D_OUT, D_IN = 3, 4


def _grad(objective, w, k, v):
    return np.asarray(jax.grad(lambda w: objective.loss(w @ k, v))(w))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(D_OUT, D_IN)), rng.normal(size=D_IN), rng.normal(size=D_OUT)


def test_dot_product_gradient_is_the_hebbian_write(x64, data):
    w, k, v = data
    np.testing.assert_allclose(_grad(objectives.dot_product(), w, k, v), -np.outer(v, k))


def test_l2_gradient_is_the_delta_write(x64, data):
    """∇ ½‖W k − v‖² = (W k − v) kᵀ (Titans Eq. 17 in the k/v form, docs/SEMANTICS.md §5.3)."""
    w, k, v = data
    np.testing.assert_allclose(_grad(objectives.l2(), w, k, v), np.outer(w @ k - v, k))


def test_lp_gradient_is_the_smoothed_moneta_direction(x64, data):
    w, k, v = data
    p, eps = 3.0, 1e-3
    r = w @ k - v
    want = np.outer((r**2 + eps) ** (p / 2 - 1) * r, k)  # ≈ Sign(r)|r|^{p−1} kᵀ
    np.testing.assert_allclose(_grad(objectives.lp(p, eps), w, k, v), want, rtol=1e-10)
    # p = 2 without smoothing is the ℓ2 bias.
    np.testing.assert_allclose(
        _grad(objectives.lp(2.0, 0.0), w, k, v), _grad(objectives.l2(), w, k, v), rtol=1e-12
    )


def test_huber_gradient_switches_at_delta(x64, data):
    w, k, v = data
    r = w @ k - v
    norm = np.linalg.norm(r)
    small, large = objectives.huber(2 * norm), objectives.huber(0.5 * norm)
    np.testing.assert_allclose(_grad(small, w, k, v), np.outer(r, k), rtol=1e-12)
    np.testing.assert_allclose(
        _grad(large, w, k, v), np.outer(0.5 * norm * r / norm, k), rtol=1e-12
    )
    # Continuous at the threshold, finite gradient at a zero residual.
    assert np.isclose(small.loss(w @ k, v), 0.5 * norm**2)
    assert np.isclose(objectives.huber(norm).loss(w @ k, v), 0.5 * norm**2)
    assert np.all(np.isfinite(_grad(large, w, k, w @ k)))


def test_get_and_bad_arguments():
    assert objectives.get("huber").name == "huber(delta=1.0)"
    l2 = objectives.l2()
    assert objectives.get(l2) is l2
    with pytest.raises(ValueError, match="objective='l1'"):
        objectives.get("l1")
    with pytest.raises(ValueError, match="p must be >= 1"):
        objectives.lp(0.5)
    with pytest.raises(ValueError, match="eps must be > 0"):
        objectives.lp(1.5, 0.0)
    with pytest.raises(ValueError, match="delta must be > 0"):
        objectives.huber(0.0)
