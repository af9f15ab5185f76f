"""Delta Gradient Descent (Eqs. 56–57, arXiv 2512.24695): one step is the exact argmin of Eq. 56.

References solve the proximal problems with numpy's linear solver on the full quadratic over
vec(W), independently of the Sherman–Morrison / Woodbury forms the transform uses.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no


def _argmin_eq56(w_t, x, u, eta):
    """argmin_W ½‖W x − u‖² + 1/(2η)‖W − W_t‖², W [d_out, d_in]: W (I + η x xᵀ) = W_t + η u xᵀ."""
    lhs = np.eye(x.size) + eta * np.outer(x, x)
    return np.linalg.solve(lhs.T, (w_t + eta * np.outer(u, x)).T).T


def _argmin_batch(w_t, grad, xs, eta):
    """argmin_W ⟨W, G⟩ + ½ tr(W C Wᵀ) + 1/(2η)‖W − W_t‖², C = mean_b x_b x_bᵀ, over vec(W)."""
    d_out, d_in = w_t.shape
    c = xs.T @ xs / xs.shape[0]
    hessian = np.kron(np.eye(d_out), c + np.eye(d_in) / eta)  # row-major vec(W)
    rhs = (w_t / eta - grad).ravel()
    return np.linalg.solve(hessian, rhs).reshape(d_out, d_in)


def test_one_step_is_argmin_of_eq56_and_eq57(x64):
    rng = np.random.default_rng(0)
    d_out, d_in, eta = 3, 5, 0.7
    w_t, x, u = (
        rng.standard_normal((d_out, d_in)),
        rng.standard_normal(d_in),
        rng.standard_normal(d_out),
    )
    grad = -np.outer(u, x)  # ∇_W of ⟨W x, −u⟩: ∇_y L = −u
    tx = no.dgd(eta, layout="out_in")
    updates, _ = tx.update({"w": grad}, tx.init({"w": w_t}), {"w": w_t}, layer_inputs={"w": x})
    w_next = w_t + np.asarray(updates["w"])
    np.testing.assert_allclose(w_next, _argmin_eq56(w_t, x, u, eta), rtol=1e-10, atol=1e-12)
    eta_p = eta / (1 + eta * x @ x)  # Eq. 57 with the general-norm η′
    eq57 = w_t @ (np.eye(d_in) - eta_p * np.outer(x, x)) + eta_p * np.outer(u, x)
    np.testing.assert_allclose(w_next, eq57, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch", [2, 9])  # Woodbury (n < d_in) and direct solve (n ≥ d_in)
def test_batch_step_is_exact_argmin_flax_layout(x64, batch):
    rng = np.random.default_rng(batch)
    d_in, d_out, eta = 6, 4, 0.3
    kernel = rng.standard_normal((d_in, d_out))  # Flax layout, y = x K
    xs = rng.standard_normal((batch, d_in))
    grad = rng.standard_normal((d_in, d_out))
    tx = no.dgd(eta)
    updates, _ = tx.update(
        {"k": grad}, tx.init({"k": kernel}), {"k": kernel}, layer_inputs={"k": xs}
    )
    expected = _argmin_batch(kernel.T, grad.T, xs, eta).T
    np.testing.assert_allclose(kernel + np.asarray(updates["k"]), expected, rtol=1e-9)


def test_several_steps_with_schedule_and_plain_leaves(x64):
    """Weights with inputs take DGD steps; leaves with None take plain gradient steps."""
    rng = np.random.default_rng(3)
    schedule = optax.linear_schedule(0.5, 0.1, 4)
    params = {"k": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
    tx = no.dgd(schedule)
    state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
    update = jax.jit(tx.update)
    k_ref, b_ref = params["k"].copy(), params["b"].copy()
    for step in range(4):
        xs = rng.standard_normal((2, 3, 4))  # leading axes are the batch
        g = {"k": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)}
        u, state = update(g, state, p, layer_inputs={"k": xs, "b": None})
        p = optax.apply_updates(p, u)
        eta = float(schedule(jnp.asarray(step, jnp.int32)))  # as evaluated on the int32 count
        k_ref = _argmin_batch(k_ref.T, g["k"].T, xs.reshape(-1, 4), eta).T
        b_ref = b_ref - eta * g["b"]
        np.testing.assert_allclose(p["k"], k_ref, rtol=1e-9)
        np.testing.assert_allclose(p["b"], b_ref, rtol=1e-12)


def test_dgd_rejects_missing_or_bad_inputs():
    tx = no.dgd(0.1)
    params = {"k": jnp.zeros((4, 3))}
    state = tx.init(params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, layer_inputs={"k": jnp.ones(4)})
    with pytest.raises(ValueError, match="layer_inputs"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5,\)"):
        tx.update(params, state, params, layer_inputs={"k": jnp.ones(5)})
    with pytest.raises(ValueError, match="layout"):
        no.dgd(0.1, layout="rows")
