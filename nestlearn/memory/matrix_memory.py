"""Matrix memories with exact closed-form chunk-parallel scans.

Linear attention, the delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet) are
matrix-valued associative memories (Eqs. 14–18, 65, arXiv 2512.24695). Each is written here twice:

* ``*_recurrent``: a token-by-token ``lax.scan`` written straight from the recurrence. It is the
  reference, and the slow path; the two delta rules run the gated delta rule's token recurrence
  of the kernels (:func:`nestlearn.kernels.gated_delta.gated_delta_recurrent`, no momentum; the
  delta rule with α ≡ 1), so the library has one.
* the chunk-parallel form (the public name without suffix): the WY representation with the UT
  transform (GDN §3.1 Eqs. 3–9 and Eq. 10, arXiv 2412.06464). Only the chunk-to-chunk state
  recurrence is sequential: the intra-chunk terms (the [c, c] products, the triangular inverse,
  U, W) of all chunks are built at once, a ``lax.scan`` carries the state across chunks, and the
  outputs of all chunks are one batched product. Long sequences are cut into segments that fit in
  cache (:data:`_SEGMENT_ELEMENTS`), carried by an outer scan. Linear attention keeps one scan
  step per chunk. The gated delta rule's chunk form is also the XLA backend of the kernels' op
  (:func:`nestlearn.kernels.gated_delta.gated_delta` without momentum). The forms are exact:
  every output reads the state after the write of its own token, o_t = S_t q_t.

Layout (b batch, t tokens, h heads, d_k key width, d_v value width, n chunks, c chunk size):

* q, k: [b, t, h, d_k]; v: [b, t, h, d_v]; per-token gates alpha, beta: [b, t, h].
* state S: [b, h, d_v, d_k] in the column convention of docs/SEMANTICS.md §5.1 (read-out S q,
  write v kᵀ).

Numerics. Everything is computed in the promotion of the input dtype with float32 (float32 for
bf16/float16/float32 inputs, float64 for float64 inputs under x64); outputs are cast back to the
input dtype, the final state stays in the compute dtype. Cumulative decays of the gated rule live in
log space: γ_r = exp(Σ_{j≤r} log α_j) and every ratio γ_i/γ_j (i ≥ j) is exp of a difference of
cumulative logs, never a quotient of two products, so small α underflows to a zero decay instead of
producing 0/0. α is clamped to the smallest normal number of the compute dtype before the log (α = 0
therefore means "forget all but the current write" up to that clamp). All exponents are ≤ 0 for
α ∈ (0, 1], the intended range. The UT transform needs X = (I + L)⁻¹ for a strictly
lower-triangular L per chunk: blocked forward substitution
(:func:`nestlearn.kernels.triangular.unit_lower_inverse`).

Gradients. The segments of the delta rules (:func:`_delta_segment`) have a hand-written VJP. With
R_n = S_nᵀ, Δ_n = U_n − W_n R_n, R_{n+1} = γ_n R_n + K̃_nᵀ Δ_n and O_n = Q̂_n R_n + P_n Δ_n, the
reverse pass carries G_n = ∂L/∂R_n backwards over the chunks,

  dΔ_n = P_nᵀ dO_n + K̃_n G_{n+1},   G_n = γ_n G_{n+1} + Q̂_nᵀ dO_n − W_nᵀ dΔ_n,

(two products per chunk in the loop) and everything else batched over all chunks: dK̃ = Δ Gᵀ,
dγ_n = ⟨G_{n+1}, R_n⟩, dW = −dΔ Rᵀ, dQ̂ = dO Rᵀ, dP = dO Δᵀ; through U = X diag(β) V and
W = X diag(γβ) K, dB = Xᵀ [dU, dW] and dL = −strictLower(dB_V Uᵀ + dB_K Wᵀ); then the products
K Kᵀ and Q Kᵀ, the row scalings and the log-space decays (dlog γ from Γ_ij = exp(log γ_i −
log γ_j), γ and γ_c/γ). A custom VJP rules out forward mode (``jax.jvp``) through the delta rules'
chunk form; reverse mode, also of second order, is supported (tests check both orders against
finite differences). The recurrent forms and linear attention take forward mode as well.

Speed on XLA:CPU (jaxlib 0.10, 2-core machine), which decided the layout of each product: a
``dot_general`` that contracts the last axis of its first operand runs through XLA:CPU's fast
fused path; one that contracts a leading axis runs through a generic path up to 2× slower, and a
transpose inside the chunk loop costs ~20 µs per step. So the forward loop carries R = Sᵀ, its
outputs are written as flat rows, transposed operands are materialized once outside the loops (an
optimization barrier keeps XLA from folding them back into the product), and row-wise inner
products are einsums (a multiply + reduce over the minor axis ran ~10× slower).
``experiments/memory_benchmark.py`` times the result against the recurrence.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from nestlearn.core.validation import check_chunk_size, check_nonempty, check_unit_interval
from nestlearn.kernels.gated_delta.reference import gated_delta_recurrent
from nestlearn.kernels.triangular import unit_lower_inverse

__all__ = [
    "delta_rule",
    "delta_rule_recurrent",
    "gated_delta_rule",
    "gated_delta_rule_recurrent",
    "linear_attention",
    "linear_attention_recurrent",
    "read_only",
]


def _check_inputs(q, k, v, gates, initial_state) -> None:
    """Validates shapes against the layout in the module docstring; raises ValueError."""
    if q.ndim != 4:
        raise ValueError(f"q must have shape [b, t, h, d_k], got q.shape={q.shape}")
    check_nonempty(q.shape, "bthk", name="q")
    if k.shape != q.shape:
        raise ValueError(
            f"k must have the shape of q [b, t, h, d_k]; got k.shape={k.shape}, q.shape={q.shape}"
        )
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "v must have shape [b, t, h, d_v] with batch, time and heads of q; "
            f"got v.shape={v.shape}, q.shape={q.shape}"
        )
    check_nonempty(v.shape, "bthv", name="v")
    b, t, h, d_k = q.shape
    for name, gate in gates.items():
        if gate.shape != (b, t, h):
            raise ValueError(
                f"{name} must have shape [b, t, h]={(b, t, h)}, got {name}.shape={gate.shape}"
            )
    check_unit_interval(gates.get("alpha"), name="alpha")
    if initial_state is not None:
        expected = (b, h, v.shape[-1], d_k)
        if initial_state.shape != expected:
            raise ValueError(
                f"initial_state must have shape [b, h, d_v, d_k]={expected}, "
                f"got initial_state.shape={initial_state.shape}"
            )


def _dtypes(q, k, v):
    out_dtype = jnp.result_type(q, k, v)
    compute_dtype = jnp.promote_types(out_dtype, jnp.float32)
    return out_dtype, compute_dtype


def _initial_state(initial_state, q, v, dtype):
    b, _, h, d_k = q.shape
    if initial_state is None:
        return jnp.zeros((b, h, v.shape[-1], d_k), dtype)
    return initial_state.astype(dtype)


def _log_alpha(alpha, dtype):
    """log α with α clamped to the smallest normal number so that α = 0 stays finite."""
    alpha = alpha.astype(dtype)
    return jnp.log(jnp.maximum(alpha, jnp.finfo(dtype).tiny))


# ----------------------------------------------------------------------------------------------
# Recurrent references.


def _linear_recurrent(q, k, v, initial_state):
    """Token scan of S_t = S_{t−1} + v_t k_tᵀ, o_t = S_t q_t."""
    out_dtype, dtype = _dtypes(q, k, v)
    state = _initial_state(initial_state, q, v, dtype)
    xs = [jnp.moveaxis(x.astype(dtype), 1, 0) for x in (q, k, v)]  # time-major [t, b, h, d]

    def step(s, x):  # s: [b, h, d_v, d_k]
        q_t, k_t, v_t = x
        s = s + jnp.einsum("bhv,bhk->bhvk", v_t, k_t)
        return s, jnp.einsum("bhvk,bhk->bhv", s, q_t)

    state, o = lax.scan(step, state, xs)
    return jnp.moveaxis(o, 0, 1).astype(out_dtype), state


def linear_attention_recurrent(q, k, v, *, initial_state=None):
    """Linear attention, token by token (reference for :func:`linear_attention`).

    S_t = S_{t−1} + v_t k_tᵀ, o_t = S_t q_t (Eqs. 14–18, arXiv 2512.24695).

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      initial_state: S_0 [b, h, d_v, d_k]; zeros when None.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k]
      in the compute dtype (float32, or float64 for float64 inputs).
    """
    _check_inputs(q, k, v, {}, initial_state)
    return _linear_recurrent(q, k, v, initial_state)


def delta_rule_recurrent(q, k, v, beta, *, initial_state=None):
    """Delta rule, token by token (reference for :func:`delta_rule`).

    S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t (Eq. 65, arXiv 2512.24695, in the
    column convention; GDN §3.1).

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      beta: step sizes β [b, t, h].
      initial_state: S_0 [b, h, d_v, d_k]; zeros when None.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k].
    """
    _check_inputs(q, k, v, {"beta": beta}, initial_state)
    return gated_delta_recurrent(q, k, v, jnp.ones_like(beta), beta, initial_state=initial_state)


def gated_delta_rule_recurrent(q, k, v, alpha, beta, *, initial_state=None):
    """Gated delta rule, token by token (reference for :func:`gated_delta_rule`).

    S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ, o_t = S_t q_t (GDN Eq. 10; Titans App. C;
    Eq. 93 of arXiv 2512.24695 maps onto it, docs/kernels.md §1).

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      alpha: decays α ∈ (0, 1] [b, t, h]; a concrete α outside [0, 1] is refused.
      beta: step sizes β [b, t, h].
      initial_state: S_0 [b, h, d_v, d_k]; zeros when None.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k].
    """
    _check_inputs(q, k, v, {"alpha": alpha, "beta": beta}, initial_state)
    return gated_delta_recurrent(q, k, v, alpha, beta, initial_state=initial_state)


# ----------------------------------------------------------------------------------------------
# Chunk-parallel forms.


def _to_chunks(x, chunk_size, pad_value=0.0):
    """[b, t, h, ...] -> [n, b, h, c, ...], padding t up to a multiple of the chunk size."""
    b, t, h = x.shape[:3]
    n = -(-t // chunk_size)
    pad = n * chunk_size - t
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), constant_values=pad_value)
    x = x.reshape((b, n, chunk_size, h, *x.shape[3:]))
    return jnp.moveaxis(x, (1, 3), (0, 2))  # [n, b, h, c, ...]


def _from_chunks(o, t):
    """[n, b, h, c, d] -> [b, t, h, d], dropping the padded tail."""
    n, b, h, c, d = o.shape
    return jnp.moveaxis(o, (0, 2), (1, 3)).reshape(b, n * c, h, d)[:, :t]


def _linear_chunk(s, q, k, v):
    """One chunk of linear attention: O = Q Sᵀ + (Q Kᵀ ⊙ M) V, S ← S + Vᵀ K.

    Args:
      s: state at the chunk start [b, h, d_v, d_k].
      q, k: [b, h, c, d_k]; v: [b, h, c, d_v].

    Returns:
      ``(S_end, O)`` with O [b, h, c, d_v].
    """
    c = q.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), dtype=bool))
    p = jnp.where(causal, jnp.einsum("bhid,bhjd->bhij", q, k), 0.0)
    o = jnp.einsum("bhck,bhvk->bhcv", q, s) + p @ v
    return s + jnp.einsum("bhcv,bhck->bhvk", v, k), o


def _nt(a, b):
    """a bᵀ over the last two axes: [..., i, d] × [..., j, d] -> [..., i, j]."""
    return jnp.einsum("...id,...jd->...ij", a, b)


def _transposed(a):
    """aᵀ over the last two axes, materialized: the optimization barrier keeps XLA from folding
    the transpose back into the product that reads it. A ``dot_general`` contracting the leading
    axis of an operand runs on XLA:CPU's generic path, 1.5–2× slower than a transpose plus the
    plain product (jaxlib 0.10)."""
    return lax.optimization_barrier(jnp.swapaxes(a, -1, -2))


def _tn(a, b):
    """aᵀ b over the last two axes: [..., d, i] × [..., d, j] -> [..., i, j]."""
    return _transposed(a) @ b


def _rowdot(a, b):
    """Row-wise inner products: [..., c, d] × [..., c, d] -> [..., c].

    An einsum (a batched ``dot_general``), not ``jnp.sum(a * b, -1)``: XLA:CPU (jaxlib 0.10) runs
    that multiply + reduce fusion ~10× slower on these shapes.
    """
    return jnp.einsum("...cd,...cd->...c", a, b)


def _upper(c, dtype):
    """[c, c] with 1 where row j ≤ column r: Σ_j log α_j upper[j, r] = log γ_r (cumulative sums
    as products, no scan)."""
    return jnp.triu(jnp.ones((c, c), dtype))


def _masked_exp(log_gamma):
    """Γ ⊙ M: Γ_ij = γ_i/γ_j = exp(log γ_i − log γ_j) on and below the diagonal, 0 above."""
    c = log_gamma.shape[-1]
    causal = jnp.tril(jnp.ones((c, c), dtype=bool))
    diff = log_gamma[..., :, None] - log_gamma[..., None, :]
    return jnp.exp(jnp.where(causal, diff, -jnp.inf))


class _Residuals(NamedTuple):
    """What the forward pass of :func:`_delta_segment` keeps for its backward pass (all chunks;
    leading dimensions [n, b, h])."""

    q: jax.Array  # [..., c, d_k]
    k: jax.Array  # [..., c, d_k]
    v: jax.Array  # [..., c, d_v]
    beta: jax.Array  # [..., c]
    ratios: jax.Array  # Γ ⊙ M [..., c, c]
    gamma: jax.Array  # γ_r [..., c]
    tail: jax.Array  # γ_c/γ_r [..., c]
    decay: jax.Array  # γ_c [...]
    k_beta: jax.Array  # diag(β) K
    kk: jax.Array  # diag(β) K Kᵀ [..., c, c]
    x: jax.Array  # (I + L)⁻¹ [..., c, c]
    u: jax.Array  # [..., c, d_v]
    w: jax.Array  # [..., c, d_k]
    qk: jax.Array  # Q Kᵀ [..., c, c]
    p: jax.Array  # Q Kᵀ ⊙ Γ ⊙ M
    q_hat: jax.Array  # diag(γ) Q
    k_tilde: jax.Array  # diag(γ_c/γ) K
    states: jax.Array  # S_n [..., d_v, d_k]
    deltas: jax.Array  # Δ_n [..., c, d_v]


def _segment_fwd(s0, q, k, v, log_alpha, beta):
    """Forward pass of :func:`_delta_segment`; returns ``((S_end, O), residuals)``."""
    c = q.shape[-2]
    upper = _upper(c, q.dtype)
    log_gamma = jnp.einsum("...j,jr->...r", log_alpha, upper)  # log γ_r = Σ_{j≤r} log α_j
    log_tail = jnp.einsum("...j,jr->...r", log_alpha, 1.0 - upper)  # Σ_{j>r} log α_j
    ratios = _masked_exp(log_gamma)  # Γ ⊙ M [..., c, c]
    gamma, tail = jnp.exp(log_gamma), jnp.exp(log_tail)  # [..., c]
    decay = jnp.exp(jnp.sum(log_alpha, axis=-1))  # γ_c [...]
    k_beta = beta[..., None] * k  # diag(β) K
    kk = _nt(k_beta, k)  # diag(β) K Kᵀ
    x = unit_lower_inverse(ratios * kk)  # (I + L)⁻¹, L = strictLower(Γ ⊙ diag(β) K Kᵀ)
    u = x @ (beta[..., None] * v)  # [..., c, d_v]
    w = x @ (gamma[..., None] * k_beta)  # [..., c, d_k]
    qk = _nt(q, k)
    p = ratios * qk
    q_hat, k_tilde = gamma[..., None] * q, tail[..., None] * k

    def step(r, xs):  # r = Sᵀ: [b, h, d_k, d_v]
        u, w, k_tilde_t, decay = xs
        delta = u - w @ r  # Δ = U − W Sᵀ  [b, h, c, d_v]
        r_next = decay[..., None, None] * r + k_tilde_t @ delta
        return r_next, (r.reshape(-1), delta.reshape(-1))

    r_end, (states, deltas) = lax.scan(
        step, jnp.swapaxes(s0, -1, -2), (u, w, jnp.swapaxes(k_tilde, -1, -2), decay)
    )
    states = states.reshape(*u.shape[:-2], *s0.shape[-2:][::-1])  # R_n [n, b, h, d_k, d_v]
    deltas = deltas.reshape(u.shape)  # Δ_n [n, b, h, c, d_v]
    o = q_hat @ states + p @ deltas
    states = _transposed(states)  # S_n [n, b, h, d_v, d_k]
    residuals = _Residuals(
        q, k, v, beta, ratios, gamma, tail, decay, k_beta, kk, x, u, w, qk, p, q_hat,
        k_tilde, states, deltas,
    )  # fmt: skip
    return (jnp.swapaxes(r_end, -1, -2), o), residuals


def _segment_bwd(residuals, cotangents):
    """Reverse pass of :func:`_delta_segment`, written out (module docstring, "Gradients")."""
    (q, k, v, beta, ratios, gamma, tail, decay, k_beta, kk, x, u, w, qk, p, q_hat, k_tilde,
     states, deltas) = residuals  # fmt: skip
    d_s_end, d_o = cotangents

    # State cotangents G_n = ∂/∂R_n, carried backwards over the chunks:
    #   dΔ_n = Pᵀ dO_n + K̃_n G_{n+1},  G_n = γ_n G_{n+1} + Q̂_nᵀ dO_n − W_nᵀ dΔ_n.
    def step(g, xs):  # g: [b, h, d_k, d_v]
        e, f, k_tilde, w_t, decay = xs
        d_delta = e + k_tilde @ g
        g_prev = decay[..., None, None] * g + f - w_t @ d_delta
        return g_prev, (g.reshape(-1), d_delta.reshape(-1))

    xs = (_tn(p, d_o), _tn(q_hat, d_o), k_tilde, jnp.swapaxes(w, -1, -2), decay)
    g0, (g_next, d_delta) = lax.scan(step, jnp.swapaxes(d_s_end, -1, -2), xs, reverse=True)
    g_next = g_next.reshape(*states.shape[:-2], *states.shape[-2:][::-1])
    g_next = _transposed(g_next)  # G_{n+1}ᵀ [n, b, h, d_v, d_k]
    d_delta = d_delta.reshape(deltas.shape)  # dΔ_n = dU_n

    # Chunk terms (all chunks at once).
    d_k_tilde = deltas @ g_next  # [..., c, d_k]
    d_decay = jnp.einsum("...vk,...vk->...", g_next, states)
    d_w = -d_delta @ states
    d_q_hat = d_o @ states
    d_p = _nt(d_o, deltas)  # [..., c, c]
    # U = X diag(β) V, W = X diag(γβ) K, X = (I + L)⁻¹: dB = Xᵀ dU (dB_K = Xᵀ dW) and
    # dL = −strictLower(dB_V Uᵀ + dB_K Wᵀ).
    x_t = _transposed(x)
    d_bv, d_bk = x_t @ d_delta, x_t @ d_w
    d_lower = -jnp.tril(_nt(d_bv, u) + _nt(d_bk, w), -1)
    d_kk = d_lower * ratios
    d_ratios = d_p * qk + d_lower * kk
    d_qk = d_p * ratios
    d_k_beta = d_kk @ k + gamma[..., None] * d_bk
    dq = gamma[..., None] * d_q_hat + d_qk @ k
    dk = tail[..., None] * d_k_tilde + _tn(d_qk, q) + _tn(d_kk, k_beta) + beta[..., None] * d_k_beta
    dv = beta[..., None] * d_bv
    d_beta = _rowdot(d_bv, v) + _rowdot(d_k_beta, k)
    # Log-space decays: Γ_ij = exp(log γ_i − log γ_j), γ = exp(log γ), tail = exp(log tail).
    d_r = d_ratios * ratios
    d_log_gamma = jnp.sum(d_r, axis=-1) - jnp.sum(d_r, axis=-2)
    d_log_gamma = d_log_gamma + (_rowdot(d_q_hat, q) + _rowdot(d_bk, k_beta)) * gamma
    d_log_tail = _rowdot(d_k_tilde, k) * tail
    upper = _upper(k.shape[-2], k.dtype)
    d_log_alpha = jnp.einsum("...r,jr->...j", d_log_gamma, upper)
    d_log_alpha = d_log_alpha + jnp.einsum("...r,jr->...j", d_log_tail, 1.0 - upper)
    d_log_alpha = d_log_alpha + (d_decay * decay)[..., None]
    return jnp.swapaxes(g0, -1, -2), dq, dk, dv, d_log_alpha, d_beta


@jax.custom_vjp
def _delta_segment(s, q, k, v, log_alpha, beta):
    """Consecutive chunks of the (gated) delta rule from the state ``s`` at their start.

    Forward (:func:`_segment_fwd`, GDN §3.3 / Eqs. 6–10): the intra-chunk terms of all
    chunks at once — γ_r = Π_{j≤r} α_j, Γ_ij = γ_i/γ_j (i ≥ j), X = [I + strictLower(diag(β)
    (Γ ⊙ K Kᵀ))]⁻¹, U = X diag(β) V, W = X diag(γβ) K, P = Q Kᵀ ⊙ Γ ⊙ M, Q̂ = diag(γ) Q,
    K̃ = diag(γ_c/γ) K —, then a ``lax.scan`` of Δ_n = U_n − W_n S_nᵀ, S_{n+1} = γ_c S_n + Δ_nᵀ K̃_n,
    then O_n = Q̂_n S_nᵀ + P_n Δ_n for all chunks at once. The ungated delta rule is log α ≡ 0.
    Backward: :func:`_segment_bwd` (module docstring, "Gradients").

    Args:
      s: state at the segment start [b, h, d_v, d_k].
      q, k: [n, b, h, c, d_k]; v: [n, b, h, c, d_v]; log_alpha (log α), beta: [n, b, h, c].

    Returns:
      ``(S_end, O)`` with O [n, b, h, c, d_v].
    """
    return _segment_fwd(s, q, k, v, log_alpha, beta)[0]


_delta_segment.defvjp(_segment_fwd, _segment_bwd)


# Working-set budget of one segment of the delta rules, in elements of q, k, v: b·h·t·(d_k + d_v).
# Measured on the 2-core CPU (d 64, 4 heads, chunk 32): building every chunk's terms at
# once is fastest up to t = 1024 (2¹⁹ elements) and slows down past it (t = 4096: 82 ms, against
# 53 ms in segments of 512 tokens and 68 ms in segments of 1024), as the terms fall out of cache.
# Re-checked with the hand-written VJP: budgets 2¹⁸ and 2¹⁹ best at t = 4096, 2²⁰
# and 2²¹ slower, remat still faster than storing the segments' residuals.
_SEGMENT_ELEMENTS = 2**19


def _segment_chunks(b, h, t, width, chunk_size):
    """Chunks per segment: all of them if the sequence fits the budget, else as few segments of
    at most half the budget as cover the sequence, with their chunks spread evenly over them (so
    the last segment is not mostly padding: 33 chunks run as 3 × 11, not 3 × 16)."""
    n = -(-t // chunk_size)
    per_token = b * h * width
    if n * chunk_size * per_token <= _SEGMENT_ELEMENTS:
        return n
    most = max(1, _SEGMENT_ELEMENTS // 2 // (per_token * chunk_size))
    return -(-n // -(-n // most))


def _chunked(q, k, v, alpha, beta, initial_state, chunk_size, remat, kind):
    """Pads to whole chunks (and segments) and carries S across them.

    Linear attention takes one ``lax.scan`` step per chunk (:func:`_linear_chunk`). The delta
    rules process segments of chunks (:func:`_delta_segment`): one segment when the sequence fits
    :data:`_SEGMENT_ELEMENTS`, else a ``lax.scan`` over segments of half that size.
    """
    out_dtype, dtype = _dtypes(q, k, v)
    b, t, h = q.shape[:3]
    state = _initial_state(initial_state, q, v, dtype)
    if kind == "linear":
        xs = tuple(_to_chunks(x.astype(dtype), chunk_size) for x in (q, k, v))
        body = lambda s, x: _linear_chunk(s, *x)
        state, o = lax.scan(jax.checkpoint(body) if remat else body, state, xs)
        return _from_chunks(o, t).astype(out_dtype), state
    # Padded steps: k = v = 0, β = 0 and log α = 0 (α = 1), so they leave the state unchanged.
    g = _segment_chunks(b, h, t, k.shape[-1] + v.shape[-1], chunk_size)
    m = -(-t // (g * chunk_size))  # segments
    pad = [(0, 0), (0, m * g * chunk_size - t)]
    padded = lambda x: jnp.pad(x.astype(dtype), pad + [(0, 0)] * (x.ndim - 2))
    xs = [_to_chunks(padded(x), chunk_size) for x in (q, k, v)]  # [n, b, h, c, d]
    log_alpha = jnp.zeros(q.shape[:3], dtype) if kind == "delta" else _log_alpha(alpha, dtype)
    xs.append(_to_chunks(padded(log_alpha), chunk_size))
    xs.append(_to_chunks(padded(beta), chunk_size))
    if m == 1:
        state, o = _delta_segment(state, *xs)
    else:
        xs = tuple(x.reshape(m, g, *x.shape[1:]) for x in xs)
        body = lambda s, x: _delta_segment(s, *x)
        state, o = lax.scan(jax.checkpoint(body) if remat else body, state, xs)
        o = o.reshape(m * g, *o.shape[2:])
    return _from_chunks(o, t).astype(out_dtype), state


def linear_attention(q, k, v, *, chunk_size, initial_state=None, remat=True):
    """Linear attention, chunk-parallel and exact.

    S_t = S_{t−1} + v_t k_tᵀ, o_t = S_t q_t (Eqs. 14–18, arXiv 2512.24695). Per chunk:
    O = Q Sᵀ + (Q Kᵀ ⊙ M) V and S ← S + Vᵀ K, M the causal mask with its diagonal.

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      chunk_size: tokens per chunk (any t works; the tail is padded internally).
      initial_state: S_0 [b, h, d_v, d_k] in the column convention (read-out S q); zeros when None.
      remat: recompute each chunk step in the backward pass instead of storing its intra-chunk
        terms (less memory; also faster on CPU at t ≥ 1024). The result is the same either way.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k]
      in the compute dtype (float32, or float64 for float64 inputs). Passing S back as
      ``initial_state`` continues the stream.

    Raises:
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched or empty shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {}, initial_state)
    return _chunked(q, k, v, None, None, initial_state, chunk_size, remat, "linear")


def delta_rule(q, k, v, beta, *, chunk_size, initial_state=None, remat=True):
    """Delta rule (DeltaNet), chunk-parallel and exact.

    S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t (Eq. 65, arXiv 2512.24695, in the
    column convention). Chunk form: WY representation + UT transform, GDN §3.1 Eqs. 3–9, T by
    forward substitution on the unit lower-triangular I + strictLower(diag(β)KKᵀ).

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k] (usually ℓ2-normalized; β ∈ (0, 2) keeps the erase contractive).
      v: values [b, t, h, d_v].
      beta: step sizes β [b, t, h].
      chunk_size: tokens per chunk (any t works; the tail is padded internally).
      initial_state: S_0 [b, h, d_v, d_k] in the column convention (read-out S q); zeros when None.
      remat: when the sequence is processed in several segments (long sequences, see
        :func:`_segment_chunks`), recompute each segment's intra-chunk terms in the backward pass
        instead of storing them (less memory; also faster on CPU). The result is the same either
        way.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k]
      in the compute dtype (float32, or float64 for float64 inputs).

    Raises:
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched or empty shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {"beta": beta}, initial_state)
    return _chunked(q, k, v, None, beta, initial_state, chunk_size, remat, "delta")


def gated_delta_rule(q, k, v, alpha, beta, *, chunk_size, initial_state=None, remat=True):
    """Gated delta rule (Gated DeltaNet), chunk-parallel and exact.

    S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ, o_t = S_t q_t (GDN Eq. 10; the linear
    Titans memory without momentum, Titans App. C; Hope's matrix memory, Eq. 93 of arXiv 2512.24695
    via docs/kernels.md §1). Chunk form of GDN §3.3, cumulative decays in log space (module
    docstring):
    T = [I + strictLower(diag(β)(Γ ⊙ KKᵀ))]⁻¹ diag(β), U = TV, W = T diag(γ) K,
    O = diag(γ) Q Sᵀ + (QKᵀ ⊙ Γ ⊙ M)(U − W Sᵀ), S ← γ_c S + (U − W Sᵀ)ᵀ K̃.

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      alpha: decays α ∈ (0, 1] [b, t, h]; clamped below at the smallest normal number. A
        concrete α (outside ``jit``) outside [0, 1] is refused; a traced one is not checked.
      beta: step sizes β [b, t, h].
      chunk_size: tokens per chunk (any t works; the tail is padded internally).
      initial_state: S_0 [b, h, d_v, d_k] in the column convention (read-out S q); zeros when None.
      remat: when the sequence is processed in several segments (long sequences, see
        :func:`_segment_chunks`), recompute each segment's intra-chunk terms in the backward pass
        instead of storing them (less memory; also faster on CPU). The result is the same either
        way.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k]
      in the compute dtype (float32, or float64 for float64 inputs).

    Raises:
      ValueError: on a non-positive or non-int ``chunk_size``, mismatched or empty shapes, or a
        concrete α outside [0, 1].
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {"alpha": alpha, "beta": beta}, initial_state)
    return _chunked(q, k, v, alpha, beta, initial_state, chunk_size, remat, "gated")


def read_only(q, k, v, *, initial_state=None):
    """Any of the matrix memories with its writes switched off: S_t = S_0, o_t = S_0 q_t.

    The read of linear attention, the delta rule and the gated delta rule (o_t = S_t q_t) from a
    state that no token writes, decays or erases; k and v fix the shapes and dtypes only. With
    a fresh state (S_0 = 0) every output is 0.

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      initial_state: S_0 [b, h, d_v, d_k] in the column convention (read-out S q); zeros when None.

    Returns:
      ``(o, S_0)``: outputs [b, t, h, d_v] in the input dtype and S_0 in the compute dtype, as
      the writing forms return their final state.

    Raises:
      ValueError: on mismatched or empty shapes.
    """
    _check_inputs(q, k, v, {}, initial_state)
    out_dtype, dtype = _dtypes(q, k, v)
    state = _initial_state(initial_state, q, v, dtype)  # [b, h, d_v, d_k]
    o = jnp.einsum("bhvk,bthk->bthv", state, q.astype(dtype))
    return o.astype(out_dtype), state
