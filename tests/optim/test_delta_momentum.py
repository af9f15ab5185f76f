"""Delta Momentum (Eqs. 48–49, arXiv 2512.24695; NeurIPS Eq. 22) against numpy references.

Every form is checked in float64 against its equation written with the Gram matrix formed
explicitly: the printed forms ("arxiv", "neurips") against the printed recursions, the default
"implicit" form against (α m + P g)(I + η gᵀg)⁻¹ and against the stationarity condition of the
proximal objective it minimises (docs/optimizers.md). The two placements of the learning rate are
checked against a decaying schedule. The references use the printed convention W ← W + m'.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no

STEPS = 6


def _matrix(x):
    return x.reshape(1, 1) if x.ndim == 0 else x.reshape(-1, x.shape[-1])


def _random_grads(rng, shapes, steps=STEPS, scale=1.0):
    return [{k: scale * rng.standard_normal(s) for k, s in shapes.items()} for _ in range(steps)]


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


def _reference(form, params, grads, alpha, etas, zeta, placement="update", precondition=None):
    """W after each step, in the printed convention m' = −η m, W ← W + m'.

    placement "momentum" (Eq. 49): m' ← E(m', −η_t P g), W ← W + m'.
    placement "update" (optax):    m ← E(m, P g),        W ← W − η_t m.
    E(m, w) = m(αI − ζ gᵀg) + w (arxiv), (αI − ζ gᵀg) m + w (neurips),
    (α m + w)(I + ζ_t gᵀg)⁻¹ with ζ_t = η_t unless given (implicit).
    """
    w = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros(v.shape) for k, v in params.items()}
    out = []
    for g, eta in zip(grads, etas, strict=True):
        for k in w:
            gm, mm = _matrix(g[k]), _matrix(m[k])
            pg = gm if precondition is None else precondition * gm
            write = -eta * pg if placement == "momentum" else pg
            gram = gm.T @ gm  # [c, c], formed explicitly here
            eye = np.eye(gram.shape[0])
            if form == "implicit":
                z = eta if zeta is None else zeta
                mm = (alpha * mm + write) @ np.linalg.inv(eye + z * gram)
            elif form == "arxiv":
                mm = mm @ (alpha * eye - zeta * gram) + write
            else:
                mm = (alpha * eye - zeta * gram) @ mm + write
            m[k] = mm.reshape(m[k].shape)
            w[k] = w[k] + m[k] if placement == "momentum" else w[k] - eta * m[k]
        out.append({k: v.copy() for k, v in w.items()})
    return out


SHAPES = {"w": (3, 5), "tall": (6, 2), "t": (2, 2, 5), "b": (5,), "s": ()}


@pytest.mark.parametrize("form", ["arxiv", "neurips"])
def test_printed_forms_match_eq49_and_neurips_eq22(x64, form):
    """arXiv Eq. 49: m' ← m'(αI − ζ gᵀg) − η g; NeurIPS Eq. 22: m' ← (αI − ζ gᵀg) m' − η g."""
    rng = np.random.default_rng(4)
    alpha, lr, zeta = 0.9, 0.05, 0.3
    shapes = SHAPES if form == "arxiv" else {"w": (4, 4)}
    params = {k: rng.standard_normal(s) for k, s in shapes.items()}
    grads = _random_grads(rng, shapes)
    expected = _reference(form, params, grads, alpha, [lr] * STEPS, zeta, placement="momentum")
    _assert_trajectories(
        _run(no.delta_momentum(lr, alpha, form=form, erase_rate=zeta), params, grads), expected
    )


def test_printed_form_is_eq49_with_unit_erase(x64):
    """form="arxiv" without erase_rate is Eq. 49 as printed (ζ = 1)."""
    rng = np.random.default_rng(7)
    params = {"w": rng.standard_normal((3, 4))}
    grads = _random_grads(rng, {"w": (3, 4)}, scale=0.3)
    expected = _reference("arxiv", params, grads, 0.9, [0.1] * STEPS, 1.0)
    _assert_trajectories(_run(no.delta_momentum(0.1, form="arxiv"), params, grads), expected)


@pytest.mark.parametrize("zeta", [None, 0.3])
def test_implicit_form_matches_closed_form(x64, zeta):
    """m ← (α m + g)(I + ζ gᵀg)⁻¹, ζ = η by default; Woodbury (r < c) and direct branches."""
    rng = np.random.default_rng(5)
    alpha, lr = 0.9, 0.2
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = _random_grads(rng, SHAPES, scale=3.0)
    expected = _reference("implicit", params, grads, alpha, [lr] * STEPS, zeta)
    tx = no.delta_momentum(lr, alpha, erase_rate=zeta)
    _assert_trajectories(_run(tx, params, grads), expected)


def test_implicit_step_is_the_exact_argmin(x64):
    """m' = −η m zeroes ∇[½‖m'gᵀ‖² + ⟨m', g⟩ + 1/(2η)‖m' − α m'_t‖²] (the proximal objective)."""
    rng = np.random.default_rng(6)
    alpha, lr = 0.8, 0.3
    g1, g2 = (jnp.asarray(10.0 * rng.standard_normal((4, 7))) for _ in range(2))
    tx = no.scale_by_delta_momentum(lr, alpha)
    state = tx.init({"w": g1})
    _, state = tx.update({"w": g1}, state)
    previous = -lr * np.asarray(state.momentum["w"])
    _, state = tx.update({"w": g2}, state)
    new = -lr * np.asarray(state.momentum["w"])
    g2 = np.asarray(g2)
    grad = new @ g2.T @ g2 + g2 + (new - alpha * previous) / lr
    np.testing.assert_allclose(grad, 0.0, atol=1e-9 * np.abs(g2).max() ** 3)


def test_preconditioner_writes_pg(x64):
    rng = np.random.default_rng(5)
    params = {"w": rng.standard_normal((6, 2))}  # r > c: evaluated as m (gᵀ g)
    grads = _random_grads(rng, {"w": (6, 2)})
    for form in ("arxiv", "implicit"):
        expected = _reference(form, params, grads, 0.8, [0.1] * STEPS, 1.0, precondition=0.5)
        tx = no.delta_momentum(0.1, 0.8, form=form, erase_rate=1.0, preconditioner=optax.scale(0.5))
        _assert_trajectories(_run(tx, params, grads), expected)


@pytest.mark.parametrize("form", ["implicit", "arxiv"])
def test_schedule_inside_and_outside_the_recursion(x64, form):
    """With a linear decay 0.1 → 0.01 each placement matches its equation, and they differ."""
    rng = np.random.default_rng(8)
    steps, alpha = 20, 0.9

    def schedule(count):  # linear 0.1 → 0.01, in float64
        return 0.1 - 0.09 * jnp.asarray(count, jnp.float64) / steps

    etas = [0.1 - 0.09 * t / steps for t in range(steps)]
    params = {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal((4,))}
    grads = _random_grads(rng, {"w": (3, 4), "b": (4,)}, steps=steps, scale=0.5)
    zeta = None if form == "implicit" else 0.5
    finals = {}
    for placement in ("update", "momentum"):
        expected = _reference(form, params, grads, alpha, etas, zeta, placement=placement)
        tx = no.delta_momentum(
            schedule, alpha, form=form, erase_rate=zeta, learning_rate_in=placement
        )
        actual = _run(tx, params, grads)
        _assert_trajectories(actual, expected)
        finals[placement] = actual[-1]["w"]
    moved = np.abs(finals["momentum"] - params["w"]).max()
    assert np.abs(finals["momentum"] - finals["update"]).max() > 0.05 * moved


def test_constant_rate_placements_agree(x64):
    rng = np.random.default_rng(9)
    params = {"w": rng.standard_normal((3, 4))}
    grads = _random_grads(rng, {"w": (3, 4)})
    a = _run(no.delta_momentum(0.05), params, grads)
    b = _run(no.delta_momentum(0.05, learning_rate_in="momentum"), params, grads)
    _assert_trajectories(a, b)


def _least_squares_finals(tx_factory, lrs, steps=300):
    """The 64 × 8 → 4 least-squares problem, no clipping: final loss at each rate (vmapped)."""
    kx, kw = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (64, 8))
    y = x @ jax.random.normal(kw, (8, 4))
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros((4,))}

    def loss(p):
        return 0.5 * jnp.mean(jnp.sum((x @ p["w"] + p["b"] - y) ** 2, -1))

    def final(lr):
        tx = tx_factory(lr)

        def step(carry, _):
            p, s = carry
            u, s = tx.update(jax.grad(loss)(p), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
        return loss(p)

    return np.asarray(jax.jit(jax.vmap(final))(jnp.asarray(lrs))), float(loss(params))


def test_default_trains_least_squares_without_clipping_where_eq49_diverges():
    lrs = [1e-3, 3e-2, 1e-1, 1.0]
    finals, initial = _least_squares_finals(no.delta_momentum, lrs)
    assert np.all(np.isfinite(finals)) and np.all(finals < initial), finals
    assert finals[lrs.index(3e-2)] < 1e-6 * initial
    printed, _ = _least_squares_finals(lambda lr: no.delta_momentum(lr, form="arxiv"), lrs)
    assert not np.any(np.isfinite(printed)), printed  # ‖g‖² ≫ 1 + α: the diagnosis


def test_neurips_rejects_non_square():
    tx = no.delta_momentum(0.1, 0.9, form="neurips")
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        tx.init({"w": jnp.zeros((3, 5))})


def test_composes_with_clipping_and_trains():
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
