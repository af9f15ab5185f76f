"""Tests for nestlearn/memory/instruments.py and `self_modifying_memory(stats=True)`.

References: numpy loops of the definitions (inner loss ½‖M(k_t) − v_t‖² before and after the
write, percentiles by `np.percentile`, norms of the states); the chunk-start and chunk-end states
of the chunk-parallel memories come from separate calls on prefixes of the sequence (a prefix
whose length is a multiple of the chunk size ends at a chunk boundary), not from the scan under
test.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nestlearn.memory import architectures, instruments, matrix_memory, self_modifying
from nestlearn.memory.titans import TitansState, titans_memory


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _spread(x):
    x = np.asarray(x, np.float64).reshape(-1)
    return x.mean(), np.percentile(x, 5), np.percentile(x, 95)


def _norms(end, start):
    """(mean ‖end‖, mean ‖end − start‖) per sequence over lists of [b, ...] arrays."""
    flat = lambda arrays: np.concatenate([np.asarray(a).reshape(len(a), -1) for a in arrays], 1)
    e, s = flat(end), flat(start)
    return np.linalg.norm(e, axis=1).mean(), np.linalg.norm(e - s, axis=1).mean()


def _check(stats, before, after, eta, alpha, end, start):
    got = {k: v for k, v in stats._asdict().items() if v is not None}
    want = dict(inner_loss_before=np.mean(before), inner_loss_after=np.mean(after))
    for name, x in (("eta", eta), ("alpha", alpha)):
        if x is not None:
            want.update(zip((f"{name}_mean", f"{name}_p05", f"{name}_p95"), _spread(x)))
    want["state_norm"], want["update_norm"] = _norms(end, start)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        np.testing.assert_allclose(float(got[key]), value, rtol=1e-7, err_msg=key)


@pytest.mark.parametrize("rule", ["delta", "gated"])
def test_matrix_stats_of_a_delta_rule_equal_the_loop_of_the_definition(x64, rule):
    b, t, h, d = 2, 11, 2, 4
    keys = jax.random.split(jax.random.key(0), 5)
    k = _normalize(np.asarray(jax.random.normal(keys[0], (b, t, h, d))))
    v = np.asarray(jax.random.normal(keys[1], (b, t, h, d)))
    beta = np.asarray(jax.random.uniform(keys[2], (b, t, h)))
    alpha = np.asarray(jax.random.uniform(keys[3], (b, t, h), minval=0.5, maxval=1.0))
    if rule == "delta":
        alpha = np.ones_like(alpha)
    s0 = np.asarray(jax.random.normal(keys[4], (b, h, d, d))) * 0.3

    # The loop: S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, losses around each write.
    before, after, s = np.zeros((b, t, h)), np.zeros((b, t, h)), s0.copy()
    for i in range(b):
        for j in range(h):
            for n in range(t):
                kk, vv = k[i, n, j], v[i, n, j]
                before[i, n, j] = 0.5 * np.sum((s[i, j] @ kk - vv) ** 2)
                s[i, j] = alpha[i, n, j] * s[i, j] @ (
                    np.eye(d) - beta[i, n, j] * np.outer(kk, kk)
                ) + beta[i, n, j] * np.outer(vv, kk)
                after[i, n, j] = 0.5 * np.sum((s[i, j] @ kk - vv) ** 2)

    # The memory once over the doubled batch: queries k_t, then k_{t+1}.
    twice = lambda a: jnp.concatenate([a, a])
    queries = jnp.concatenate([k, np.roll(k, -1, axis=1)])
    reads, final = matrix_memory.gated_delta_rule(
        queries,
        twice(k),
        twice(v),
        twice(alpha),
        twice(beta),
        chunk_size=4,
        initial_state=twice(s0),
    )
    stats = instruments.matrix_stats(
        k,
        v,
        reads[:b],
        reads[b:],
        initial_state=s0,
        final_state=final[:b],
        eta=beta,
        alpha=alpha,
    )
    _check(stats, before, after, beta, alpha, [s], [s0])
    assert float(stats.inner_loss_after) < float(stats.inner_loss_before)


@pytest.mark.slow
def test_chunk_stats_of_titans_read_the_chunk_boundary_states(x64):
    b, t, h, d, chunk = 2, 10, 2, 4, 4  # chunks of 4, 4 and a tail of 2
    arch = architectures.mlp(2, 6, "silu")
    params = arch.init(jax.random.key(0), heads=h, d_in=d, d_out=d, dtype=jnp.float64)
    keys = jax.random.split(jax.random.key(1), 6)
    q, k, v = (_normalize(np.asarray(jax.random.normal(kk, (b, t, h, d)))) for kk in keys[:3])
    theta = np.asarray(jax.random.uniform(keys[3], (b, t, h), maxval=0.5))
    forget = np.asarray(jax.random.uniform(keys[4], (b, t, h), maxval=0.2))
    eta = np.asarray(jax.random.uniform(keys[5], (b, t, h), maxval=0.5))
    xs = (q, k, v, theta, forget, eta)
    run = lambda state, inputs: titans_memory(
        *inputs, arch=arch, params=params, chunk_size=chunk, initial_state=state
    )
    read = lambda weights, x: jax.vmap(lambda w, y: architectures.apply_heads(arch, w, y))(
        weights, x
    )

    def step(start, inputs):
        end = run(start, inputs)[1]
        losses = [
            instruments.half_squared_error(read(s.weights, inputs[1]), inputs[2])
            for s in (start, end)
        ]
        return end, instruments.ChunkRecord(*losses, inputs[3], 1.0 - inputs[4])

    initial = TitansState(
        jax.tree.map(lambda a: jnp.broadcast_to(a, (b, *a.shape)), params),
        jax.tree.map(lambda a: jnp.zeros((b, *a.shape), a.dtype), params),
    )
    stats = instruments.chunk_stats(step, initial, xs, chunk=chunk, weights=lambda s: s.weights)

    # Reference: the state at each chunk boundary from a call on the prefix before it.
    bounds = [0, 4, 8, 10]
    states = [initial] + [run(initial, tuple(x[:, :n] for x in xs))[1] for n in bounds[1:]]
    before, after = np.zeros((b, t, h)), np.zeros((b, t, h))
    for c, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        for out, state in ((before, states[c]), (after, states[c + 1])):
            pred = np.asarray(read(state.weights, k[:, lo:hi]))
            out[:, lo:hi] = 0.5 * np.sum((pred - v[:, lo:hi]) ** 2, axis=-1)
    leaves = lambda s: jax.tree.leaves(s.weights)
    _check(stats, before, after, theta, 1.0 - forget, leaves(states[-1]), leaves(initial))
    assert float(stats.inner_loss_after) < float(stats.inner_loss_before)


@pytest.mark.slow
def test_self_modifying_stats_equal_the_definition_on_prefix_states(x64):
    """Static k/v projections (the "static k, static v" ablation) make k_t and v_t plain numpy;
    η and α still come from the self-modifying M_η and M_α."""
    b, t, h, d, chunk = 2, 10, 2, 4, 4
    config = self_modifying.SelfModifyingConfig(
        chunk_size=chunk, memory_chunk_size=chunk, adaptive_k=False, adaptive_v=False, eta_max=0.5
    )
    params = self_modifying.self_modifying_init(
        jax.random.key(0), heads=h, dim=d, config=config, dtype=jnp.float64
    )
    keys = jax.random.split(jax.random.key(1), 4)
    params["k"]["w"] = jax.random.normal(keys[0], (h, d, d), jnp.float64)
    params["v"]["w"] = jax.random.normal(keys[1], (h, d, d), jnp.float64)
    x = np.asarray(jax.random.normal(keys[2], (b, t, h, d)))
    q = np.asarray(jax.random.normal(keys[3], (b, t, h, d)))
    run = lambda xx, qq: self_modifying.self_modifying_memory(xx, qq, params=params, config=config)
    o, final, stats = self_modifying.self_modifying_memory(
        x, q, params=params, config=config, stats=True
    )
    o_plain, final_plain = run(x, q)
    np.testing.assert_array_equal(o, o_plain)  # the instruments leave the memory as it is
    jax.tree.map(np.testing.assert_array_equal, final, final_plain)

    silu = lambda z: z / (1.0 + np.exp(-z))
    mlp = lambda w, y: y + silu(y @ np.swapaxes(w["w2"], -1, -2)) @ np.swapaxes(w["w1"], -1, -2)
    xn = x / np.sqrt(np.sum(x * x, -1, keepdims=True) + 1e-6)  # normalize_x
    project = lambda w: np.einsum("bthd,hed->bthe", xn, np.asarray(w))
    norm = lambda y: y / np.sqrt(np.sum(y * y, -1, keepdims=True) + 1e-6)
    k, v = norm(project(params["k"]["w"])), norm(project(params["v"]["w"]))
    bounds = [0, 4, 8, 10]
    initial = {
        n: jax.tree.map(lambda a: np.broadcast_to(a, (b, *a.shape)), params[n])
        for n in ("eta", "alpha", "memory")
    }
    states = [initial] + [run(x[:, :n], q[:, :n])[1].weights for n in bounds[1:]]

    def read(w, y):  # w leaves [b, h, ...], y [b, c, h, d] -> [b, c, h, d]
        per = {leaf: np.asarray(w[leaf])[:, None] for leaf in ("w1", "w2")}  # [b, 1, h, ...]
        return mlp(per, y[..., None, :])[..., 0, :]

    losses = {n: (np.zeros((b, t, h)), np.zeros((b, t, h))) for n in ("eta", "alpha", "memory")}
    eta, alpha = np.zeros((b, t, h)), np.zeros((b, t, h))
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))
    for c, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        start, end = states[c], states[c + 1]
        for n, (before, after) in losses.items():
            target = read(start[n], v[:, lo:hi])
            before[:, lo:hi] = 0.5 * np.sum((read(start[n], k[:, lo:hi]) - target) ** 2, -1)
            after[:, lo:hi] = 0.5 * np.sum((read(end[n], k[:, lo:hi]) - target) ** 2, -1)
        gate = {
            n: read(start[n], xn[:, lo:hi]).mean(-1) + params[f"{n}_bias"] for n in ("eta", "alpha")
        }
        eta[:, lo:hi] = config.eta_max * sigmoid(gate["eta"])
        alpha[:, lo:hi] = sigmoid(gate["alpha"])

    leaves = lambda w, names: [np.asarray(w[n][leaf]) for n in names for leaf in ("w1", "w2")]
    generators = ("eta", "alpha")
    _check(
        stats["memory"],
        *losses["memory"],
        eta,
        alpha,
        leaves(states[-1], ["memory"]),
        leaves(initial, ["memory"]),
    )
    gen_before = (losses["eta"][0] + losses["alpha"][0]) / 2
    gen_after = (losses["eta"][1] + losses["alpha"][1]) / 2
    _check(
        stats["generators"],
        gen_before,
        gen_after,
        None,
        None,
        leaves(states[-1], generators),
        leaves(initial, generators),
    )
