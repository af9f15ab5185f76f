"""Matrix memories with exact closed-form chunk-parallel scans.

Linear attention, the delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet) are
matrix-valued associative memories (§1.6, arXiv 2512.24695). Each is written here twice:

* ``*_recurrent``: a token-by-token ``lax.scan`` written straight from the recurrence. It is the
  reference, and the slow path.
* the chunk-parallel form (the public name without suffix): the WY representation with the UT
  transform (GDN §3.1 Eqs. 3–9 and Eq. 10, arXiv 2412.06464). Only the chunk-to-chunk state
  recurrence is sequential: the intra-chunk terms (the [c, c] products, the triangular inverse,
  U, W) of all chunks are built at once, a ``lax.scan`` carries the state across chunks (with a
  custom JVP whose tangent carries only the state, :func:`_state_scan`), and the outputs of all
  chunks are one batched product. Long sequences are cut into segments that fit in cache
  (:data:`_SEGMENT_ELEMENTS`), carried by an outer scan. Linear attention keeps one scan step per
  chunk. The forms are exact: every output reads the state after the write of its own token,
  o_t = S_t q_t.

Layout (b batch, t tokens, h heads, d_k key width, d_v value width, n chunks, c chunk size):

* q, k: [b, t, h, d_k]; v: [b, t, h, d_v]; per-token gates alpha, beta: [b, t, h].
* state S: [b, h, d_v, d_k] in the column convention of PAPER §0.3 (read-out S q, write v kᵀ).

Numerics. Everything is computed in the promotion of the input dtype with float32 (float32 for
bf16/float16/float32 inputs, float64 for float64 inputs under x64); outputs are cast back to the
input dtype, the final state stays in the compute dtype. Cumulative decays of the gated rule live in
log space: γ_r = exp(Σ_{j≤r} log α_j) and every ratio γ_i/γ_j (i ≥ j) is exp of a difference of
cumulative logs, never a quotient of two products, so small α underflows to a zero decay instead of
producing 0/0. α is clamped to the smallest normal number of the compute dtype before the log (α = 0
therefore means "forget all but the current write" up to that clamp). All exponents are ≤ 0 for
α ∈ (0, 1], the intended range.

The UT transform needs (I + L)⁻¹ for a strictly lower-triangular L per chunk. It is computed by
forward substitution in a ``lax.fori_loop`` over the rows. U, W = X [diag(β) V, diag(βγ) K] have
the custom JVP d(X B) = X (dB − dL X B) (:func:`_solve_unit_lower`), which avoids the two [c, c]
products of X's own derivative −X dL X (3% faster forward + backward, session 5). Not used:
``jax.scipy.linalg.solve_triangular``, whose batched LAPACK calls made forward + backward ~5–20×
slower on the 2-core CPU machine (session 2); a level-wise 2×2-block inverse (session 2 per
chunk; session 5 with all chunks batched: 0.27 against 0.46 ms alone, no change in the layer) and
the Neumann product (I + N)(I + N²)(I + N⁴)…, which is no faster and loses precision in float32.

Speed on XLA:CPU. Per-token scalings (diag(β) K, diag(γ) Q, the decay of S) are einsums, and the
decay ratios Γ and cumulative log decays are built so that their derivatives are ``dot_general``
ops too (:func:`_scale_rows`, :func:`_decay_ratios`, products with 0/1 triangles): the
broadcast-multiply form transposes into multiply + reduce fusions that XLA:CPU (jaxlib 0.10)
runs up to ~10× slower than the equivalent contraction (``jnp.sum(x * y, -1)`` on
[1, 1024, 4, 64]: 0.82 ms against 0.09 ms for ``jnp.einsum``). ``remat=True`` (the default)
recomputes each chunk's terms in the backward pass instead of storing them, which was also the
faster choice at t ≥ 1024 for the per-chunk scan of linear attention and for the segments of the
delta rules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from nestlearn.core.validation import check_chunk_size

__all__ = [
    "delta_rule",
    "delta_rule_recurrent",
    "gated_delta_rule",
    "gated_delta_rule_recurrent",
    "linear_attention",
    "linear_attention_recurrent",
]


def _check_inputs(q, k, v, gates, initial_state) -> None:
    """Validates shapes against the layout in the module docstring; raises ValueError."""
    if q.ndim != 4:
        raise ValueError(f"q must have shape [b, t, h, d_k], got q.shape={q.shape}")
    if k.shape != q.shape:
        raise ValueError(
            f"k must have the shape of q [b, t, h, d_k]; got k.shape={k.shape}, q.shape={q.shape}"
        )
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "v must have shape [b, t, h, d_v] with batch, time and heads of q; "
            f"got v.shape={v.shape}, q.shape={q.shape}"
        )
    b, t, h, d_k = q.shape
    for name, gate in gates.items():
        if gate.shape != (b, t, h):
            raise ValueError(
                f"{name} must have shape [b, t, h]={(b, t, h)}, got {name}.shape={gate.shape}"
            )
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


def _recurrent(q, k, v, alpha, beta, initial_state):
    """Token scan of S_t = α_t S_{t−1} + β_t (v_t − α_t S_{t−1} k_t) k_tᵀ, o_t = S_t q_t.

    ``alpha``/``beta`` None mean α = 1 / "no erase, β = 1" (linear attention).
    """
    out_dtype, dtype = _dtypes(q, k, v)
    state = _initial_state(initial_state, q, v, dtype)
    # Time-major for the scan: [t, b, h, d].
    xs = {
        "q": jnp.moveaxis(q.astype(dtype), 1, 0),
        "k": jnp.moveaxis(k.astype(dtype), 1, 0),
        "v": jnp.moveaxis(v.astype(dtype), 1, 0),
    }
    if alpha is not None:
        xs["alpha"] = jnp.moveaxis(alpha.astype(dtype), 1, 0)  # [t, b, h]
    if beta is not None:
        xs["beta"] = jnp.moveaxis(beta.astype(dtype), 1, 0)  # [t, b, h]

    def step(s, x):  # s: [b, h, d_v, d_k]
        a = x["alpha"][..., None, None] if alpha is not None else 1.0
        if beta is None:
            write = x["v"]  # [b, h, d_v]
        else:
            read = jnp.einsum("bhvk,bhk->bhv", a * s, x["k"])
            write = x["beta"][..., None] * (x["v"] - read)
        s = a * s + jnp.einsum("bhv,bhk->bhvk", write, x["k"])
        o = jnp.einsum("bhvk,bhk->bhv", s, x["q"])
        return s, o

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
    return _recurrent(q, k, v, None, None, initial_state)


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
    return _recurrent(q, k, v, None, beta, initial_state)


def gated_delta_rule_recurrent(q, k, v, alpha, beta, *, initial_state=None):
    """Gated delta rule, token by token (reference for :func:`gated_delta_rule`).

    S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ, o_t = S_t q_t (GDN Eq. 10; Titans App. C;
    Eq. 93 of arXiv 2512.24695 maps onto it, PAPER §6.5).

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      alpha: decays α ∈ (0, 1] [b, t, h].
      beta: step sizes β [b, t, h].
      initial_state: S_0 [b, h, d_v, d_k]; zeros when None.

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k].
    """
    _check_inputs(q, k, v, {"alpha": alpha, "beta": beta}, initial_state)
    return _recurrent(q, k, v, alpha, beta, initial_state)


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


def _scale_rows(s, x):
    """diag(s) X per chunk: s [..., c], x [..., c, d] -> [..., c, d].

    Written as an einsum (a ``dot_general`` with batch dimensions only) rather than
    ``s[..., None] * x`` so that its transpose is a ``dot_general`` too: the multiply + reduce
    fusions that the broadcast form transposes into ran up to ~10× slower on XLA:CPU
    (module docstring).
    """
    return jnp.einsum("...c,...cd->...cd", s, x)


@jax.custom_jvp
def _decay_ratios(log_gamma):
    """Γ ⊙ M with Γ_ij = γ_i/γ_j = exp(log γ_i − log γ_j), M causal with its diagonal.

    Args:
      log_gamma: cumulative log decays inside the chunk, log γ_r = Σ_{j≤r} log α_j [..., c].

    Returns:
      [..., c, c], zero above the diagonal; exponents on and below it are ≤ 0 for α ≤ 1.
    """
    c = log_gamma.shape[-1]
    causal = jnp.tril(jnp.ones((c, c), dtype=bool))
    diff = log_gamma[..., :, None] - log_gamma[..., None, :]
    return jnp.exp(jnp.where(causal, diff, -jnp.inf))


@_decay_ratios.defjvp
def _decay_ratios_jvp(primals, tangents):
    # dΓ_ij = Γ_ij (d log γ_i − d log γ_j), as einsums so that the transpose is a dot_general.
    (log_gamma,), (d_log_gamma,) = primals, tangents
    ratios = _decay_ratios(log_gamma)
    d_ratios = jnp.einsum("...ij,...i->...ij", ratios, d_log_gamma) - jnp.einsum(
        "...ij,...j->...ij", ratios, d_log_gamma
    )
    return ratios, d_ratios


@jax.custom_jvp
def _inverse_unit_lower(lower):
    """(I + L)⁻¹ for the strictly lower-triangular part L of ``lower`` [..., c, c].

    Forward substitution, one row per step of a ``lax.fori_loop``: X_i = e_i − Σ_{j<i} L_ij X_j.
    The derivative is the closed form d(I + L)⁻¹ = −X dL X (custom JVP; reverse mode transposes
    it), so neither direction differentiates through the loop.
    """
    lower = jnp.tril(lower, -1)
    c = lower.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(c, dtype=lower.dtype), lower.shape)

    def substitute(i, x):  # x: [..., c, c]; rows < i already hold rows of the inverse
        row = lax.dynamic_index_in_dim(lower, i, axis=-2)  # [..., 1, c]
        new = lax.dynamic_index_in_dim(eye, i, axis=-2) - row @ x
        return lax.dynamic_update_index_in_dim(x, new, i, axis=-2)

    return lax.fori_loop(0, c, substitute, eye)


@_inverse_unit_lower.defjvp
def _inverse_unit_lower_jvp(primals, tangents):
    (lower,), (d_lower,) = primals, tangents
    inv = _inverse_unit_lower(lower)
    return inv, -inv @ jnp.tril(d_lower, -1) @ inv


@jax.custom_jvp
def _solve_unit_lower(lower, *rhs):
    """X B for each B in ``rhs``, X = (I + L)⁻¹ for the strictly lower part L of ``lower``.

    The derivative needs no derivative of X: d(X B) = X (dB − dL (X B)) with dL strictly lower
    (custom JVP; reverse mode transposes it into Xᵀ and two products with X B).
    """
    inverse = _inverse_unit_lower(lower)
    return tuple(inverse @ b for b in rhs)


@_solve_unit_lower.defjvp
def _solve_unit_lower_jvp(primals, tangents):
    lower, *rhs = primals
    d_lower, *d_rhs = tangents
    inverse = _inverse_unit_lower(lower)
    d_lower = jnp.tril(d_lower, -1)
    out = tuple(inverse @ b for b in rhs)
    d_out = tuple(inverse @ (db - d_lower @ o) for db, o in zip(d_rhs, out))
    return out, d_out


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


def _wy_terms(q, k, v, log_alpha, beta):
    """State-independent WY/UT terms of every chunk at once (the intra-chunk part of PAPER §6.2).

    GDN §3.1 Eqs. 6–9 with the gate of Eq. 10: with γ_r = Π_{j≤r} α_j inside the chunk and
    Γ_ij = γ_i/γ_j (i ≥ j),

      T = [I + strictLower(diag(β)(Γ ⊙ K Kᵀ))]⁻¹ diag(β),  U = T V,  W = T diag(γ) K,
      Q̂ = diag(γ) Q,  P = Q Kᵀ ⊙ Γ ⊙ M,  k̃_r = (γ_c/γ_r) k_r,  decay γ_c.

    T is never formed: the inverse of the unit lower-triangular factor (forward substitution,
    :func:`_inverse_unit_lower`) multiplies diag(β) V and diag(β γ) K. The ungated delta rule is
    ``log_alpha`` None (γ ≡ 1, Γ = M).

    Args:
      q, k: [..., c, d_k]; v: [..., c, d_v]; beta: [..., c]; log_alpha: log α [..., c] or None.
        The leading dimensions are [n, b, h] (every chunk of every sequence and head).

    Returns:
      ``(q_hat, p, u, w, k_tilde, decay)``: [..., c, d_k], [..., c, c], [..., c, d_v],
      [..., c, d_k], [..., c, d_k] and [...].
    """
    c = q.shape[-2]
    k_beta = _scale_rows(beta, k)  # diag(β) K
    kk = jnp.einsum("...id,...jd->...ij", k_beta, k)  # diag(β) K Kᵀ [..., c, c]
    qk = jnp.einsum("...id,...jd->...ij", q, k)
    if log_alpha is None:
        causal = jnp.tril(jnp.ones((c, c), dtype=bool))
        lower, p = kk, jnp.where(causal, qk, 0.0)
        q_hat, k_write, k_tilde = q, k_beta, k
        decay = jnp.ones(q.shape[:-2], q.dtype)
    else:
        # Cumulative sums as products with 0/1 triangles (dot_generals in both directions):
        # log γ_r = Σ_{j≤r} log α_j and log(γ_c/γ_r) = Σ_{j>r} log α_j.
        upper = jnp.triu(jnp.ones((c, c), log_alpha.dtype))  # [j, r]: 1 where j ≤ r
        log_gamma = jnp.einsum("...j,jr->...r", log_alpha, upper)
        log_tail = jnp.einsum("...j,jr->...r", log_alpha, 1.0 - upper)
        ratios = _decay_ratios(log_gamma)  # Γ ⊙ M
        gamma = jnp.exp(log_gamma)
        lower, p = ratios * kk, ratios * qk
        q_hat, k_write = _scale_rows(gamma, q), _scale_rows(gamma, k_beta)
        k_tilde = _scale_rows(jnp.exp(log_tail), k)
        decay = jnp.exp(jnp.sum(log_alpha, axis=-1))  # γ_c
    u, w = _solve_unit_lower(lower, _scale_rows(beta, v), k_write)  # [..., c, d_v], [..., c, d_k]
    return q_hat, p, u, w, k_tilde, decay


def _state_scan_impl(s0, u, w, k_tilde, decay):
    def step(s, x):  # s: [b, h, d_v, d_k]
        u, w, k_tilde, decay = x
        delta = u - jnp.einsum("bhck,bhvk->bhcv", w, s)
        s_next = jnp.einsum("bh,bhvk->bhvk", decay, s)
        s_next = s_next + jnp.einsum("bhcv,bhck->bhvk", delta, k_tilde)
        return s_next, (s, delta)

    final, (states, deltas) = lax.scan(step, s0, (u, w, k_tilde, decay))
    return states, deltas, final


@jax.custom_jvp
def _state_scan(s0, u, w, k_tilde, decay):
    """The chunk-to-chunk recurrence of the WY form: the only part that is sequential.

    Δ_n = U_n − W_n S_nᵀ,  S_{n+1} = γ_n S_n + Δ_nᵀ K̃_n  (PAPER §6.2, one step per chunk n).

    Its derivative is a custom JVP (:func:`_state_scan_jvp`) that keeps only the state tangent in
    a scan (two products per chunk) and computes every other term batched over all chunks;
    reverse mode transposes it into a reverse scan of the same two products.

    Args:
      s0: S_0 [b, h, d_v, d_k].
      u: [n, b, h, c, d_v]; w, k_tilde: [n, b, h, c, d_k]; decay: γ_n [n, b, h].

    Returns:
      ``(states, deltas, final)``: the chunk-start states S_0..S_{n−1} [n, b, h, d_v, d_k], the
      Δ_n [n, b, h, c, d_v] and S_n [b, h, d_v, d_k].
    """
    return _state_scan_impl(s0, u, w, k_tilde, decay)


@_state_scan.defjvp
def _state_scan_jvp(primals, tangents):
    """Tangent of the recurrence, split into its sequential and its batched parts.

    Differentiating S_{n+1} = γ_n S_n + (U_n − W_n S_nᵀ)ᵀ K̃_n:
      dΔ_n = A_n − W_n dS_nᵀ,  dS_{n+1} = γ_n dS_n + dΔ_nᵀ K̃_n + B_n,
    with A_n = dU_n − dW_n S_nᵀ and B_n = dγ_n S_n + Δ_nᵀ dK̃_n built from the primal states
    for all chunks at once; only dS is carried.
    """
    s0, u, w, k_tilde, decay = primals
    d_s0, d_u, d_w, d_k_tilde, d_decay = tangents
    states, deltas, final = _state_scan_impl(s0, u, w, k_tilde, decay)
    a = d_u - jnp.einsum("...ck,...vk->...cv", d_w, states)
    b = jnp.einsum("...,...vk->...vk", d_decay, states)
    b = b + jnp.einsum("...cv,...ck->...vk", deltas, d_k_tilde)

    def step(d_s, x):  # d_s: [b, h, d_v, d_k]
        a, b, w, k_tilde, decay = x
        d_delta = a - jnp.einsum("bhck,bhvk->bhcv", w, d_s)
        d_next = jnp.einsum("bh,bhvk->bhvk", decay, d_s)
        d_next = d_next + jnp.einsum("bhcv,bhck->bhvk", d_delta, k_tilde) + b
        return d_next, (d_s, d_delta)

    d_final, (d_states, d_deltas) = lax.scan(step, d_s0, (a, b, w, k_tilde, decay))
    return (states, deltas, final), (d_states, d_deltas, d_final)


def _delta_segment(s, q, k, v, log_alpha, beta):
    """Consecutive chunks of the (gated) delta rule from the state ``s`` at their start.

    The intra-chunk terms of all chunks are built at once (:func:`_wy_terms`), the state is
    carried across them (:func:`_state_scan`), and the outputs O = Q̂ Sᵀ + P Δ of all chunks are
    again one batched product.

    Args:
      s: state at the segment start [b, h, d_v, d_k].
      q, k: [n, b, h, c, d_k]; v: [n, b, h, c, d_v]; beta: [n, b, h, c];
      log_alpha: log α [n, b, h, c], or None for the ungated delta rule.

    Returns:
      ``(S_end, O)`` with O [n, b, h, c, d_v].
    """
    q_hat, p, u, w, k_tilde, decay = _wy_terms(q, k, v, log_alpha, beta)
    states, delta, s = _state_scan(s, u, w, k_tilde, decay)
    return s, jnp.einsum("...ck,...vk->...cv", q_hat, states) + p @ delta


# Working-set budget of one segment of the delta rules, in elements of q, k, v: b·h·t·(d_k + d_v).
# Measured on the 2-core CPU (d 64, 4 heads, chunk 32, session 5): building every chunk's terms at
# once is fastest up to t = 1024 (2¹⁹ elements) and slows down past it (t = 4096: 82 ms, against
# 53 ms in segments of 512 tokens and 68 ms in segments of 1024), as the terms fall out of cache.
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
    xs.append(None if kind == "delta" else _to_chunks(padded(_log_alpha(alpha, dtype)), chunk_size))
    xs.append(_to_chunks(padded(beta), chunk_size))
    if m == 1:
        state, o = _delta_segment(state, *xs)
    else:
        xs = tuple(None if x is None else x.reshape(m, g, *x.shape[1:]) for x in xs)
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
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {}, initial_state)
    return _chunked(q, k, v, None, None, initial_state, chunk_size, remat, "linear")


def delta_rule(q, k, v, beta, *, chunk_size, initial_state=None, remat=True):
    """Delta rule (DeltaNet), chunk-parallel and exact.

    S_t = S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t (Eq. 65, arXiv 2512.24695, in the
    column convention). Chunk form: WY representation + UT transform, GDN §3.1 Eqs. 3–9
    (PAPER §6.1), T by forward substitution on the unit lower-triangular
    I + strictLower(diag(β)KKᵀ).

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
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {"beta": beta}, initial_state)
    return _chunked(q, k, v, None, beta, initial_state, chunk_size, remat, "delta")


def gated_delta_rule(q, k, v, alpha, beta, *, chunk_size, initial_state=None, remat=True):
    """Gated delta rule (Gated DeltaNet), chunk-parallel and exact.

    S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ, o_t = S_t q_t (GDN Eq. 10; the linear
    Titans memory without momentum, Titans App. C; Hope's matrix memory, Eq. 93 of arXiv 2512.24695
    via PAPER §6.5). Chunk form of PAPER §6.2, cumulative decays in log space (module docstring):
    T = [I + strictLower(diag(β)(Γ ⊙ KKᵀ))]⁻¹ diag(β), U = TV, W = T diag(γ) K,
    O = diag(γ) Q Sᵀ + (QKᵀ ⊙ Γ ⊙ M)(U − W Sᵀ), S ← γ_c S + (U − W Sᵀ)ᵀ K̃.

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      alpha: decays α ∈ (0, 1] [b, t, h]; clamped below at the smallest normal number.
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
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {"alpha": alpha, "beta": beta}, initial_state)
    return _chunked(q, k, v, alpha, beta, initial_state, chunk_size, remat, "gated")
