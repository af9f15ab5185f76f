"""M3 (Algorithm 1, §7.2, arXiv 2512.24695) against a numpy transcription of Algorithm 1.

The reference keeps the algorithm's two loops: an outer loop over chunks k of f steps, which
refreshes the slow momentum from the f gradients of chunk k−1 (half-open range),
and an inner loop over the steps of chunk k.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no


def _ns(x, steps, coeffs=no.QUINTIC, eps=1e-8):
    if x.ndim < 2:
        return x
    a, b, c = coeffs
    mat = x.reshape(-1, x.shape[-1])
    mat = mat / (np.linalg.norm(mat) + eps)
    for _ in range(steps):
        gram = mat @ mat.T
        mat = a * mat + b * gram @ mat + c * gram @ gram @ mat
    return mat.reshape(x.shape)


def _m3_reference(theta, grads, lr, b1, b2, b3, alpha, eps, steps, f, ema, form):
    m1, m2, v = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    o2 = np.zeros_like(theta)
    trajectory, t, k = [], 0, 0
    while t < len(grads):
        if k > 0:  # M² ← M² + β3 Σ_{i=(k−1)f+1}^{kf} g_i ; O² ← NS(M²)
            chunk = sum(grads[(k - 1) * f : k * f])
            m2 = b3 * m2 + (1 - b3) * chunk if ema else m2 + b3 * chunk
            m2_hat = m2 / (1 - b3**k) if ema else m2
            if form == "combined":  # the slow chunk mean, combined with M¹ before NS
                o2 = m2_hat / f
            else:
                if form == "preconditioned":  # V̂ after the update of the chunk's first step
                    g = grads[t]
                    v_next = b2 * v + (1 - b2) * g**2 if ema else v + b2 * g**2
                    v_next_hat = v_next / (1 - b2 ** (t + 1)) if ema else v_next
                    m2_hat = m2_hat / (np.sqrt(v_next_hat) + eps)
                o2 = _ns(m2_hat, steps)
        for _ in range(f):
            if t == len(grads):
                break
            g = grads[t]
            t += 1
            m1 = b1 * m1 + (1 - b1) * g if ema else m1 + b1 * g
            v = b2 * v + (1 - b2) * g**2 if ema else v + b2 * g**2
            m1_hat = m1 / (1 - b1**t) if ema else m1
            v_hat = v / (1 - b2**t) if ema else v
            if form == "combined":  # NS((M¹ + α M²/f) / (√V + ε))
                direction = _ns((m1_hat + alpha * o2) / (np.sqrt(v_hat) + eps), steps)
            elif form == "printed":  # (NS(M¹) + α NS(M²)) / (√V + ε)
                direction = (_ns(m1_hat, steps) + alpha * o2) / (np.sqrt(v_hat) + eps)
            else:  # NS(M¹ / (√V + ε)) + α NS(M² / (√V + ε))
                direction = _ns(m1_hat / (np.sqrt(v_hat) + eps), steps) + alpha * o2
            theta = theta - lr * direction
            trajectory.append(theta)
        k += 1
    return trajectory


@pytest.mark.parametrize("form", ["printed", "preconditioned", "combined"])
@pytest.mark.parametrize("ema", [False, True])
def test_m3_matches_algorithm_1(x64, ema, form):
    """form="printed", ema=False is Algorithm 1 as printed; the others change one line each."""
    rng = np.random.default_rng(0)
    shapes = {"w": (4, 3), "b": (3,)}
    hp = dict(lr=0.01, b1=0.9, b2=0.99, b3=0.8, alpha=0.7, eps=1e-6, steps=3, f=3)
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = [{k: rng.standard_normal(s) for k, s in shapes.items()} for _ in range(8)]
    tx = no.m3(
        hp["lr"],
        hp["b1"],
        hp["b2"],
        hp["b3"],
        hp["alpha"],
        hp["eps"],
        hp["steps"],
        hp["f"],
        form=form,
        ema=ema,
    )
    state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
    update = jax.jit(tx.update)
    ours = []
    for g in grads:
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
        ours.append(p)
    for name in shapes:
        ref = _m3_reference(params[name], [g[name] for g in grads], ema=ema, form=form, **hp)
        for step, (a, e) in enumerate(zip(ours, ref, strict=True)):
            np.testing.assert_allclose(a[name], e, rtol=1e-9, atol=1e-12, err_msg=f"{name}@{step}")


def test_m3_slow_level_sees_each_gradient_once(x64):
    """After 2f steps the slow momentum holds β3 (g_1 + … + g_f): one refresh, f gradients."""
    f, beta3 = 3, 0.5
    tx = no.scale_by_m3(beta3=beta3, slow_period=f, ema=False)
    params = {"w": jnp.zeros((2, 2))}
    state = tx.init(params)
    grads = [jnp.full((2, 2), float(i + 1)) for i in range(2 * f)]
    update = jax.jit(tx.update)
    for g in grads:
        _, state = update({"w": g}, state)
    np.testing.assert_allclose(state.slow["w"], beta3 * sum(grads[:f]))
    np.testing.assert_allclose(state.pending["w"], sum(grads[f:]))


def test_m3_rejects_bad_period():
    with pytest.raises(ValueError, match="slow_period"):
        no.m3(0.1, slow_period=0)


def test_printed_form_moves_coordinates_whose_gradient_is_tiny():
    """The diagnosis: Algorithm 1 divides NS(M¹), whose entries are spread evenly, by √V per
    coordinate, so a coordinate whose gradients have been tiny (a unit that fired for one
    example, an almost-constant input) moves by lr·|O|/√V ≫ lr; the default normalises before
    orthogonalizing, and its update keeps spectral norm ≈ lr."""
    g = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)))
    g = g.at[1, 1].set(1e-9)
    for form, ema in (("printed", False), ("preconditioned", True), ("combined", True)):
        tx = no.m3(1e-3, form=form, ema=ema)
        updates, _ = tx.update({"w": g}, tx.init({"w": g}))
        tiny = float(jnp.abs(updates["w"][1, 1]))
        spectral = float(jnp.linalg.norm(updates["w"], 2))
        if form == "printed":
            assert tiny > 1e3, tiny  # 1e-3 · O(0.1) / (√0.999 · 1e-9)
        else:
            assert spectral < 2e-3, spectral


def test_combined_form_weighs_the_slow_level_by_its_size():
    """A slow momentum whose chunk sums have averaged out (gradients alternating in sign, as
    near a minimum) adds a direction of spectral norm ≈ α·lr when orthogonalized on its own;
    combined with M¹ before NS it adds almost nothing."""
    rng = np.random.default_rng(2)
    g = jnp.asarray(rng.standard_normal((6, 4)))
    grads = [(-1.0) ** i * g + 1e-6 * rng.standard_normal((6, 4)) for i in range(9)]
    slow_push = {}
    for form in ("preconditioned", "combined"):
        final = []
        for alpha in (0.5, 0.0):
            tx = no.m3(1e-3, alpha=alpha, slow_period=4, form=form)
            state = tx.init({"w": g})
            for x in grads:  # two refreshes; the chunk sums are ≈ 1e-6
                u, state = tx.update({"w": x}, state)
            final.append(u["w"])
        slow_push[form] = float(jnp.linalg.norm(final[0] - final[1], 2))
    assert slow_push["preconditioned"] > 2e-4, slow_push  # ≈ α·lr = 5e-4
    assert slow_push["combined"] < 1e-5, slow_push
