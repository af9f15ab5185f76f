"""Momentum memories against plain numpy re-implementations of their printed equations.

Covers momentum as a memory (Eq. 13), preconditioned momentum (Eqs. 46–47), Delta Momentum
(Eq. 49, NeurIPS Eq. 22) and higher-order feature momentum (Eq. 51), arXiv 2512.24695.
Printed rules use the NeurIPS convention W ← W + m', m' ← α m' − η(...); the references below
are written in that convention and compared with the parameters the optax transforms produce.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

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


def _matrix(x):
    return x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, x.shape[-1])


@pytest.mark.parametrize("form", ["arxiv", "neurips"])
def test_delta_momentum_matches_printed_rule(x64, form):
    """arXiv Eq. 49: m' ← m'(αI − ζ gᵀg) − η g; NeurIPS Eq. 22: m' ← (αI − ζ gᵀg) m' − η g."""
    rng = np.random.default_rng(4)
    alpha, lr, zeta = 0.9, 0.05, 0.3
    shapes = {"w": (3, 5), "t": (2, 2, 5), "b": (5,)} if form == "arxiv" else {"w": (4, 4)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = _random_grads(rng, shapes)
    w = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros(s) for k, s in shapes.items()}
    expected = []
    for g in grads:
        for k in w:
            gm, mm = _matrix(g[k]), _matrix(m[k])
            gram = gm.T @ gm  # [c, c], formed explicitly here
            decay = alpha * np.eye(gram.shape[0]) - zeta * gram
            mm = (mm @ decay if form == "arxiv" else decay @ mm) - lr * gm
            m[k] = mm.reshape(shapes[k])
            w[k] = w[k] + m[k]
        expected.append({k: v.copy() for k, v in w.items()})
    tx = no.delta_momentum(lr, alpha, form=form, erase_rate=zeta)
    _assert_trajectories(_run(tx, params, grads), expected)


def test_delta_momentum_with_preconditioner_writes_pg(x64):
    rng = np.random.default_rng(5)
    alpha, lr = 0.8, 0.1
    params = {"w": rng.standard_normal((6, 2))}  # r > c: evaluated as m (gᵀ g)
    grads = _random_grads(rng, {"w": (6, 2)})
    w, m, expected = params["w"].copy(), np.zeros((6, 2)), []
    for g in grads:
        pg = 0.5 * g["w"]
        m = m @ (alpha * np.eye(2) - g["w"].T @ g["w"]) - lr * pg
        w = w + m
        expected.append({"w": w.copy()})
    tx = no.delta_momentum(lr, alpha, preconditioner=optax.scale(0.5))
    _assert_trajectories(_run(tx, params, grads), expected)


def test_delta_momentum_neurips_rejects_non_square():
    tx = no.delta_momentum(0.1, 0.9, form="neurips")
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        tx.init({"w": jnp.zeros((3, 5))})
    with pytest.raises(ValueError, match="form"):
        no.delta_momentum(0.1, 0.9, form="other")
    with pytest.raises(ValueError, match="alpha"):
        no.delta_momentum(0.1, 1.5)


def test_delta_momentum_composes_with_clipping_and_trains():
    """optax.chain(clip_by_global_norm, delta_momentum) fits a small regression MLP."""
    key_x, key_w, key_1, key_2 = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(key_x, (64, 4))
    y = jnp.sin(x @ jax.random.normal(key_w, (4, 1)))
    params = {
        "w1": 0.5 * jax.random.normal(key_1, (4, 16)),
        "b1": jnp.zeros((16,)),
        "w2": 0.5 * jax.random.normal(key_2, (16, 1)),
    }

    def loss(p):
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    tx = optax.chain(optax.clip_by_global_norm(1.0), no.delta_momentum(0.05, 0.9))
    state = tx.init(params)

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (optax.apply_updates(p, u), s), value

    (params, state), values = jax.jit(lambda c: jax.lax.scan(step, c, length=150))((params, state))
    assert float(loss(params)) < 0.2 * float(values[0])


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
