"""Tests for Hope's self-modifying memory (Eqs. 83–93, arXiv 2512.24695).

The oracle ``_naive`` is a Python loop over tokens written straight from Eqs. 83–88 with Titans
momentum and the causal chunk index C⌊(t−1)/C⌋ (docs/SEMANTICS.md §1.2 row 1): it snapshots the
memories at chunk starts, takes the inner gradient with ``jax.grad`` of ½‖M(k) − v̂‖², and applies
the printed matrix factor (diag(α) − k (η ⊙ k)ᵀ) explicitly. It shares no code with the
implementation.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from nestlearn.kernels import kernel_impl as kernel_switch
from nestlearn.kernels import per_sequence

from nestlearn.memory import self_modifying as sm
from nestlearn.memory.self_modifying import (
    SelfModifyingConfig,
    SelfModifyingState,
    self_modifying_init,
    self_modifying_memory,
    self_modifying_memory_recurrent,
)
from nestlearn.models.hope import HOPE_WRITES

# Tiny shapes: compile time dominates, so the tests compile with XLA's cheapest backend settings.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_memory = jax.jit(self_modifying_memory, static_argnames="config", compiler_options=_FAST_COMPILE)
_recurrent = jax.jit(
    self_modifying_memory_recurrent, static_argnames="config", compiler_options=_FAST_COMPILE
)


def _silu(z):
    return z * 0.5 * (1.0 + np.tanh(0.5 * z))


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _naive_mlp(w, z):
    return z + w["w1"] @ _silu(w["w2"] @ z)


def _inner_loss(w, k, target, v, stop_gradient_vhat):
    def mlp(z):
        return z + w["w1"] @ jax.nn.silu(w["w2"] @ z)

    goal = target if stop_gradient_vhat else mlp(v)
    return 0.5 * jnp.sum((mlp(k) - goal) ** 2)


_inner_grad = jax.jit(jax.grad(_inner_loss), static_argnums=4)


def _silu_slope(z):
    s = _sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _chunk_steps(w, toks, cfg):
    """(η₁ scale, η₂ scale) of one chunk for the normalised ``dgd_step``s: 1/(1 + τ) per layer.

    toks: the chunk's (k, v, η) triples; τ₁ = Σ η‖a‖², τ₂ = Σ_(ρ) (Σ_j η_j ρ_j²) Σ_n σ'(W₂ρ)_n²
    ‖W₁[:, n]‖² over ρ = k (and v without the stop-gradient on v̂). ``"token_normalized"``
    scales W₁ per token instead (``_token_step``); its η₁ entry here is unused.
    """
    if cfg.dgd_step not in ("chunk_normalized", "token_normalized"):
        return 1.0, 1.0
    columns = np.sum(w["w1"] ** 2, axis=0)
    tau1, tau2 = 0.0, 0.0
    for k, v, eta in toks:
        a = _silu(w["w2"] @ k)
        rhos = [k]
        if not cfg.stop_gradient_vhat:
            a = a - _silu(w["w2"] @ v)
            rhos.append(v)
        tau1 = tau1 + eta * np.sum(a * a)
        for rho in rhos:
            tau2 = tau2 + np.sum(eta * rho * rho) * np.sum(
                _silu_slope(w["w2"] @ rho) ** 2 * columns
            )
    return 1.0 / (1.0 + tau1), 1.0 / (1.0 + tau2)


def _token_step(w, k, v, eta, cfg):
    """Eq. 57's step of W₁ on its own input a = σ(W₂k) (− σ(W₂v)): η / (1 + η‖a‖²)."""
    a = _silu(w["w2"] @ k)
    if not cfg.stop_gradient_vhat:
        a = a - _silu(w["w2"] @ v)
    return eta / (1.0 + eta * np.sum(a * a))


def _naive(x, q, params, cfg, tokens=None):
    """Returns o [b, t, h, d] and {(b, h): (weights, momentum)} as float64 numpy.

    ``dgd_step="chunk_normalized"`` needs the (k, v, η) of a whole output-memory chunk at its
    start; they come from the generators alone, so a first pass records them (``tokens``).
    """
    if cfg.dgd_step in ("chunk_normalized", "token_normalized") and tokens is None:
        tokens = {}
        _naive(x, q, params, cfg, tokens)
        return _naive(x, q, params, cfg, tokens)
    record = tokens if tokens is not None else {}
    b, t, h, d = x.shape
    flags = {"k": cfg.adaptive_k, "v": cfg.adaptive_v, "q": cfg.adaptive_q}
    gens = [n for n in ("k", "v", "q", "eta", "alpha") if flags.get(n, True)]
    names = [*gens, "memory"]
    out = np.zeros((b, t, h, d))
    finals = {}
    for bi in range(b):
        for hi in range(h):
            weights = {n: {w: np.array(params[n][w][hi]) for w in ("w1", "w2")} for n in names}
            mom = {n: {w: np.zeros_like(v) for w, v in weights[n].items()} for n in names}
            steps = {}  # memory -> (η₁, η₂) scales of its current chunk
            for ti in range(t):

                def generate(i, gen, bi=bi, hi=hi):
                    xt = x[bi, i, hi]
                    if cfg.normalize_x:
                        xt = xt / np.sqrt(np.sum(xt * xt) + 1e-6)
                    maps = params.get("inputs", {})

                    def read(name, xt=xt, hi=hi):  # M_□(P_□ x_t), or M_□(x_t)
                        inp = maps[name][hi] @ xt if name in maps else xt
                        return _naive_mlp(gen[name], inp)

                    k = read("k") if "k" in gen else params["k"]["w"][hi] @ xt
                    v = read("v") if "v" in gen else params["v"]["w"][hi] @ xt
                    qt = read("q") if "q" in gen else q[bi, i, hi]
                    if cfg.normalize_qk:
                        k = k / np.sqrt(np.sum(k * k) + 1e-6)
                        qt = qt / np.sqrt(np.sum(qt * qt) + 1e-6)
                    if cfg.normalize_v:
                        v = v / np.sqrt(np.sum(v * v) + 1e-6)

                    def gate(name, bias):
                        y = _naive_mlp(gen[name], xt)
                        y = y if cfg.eta_alpha_per_channel else np.mean(y)
                        return np.broadcast_to(y + params[bias][hi], (d,))

                    eta = cfg.eta_max * _sigmoid(gate("eta", "eta_bias"))
                    alpha = _sigmoid(gate("alpha", "alpha_bias")) if cfg.use_decay else np.ones(d)
                    if cfg.dgd_step == "normalized":
                        eta = eta / (1.0 + np.sum(eta * k * k))
                    return k, v, qt, eta, alpha

                if ti % cfg.chunk_size == 0:  # generator states at the end of the previous chunk
                    gen = {n: {w: a.copy() for w, a in weights[n].items()} for n in gens}
                    span = range(ti, min(t, ti + cfg.chunk_size))
                    chunk = [(k, v, eta) for k, v, _, eta, _ in (generate(i, gen) for i in span)]
                    steps.update({n: _chunk_steps(gen[n], chunk, cfg) for n in gens})
                if ti % cfg.memory_chunk_size == 0:
                    mem = {w: a.copy() for w, a in weights["memory"].items()}
                    span = range(ti, min(t, ti + cfg.memory_chunk_size))
                    if all((bi, hi, i) in record for i in span):
                        steps["memory"] = _chunk_steps(mem, [record[bi, hi, i] for i in span], cfg)
                    else:  # the first pass: only the generators' results are kept
                        steps["memory"] = (1.0, 1.0)
                k, v, qt, eta, alpha = generate(ti, gen)
                record[bi, hi, ti] = (k, v, eta)
                out[bi, ti, hi] = _naive_mlp(mem, qt)  # Eq. 83: read before this chunk's writes
                for n in names:
                    start = mem if n == "memory" else gen[n]
                    target = _naive_mlp(start, v)  # Eq. 84
                    g = _inner_grad(start, k, target, v, cfg.stop_gradient_vhat)
                    g1, g2 = np.asarray(g["w1"]), np.asarray(g["w2"])
                    eta1, eta2 = (eta * scale for scale in steps[n])
                    if cfg.dgd_step == "token_normalized":  # W₁: the running W₁, chunk-start W₂
                        running = {"w1": weights[n]["w1"], "w2": start["w2"]}
                        g = _inner_grad(running, k, target, v, cfg.stop_gradient_vhat)
                        g1 = np.asarray(g["w1"])
                        eta1 = _token_step(start, k, v, eta, cfg)
                    mom[n]["w1"] = cfg.momentum * mom[n]["w1"] - np.diag(eta1) @ g1
                    mom[n]["w2"] = cfg.momentum * mom[n]["w2"] - g2 @ np.diag(eta2)
                    factor = np.diag(alpha)  # Eq. 88: (α_t I − η_t k_t k_tᵀ)
                    if cfg.use_dgd:
                        erase = eta
                        if cfg.dgd_step == "token_normalized":  # Eq. 57 in the erase
                            erase = eta / (1.0 + np.sum(eta * k * k))
                        factor = factor - np.outer(k, erase * k)
                    new1 = np.diag(alpha) @ weights[n]["w1"] + mom[n]["w1"]
                    new2 = weights[n]["w2"] @ factor + mom[n]["w2"]
                    if cfg.retention_target == "initial":  # α decays towards W₀, not zero
                        keep = np.eye(d) - np.diag(alpha)
                        new1 = new1 + keep @ np.asarray(params[n]["w1"][hi])
                        new2 = new2 + np.asarray(params[n]["w2"][hi]) @ keep
                    weights[n]["w1"], weights[n]["w2"] = new1, new2
            finals[(bi, hi)] = (weights, mom)
    return out, finals


def _perturbed_params(cfg, *, heads, dim, hidden, dtype, scale=0.2, seed=0):
    params = self_modifying_init(
        jax.random.PRNGKey(seed), heads=heads, dim=dim, hidden=hidden, config=cfg, dtype=dtype
    )
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    noise = [scale * jax.random.normal(k, a.shape, dtype) for a, k in zip(leaves, keys)]
    return treedef.unflatten([a + n for a, n in zip(leaves, noise)])


def _inputs(shape, dtype, seed=2):
    kx, kq = jax.random.split(jax.random.PRNGKey(seed))
    scale = shape[-1] ** -0.5  # per-head inputs of norm ≈ 1 (docs/SEMANTICS.md)
    return (
        scale * jax.random.normal(kx, shape, dtype),
        jax.random.normal(kq, shape, dtype),
    )


def _start_state(params, batch, names=("k", "v", "eta", "alpha", "memory")):
    """The state ``initial_state=None`` starts from, built by hand."""
    weights = {
        n: jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), params[n]) for n in names
    }
    return SelfModifyingState(weights, jax.tree.map(jnp.zeros_like, weights))


def _max_diff(a, b):
    return max(
        float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


NAIVE_CASES = [
    ((1, 1), {}),
    ((4, 8), {}),
    ((8, 4), {}),
    (
        (4, 8),
        {
            "eta_alpha_per_channel": True,
            "stop_gradient_vhat": False,
            "normalize_qk": False,
            "normalize_v": False,
            "normalize_x": False,
        },
    ),
    ((3, 5), {"dgd_step": "normalized", "adaptive_q": True, "adaptive_k": False}),
    ((8, 4), {"momentum": 0.0, "use_decay": False, "use_dgd": False, "adaptive_v": False}),
    ((4, 8), {"dgd_step": "chunk_normalized"}),
    ((4, 8), {"dgd_step": "token_normalized", "project_inputs": True}),
    ((3, 5), {"project_inputs": True, "adaptive_q": True, "adaptive_v": False}),
    (
        (3, 5),
        {
            "dgd_step": "token_normalized",
            "eta_alpha_per_channel": True,
            "stop_gradient_vhat": False,
        },
    ),
    (
        (3, 5),
        {
            "dgd_step": "chunk_normalized",
            "eta_alpha_per_channel": True,
            "stop_gradient_vhat": False,
        },
    ),
    # The `hope` model's write rule (nestlearn.models.hope.HOPE_WRITES; η_max from the test).
    (
        (4, 8),
        {k: v for k, v in HOPE_WRITES.items() if k not in ("chunk_size", "eta_max")},
    ),
    ((4, 8), {"retention_target": "initial"}),
    (
        (3, 5),
        {
            "retention_target": "initial",
            "dgd_step": "token_normalized",
            "eta_alpha_per_channel": True,
            "stop_gradient_vhat": False,
        },
    ),
]


@pytest.mark.parametrize(("chunks", "options"), NAIVE_CASES)
def test_chunk_parallel_matches_naive_loop(x64, chunks, options):
    cfg = SelfModifyingConfig(
        chunk_size=chunks[0], memory_chunk_size=chunks[1], eta_max=0.5, **options
    )
    b, t, h, d = 1, 13, 2, 4  # 13 is a multiple of no chunk size: the tail chunk is short
    params = _perturbed_params(cfg, heads=h, dim=d, hidden=3, dtype=jnp.float64)
    x, q = _inputs((b, t, h, d), jnp.float64)
    o, state = _memory(x, q, params=params, config=cfg)
    o_ref, finals = _naive(np.asarray(x), np.asarray(q), jax.tree.map(np.asarray, params), cfg)
    assert float(np.max(np.abs(o_ref))) < 1e3
    np.testing.assert_allclose(np.asarray(o), o_ref, rtol=1e-9, atol=1e-9)
    for (bi, hi), (weights, mom) in finals.items():
        for name in weights:
            for leaf in ("w1", "w2"):
                np.testing.assert_allclose(
                    np.asarray(state.weights[name][leaf][bi, hi]), weights[name][leaf], atol=1e-9
                )
                np.testing.assert_allclose(
                    np.asarray(state.momentum[name][leaf][bi, hi]), mom[name][leaf], atol=1e-9
                )


@pytest.mark.parametrize("dgd_step", ["printed", "chunk_normalized", "token_normalized"])
def test_recurrent_equals_chunk_parallel_at_chunk_one(x64, dgd_step):
    cfg = SelfModifyingConfig(
        retention_target="initial" if dgd_step == "printed" else "zero",
        chunk_size=1,
        memory_chunk_size=1,
        eta_max=0.5,
        eta_alpha_per_channel=True,
        adaptive_q=True,
        stop_gradient_vhat=False,
        dgd_step=dgd_step,
        project_inputs=dgd_step == "token_normalized",
    )
    params = _perturbed_params(cfg, heads=2, dim=4, hidden=5, dtype=jnp.float64)
    x, q = _inputs((2, 9, 2, 4), jnp.float64)
    o, state = _memory(x, q, params=params, config=cfg)
    o_rec, state_rec = _recurrent(x, q, params=params, config=cfg)
    assert _max_diff(o, o_rec) < 1e-12
    assert _max_diff(state, state_rec) < 1e-12


@pytest.mark.parametrize("target", ["zero", "initial"])
def test_float32_matches_float64_with_correlated_inputs_and_large_steps(target):
    # The `hope` write rule at η_max 4 on chunks of 32/64 tokens of nearly equal inputs, with a
    # large input-side weight (‖σ(W₂k)‖ ≫ 1): each token's write removes most of its error and the
    # chunk's triangular system has entries near 1, where a product-of-powers solve loses every
    # digit in float32 (docs/kernels.md §2).
    options = {**HOPE_WRITES, "memory_chunk_size": 64, "retention_target": target}
    cfg = SelfModifyingConfig(**options)
    b, t, h, d = 1, 128, 2, 8
    params = _perturbed_params(cfg, heads=h, dim=d, hidden=8, dtype=jnp.float32, scale=1.0)
    shared = jax.random.normal(jax.random.PRNGKey(5), (d,))
    x = shared + 0.05 * jax.random.normal(jax.random.PRNGKey(6), (b, t, h, d))
    q = jax.random.normal(jax.random.PRNGKey(7), (b, t, h, d))
    o32, _ = _memory(x, q, params=params, config=cfg)
    with jax.enable_x64(True):
        to64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
        o64, _ = _memory(to64(x), to64(q), params=to64(params), config=cfg)
        o64 = np.asarray(o64)
    scale = float(np.abs(o64).max())
    assert scale < 1e3
    np.testing.assert_allclose(np.asarray(o32), o64, atol=1e-3 * scale)


@pytest.mark.parametrize("target", ["zero", "initial"])
def test_pieces_with_carried_state_equal_one_call(x64, target):
    cfg = SelfModifyingConfig(
        chunk_size=4, memory_chunk_size=8, eta_max=0.5, retention_target=target
    )
    params = _perturbed_params(cfg, heads=2, dim=4, hidden=3, dtype=jnp.float64)
    x, q = _inputs((2, 16, 2, 4), jnp.float64)
    o, state = _memory(x, q, params=params, config=cfg)
    start = _start_state(params, 2)
    o1, s1 = _memory(x[:, :8], q[:, :8], params=params, config=cfg, initial_state=start)
    o2, s2 = _memory(x[:, 8:], q[:, 8:], params=params, config=cfg, initial_state=s1)
    assert _max_diff(o, jnp.concatenate([o1, o2], axis=1)) < 1e-12
    assert _max_diff(state, s2) < 1e-12


def test_causal(x64):
    cfg = SelfModifyingConfig(chunk_size=4, memory_chunk_size=8, eta_max=0.5)
    params = _perturbed_params(cfg, heads=2, dim=4, hidden=3, dtype=jnp.float64)
    x, q = _inputs((2, 16, 2, 4), jnp.float64)  # same compile as the test above
    o, _ = _memory(x, q, params=params, config=cfg)
    s = 5
    o_changed, _ = _memory(x.at[:, s].add(1.0), q.at[:, s].add(1.0), params=params, config=cfg)
    np.testing.assert_array_equal(np.asarray(o[:, :s]), np.asarray(o_changed[:, :s]))
    # The static query of token s changes its own output; x_s reaches the output memory's next
    # chunk through the writes.
    assert _max_diff(o[:, s], o_changed[:, s]) > 1e-6
    assert _max_diff(o[:, 8:], o_changed[:, 8:]) > 1e-6


def test_gradients(x64):
    """Reverse-mode gradients match central finite differences along random directions."""
    cfg = SelfModifyingConfig(chunk_size=2, memory_chunk_size=3, eta_max=0.5, adaptive_q=True)
    params = _perturbed_params(cfg, heads=1, dim=3, hidden=2, dtype=jnp.float64)
    x, q = _inputs((1, 6, 1, 3), jnp.float64)

    def loss(params, x):
        o, state = self_modifying_memory(x, q, params=params, config=cfg)
        return jnp.sum(jnp.sin(o)) + jnp.sum(state.weights["memory"]["w2"] ** 2)

    value_and_grad = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1)), compiler_options=_FAST_COMPILE
    )
    g = value_and_grad(params, x)[1]
    eps = 1e-6
    for seed in range(3):
        leaves, treedef = jax.tree.flatten((params, x))
        keys = jax.random.split(jax.random.PRNGKey(10 + seed), len(leaves))
        direction = treedef.unflatten(
            [jax.random.normal(k, a.shape, a.dtype) for a, k in zip(leaves, keys)]
        )
        plus = jax.tree.map(lambda a, u: a + eps * u, (params, x), direction)
        minus = jax.tree.map(lambda a, u: a - eps * u, (params, x), direction)
        numeric = (value_and_grad(*plus)[0] - value_and_grad(*minus)[0]) / (2 * eps)
        analytic = sum(
            jnp.sum(a * u) for a, u in zip(jax.tree.leaves(g), jax.tree.leaves(direction))
        )
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_stop_gradient_writes_keeps_values_changes_gradients(x64):
    cfg = SelfModifyingConfig(chunk_size=2, memory_chunk_size=4, eta_max=0.5)
    params = _perturbed_params(cfg, heads=1, dim=4, hidden=3, dtype=jnp.float64)
    x, q = _inputs((1, 8, 1, 4), jnp.float64)

    def run(config):
        def loss(x):
            o, _ = self_modifying_memory(x, q, params=params, config=config)
            return jnp.sum(o**2)

        return jax.jit(jax.value_and_grad(loss), compiler_options=_FAST_COMPILE)(x)

    value, grad = run(cfg)
    value_sg, grad_sg = run(dataclasses.replace(cfg, stop_gradient_writes=True))
    np.testing.assert_allclose(value, value_sg, rtol=1e-12)
    # With a static q, x reaches o only through the writes of earlier chunks.
    assert float(jnp.max(jnp.abs(grad[:, :4]))) > 0.0
    assert float(jnp.max(jnp.abs(grad_sg))) == 0.0
    # Tokens of the last output-memory chunk are never read by a later chunk.
    assert float(jnp.max(jnp.abs(grad[:, 4:]))) == 0.0


# The ablations of NL-arXiv Table 6 except CMS, which is not part of this layer.
ABLATIONS = [
    {"momentum": 0.0},
    {"use_dgd": False},
    {"use_decay": False},
    {"adaptive_k": False},
    {"adaptive_v": False},
    {"adaptive_q": True},
]


@pytest.mark.slow
def test_each_ablation_switch_changes_the_output():
    base = SelfModifyingConfig(chunk_size=2, memory_chunk_size=4, eta_max=0.5)
    params = _perturbed_params(base, heads=2, dim=4, hidden=4, dtype=jnp.float32)
    x, q = _inputs((1, 12, 2, 4), jnp.float32)
    o_base, _ = _memory(x, q, params=params, config=base)
    for change in ABLATIONS:
        cfg = dataclasses.replace(base, **change)
        variant = self_modifying_init(jax.random.PRNGKey(0), heads=2, dim=4, hidden=4, config=cfg)
        # Reuse the shared perturbed weights wherever the structures agree.
        merged = {
            n: params[n]
            if jax.tree.structure(params.get(n)) == jax.tree.structure(v)
            and (jax.tree.map(jnp.shape, params.get(n)) == jax.tree.map(jnp.shape, v))
            else v
            for n, v in variant.items()
        }
        o, _ = _memory(x, q, params=merged, config=cfg)
        assert bool(jnp.all(jnp.isfinite(o))), change
        assert _max_diff(o, o_base) > 1e-5, change


def test_zero_momentum_ignores_momentum_state():
    cfg = SelfModifyingConfig(chunk_size=2, memory_chunk_size=4, eta_max=0.5, momentum=0.0)
    params = _perturbed_params(cfg, heads=1, dim=4, hidden=3, dtype=jnp.float32)
    x, q = _inputs((1, 16, 1, 4), jnp.float32)
    state = _start_state(params, 1)
    noisy = SelfModifyingState(state.weights, jax.tree.map(lambda a: a + 0.1, state.momentum))
    o_a, _ = _memory(x[:, 4:], q[:, 4:], params=params, config=cfg, initial_state=state)
    o_b, _ = _memory(x[:, 4:], q[:, 4:], params=params, config=cfg, initial_state=noisy)
    np.testing.assert_array_equal(np.asarray(o_a), np.asarray(o_b))
    with_momentum = dataclasses.replace(cfg, momentum=0.9)
    o_c, _ = _memory(x[:, 4:], q[:, 4:], params=params, config=with_momentum, initial_state=state)
    o_d, _ = _memory(x[:, 4:], q[:, 4:], params=params, config=with_momentum, initial_state=noisy)
    assert _max_diff(o_c, o_d) > 1e-5


@pytest.mark.parametrize(("target", "collapses"), [("zero", True), ("initial", False)])
def test_retention_decays_towards_its_target(target, collapses):
    """Short retention (α ≈ sigmoid(−2) ≈ 0.12) over 64 tokens: towards zero the weights vanish
    (the residual-MLP memory then reads M(q) = q); towards W₀ they stay near the initial weights,
    moved only by the last few writes."""
    cfg = SelfModifyingConfig(
        chunk_size=4, memory_chunk_size=8, alpha_bias_init=-2.0, retention_target=target
    )
    params = _perturbed_params(cfg, heads=2, dim=4, hidden=3, dtype=jnp.float32)
    x, q = _inputs((1, 64, 2, 4), jnp.float32)
    _, state = _memory(x, q, params=params, config=cfg)
    for name, w in state.weights.items():
        for leaf in ("w1", "w2"):
            final = float(jnp.linalg.norm(w[leaf][0]))
            gap = float(jnp.linalg.norm(w[leaf][0] - params[name][leaf]))
            initial = float(jnp.linalg.norm(params[name][leaf]))
            if collapses:
                assert final < 1e-3 * initial, (name, leaf, final, initial)
            else:
                assert gap < 0.5 * initial, (name, leaf, gap, initial)


def test_dtype_and_default_state():
    cfg = SelfModifyingConfig(chunk_size=4, memory_chunk_size=8)
    params = self_modifying_init(jax.random.PRNGKey(0), heads=2, dim=8, config=cfg)
    assert params["memory"]["w2"].shape == (2, 8, 8)  # hidden = hidden_expansion · dim
    assert params["eta_bias"].shape == (2,)
    x, q = _inputs((2, 16, 2, 8), jnp.bfloat16)
    o, state = _memory(x, q, params=params, config=cfg)
    assert o.dtype == jnp.bfloat16 and o.shape == x.shape
    assert state.weights["k"]["w1"].dtype == jnp.float32
    assert state.weights["k"]["w1"].shape == (2, 2, 8, 8)
    assert set(state.weights) == {"k", "v", "eta", "alpha", "memory"}


def test_default_init_writes_from_the_first_chunk():
    """k ≠ v at init (random W₁ of M_k, M_v), so the inner losses are non-zero and every memory
    takes gradient steps (non-zero momentum); with identity M_k = M_v and normalised v, k = v and
    every inner gradient would vanish."""
    cfg = SelfModifyingConfig(chunk_size=2, memory_chunk_size=4)
    x, q = _inputs((1, 4, 2, 4), jnp.float32)
    for scale, writes in ((cfg.kv_init_scale, True), (0.0, False)):
        variant = dataclasses.replace(cfg, kv_init_scale=scale)
        params = self_modifying_init(jax.random.PRNGKey(0), heads=2, dim=4, config=variant)
        _, state = _memory(x, q, params=params, config=variant)
        steps = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(state.momentum))
        assert (steps > 1e-6) == writes, (scale, steps)


def _state_norm(x, cfg):
    params = self_modifying_init(jax.random.PRNGKey(0), heads=1, dim=8, config=cfg)
    _, state = _memory(x, x, params=params, config=cfg)
    norms = [float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(state.weights)]
    return max(norms) if all(np.isfinite(norms)) else float("inf")


def test_unnormalised_inputs_stay_bounded_by_default():
    """Per-head inputs with unit-variance channels (‖x‖ ≈ √d) and a large step: the normalised
    x and v keep the self-generated targets at the keys' scale, so the memories stay bounded; the
    same stream without the normalisations diverges (docs/SEMANTICS.md §1.3)."""
    cfg = SelfModifyingConfig(chunk_size=8, memory_chunk_size=8, eta_max=0.5)
    x = jax.random.normal(jax.random.PRNGKey(3), (1, 256, 1, 8))
    assert _state_norm(x, cfg) < 10.0
    raw = dataclasses.replace(cfg, normalize_v=False, normalize_x=False)
    assert _state_norm(x, raw) > 1e3


def _stream(t, piece):
    cfg = SelfModifyingConfig(chunk_size=64, memory_chunk_size=64)
    params = self_modifying_init(jax.random.PRNGKey(0), heads=1, dim=8, config=cfg)
    run = jax.jit(
        lambda x, s: self_modifying_memory(x, x, params=params, config=cfg, initial_state=s)
    )
    state = None
    norms = []
    for i in range(t // piece):
        x, _ = _inputs((1, piece, 1, 8), jnp.float32, seed=i)
        o, state = run(x, state)
        assert bool(jnp.all(jnp.isfinite(o))), i
        norms.append(max(float(jnp.linalg.norm(a)) for a in jax.tree.leaves(state)))
    return np.array(norms)


@pytest.mark.slow
def test_long_stream_stays_finite_and_bounded():
    norms = _stream(100_352, 6272)  # 100K tokens, chunk 64, 16 pieces
    assert np.all(np.isfinite(norms)) and norms.max() < 100.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chunk_size", 0),
        ("memory_chunk_size", 2.5),
        ("momentum", 1.0),
        ("momentum", -0.1),
        ("eta_max", 0.0),
        ("alpha_bias_init", float("nan")),
        ("activation", "swish"),
        ("dgd_step", "exact"),
        ("hidden_expansion", 0),
        ("use_dgd", 1),
        ("normalize_v", 1),
        ("kv_init_scale", -1.0),
        ("project_inputs", "yes"),
        ("project_init", "orthogonal"),
        ("retention_target", "init"),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        SelfModifyingConfig(**{field: value})


def test_random_input_maps_start_keys_and_values_apart():
    """project_init="random": P_k and P_v are different random maps (not the identity)."""
    maps = {}
    for init in ("identity", "random"):
        cfg = SelfModifyingConfig(project_inputs=True, project_init=init)
        maps[init] = self_modifying_init(jax.random.PRNGKey(0), heads=2, dim=8, config=cfg)[
            "inputs"
        ]
    eye = jnp.eye(8)
    assert all(np.array_equal(p, jnp.broadcast_to(eye, p.shape)) for p in maps["identity"].values())
    p_k, p_v = maps["random"]["k"], maps["random"]["v"]
    assert not np.allclose(p_k, p_v) and not np.allclose(p_k, eye)
    np.testing.assert_allclose(jnp.std(p_k), 1 / np.sqrt(8), rtol=0.3)


def test_input_validation():
    cfg = SelfModifyingConfig(chunk_size=2, memory_chunk_size=2)
    params = self_modifying_init(jax.random.PRNGKey(0), heads=2, dim=4, config=cfg)
    x = jnp.zeros((1, 4, 2, 4))
    with pytest.raises(ValueError, match="q must have the shape of x"):
        _memory(x, x[..., :3], params=params, config=cfg)
    with pytest.raises(ValueError, match=r"params\['k'\]"):
        _memory(jnp.zeros((1, 4, 2, 5)), jnp.zeros((1, 4, 2, 5)), params=params, config=cfg)
    with pytest.raises(ValueError, match="params lack"):
        _memory(x, x, params=params, config=dataclasses.replace(cfg, adaptive_q=True))
    with pytest.raises(ValueError, match=r"params\['inputs'\].*project_inputs=True"):
        _memory(x, x, params=params, config=dataclasses.replace(cfg, project_inputs=True))
    _, state = _memory(x, x, params=params, config=cfg)
    with pytest.raises(ValueError, match=r"initial_state\.weights"):
        _memory(
            jnp.zeros((2, 4, 2, 4)),
            jnp.zeros((2, 4, 2, 4)),
            params=params,
            config=cfg,
            initial_state=state,
        )


# The generators' and the output memory's chunk scans on the Pallas kernels
# (kernel_impl="pallas"), against XLA.
KERNEL_CASES = {
    "hope": {k: v for k, v in HOPE_WRITES.items() if k != "chunk_size"},
    "dgd_momentum_anchor": {
        "momentum": 0.4,
        "use_dgd": True,
        "dgd_step": "token_normalized",
        "retention_target": "initial",
        "stop_gradient_vhat": False,
    },
}


@pytest.mark.parametrize(
    "case", ["hope", pytest.param("dgd_momentum_anchor", marks=pytest.mark.slow)]
)
def test_kernel_path_equals_xla(x64, monkeypatch, case):
    """kernel_impl="pallas" (the Triton kernels in the Pallas interpreter, forward and backward)
    gives the XLA path's outputs, final state and gradients (inputs and every parameter) to
    float64 rounding; T = 36 is two full chunks of 16 of the generators and of the output memory
    (each on its own kernel) and a tail of 4 the XLA step writes."""
    monkeypatch.setenv(kernel_switch.INTERPRET_ENV, "1")
    cfg = SelfModifyingConfig(chunk_size=16, memory_chunk_size=16, **KERNEL_CASES[case])
    params = _perturbed_params(cfg, heads=2, dim=16, hidden=16, dtype=jnp.float64, scale=0.05)
    x, q = _inputs((1, 36, 2, 16), jnp.float64)

    def loss(p, x, q, impl):
        o, state = self_modifying_memory(x, q, params=p, config=cfg, kernel_impl=impl)
        value = jnp.sum(jnp.sin(o)) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves(state))
        return value, (o, state)

    grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    run = jax.jit(grad, static_argnums=3)
    (_, (o, state)), grads = run(params, x, q, "pallas")
    (_, (o_ref, state_ref)), grads_ref = run(params, x, q, "xla")
    jaxpr = str(jax.make_jaxpr(loss, static_argnums=3)(params, x, q, "pallas"))
    for kernel in ("self_modifying_generators_fwd", "self_modifying_memory_fwd"):
        assert kernel in jaxpr
    assert _max_diff(o, o_ref) < 1e-12
    assert _max_diff(state, state_ref) < 1e-12
    assert _max_diff(grads, grads_ref) < 1e-12


def test_generators_that_do_not_fit_a_triton_program_run_in_xla(x64, monkeypatch):
    """A generator chunk of 4 (Triton tiles 1 or powers of two ≥ 16) keeps the generators in XLA
    with a warning naming why, the output memory on its kernel, and the XLA path's results."""
    monkeypatch.setenv(kernel_switch.INTERPRET_ENV, "1")
    cfg = SelfModifyingConfig(chunk_size=4, memory_chunk_size=16, **KERNEL_CASES["hope"])
    params = _perturbed_params(cfg, heads=1, dim=16, hidden=16, dtype=jnp.float64, scale=0.05)
    x, q = _inputs((1, 16, 1, 16), jnp.float64)
    with pytest.warns(UserWarning, match="self_modifying_generators runs in XLA: .*power of two"):
        o, state = self_modifying_memory(x, q, params=params, config=cfg, kernel_impl="pallas")
    o_ref, state_ref = self_modifying_memory(x, q, params=params, config=cfg)
    assert _max_diff(o, o_ref) < 1e-12 and _max_diff(state, state_ref) < 1e-12


def test_generator_scan_on_the_tpu_interpreter_equals_xla():
    """The generators' chunk step (`_generator_step`, the `hope` write rule with its anchors) on
    the TPU kernels in their interpreter: the tokens, the final memories and every gradient equal
    the XLA scan's to float32 rounding (the TPU interpreter's callbacks run in float32; the layer
    test above covers the Triton interpreter in float64)."""
    cfg = SelfModifyingConfig(chunk_size=16, **KERNEL_CASES["hope"])
    names = sm._adaptive_generators(cfg)
    bh, n, c, d = 2, 2, 16, 16
    keys = iter(jax.random.split(jax.random.key(0), 64))
    r = lambda *shape, scale=0.3: scale * jax.random.normal(next(keys), shape)
    xs = {"x": r(bh, n, c, d), "q": r(bh, n, c, d), "inputs": {}, "eta_bias": r(bh, n, c, 1)}
    xs |= {
        "alpha_bias": 3 + r(bh, n, c, 1),
        "fixed": {k: r(bh, n, c, d) for k in "kv" if k not in names},
    }
    memory = lambda: sm._Memory(
        r(bh, d, d), r(bh, d, d, scale=0.01), r(bh, d, d), r(bh, d, d, scale=0.01)
    )
    state = ({k: memory() for k in names}, {k: (r(bh, d, d), r(bh, d, d)) for k in names})
    step = functools.partial(sm._generator_step, config=cfg, names=names, solve=sm.unit_lower_solve)

    def loss(impl, xs, state):
        kw = {} if impl == "xla" else {"interpret": True}
        o, end = per_sequence.scan(step, xs, state, name="gen", implementation=impl, **kw)
        return sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves((o, end)))

    want = jax.value_and_grad(loss, argnums=(1, 2))("xla", xs, state)
    got = jax.value_and_grad(loss, argnums=(1, 2))("pallas_tpu", xs, state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert jnp.allclose(a, b, rtol=1e-4, atol=1e-4), float(jnp.max(jnp.abs(a - b)))


@pytest.mark.parametrize("scan", ["memory", "generators"])
@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_kernel_lowers(scan, case, platform):
    """The forward and backward kernels of the output memory and of the generators lower for
    Triton (d 32, chunk 64 for the memory and 32 for the generators: the `hope` model's head
    width and chunks) and Mosaic TPU (d 128, chunk 128) on this CPU."""
    d, c = (32, 64 if scan == "memory" else 32) if platform == "cuda" else (128, 128)
    cfg = SelfModifyingConfig(memory_chunk_size=c, chunk_size=c, **KERNEL_CASES[case])
    bh, n = 2, 2
    zeros = lambda *shape: jnp.zeros((bh, n, c, *shape))
    square = jnp.zeros((bh, d, d))
    memory = sm._Memory(square, square, square, square)
    if scan == "memory":
        tok = sm._Tokens(k=zeros(d), v=zeros(d), q=zeros(d), eta=zeros(1), log_alpha=zeros(1))
        state = (memory, (square, square))
        step = functools.partial(sm._kernel_step, config=cfg, solve=sm.unit_lower_solve)
    else:
        names = sm._adaptive_generators(cfg)
        tok = {"x": zeros(d), "q": zeros(d), "inputs": {}, "eta_bias": zeros(1)}
        tok |= {"alpha_bias": zeros(1), "fixed": {n: zeros(d) for n in "kv" if n not in names}}
        anchors = {n: (square, square) for n in names}
        state = ({n: memory for n in names}, anchors)
        step = functools.partial(
            sm._generator_step, config=cfg, names=names, solve=sm.unit_lower_solve
        )
    if platform == "cuda":
        forward, backward = per_sequence.triton_forward, per_sequence.triton_backward
    else:
        forward, backward = per_sequence.tpu_forward, per_sequence.tpu_backward
    fwd = functools.partial(forward, step, save_starts=True, name=f"self_modifying_{scan}")
    o, _, starts = jax.eval_shape(fwd, tok, state)
    jax.jit(fwd).trace(tok, state).lower(lowering_platforms=(platform,))
    zeros_like = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
    bwd = functools.partial(backward, step, name=f"self_modifying_{scan}")
    args = (tok, zeros_like(starts), zeros_like(o), state)
    jax.jit(bwd).trace(*args).lower(lowering_platforms=(platform,))


def test_kernel_impl_errors(monkeypatch):
    cfg = SelfModifyingConfig(chunk_size=4, memory_chunk_size=16)
    params = self_modifying_init(jax.random.key(0), heads=1, dim=16, config=cfg)
    x, q = _inputs((1, 16, 1, 16), jnp.float32)
    with pytest.raises(ValueError, match="platform 'cpu' has no Pallas backend"):
        self_modifying_memory(x, q, params=params, config=cfg, kernel_impl="pallas")
    with pytest.raises(ValueError, match="kernel_impl='fast' is not one of"):
        self_modifying_memory(x, q, params=params, config=cfg, kernel_impl="fast")
    monkeypatch.setenv(kernel_switch.INTERPRET_ENV, "1")
    per_channel = dataclasses.replace(cfg, eta_alpha_per_channel=True)
    params = self_modifying_init(jax.random.key(0), heads=1, dim=16, config=per_channel)
    with pytest.raises(ValueError, match=r"kernel_impl='pallas'.*eta_alpha_per_channel=True"):
        self_modifying_memory(x, q, params=params, config=per_channel, kernel_impl="pallas")


@pytest.mark.parametrize("stop_gradient_vhat", [False, True])
def test_swapping_the_k_and_v_generators(x64, stop_gradient_vhat):
    # With the gradient through v̂ the inner loss ½‖M(k) − M(v)‖² is symmetric in k and v, so the
    # `hope` write rule gives the same output with the k and v generators swapped
    # (docs/SEMANTICS.md §1.3); with v̂ a constant target the roles differ.
    options = {"chunk_size": 4, "memory_chunk_size": 8, "stop_gradient_vhat": stop_gradient_vhat}
    cfg = SelfModifyingConfig(**{**HOPE_WRITES, **options})
    params = _perturbed_params(cfg, heads=2, dim=4, hidden=5, dtype=jnp.float64)
    swapped = {**params, "k": params["v"], "v": params["k"]}
    x, q = _inputs((2, 19, 2, 4), jnp.float64)
    o = _memory(x, q, params=params, config=cfg)[0]
    o_swapped = _memory(x, q, params=swapped, config=cfg)[0]
    if stop_gradient_vhat:
        assert _max_diff(o, o_swapped) > 1e-3
    else:
        assert _max_diff(o, o_swapped) < 1e-12
