"""The scan against naive per-token loops of its own definition (float64).

Definition of the chunk-parallel form: the sequence is cut into chunks of c tokens; every token of
a chunk reads the chunk-start weights, y_t = M_{t'}(q_t), and its gradient is taken there,
u_t = ∇L̃(M_{t'}; k_t, v_t); the rule's printed recurrence then runs token by token with these
u_t. With c = 1 this is the plain token-by-token recurrence (read before write).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from nestlearn.memory import architectures, objectives, retention, rules
from nestlearn.memory.scan import MemoryState, default_state, scan

B, T, H, D = 2, 7, 2, 3


def _inputs(seed=0, b=B, t=T, h=H, d=D, d_out=D):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(b, t, h, d))
    return {
        "q": rng.normal(size=(b, t, h, d)),
        "k": k / np.linalg.norm(k, axis=-1, keepdims=True),
        "v": rng.normal(size=(b, t, h, d_out)),
        "step_size": rng.uniform(0.1, 0.6, size=(b, t, h)),
        "retention": rng.uniform(0.0, 0.3, size=(b, t, h)),
        "momentum_decay": rng.uniform(0.0, 0.9, size=(b, t, h)),
    }


def _naive_titans(arch, objective, params, x, chunk):
    """Titans Eqs. 13–14 with chunk-start gradients (Eqs. 16–18), one Python step per token."""
    b, t, h, _ = x["k"].shape
    grad = jax.jit(jax.grad(lambda m, k, v: objective.loss(arch.apply(m, k), v)))
    read = jax.jit(arch.apply)
    ys = np.zeros(x["v"].shape)
    finals = []
    for i in range(b):
        for j in range(h):
            w = {name: np.asarray(p[j]) for name, p in params.items()}
            s = {name: np.zeros_like(p) for name, p in w.items()}
            for start in range(0, t, chunk):
                w_start = dict(w)
                for n in range(start, min(start + chunk, t)):
                    ys[i, n, j] = read(w_start, x["q"][i, n, j])
                    u = grad(w_start, x["k"][i, n, j], x["v"][i, n, j])
                    theta, alpha = x["step_size"][i, n, j], x["retention"][i, n, j]
                    for name in w:
                        s[name] = x["momentum_decay"][i, n, j] * s[name] - theta * np.asarray(
                            u[name]
                        )
                        w[name] = (1 - alpha) * w[name] + s[name]
            finals.append(w)
    return ys, finals


CONFIGS = {
    "mlp_l2": (architectures.mlp(2, 4), objectives.l2()),
    "residual_huber": (architectures.residual_mlp(4, "gelu"), objectives.huber(0.5)),
}


@pytest.mark.parametrize(("config", "chunk"), [("mlp_l2", 1), ("mlp_l2", 3), ("residual_huber", 3)])
def test_scan_matches_chunk_start_definition(x64, config, chunk):
    arch, objective = CONFIGS[config]
    params = arch.init(jax.random.key(1), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.3, params)  # non-zero output weights for residual_mlp
    x = _inputs(1)
    ys, state = scan(arch, objective, rules.titans(), params, x, chunk_size=chunk)
    want_ys, want_w = _naive_titans(arch, objective, params, x, chunk)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-9, atol=1e-9)
    for idx, w in enumerate(want_w):
        for name, e in w.items():
            got = state.weights[name][idx // H, idx % H]
            np.testing.assert_allclose(got, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("chunk", [1, 3])
def test_matrix_l2_delta_is_the_delta_recurrence(x64, chunk):
    """S_t = S_{t−1}(I − β k kᵀ) + β v kᵀ at every chunk size; reads per the convention."""
    arch = architectures.matrix()
    rng = np.random.default_rng(2)
    params = {"w": rng.normal(size=(H, D, D))}
    x = _inputs(2)
    del x["retention"], x["momentum_decay"]
    ys, state = scan(arch, objectives.l2(), rules.delta(), params, x, chunk_size=chunk)
    for i in range(B):
        for j in range(H):
            s = params["w"][j]
            s_start = s
            for n in range(T):
                if n % chunk == 0:
                    s_start = s
                k, v, beta = x["k"][i, n, j], x["v"][i, n, j], x["step_size"][i, n, j]
                np.testing.assert_allclose(ys[i, n, j], s_start @ x["q"][i, n, j], atol=1e-10)
                s = s @ (np.eye(D) - beta * np.outer(k, k)) + beta * np.outer(v, k)
            np.testing.assert_allclose(state.weights["w"][i, j], s, atol=1e-10)


def test_read_after_write_matches_matrix_memory_delta_rule(x64):
    """Chunk 1 with read_after_write is o_t = S_t q_t, the matrix-memory convention."""
    matrix_memory = pytest.importorskip("nestlearn.memory.matrix_memory")
    x = _inputs(3)
    params = {"w": jnp.zeros((H, D, D))}
    alpha = 1 - x["retention"]
    x["retention"] = alpha
    ys, state = scan(
        architectures.matrix(),
        objectives.l2(),
        rules.gated_delta(),
        params,
        x,
        chunk_size=1,
        read_after_write=True,
    )
    want, s = matrix_memory.gated_delta_rule(
        x["q"], x["k"], x["v"], alpha, x["step_size"], chunk_size=4
    )
    np.testing.assert_allclose(ys, want, atol=1e-8)
    np.testing.assert_allclose(state.weights["w"], s, atol=1e-8)


def test_stream_in_pieces_equals_one_call(x64):
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(2), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    x = _inputs(4, t=8)
    run = jax.jit(
        lambda xs, s: scan(
            arch, objectives.l2(), rules.titans(), params, xs, chunk_size=2, initial_state=s
        )
    )
    start = default_state(rules.titans(), params, B)
    whole, final = run(x, start)
    first, mid = run({k: v[:, :4] for k, v in x.items()}, start)
    second, last = run({k: v[:, 4:] for k, v in x.items()}, mid)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-12)
    for a, e in zip(jax.tree.leaves(last), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, e, atol=1e-12)


def test_outputs_are_causal(x64):
    """Changing token n changes no output of its own or an earlier chunk."""
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(3), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    x = _inputs(5, t=8)
    run = jax.jit(lambda xs: scan(arch, objectives.l2(), rules.titans(), params, xs, chunk_size=2))
    ys, _ = run(x)
    n = 3  # second token of chunk [2, 3]
    y = {k: v.copy() for k, v in x.items()}
    for name in ("q", "k", "v", "step_size"):
        y[name][:, n] += 1.0
    ys2, _ = run(y)
    np.testing.assert_array_equal(ys2[:, :n], ys[:, :n])
    assert np.abs(ys2[:, 4:] - ys[:, 4:]).max() > 1e-6


def test_gradients_check_numerically(x64):
    arch = architectures.mlp(2, 3)
    params = arch.init(jax.random.key(4), heads=1, d_in=2, d_out=2, dtype=jnp.float64)
    x = jax.tree.map(jnp.asarray, _inputs(6, b=1, t=3, h=1, d=2, d_out=2))

    @jax.jit
    def f(params, q, k, v, step):
        ys, state = scan(
            arch,
            objectives.l2(),
            rules.titans(),
            params,
            {**x, "q": q, "k": k, "v": v, "step_size": step},
            chunk_size=2,
            remat=True,
        )
        return jnp.sum(ys**2) + sum(jnp.sum(w) for w in jax.tree.leaves(state.weights))

    check_grads(f, (params, x["q"], x["k"], x["v"], x["step_size"]), order=1, modes=["rev"])


def test_omega_window_matches_eq68(x64):
    """Eq. 68 with w = 2: M_t = α_t M_{t−1} − Σ_{i=t−1}^{t} γ_{t,i} ∇L̃(M_{t'}; k_i, v_i).

    Chunk 2, and the same stream in three pieces with the window carried across calls.
    """
    chunk = 2
    arch = architectures.matrix()
    rng = np.random.default_rng(7)
    params = {"w": rng.normal(size=(H, D, D))}
    x = _inputs(7, t=6)
    del x["momentum_decay"], x["step_size"]
    x["retention"] = 1 - x["retention"]
    x["window_gate"] = rng.uniform(0.1, 0.5, size=(B, 6, H, 2))
    run = jax.jit(
        lambda xs, s: scan(
            arch, objectives.l2(), rules.omega(), params, xs, chunk_size=chunk, initial_state=s
        )
    )
    state = default_state(rules.omega(), params, B, window=2, d_in=D, d_out=D)
    pieces = []
    for start in range(0, 6, 2):
        y, state = run({k: v[:, start : start + 2] for k, v in x.items()}, state)
        pieces.append(y)
    ys = np.concatenate(pieces, 1)
    for i in range(B):
        for j in range(H):
            m = params["w"][j]
            for n in range(6):
                if n % chunk == 0:
                    m_start = m
                np.testing.assert_allclose(ys[i, n, j], m_start @ x["q"][i, n, j], atol=1e-10)
                step = x["retention"][i, n, j] * m
                for lag in range(2):
                    if n - lag >= 0:
                        k, v = x["k"][i, n - lag, j], x["v"][i, n - lag, j]
                        step = step - x["window_gate"][i, n, j, lag] * np.outer(m_start @ k - v, k)
                m = step
            np.testing.assert_allclose(state.weights["w"][i, j], m, atol=1e-10)
    whole, _ = scan(arch, objectives.l2(), rules.omega(), params, x, chunk_size=chunk)
    np.testing.assert_allclose(whole, ys, atol=1e-12)


def test_per_channel_retention_through_scan(x64):
    """Matrix memory + dot-product + GD with per-channel decay: S_t = S_{t−1} diag(α_t) + η v kᵀ."""
    x = _inputs(8)
    rng = np.random.default_rng(8)
    x["retention"] = rng.uniform(0.5, 1.0, size=(B, T, H, D))
    params = {"w": rng.normal(size=(H, D, D))}
    _, state = scan(
        architectures.matrix(),
        objectives.dot_product(),
        rules.gd(retention.per_channel()),
        params,
        x,
        chunk_size=3,
    )
    for i in range(B):
        for j in range(H):
            s = params["w"][j]
            for n in range(T):
                s = s @ np.diag(x["retention"][i, n, j]) + x["step_size"][i, n, j] * np.outer(
                    x["v"][i, n, j], x["k"][i, n, j]
                )
            np.testing.assert_allclose(state.weights["w"][i, j], s, atol=1e-10)


def test_bad_input_raises():
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(0), heads=H, d_in=D, d_out=D)
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _inputs(9))
    run = lambda **kw: scan(arch, objectives.l2(), rules.titans(), params, kw.pop("x", x), **kw)
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="chunk_size must be a positive int"):
            run(chunk_size=bad)
    with pytest.raises(ValueError, match=r"v has width 5 .* disagree"):
        run(x={**x, "v": jnp.zeros((B, T, H, 5))}, chunk_size=2)
    with pytest.raises(ValueError, match=r"k has width d_in=4"):
        run(x={**x, "k": jnp.zeros((B, T, H, 4)), "q": jnp.zeros((B, T, H, 4))}, chunk_size=2)
    with pytest.raises(ValueError, match="params have head axes"):
        run(x=jax.tree.map(lambda a: a[:, :, :1], x), chunk_size=2)
    with pytest.raises(ValueError, match=r"inputs\['step_size'\] has shape \(2, 6, 2\)"):
        run(x={**x, "step_size": x["step_size"][:, :6]}, chunk_size=2)
    state = default_state(rules.titans(), params, B)
    bad_state = MemoryState(jax.tree.map(lambda a: a[:1], state.weights), state.rule, None)
    with pytest.raises(ValueError, match=r"initial_state.*has shape \(1, 2, 4, 3\), expected"):
        run(chunk_size=2, initial_state=bad_state)
    with pytest.raises(ValueError, match="read_after_write needs chunk_size=1"):
        run(chunk_size=2, read_after_write=True)


def _materialized(rule):
    """The same rule, handed the per-token gradients [c, ...] (the generic vmap(grad) path)."""

    def update(updates, state, params=None, **extra):
        return rule.update(updates.per_token(), state, params, **extra)

    return optax.GradientTransformationExtraArgs(rule.init, update)


FAST_CONFIGS = {
    "mlp_titans": (architectures.mlp(2, 4), objectives.l2(), rules.titans()),
    "residual_momentum": (architectures.residual_mlp(4), objectives.l2(), rules.momentum()),
    "matrix_gd_forget": (
        architectures.matrix(),
        objectives.l2(),
        rules.gd(retention.forget_gate()),
    ),
}


@pytest.mark.parametrize(
    ("config", "chunk"),
    [("mlp_titans", 4), ("matrix_gd_forget", 4),
     pytest.param("residual_momentum", 3, marks=pytest.mark.slow)],
)  # fmt: skip
def test_factored_path_equals_materialized_path(x64, config, chunk):
    """Weighted chunk-loss gradients = per-token gradients combined afterwards; fwd, bwd, T=7."""
    arch, objective, rule = FAST_CONFIGS[config]
    params = arch.init(jax.random.key(5), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.2, params)  # non-zero output weights for residual_mlp
    x = jax.tree.map(jnp.asarray, _inputs(10))
    if config == "matrix_gd_forget":
        del x["momentum_decay"]

    def loss(rule, params, x):
        ys, state = scan(arch, objective, rule, params, x, chunk_size=chunk)
        leaves = jax.tree.leaves((state.weights, state.rule))
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(w)) for w in leaves), (ys, state)

    run = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (_, fast), fast_grads = run(rule, params, x)
    (_, slow), slow_grads = run(_materialized(rule), params, x)
    for a, e in zip(jax.tree.leaves((fast, fast_grads)), jax.tree.leaves((slow, slow_grads))):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)


def _titans_loop(arch, objective, params, x, chunk):
    """Titans Eqs. 13–14 with chunk-start gradients, one head, as a differentiable Python loop."""
    grad = jax.grad(lambda m, k, v: objective.loss(arch.apply(m, k), v))
    w = params
    s = jax.tree.map(jnp.zeros_like, w)
    ys = []
    t = x["k"].shape[0]
    for start in range(0, t, chunk):
        w_start = w
        for n in range(start, min(start + chunk, t)):
            ys.append(arch.apply(w_start, x["q"][n]))
            u = grad(w_start, x["k"][n], x["v"][n])
            theta, alpha, eta = x["step_size"][n], x["retention"][n], x["momentum_decay"][n]
            s = {name: eta * s[name] - theta * u[name] for name in s}
            w = {name: (1 - alpha) * w[name] + s[name] for name in w}
    return jnp.stack(ys), w, s


@pytest.mark.parametrize("chunk", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_titans_fast_path_matches_equations_forward_and_backward(x64, chunk):
    """Scan (factored path) vs the printed recurrence, values and gradients, 5 tokens."""
    arch, objective = architectures.mlp(2, 3), objectives.l2()
    params = arch.init(jax.random.key(6), heads=1, d_in=D, d_out=D, dtype=jnp.float64)
    x = jax.tree.map(jnp.asarray, _inputs(11, b=1, t=5, h=1))

    def via_scan(params, x):
        ys, state = scan(arch, objective, rules.titans(), params, x, chunk_size=chunk)
        return ys[0, :, 0], jax.tree.map(lambda a: a[0, 0], (state.weights, state.rule.momentum))

    def via_loop(params, x):
        one = jax.tree.map(lambda a: a[0, :, 0] if a.ndim >= 3 else a, x)
        ys, w, s = _titans_loop(arch, objective, jax.tree.map(lambda p: p[0], params), one, chunk)
        return ys, (w, s)

    def loss(fn, params, x):
        ys, (w, s) = fn(params, x)
        leaves = jax.tree.leaves((w, s))
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.cos(a)) for a in leaves), (ys, w, s)

    run = jax.jit(jax.value_and_grad(loss, argnums=(1, 2), has_aux=True), static_argnums=0)
    (_, got), got_grads = run(via_scan, params, x)
    (_, want), want_grads = run(via_loop, params, x)
    for a, e in zip(jax.tree.leaves((got, got_grads)), jax.tree.leaves((want, want_grads))):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-10)
