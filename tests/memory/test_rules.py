"""Inner rules against naive loops written straight from their printed equations (float64).

Each rule is called on a chunk of c tokens with arbitrary per-token "gradients" u_t (all taken at
the chunk-start weights); the reference applies the printed recurrence token by token with the
same u_t. c = 1 is the token-by-token rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nestlearn.memory import retention, rules

C, N, D = 5, 3, 4  # chunk, hidden (output) width, input width


def _data(seed=0, c=C):
    rng = np.random.default_rng(seed)
    return {
        "w": {"w": rng.normal(size=(N, D)), "o": rng.normal(size=(2, N))},  # "w" is the input side
        "u": {"w": rng.normal(size=(c, N, D)), "o": rng.normal(size=(c, 2, N))},
        "s0": {"w": rng.normal(size=(N, D)), "o": rng.normal(size=(2, N))},
        "eta": rng.uniform(0.1, 0.5, size=c),
        "alpha": rng.uniform(0.5, 1.0, size=c),
        "alpha_vec": rng.uniform(0.5, 1.0, size=(c, D)),
        "beta": rng.uniform(0.0, 0.9, size=c),
        "key": rng.normal(size=(c, D)) / np.sqrt(D),
        "v": rng.normal(size=(c, N)),
    }


def _apply(rule, d, c=C, state=None, **extra):
    params = jax.tree.map(jnp.asarray, d["w"])
    state = rule.init(params) if state is None else state
    update = jax.jit(rule.update, static_argnames="input_weight")
    updates, state = update(d["u"], state, params, input_weight="w", **extra)
    return optax.apply_updates(params, updates), state


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["none", "scalar", "per_channel"])
def test_gd_matches_loop(x64, kind):
    d = _data()
    gate = {"none": None, "scalar": d["alpha"], "per_channel": d["alpha_vec"]}[kind]
    ret = getattr(retention, kind)()
    extra = {} if gate is None else {"retention": gate}
    got, _ = _apply(rules.gd(ret), d, step_size=d["eta"], **extra)
    w = {k: v.copy() for k, v in d["w"].items()}
    for t in range(C):
        for name in w:
            if kind == "none":
                a = 1.0
            elif kind == "scalar":
                a = d["alpha"][t]
            else:
                a = d["alpha_vec"][t] if name == "w" else 1.0  # diag(α) on the input axis
            w[name] = a * w[name] - d["eta"][t] * d["u"][name][t]
    _close(got, w)


@pytest.mark.parametrize("forget", [False, True])
def test_momentum_and_titans_match_eqs(x64, forget):
    d = _data(1)
    rule = rules.titans() if forget else rules.momentum()
    params = jax.tree.map(jnp.asarray, d["w"])
    state = rules.MomentumState(jax.tree.map(jnp.asarray, d["s0"]))
    extra = {"retention": d["alpha"]} if forget else {}
    got, got_state = _apply(
        rule, d, state=state, step_size=d["eta"], momentum_decay=d["beta"], **extra
    )
    del params
    w = {k: v.copy() for k, v in d["w"].items()}
    s = {k: v.copy() for k, v in d["s0"].items()}
    for t in range(C):
        for name in w:
            # Titans Eqs. 9–10 (13–14): S_t = η_t S_{t−1} − θ_t u_t, M_t = (1 − α_t) M_{t−1} + S_t.
            s[name] = d["beta"][t] * s[name] - d["eta"][t] * d["u"][name][t]
            keep = 1 - d["alpha"][t] if forget else 1.0
            w[name] = keep * w[name] + s[name]
    _close(got, w)
    _close(got_state.momentum, s)


def test_delta_rule_is_exact_erase_form(x64):
    """Matrix memory + ℓ2 gradients at the chunk start: the printed delta rule at every step."""
    d = _data(2)
    w0, k, v, eta = d["w"]["w"], d["key"], d["v"], d["eta"]
    d["w"] = {"w": w0}
    d["u"] = {"w": np.einsum("ci,cj->cij", np.einsum("oi,ci->co", w0, k) - v, k)}
    got, _ = _apply(rules.delta(), d, step_size=eta, key=k)
    w = w0.copy()
    for t in range(C):  # Eq. 65 (column convention): M_t = M_{t−1}(I − η k kᵀ) + η v kᵀ
        w = w @ (np.eye(D) - eta[t] * np.outer(k[t], k[t])) + eta[t] * np.outer(v[t], k[t])
    _close(got["w"], w)


@pytest.mark.parametrize("per_channel", [False, True])
def test_gated_delta_matches_gdn(x64, per_channel):
    d = _data(3)
    w0, k, v, beta = d["w"]["w"], d["key"], d["v"], d["eta"]
    alpha = d["alpha_vec"] if per_channel else d["alpha"]
    d["w"] = {"w": w0}
    d["u"] = {"w": np.einsum("ci,cj->cij", np.einsum("oi,ci->co", w0, k) - v, k)}
    ret = retention.per_channel() if per_channel else retention.scalar()
    got, _ = _apply(rules.gated_delta(ret), d, step_size=beta, retention=alpha, key=k)
    w = w0.copy()
    for t in range(C):  # GDN Eq. 10: S_t = S_{t−1} α_t (I − β_t k kᵀ) + β_t v kᵀ
        a = np.diag(alpha[t]) if per_channel else alpha[t] * np.eye(D)
        erase = np.eye(D) - beta[t] * np.outer(k[t], k[t])
        w = w @ a @ erase + beta[t] * np.outer(v[t], k[t])
    _close(got["w"], w)


def test_dgd_matches_eq88(x64):
    """Eq. 88 on a two-weight memory: the factor on the input side, α on the others."""
    d = _data(4)
    k, eta, alpha = d["key"], d["eta"], d["alpha"]
    got, _ = _apply(rules.dgd(), d, step_size=eta, retention=alpha, key=k)
    w = {name: x.copy() for name, x in d["w"].items()}
    for t in range(C):
        w["w"] = (
            w["w"] @ (alpha[t] * np.eye(D) - eta[t] * np.outer(k[t], k[t]))
            - eta[t] * d["u"]["w"][t]
        )
        w["o"] = alpha[t] * w["o"] - eta[t] * d["u"]["o"][t]
    _close(got, w)


def test_omega_matches_eq68(x64):
    d = _data(5)
    rng = np.random.default_rng(6)
    win = 3
    d["u"] = {name: rng.normal(size=(C, win, *x.shape)) for name, x in d["w"].items()}
    gamma = rng.uniform(0, 0.5, size=(C, win))
    got, _ = _apply(rules.omega(), d, window_gate=gamma, retention=d["alpha"])
    w = {name: x.copy() for name, x in d["w"].items()}
    for t in range(C):  # Eq. 68: M_t = α_t M_{t−1} − Σ_i γ_{t,i} ∇L̃(k_i, v_i)
        for name in w:
            g = sum(gamma[t, j] * d["u"][name][t, j] for j in range(win))
            w[name] = d["alpha"][t] * w[name] - g
    _close(got, w)


@pytest.mark.parametrize("name", ["gd", "titans", "delta", "gated_delta", "dgd"])
def test_padded_tokens_leave_state_unchanged(x64, name):
    """Masking the last two tokens equals running the first C − 2 tokens alone."""
    d = _data(7)
    rule = getattr(rules, name)()
    extra = {"step_size": d["eta"], "retention": d["alpha"], "key": d["key"]}
    if name == "titans":
        extra["momentum_decay"] = d["beta"]
    mask = np.array([1.0] * (C - 2) + [0.0] * 2)
    got = _apply(rule, d, mask=mask, **extra)
    short = {**d, "u": jax.tree.map(lambda u: u[: C - 2], d["u"])}
    want = _apply(rule, short, **{k: x[: C - 2] for k, x in extra.items()})
    _close(got, want)


def test_bad_extra_args_raise():
    d = _data()
    with pytest.raises(ValueError, match="step_size"):
        _apply(rules.gd(), d)
    with pytest.raises(ValueError, match="step_size has shape"):
        _apply(rules.gd(), d, step_size=np.ones(C + 1))
    with pytest.raises(ValueError, match="retention"):
        _apply(rules.gd(retention.scalar()), d, step_size=d["eta"])
    with pytest.raises(ValueError, match="key has shape"):
        _apply(rules.delta(), d, step_size=d["eta"], key=np.ones((C, D + 1)))
    with pytest.raises(ValueError, match="window_gate has shape"):
        _apply(rules.omega(), d, window_gate=np.ones((C,)), retention=d["alpha"])


def test_zero_and_negative_gates_are_exact(x64):
    """Recursive-doubling products: exact with a_t = 0 (α = 1), b_t = 0 and b_t < 0."""
    d = _data(8)
    alpha = np.array([0.2, 1.0, 0.1, 0.0, 0.3])  # forget gate; a_t = 1 − α_t hits 0 at t = 1
    beta = np.array([0.5, 0.0, -0.4, 0.9, 0.0])
    state = rules.MomentumState(jax.tree.map(jnp.asarray, d["s0"]))
    got, got_state = _apply(
        rules.titans(), d, state=state, step_size=d["eta"], momentum_decay=beta, retention=alpha
    )
    w = {k: v.copy() for k, v in d["w"].items()}
    s = {k: v.copy() for k, v in d["s0"].items()}
    for t in range(C):
        for name in w:
            s[name] = beta[t] * s[name] - d["eta"][t] * d["u"][name][t]
            w[name] = (1 - alpha[t]) * w[name] + s[name]
    _close(got, w)
    _close(got_state.momentum, s)


def test_token_gradients_route(x64):
    """Scalar gates use weighted sums only; per-channel gates and erase rules ask for u_t."""
    d = _data(9)
    calls = []

    def weighted(coef):
        calls.append("weighted")
        return jax.tree.map(lambda u: jnp.tensordot(coef, u, axes=(1, 0)), d["u"])

    def per_token():
        calls.append("per_token")
        return d["u"]

    grads = rules.TokenGradients(C, weighted, per_token)
    params = jax.tree.map(jnp.asarray, d["w"])
    extra = {"step_size": d["eta"], "input_weight": "w"}
    for rule, gate, want in [
        (rules.titans(), d["alpha"], "weighted"),
        (rules.gd(retention.per_channel()), d["alpha_vec"], "per_token"),
        (rules.dgd(), d["alpha"], "per_token"),
    ]:
        calls.clear()
        jax.eval_shape(
            lambda rule=rule, gate=gate: rule.update(
                grads, rule.init(params), params, retention=gate, momentum_decay=d["beta"],
                key=d["key"], **extra,
            )
        )  # fmt: skip
        assert calls == [want]
    with pytest.raises(ValueError, match="omega needs the window gradients"):
        rules.omega().update(grads, rules.omega().init(params), params, window_gate=None)
