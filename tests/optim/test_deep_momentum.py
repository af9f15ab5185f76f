"""DMGD (Eq. 50, arXiv 2512.24695) against a numpy re-implementation with a hand-written backward.

The reference spells out the printed rule for the coordinate-wise memory:
φ_{i+1} = α φ_i − ζ ∇_φ L⁽²⁾(φ_i; k_{i−1}, g_i/s_i) and W_{i+1} = W_i − lr s_i m_{φ_{i+1}}(k_i),
with the MLP's gradient derived by hand (no autodiff), for both inner objectives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no


def _read(phi, k):
    a, w1, b1, w2 = phi
    return k @ a + np.tanh(k @ w1 + b1) @ w2


def _inner_grad(phi, k, v, objective):
    a, w1, b1, w2 = phi
    h = np.tanh(k @ w1 + b1)  # [n, hidden]
    r = k @ a + h @ w2
    n = k.shape[0]
    dr = (r - v) / n if objective == "l2" else -v / n
    dpre = np.outer(dr, w2) * (1 - h**2)
    return (k.T @ dr, k.T @ dpre, dpre.sum(0), h.T @ dr)


@pytest.mark.parametrize("objective", ["l2", "dot"])
def test_deep_momentum_matches_printed_rule(x64, objective):
    rng = np.random.default_rng(0)
    alpha, beta, zeta, lr, eps = 0.95, 0.8, 0.3, 0.05, 1e-8
    shapes = {"w": (5, 3), "b": (4,)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(6)]
    tx = no.deep_momentum(lr, alpha, beta, zeta, hidden=4, objective=objective)
    state = tx.init(jax.tree.map(jnp.asarray, params))
    init_phi = {k: tuple(np.asarray(x) for x in state[0].memory[k]) for k in shapes}
    update = jax.jit(tx.update)
    p = jax.tree.map(jnp.asarray, params)
    ours = []
    for g in grads:
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
        ours.append(p)
    for name in shapes:
        w, phi = params[name].copy(), init_phi[name]
        m_prev, g_prev = np.zeros(shapes[name]), np.zeros(shapes[name])
        for i, g in enumerate(gr[name] for gr in grads):
            m = beta * m_prev + g
            s = np.sqrt(np.mean(m**2)) + eps
            if i > 0:
                k_prev = np.stack([g_prev.ravel(), m_prev.ravel()], -1) / s
                d = _inner_grad(phi, k_prev, g.ravel() / s, objective)
                phi = tuple(alpha * p_ - zeta * d_ for p_, d_ in zip(phi, d))
            k_now = np.stack([g.ravel(), m.ravel()], -1) / s
            w = w - lr * s * _read(phi, k_now).reshape(w.shape)
            m_prev, g_prev = m, g
            np.testing.assert_allclose(ours[i][name], w, rtol=1e-9, atol=1e-12)


def test_deep_momentum_without_inner_steps_is_ema_momentum(x64):
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.standard_normal((3, 4)))}
    beta, lr = 0.9, 0.1
    ours_tx = no.deep_momentum(lr, 1.0, beta, inner_lr=0.0)
    ref_tx = optax.chain(optax.ema(beta, debias=False), optax.scale(-lr))
    s1, s2, p1, p2 = ours_tx.init(params), ref_tx.init(params), params, params
    ours_update, ref_update = jax.jit(ours_tx.update), jax.jit(ref_tx.update)
    for _ in range(5):
        g = {"w": jnp.asarray(rng.standard_normal((3, 4)))}
        u1, s1 = ours_update(g, s1, p1)
        u2, s2 = ref_update(g, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        np.testing.assert_allclose(p1["w"], p2["w"], rtol=1e-10)


def test_deep_momentum_rejects_bad_arguments():
    with pytest.raises(ValueError, match="objective"):
        no.deep_momentum(0.1, objective="l1")
    with pytest.raises(ValueError, match="hidden"):
        no.deep_momentum(0.1, hidden=0)
