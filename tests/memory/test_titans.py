"""Titans' memory layer against hand-written recurrences (float64)."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nestlearn.kernels import kernel_impl

from nestlearn.memory import architectures, objectives, rules
from nestlearn.memory.scan import MemoryState, scan
from nestlearn.memory.titans import TitansState, kernel_support, titans_memory

B, T, H, D = 1, 6, 2, 3


def _inputs(seed, t=T):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(B, t, H, D))
    return dict(
        q=rng.normal(size=(B, t, H, D)),
        k=k / np.linalg.norm(k, axis=-1, keepdims=True),
        v=rng.normal(size=(B, t, H, D)),
        theta=rng.uniform(0.1, 0.6, size=(B, t, H)),
        alpha=rng.uniform(0.0, 0.3, size=(B, t, H)),
        eta=rng.uniform(0.0, 0.9, size=(B, t, H)),
    )


def test_linear_memory_without_momentum_is_gated_delta(x64):
    """Titans App. C: η = 0 and a linear memory give a gated-delta-like recurrence.

    M_t = (1 − α_t) M_{t−1} − θ_t (M_{t−1} k_t − v_t) k_tᵀ, read before write: o_t = M_{t−1} q_t.
    """
    x = _inputs(0)
    x["eta"] = np.zeros_like(x["eta"])
    arch = architectures.mlp(1, 1)  # one layer: M(k) = W k
    params = {"w0": np.random.default_rng(1).normal(size=(H, D, D))}
    o, state = titans_memory(**x, arch=arch, params=params, chunk_size=1)
    for j in range(H):
        m = params["w0"][j]
        for n in range(T):
            k, v, q = x["k"][0, n, j], x["v"][0, n, j], x["q"][0, n, j]
            np.testing.assert_allclose(o[0, n, j], m @ q, atol=1e-12)
            s = -x["theta"][0, n, j] * np.outer(m @ k - v, k)  # S_t = 0·S_{t−1} − θ_t ∇ℓ
            m = (1 - x["alpha"][0, n, j]) * m + s
        np.testing.assert_allclose(state.weights["w0"][0, j], m, atol=1e-12)
        np.testing.assert_allclose(state.momentum["w0"][0, j], s, atol=1e-12)


def test_mlp_memory_matches_eqs_13_to_18(x64):
    """Two-layer MLP, chunk 4 on 6 tokens: Eqs. 13–14 with gradients at the chunk start.

    Uses the Huber bias (the switchable ``objective``); the ℓ2 default is covered in test_scan.
    """
    objective = objectives.huber(0.3)
    x = _inputs(2)
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(0), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    loss = objectives.get(objective).loss
    o, state = titans_memory(**x, arch=arch, params=params, chunk_size=4, objective=objective)
    grad = jax.jit(jax.grad(lambda w, k, v: loss(arch.apply(w, k), v)))
    read = jax.jit(arch.apply)
    for j in range(H):
        w = {n: np.asarray(p[j]) for n, p in params.items()}
        s = {n: np.zeros_like(p) for n, p in w.items()}
        for n in range(T):
            if n % 4 == 0:
                w_start = dict(w)
            np.testing.assert_allclose(o[0, n, j], read(w_start, x["q"][0, n, j]), atol=1e-10)
            u = grad(w_start, x["k"][0, n, j], x["v"][0, n, j])
            for name in w:
                s[name] = x["eta"][0, n, j] * s[name] - x["theta"][0, n, j] * np.asarray(u[name])
                w[name] = (1 - x["alpha"][0, n, j]) * w[name] + s[name]
        for name in w:
            np.testing.assert_allclose(state.weights[name][0, j], w[name], atol=1e-10)
            np.testing.assert_allclose(state.momentum[name][0, j], s[name], atol=1e-10)


def test_stream_and_stop_gradient_writes(x64):
    x = _inputs(3, t=8)
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(1), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    run = jax.jit(
        lambda x, s: titans_memory(**x, arch=arch, params=params, chunk_size=2, initial_state=s)
    )
    weights = jax.tree.map(lambda p: jnp.broadcast_to(p, (B, *p.shape)), params)
    start = TitansState(weights, jax.tree.map(jnp.zeros_like, weights))
    whole, final = run(x, start)
    first, mid = run({k: v[:, :4] for k, v in x.items()}, start)
    second, last = run({k: v[:, 4:] for k, v in x.items()}, mid)
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, atol=1e-12)
    for a, e in zip(jax.tree.leaves(last), jax.tree.leaves(final)):
        np.testing.assert_allclose(a, e, atol=1e-12)

    def loss(k, q, stop):
        out, _ = titans_memory(
            **{**x, "k": k, "q": q},
            arch=arch,
            params=params,
            chunk_size=2,
            stop_gradient_writes=stop,
        )
        return jnp.sum(out**2)

    g_k, g_q = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)(x["k"], x["q"], True)
    assert np.all(g_k == 0) and np.abs(g_q).max() > 0  # keys only reach the output via writes


def test_bad_state_raises():
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _inputs(4))
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(1), heads=H, d_in=D, d_out=D)
    with pytest.raises(ValueError, match="must be a TitansState"):
        titans_memory(**x, arch=arch, params=params, chunk_size=2, initial_state=(1, 2))
    weights = jax.tree.map(lambda p: jnp.broadcast_to(p, (B + 1, *p.shape)), params)
    with pytest.raises(ValueError, match=r"initial_state.*has shape \(2, 2, 4, 3\), expected"):
        titans_memory(
            **x, arch=arch, params=params, chunk_size=2, initial_state=TitansState(weights, weights)
        )
    with pytest.raises(ValueError, match="objective='l3'"):
        titans_memory(**x, arch=arch, params=params, chunk_size=2, objective="l3")


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("arch", [architectures.mlp(2, 5), architectures.residual_mlp(5)])
def test_specialised_xla_path_equals_generic_scan(x64, arch, remat):
    """A covered configuration runs mlp_memory's XLA chunk step; it equals the generic scan.

    Values and gradients, 4-token chunks on 11 tokens (a padded tail) from a carried state.
    """
    x = _inputs(6, t=11)
    params = arch.init(jax.random.key(3), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.3, params)  # W₁ = 0 of residual_mlp hides its grads
    weights = jax.tree.map(lambda p: jnp.broadcast_to(p, (B, *p.shape)), params)
    start = TitansState(weights, jax.tree.map(lambda w: 0.1 * jnp.cos(w), weights))
    assert kernel_support(arch, params) is None

    def specialised(x, params, start):
        o, state = titans_memory(
            **x, arch=arch, params=params, chunk_size=4, initial_state=start, remat=remat
        )
        return o, state

    def generic(x, params, start):
        inputs = {"q": x["q"], "k": x["k"], "v": x["v"], "step_size": x["theta"]}
        inputs.update(retention=x["alpha"], momentum_decay=x["eta"])
        initial = MemoryState(start.weights, rules.MomentumState(start.momentum), None)
        o, state = scan(
            arch, objectives.l2(), rules.titans(), params, inputs, chunk_size=4,
            initial_state=initial,
        )  # fmt: skip
        return o, TitansState(state.weights, state.rule.momentum)

    def loss(fn, *args):
        o, state = fn(*args)
        return jnp.sum(jnp.sin(o)) + sum(jnp.sum(s**2) for s in jax.tree.leaves(state)), (o, state)

    grad = lambda fn: jax.jit(
        jax.value_and_grad(partial(loss, fn), argnums=(0, 1, 2), has_aux=True)
    )
    (_, got), got_grads = grad(specialised)(x, params, start)
    (_, want), want_grads = grad(generic)(x, params, start)
    assert "pallas_call" not in str(jax.make_jaxpr(specialised)(x, params, start))
    for a, e in zip(jax.tree.leaves((got, got_grads)), jax.tree.leaves((want, want_grads))):
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-11)


@pytest.fixture
def interpret(monkeypatch):
    """The test-only switch: kernel_impl="pallas" runs the Triton kernel in the interpreter."""
    monkeypatch.setenv(kernel_impl.INTERPRET_ENV, "1")


@pytest.mark.parametrize(
    "arch",
    [
        architectures.mlp(2, 5),
        pytest.param(architectures.residual_mlp(5), marks=pytest.mark.slow),  # interpreter: slow
    ],
    ids=lambda a: a.name,
)
def test_pallas_kernel_equals_xla_path(x64, interpret, arch):
    """kernel_impl="pallas" (mlp_memory, interpreted) == the XLA scan: values and gradients.

    16-token chunks on 21 tokens (a padded tail) from a carried state with non-zero momentum.
    """
    x = _inputs(5, t=21)
    params = arch.init(jax.random.key(2), heads=H, d_in=D, d_out=D, dtype=jnp.float64)
    params = jax.tree.map(lambda p: p + 0.3, params)  # W₁ = 0 of residual_mlp hides its grads
    weights = jax.tree.map(lambda p: jnp.broadcast_to(p, (B, *p.shape)), params)
    start = TitansState(weights, jax.tree.map(lambda w: 0.1 * jnp.cos(w), weights))

    def loss(x, params, start, impl):
        o, state = titans_memory(
            **x, arch=arch, params=params, chunk_size=16, initial_state=start, kernel_impl=impl
        )
        return jnp.sum(jnp.sin(o)) + sum(jnp.sum(s**2) for s in jax.tree.leaves(state)), (o, state)

    run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    (_, want), want_grads = run(x, params, start, "xla")
    (_, got), got_grads = run(x, params, start, "pallas")
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, e in zip(jax.tree.leaves((got, got_grads)), jax.tree.leaves((want, want_grads))):
        assert a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-11)


def test_kernel_impl_coverage(interpret):
    """kernel_impl="pallas" raises a ValueError naming what no kernel covers; "auto" is XLA."""
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _inputs(6, t=16))
    mlp = architectures.mlp(2, 4)
    params = mlp.init(jax.random.key(1), heads=H, d_in=D, d_out=D)

    def run(**kw):
        kw = {"arch": mlp, "params": params, "chunk_size": 16, **kw}
        return jax.make_jaxpr(lambda x: titans_memory(**x, **kw))(x)

    assert "pallas_call" in str(run(kernel_impl="pallas"))
    assert "pallas_call" not in str(run(kernel_impl="auto"))  # CPU: XLA despite the switch
    linear = architectures.matrix()
    bad = [
        (dict(arch=linear, params=linear.init(None, heads=H, d_in=D, d_out=D)), "arch='matrix'"),
        (dict(arch=architectures.mlp(2, 4, "gelu")), r"arch='mlp\(depth=2, hidden=4, gelu\)'"),
        (dict(arch=architectures.mlp(3, 4)), "depth=3"),
        (dict(objective="huber"), "objective='huber"),
        (dict(stop_gradient_writes=True), "stop_gradient_writes=True"),
        (dict(chunk_size=8), "chunk_size=8 must be a power of two"),
    ]
    for kw, match in bad:
        if "arch" in kw and "params" not in kw:
            kw["params"] = kw["arch"].init(jax.random.key(1), heads=H, d_in=D, d_out=D)
        with pytest.raises(ValueError, match="kernel_impl='pallas'.*" + match):
            run(kernel_impl="pallas", **kw)
        assert "pallas_call" not in str(run(kernel_impl="auto", **kw))
    with pytest.raises(ValueError, match="kernel_impl='cuda'"):
        run(kernel_impl="cuda")


def test_pallas_without_a_pallas_platform_raises():
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), _inputs(7, t=16))
    arch = architectures.mlp(2, 4)
    params = arch.init(jax.random.key(1), heads=H, d_in=D, d_out=D)
    with pytest.raises(ValueError, match="platform 'cpu' has no Pallas backend"):
        titans_memory(**x, arch=arch, params=params, chunk_size=16, kernel_impl="pallas")
