"""Memory architectures against their printed formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nestlearn.memory import architectures


def _silu(x):
    return x / (1 + np.exp(-x))


def test_matrix_is_linear_and_starts_empty():
    arch = architectures.matrix()
    params = arch.init(jax.random.key(0), heads=2, d_in=3, d_out=4)
    assert params["w"].shape == (2, 4, 3) and not np.any(params["w"])
    w = np.random.default_rng(0).normal(size=(4, 3))
    x = np.random.default_rng(1).normal(size=(5, 3))
    np.testing.assert_allclose(arch.apply({"w": w}, x), x @ w.T, rtol=1e-5)
    assert arch.input_weight == "w"


@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_is_the_composition_of_its_layers(depth):
    arch = architectures.mlp(depth, hidden=5)
    params = arch.init(jax.random.key(1), heads=2, d_in=3, d_out=4)
    widths = [3] + [5] * (depth - 1) + [4]
    for i in range(depth):
        assert params[f"w{i}"].shape == (2, widths[i + 1], widths[i])
    one = {k: np.asarray(v[1]) for k, v in params.items()}
    x = np.random.default_rng(2).normal(size=(6, 3))
    h = x
    for i in range(depth):
        h = h @ one[f"w{i}"].T
        if i < depth - 1:
            h = _silu(h)
    np.testing.assert_allclose(arch.apply(one, x), h, rtol=1e-5, atol=1e-6)
    assert arch.input_weight == "w0"


def test_residual_mlp_is_eq_89():
    """M(x) = x + W₁ σ(W₂ x) (Eqs. 89/91); the initial memory is the identity."""
    arch = architectures.residual_mlp(hidden=6)
    params = arch.init(jax.random.key(2), heads=3, d_in=4, d_out=4)
    x = np.random.default_rng(3).normal(size=(2, 5, 4))
    one = {k: v[0] for k, v in params.items()}
    np.testing.assert_allclose(arch.apply(one, x), x, rtol=1e-6)
    rng = np.random.default_rng(4)
    w1, w2 = rng.normal(size=(4, 6)), rng.normal(size=(6, 4))
    want = x + _silu(x @ w2.T) @ w1.T
    np.testing.assert_allclose(arch.apply({"w1": w1, "w2": w2}, x), want, rtol=1e-5, atol=1e-6)
    assert arch.input_weight == "w2"


def test_apply_heads_matches_a_loop_over_heads():
    arch = architectures.mlp(2, hidden=5, activation="gelu")
    params = arch.init(jax.random.key(3), heads=3, d_in=4, d_out=2)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 7, 3, 4)), jnp.float32)
    y = architectures.apply_heads(arch, params, x)
    for j in range(3):
        one = {k: v[j] for k, v in params.items()}
        np.testing.assert_allclose(y[:, :, j], arch.apply(one, x[:, :, j]), rtol=1e-5)


def test_dtype_is_kept():
    params = architectures.mlp(2, 4).init(
        jax.random.key(0), heads=1, d_in=2, d_out=2, dtype=jnp.bfloat16
    )
    assert all(p.dtype == jnp.bfloat16 for p in params.values())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="d_out == d_in"):
        architectures.residual_mlp(4).init(jax.random.key(0), heads=1, d_in=3, d_out=2)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        architectures.mlp(0, 4)
    with pytest.raises(ValueError, match="activation='swish'"):
        architectures.mlp(2, 4, activation="swish")
    with pytest.raises(ValueError, match="heads must be a positive int"):
        architectures.matrix().init(jax.random.key(0), heads=0, d_in=3, d_out=2)
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(0), heads=2, d_in=3, d_out=3)
    with pytest.raises(ValueError, match=r"x has shape \(5, 4\), expected last axis 3"):
        arch.apply({k: v[0] for k, v in params.items()}, jnp.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"expected \[..., heads=2, d_in\]"):
        architectures.apply_heads(arch, params, jnp.zeros((5, 3, 3)))
