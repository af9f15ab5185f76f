"""Momentum memories against plain numpy re-implementations of their printed equations.

Covers momentum as a memory (Eq. 13), preconditioned momentum (Eqs. 46–47) and higher-order
feature momentum (Eq. 51), arXiv 2512.24695; Delta Momentum has its own file.
Printed rules use the NeurIPS convention W ← W + m', m' ← α m' − η(...); the references below
are written in that convention and compared with the parameters the optax transforms produce.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import nestlearn.optim as no

STEPS = 6


def _random_grads(rng, shapes, steps=STEPS):
    return [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]


def _run(tx, params, grads):
    """Applies tx to a fixed sequence of gradients; returns the parameter trajectory."""
    params = jax.tree.map(jnp.asarray, params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    trajectory = []
    for g in grads:
        updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(jax.tree.map(np.asarray, params))
    return trajectory


def _assert_trajectories(actual, expected, rtol=1e-10, atol=1e-12):
    for a, e in zip(actual, expected, strict=True):
        for k in e:
            np.testing.assert_allclose(a[k], e[k], rtol=rtol, atol=atol, err_msg=k)


SHAPES = {"w": (3, 5), "b": (5,), "c": (4, 2, 3)}


def test_momentum_memory_equals_optax_sgd_momentum():
    rng = np.random.default_rng(0)
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = _random_grads(rng, SHAPES, steps=50)
    grads = [{k: v.astype(np.float32) for k, v in g.items()} for g in grads]
    ours = _run(no.momentum_memory(0.05, beta=0.8), params, grads)
    ref = _run(optax.sgd(0.05, momentum=0.8), params, grads)
    _assert_trajectories(ours, ref, rtol=0, atol=0)


def test_momentum_memory_is_a_gradient_step_on_eq13(x64):
    """m_{t+1} = m_t − ∇_m[−⟨m, g⟩ + (1−β)/2 ‖m‖²] (Eq. 13 with retention), NeurIPS sign."""
    rng = np.random.default_rng(1)
    beta, lr = 0.7, 0.1
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = _random_grads(rng, SHAPES)
    w = {k: v.copy() for k, v in params.items()}
    mem = {k: np.zeros(s) for k, s in SHAPES.items()}
    expected = []
    for g in grads:
        for k in w:
            inner_grad = -g[k] + (1 - beta) * mem[k]  # ∇_m of the inner objective
            mem[k] = mem[k] - inner_grad
            w[k] = w[k] - lr * mem[k]
        expected.append({k: v.copy() for k, v in w.items()})
    _assert_trajectories(_run(no.momentum_memory(lr, beta), params, grads), expected)


def test_preconditioned_momentum_with_rms_preconditioner(x64):
    """m' ← α m' − η P g with P g = g / sqrt(ν + ε), ν ← d ν + (1−d) g² (Eq. 47)."""
    rng = np.random.default_rng(2)
    alpha, lr, decay, eps = 0.9, 0.03, 0.8, 1e-6
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = _random_grads(rng, SHAPES)
    w = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    nu = {k: np.zeros(s) for k, s in SHAPES.items()}
    expected = []
    for g in grads:
        for k in w:
            nu[k] = decay * nu[k] + (1 - decay) * g[k] ** 2
            pg = g[k] / np.sqrt(nu[k] + eps)
            m[k] = alpha * m[k] - lr * pg
            w[k] = w[k] + m[k]
        expected.append({k: v.copy() for k, v in w.items()})
    tx = no.preconditioned_momentum(lr, alpha, optax.scale_by_rms(decay=decay, eps=eps))
    _assert_trajectories(_run(tx, params, grads), expected)


def test_preconditioned_momentum_identity_is_momentum(x64):
    rng = np.random.default_rng(3)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = _random_grads(rng, SHAPES)
    ours = _run(no.preconditioned_momentum(0.1, 0.6), params, grads)
    _assert_trajectories(ours, _run(optax.sgd(0.1, momentum=0.6), params, grads))


def test_feature_momentum_matches_eq51(x64):
    """m' ← α m' − η φ(g), φ(g) = c0 + c1 g + c3 g³ element-wise (Eq. 51)."""
    rng = np.random.default_rng(6)
    alpha, lr, coeffs = 0.85, 0.02, (0.1, 1.0, 0.0, -0.2)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = _random_grads(rng, SHAPES)
    w = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    expected = []
    for g in grads:
        for k in w:
            phi = sum(c * g[k] ** j for j, c in enumerate(coeffs))
            m[k] = alpha * m[k] - lr * phi
            w[k] = w[k] + m[k]
        expected.append({k: v.copy() for k, v in w.items()})
    _assert_trajectories(_run(no.feature_momentum(lr, alpha, coeffs), params, grads), expected)
