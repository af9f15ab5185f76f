"""Tests for nestlearn/memory/matrix_memory.py.

References are naive numpy loops written straight from the printed recurrences (column convention,
S: [d_v, d_k], read-out S q):

* linear attention (Eqs. 14–18, arXiv 2512.24695): S_t = S_{t−1} + v_t k_tᵀ;
* delta rule (Eq. 65, arXiv 2512.24695; GDN §3.1): S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ;
* gated delta rule (GDN Eq. 10): S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ;

and o_t = S_t q_t after the write of token t.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from nestlearn.memory import matrix_memory
from nestlearn.memory.matrix_memory import (
    delta_rule,
    delta_rule_recurrent,
    gated_delta_rule,
    gated_delta_rule_recurrent,
    linear_attention,
    linear_attention_recurrent,
)

RULES = ("linear", "delta", "gated")


def _chunked(rule, q, k, v, alpha, beta, s0, *, chunk_size, remat=False):
    """Uniform signature over the three chunk-parallel forms (unused gates are ignored)."""
    kw = {"chunk_size": chunk_size, "initial_state": s0, "remat": remat}
    if rule == "linear":
        return linear_attention(q, k, v, **kw)
    if rule == "delta":
        return delta_rule(q, k, v, beta, **kw)
    return gated_delta_rule(q, k, v, alpha, beta, **kw)


def _recurrent(rule, q, k, v, alpha, beta, s0):
    if rule == "linear":
        return linear_attention_recurrent(q, k, v, initial_state=s0)
    if rule == "delta":
        return delta_rule_recurrent(q, k, v, beta, initial_state=s0)
    return gated_delta_rule_recurrent(q, k, v, alpha, beta, initial_state=s0)


chunked = jax.jit(_chunked, static_argnames=("rule", "chunk_size", "remat"))
recurrent = jax.jit(_recurrent, static_argnames=("rule",))


def _naive(rule, q, k, v, alpha, beta, s0):
    """Python loop over batch, heads and tokens, straight from the printed recurrences."""
    b, t, h, d_k = q.shape
    d_v = v.shape[-1]
    o = np.zeros((b, t, h, d_v))
    s_final = np.zeros((b, h, d_v, d_k))
    eye = np.eye(d_k)
    for bi in range(b):
        for hi in range(h):
            s = s0[bi, hi].copy()
            for ti in range(t):
                kt, vt = k[bi, ti, hi], v[bi, ti, hi]
                if rule == "linear":
                    s = s + np.outer(vt, kt)
                elif rule == "delta":
                    bt = beta[bi, ti, hi]
                    s = s @ (eye - bt * np.outer(kt, kt)) + bt * np.outer(vt, kt)
                else:
                    at, bt = alpha[bi, ti, hi], beta[bi, ti, hi]
                    s = s @ (at * (eye - bt * np.outer(kt, kt))) + bt * np.outer(vt, kt)
                o[bi, ti, hi] = s @ q[bi, ti, hi]
            s_final[bi, hi] = s
    return o, s_final


def _inputs(seed, b=2, t=37, h=2, d_k=5, d_v=4, alpha_low=0.5):
    """float64 numpy inputs: unit-norm keys, α ∈ [alpha_low, 1), β ∈ [0, 1.5), a random S_0."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(b, t, h, d_k))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    return (
        rng.normal(size=(b, t, h, d_k)),
        k,
        rng.normal(size=(b, t, h, d_v)),
        rng.uniform(alpha_low, 1.0, size=(b, t, h)),
        rng.uniform(0.0, 1.5, size=(b, t, h)),
        rng.normal(size=(b, h, d_v, d_k)),
    )


def _assert_close(actual, expected, tol=1e-10):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol)


@pytest.mark.parametrize("rule", RULES)
def test_recurrent_and_chunked_match_naive_loop(x64, rule):
    args = _inputs(0)
    o_ref, s_ref = _naive(rule, *args)
    for o, s in (recurrent(rule, *args), chunked(rule, *args, chunk_size=16)):
        assert o.dtype == jnp.float64 and s.dtype == jnp.float64
        _assert_close(o, o_ref)
        _assert_close(s, s_ref)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("chunk_size", "t"), [(1, 37), (3, 37), (16, 37), (64, 100)])
def test_chunked_matches_recurrent(x64, rule, chunk_size, t):
    args = _inputs(1, t=t)
    o_ref, s_ref = recurrent(rule, *args)
    o, s = chunked(rule, *args, chunk_size=chunk_size)
    _assert_close(o, o_ref)
    _assert_close(s, s_ref)


def test_zero_initial_state_is_default(x64):
    q, k, v, alpha, beta, s0 = _inputs(2)
    o, s = chunked("gated", q, k, v, alpha, beta, None, chunk_size=16)
    o_ref, s_ref = chunked("gated", q, k, v, alpha, beta, 0 * s0, chunk_size=16)
    _assert_close(o, o_ref, 1e-14)
    _assert_close(s, s_ref, 1e-14)


def test_delta_rule_is_gated_delta_rule_with_unit_alpha(x64):
    q, k, v, alpha, beta, s0 = _inputs(3)
    ones = np.ones_like(alpha)
    for fn in (chunked, recurrent):
        extra = {"chunk_size": 16} if fn is chunked else {}
        o_d, s_d = fn("delta", q, k, v, alpha, beta, s0, **extra)
        o_g, s_g = fn("gated", q, k, v, ones, beta, s0, **extra)
        _assert_close(o_d, o_g, 1e-12)
        _assert_close(s_d, s_g, 1e-12)


def test_linear_attention_is_small_beta_limit_of_gated_delta_rule(x64):
    # α = 1, β = ε, v/ε: S_t = S_{t−1} + v_t k_tᵀ − ε S_{t−1} k_t k_tᵀ → linear attention as ε → 0.
    q, k, v, _, _, s0 = _inputs(4)
    eps = 1e-7
    ones = np.ones(q.shape[:3])
    o_lin, s_lin = chunked("linear", q, k, v, None, None, s0, chunk_size=16)
    o_gd, s_gd = chunked("gated", q, k, v / eps, ones, eps * ones, s0, chunk_size=16)
    _assert_close(o_gd, o_lin, 1e-4)
    _assert_close(s_gd, s_lin, 1e-4)
    assert not np.allclose(o_gd, o_lin, rtol=1e-12, atol=1e-12)  # the limit is not exact


def test_tiny_and_zero_alpha_stay_exact(x64):
    q, k, v, alpha, beta, s0 = _inputs(5)
    alpha[:, 5] = 0.0  # forget everything before token 5
    alpha[:, 6:20] = 1e-30  # cumulative products underflow float64 inside a chunk
    o_ref, s_ref = _naive("gated", q, k, v, alpha, beta, s0)
    o, s = chunked("gated", q, k, v, alpha, beta, s0, chunk_size=16)
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(s))
    _assert_close(o, o_ref, 1e-9)
    _assert_close(s, s_ref, 1e-9)
    # The hand-written backward pass stays finite too (it reads the same log-space decays).
    loss = lambda *a: jnp.sum(chunked("gated", *a, chunk_size=16)[0] ** 2)
    grads = jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5))(q, k, v, alpha, beta, s0)
    assert all(np.all(np.isfinite(g)) for g in grads[:3] + grads[4:])


@pytest.mark.parametrize("rule", RULES)
def test_streaming_in_pieces_equals_one_call(x64, rule):
    q, k, v, alpha, beta, s0 = _inputs(6, t=36)
    o_full, s_full = chunked(rule, q, k, v, alpha, beta, s0, chunk_size=8)
    outputs, state = [], s0
    for lo in (0, 12, 24):  # pieces of 12 tokens: cuts off the chunk grid of 8
        piece = (x[:, lo : lo + 12] for x in (q, k, v, alpha, beta))
        o, state = chunked(rule, *piece, state, chunk_size=8)
        outputs.append(o)
    _assert_close(np.concatenate(outputs, axis=1), o_full)
    _assert_close(state, s_full)


@pytest.mark.parametrize("rule", RULES)
def test_causality(x64, rule):
    args = _inputs(7)
    o, _ = chunked(rule, *args, chunk_size=16)
    for t0 in (0, 20, 36):  # chunk start, mid-chunk, last (padded) chunk
        perturbed = [x.copy() for x in args]
        for x in perturbed[:3]:
            x[:, t0] += 0.5
        perturbed[3][:, t0] *= 0.5
        perturbed[4][:, t0] += 0.3
        o_p, _ = chunked(rule, *perturbed, chunk_size=16)
        np.testing.assert_allclose(o_p[:, :t0], o[:, :t0], rtol=0, atol=1e-14)
        assert np.abs(o_p[:, t0] - o[:, t0]).max() > 1e-3


@pytest.mark.parametrize("rule", RULES)
def test_check_grads_chunked(x64, rule):
    # Forward mode for linear attention only: the delta rules' chunk form has a custom VJP.
    q, k, v, alpha, beta, s0 = _inputs(8, b=1, t=5, h=1, d_k=3, d_v=2, alpha_low=0.6)

    @jax.jit
    def f(q, k, v, alpha, beta, s0):
        return _chunked(rule, q, k, v, alpha, beta, s0, chunk_size=2)

    modes = ("fwd", "rev") if rule == "linear" else ("rev",)
    check_grads(f, (q, k, v, alpha, beta, s0), order=1, modes=modes, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("rule", "remat"), [("linear", False), ("delta", True), ("gated", False)])
def test_gradients_of_chunked_equal_gradients_of_recurrent(x64, rule, remat):
    # remat only changes the backward pass of the shared chunk scan; one rule exercises it.
    args = _inputs(9)
    rng = np.random.default_rng(10)
    w_o = rng.normal(size=args[2].shape)
    w_s = rng.normal(size=args[5].shape)

    def loss(fn, *a):
        o, s = fn(rule, *a)
        return jnp.sum(w_o * o) + jnp.sum(w_s * jnp.tanh(s))

    argnums = (0, 1, 2, 3, 4, 5)
    g_rec = jax.jit(jax.grad(functools.partial(loss, recurrent), argnums=argnums))(*args)
    fn = functools.partial(chunked, chunk_size=16, remat=remat)
    g_chunk = jax.jit(jax.grad(functools.partial(loss, fn), argnums=argnums))(*args)
    for gc, gr in zip(g_chunk, g_rec):
        _assert_close(gc, gr, 1e-9)


@pytest.fixture
def small_segments(monkeypatch):
    """Shrinks the segment budget so that t = 37 (b 2, h 2, d_k + d_v 9) runs as 3 segments.

    Sequences up to 2¹⁹ / (b·h·(d_k + d_v)) tokens run as one segment; longer ones in segments
    of at most half that (here 8 chunks of 2), balanced: 19 chunks as 3 segments of 7.
    """
    monkeypatch.setattr(matrix_memory, "_SEGMENT_ELEMENTS", 2 * 2 * 2 * 9 * 16)
    assert matrix_memory._segment_chunks(2, 2, 37, 9, 2) == 7
    assert matrix_memory._segment_chunks(2, 2, 32, 9, 2) == 16  # fits: one segment
    assert matrix_memory._segment_chunks(2, 2, 34, 9, 2) == 6  # 17 chunks: 3 × 6, not 3 × 8


@pytest.mark.parametrize("rule", ["delta", "gated"])
@pytest.mark.parametrize("remat", [False, True])
def test_segments_match_recurrent_values_and_gradients(x64, small_segments, rule, remat):
    args = _inputs(11)
    rng = np.random.default_rng(12)
    w_o, w_s = rng.normal(size=args[2].shape), rng.normal(size=args[5].shape)

    def loss(fn, *a):
        o, s = fn(rule, *a)
        return jnp.sum(w_o * o) + jnp.sum(w_s * jnp.tanh(s))

    # Not the module-level jitted `chunked`: its cache would hold the one-segment trace.
    fn = functools.partial(_chunked, chunk_size=2, remat=remat)
    o, s = fn(rule, *args)
    o_ref, s_ref = _naive(rule, *args)
    _assert_close(o, o_ref)
    _assert_close(s, s_ref)
    argnums = (0, 1, 2, 3, 4, 5)
    g = jax.grad(functools.partial(loss, fn), argnums=argnums)(*args)
    g_ref = jax.grad(functools.partial(loss, _recurrent), argnums=argnums)(*args)
    for gc, gr in zip(g, g_ref):
        _assert_close(gc, gr, 1e-9)


@pytest.mark.slow
def test_segment_vjp_first_and_second_order(x64):
    # The delta rules' chunks run under a hand-written VJP (_delta_segment): reverse mode against
    # finite differences, to second order (the backward pass is itself differentiated).
    rng = np.random.default_rng(13)
    n, b, h, c, d_k, d_v = 3, 1, 2, 4, 3, 2
    k = rng.normal(size=(n, b, h, c, d_k))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    args = (
        rng.normal(size=(b, h, d_v, d_k)),
        rng.normal(size=(n, b, h, c, d_k)),
        k,
        rng.normal(size=(n, b, h, c, d_v)),
        np.log(rng.uniform(0.5, 1.0, size=(n, b, h, c))),
        rng.uniform(0.0, 1.5, size=(n, b, h, c)),
    )
    check_grads(matrix_memory._delta_segment, args, order=2, modes=("rev",))


def test_forward_mode_is_refused_with_a_clear_error(x64):
    # The chunk forms of the delta rules have a custom VJP; jax.jvp cannot go through it.
    q, k, v, alpha, beta, _ = _inputs(15, b=1, t=5, h=1, d_k=3, d_v=2)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda q: gated_delta_rule(q, k, v, alpha, beta, chunk_size=2)[0], (q,), (q,))


def test_bf16_inputs_accumulate_in_float32():
    args32 = [jnp.asarray(x, jnp.float32) for x in _inputs(11, alpha_low=0.9)]
    args16 = [x.astype(jnp.bfloat16) for x in args32[:5]] + [args32[5]]
    o16, s16 = chunked("gated", *args16, chunk_size=16)
    assert o16.dtype == jnp.bfloat16 and s16.dtype == jnp.float32
    o_rec, s_rec = recurrent("gated", *args16)
    assert o_rec.dtype == jnp.bfloat16 and s_rec.dtype == jnp.float32
    # The same bf16-rounded inputs through the float32 recurrence: only output rounding differs.
    o32, s32 = recurrent("gated", *[x.astype(jnp.float32) for x in args16])
    assert o32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(o16, np.float32), o32, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(s16, s32, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(s_rec, s32, rtol=1e-6, atol=1e-6)


def _bad_inputs():
    q, k, v, alpha, beta, s0 = (np.zeros(x.shape, np.float32) for x in _inputs(0, t=6))
    return [
        ("chunk_size", dict(chunk_size=0)),
        ("chunk_size", dict(chunk_size=2.0)),
        ("chunk_size", dict(chunk_size=True)),
        ("k must have the shape of q", dict(k=k[..., :3])),
        ("q must have shape", dict(q=q[0], k=k[0])),
        ("v must have shape", dict(v=v[:, :5])),
        ("v must have shape", dict(v=v[:1])),
        ("v must have shape", dict(v=v[:, :, :1])),
        ("alpha must have shape", dict(alpha=alpha[..., None])),
        ("beta must have shape", dict(beta=beta[:, :5])),
        ("initial_state must have shape", dict(initial_state=s0[..., :2, :])),
    ], dict(q=q, k=k, v=v, alpha=alpha, beta=beta, initial_state=s0, chunk_size=4)


@pytest.mark.parametrize("case", range(11))
def test_bad_input_raises_value_error(case):
    cases, good = _bad_inputs()
    message, change = cases[case]
    kw = {**good, **change}
    rules = [gated_delta_rule]
    if "alpha" not in change:
        rules.append(delta_rule)
    if "alpha" not in change and "beta" not in change:
        rules.append(linear_attention)
    for fn in rules:
        call = dict(kw)
        if fn is not gated_delta_rule:
            call.pop("alpha")
        if fn is linear_attention:
            call.pop("beta")
        with pytest.raises(ValueError, match=message):
            fn(**call)
    if "chunk_size" not in change:
        kw.pop("chunk_size")
        with pytest.raises(ValueError, match=message):
            gated_delta_rule_recurrent(**kw)


def test_long_stream_stays_finite_and_bounded():
    # 100K tokens, b = h = 1, d = 16, unit-norm keys, α ∈ [0.9, 1], β ∈ [0, 1]. Since
    # ‖α(I − β k kᵀ)‖₂ = α for unit k and β ∈ [0, 2], ‖S_t‖₂ ≤ α_t ‖S_{t−1}‖₂ + β_t ‖v_t‖ =: B_t.
    t_total, pieces, d = 100_352, 8, 16
    rng = np.random.default_rng(12)
    k = rng.normal(size=(1, t_total, 1, d)).astype(np.float32)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    q = rng.normal(size=(1, t_total, 1, d)).astype(np.float32) / np.sqrt(d)
    v = rng.normal(size=(1, t_total, 1, d)).astype(np.float32)
    alpha = rng.uniform(0.9, 1.0, size=(1, t_total, 1)).astype(np.float32)
    beta = rng.uniform(0.0, 1.0, size=(1, t_total, 1)).astype(np.float32)
    drive = beta[0, :, 0].astype(np.float64) * np.linalg.norm(v[0, :, 0], axis=-1)
    bound, state, n = 0.0, None, t_total // pieces
    for p in range(pieces):
        sl = slice(p * n, (p + 1) * n)
        o, state = chunked(
            "gated", q[:, sl], k[:, sl], v[:, sl], alpha[:, sl], beta[:, sl], state, chunk_size=64
        )
        for a_t, d_t in zip(alpha[0, sl, 0], drive[sl]):
            bound = a_t * bound + d_t
        assert np.all(np.isfinite(o)) and np.all(np.isfinite(state))
        assert np.linalg.norm(np.asarray(state[0, 0], np.float64), 2) <= bound * (1 + 1e-4) + 1e-4
    assert bound < 100.0  # the bound itself stays O(E[β‖v‖] / (1 − E[α]))
