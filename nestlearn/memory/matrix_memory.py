"""Matrix memories with exact closed-form chunk-parallel scans.

Linear attention, the delta rule (DeltaNet) and the gated delta rule (Gated DeltaNet) are
matrix-valued associative memories (§1.6, arXiv 2512.24695). Each is written here twice:

* ``*_recurrent``: a token-by-token ``lax.scan`` written straight from the recurrence. It is the
  reference, and the slow path.
* the chunk-parallel form (the public name without suffix): the WY representation with the UT
  transform (GDN §3.1 Eqs. 3–9 and Eq. 10, arXiv 2412.06464). All intra-chunk quantities are
  computed for every chunk at once; a ``lax.scan`` over chunks carries the state. It is exact: every
  output reads the state after the write of its own token, o_t = S_t q_t.

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
forward substitution in a ``lax.fori_loop`` over the rows of all chunks at once, with the
closed-form derivative −X dL X as a custom JVP, rather than with
``jax.scipy.linalg.solve_triangular``, whose batched LAPACK calls made forward+backward of 64
systems of size 64 ~10–30× slower on the 2-core CPU machine; a recursive 2×2-block inverse ran as
fast but took ~1 s to compile at chunk size 64.
"""

from __future__ import annotations

from typing import NamedTuple

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


class _ChunkTerms(NamedTuple):
    """Per-chunk quantities of the WY/UT form, stacked over chunks for ``lax.scan``.

    With Δ = U − W Sᵀ (Δ = U when ``w`` is None), one chunk step is
    O = Q̂ Sᵀ + P Δ and S ← γ_c S + Δᵀ K̃ (γ_c = 1 when ``decay`` is None).
    """

    q_hat: (
        jax.Array
    )  # [n, b, h, c, d_k] queries scaled by the decay from the chunk start, diag(γ) Q
    k_tilde: jax.Array  # [n, b, h, c, d_k] keys decayed to the chunk end, (γ_c/γ_r) k_r
    u: jax.Array  # [n, b, h, c, d_v] U = T V (V itself for linear attention)
    w: jax.Array | None  # [n, b, h, c, d_k] W = T diag(γ) K; None for linear attention
    p: jax.Array  # [n, b, h, c, c] intra-chunk read-out Q Kᵀ ⊙ Γ ⊙ M (M causal, diagonal included)
    decay: jax.Array | None  # [n, b, h] total decay of the chunk γ_c; None when there is no gate


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


def _delta_terms(q, k, v, log_alpha, beta) -> _ChunkTerms:
    """Intra-chunk WY/UT terms of the (gated) delta rule for every chunk at once.

    PAPER §6.2 (GDN §3.1 Eqs. 6–9 with the gate of Eq. 10): with γ_r = Π_{j≤r} α_j inside the chunk
    and Γ_ij = γ_i/γ_j (i ≥ j),
    T = [I + strictLower(diag(β)(Γ ⊙ K Kᵀ))]⁻¹ diag(β), U = T V, W = T diag(γ) K. T is never formed:
    the inverse of the unit lower-triangular I + strictLower(·) (forward substitution,
    :func:`_inverse_unit_lower`) is applied to diag(β)[V, diag(γ) K] to give U and W together.

    Args:
      q, k: [n, b, h, c, d_k]; v: [n, b, h, c, d_v]; beta: [n, b, h, c];
      log_alpha: [n, b, h, c], or None for the ungated delta rule (α = 1).
    """
    c = q.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), dtype=bool))  # M, diagonal included
    strict = jnp.tril(jnp.ones((c, c), dtype=bool), -1)
    kk = jnp.einsum("nbhid,nbhjd->nbhij", k, k)  # [n, b, h, c, c]
    qk = jnp.einsum("nbhid,nbhjd->nbhij", q, k)
    if log_alpha is None:
        gamma_ratio = None
        q_hat, k_tilde, k_decayed, decay = q, k, k, None
    else:
        log_gamma = jnp.cumsum(log_alpha, axis=-1)  # [n, b, h, c], log γ_r
        diff = log_gamma[..., :, None] - log_gamma[..., None, :]  # log γ_i − log γ_j
        # exp only where i ≥ j (diff ≤ 0 there for α ≤ 1); the masked side never overflows.
        gamma_ratio = jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)
        gamma = jnp.exp(log_gamma)[..., None]  # [n, b, h, c, 1]
        q_hat = gamma * q
        k_decayed = gamma * k
        k_tilde = jnp.exp(log_gamma[..., -1:] - log_gamma)[..., None] * k
        decay = jnp.exp(log_gamma[..., -1])  # [n, b, h]
    lower = kk if gamma_ratio is None else gamma_ratio * kk
    lower = jnp.where(strict, beta[..., :, None] * lower, 0.0)
    rhs = beta[..., None] * jnp.concatenate([v, k_decayed], axis=-1)  # diag(β) [V, diag(γ) K]
    sol = _inverse_unit_lower(lower) @ rhs
    d_v = v.shape[-1]
    p = jnp.where(causal, qk, 0.0) if gamma_ratio is None else qk * gamma_ratio
    return _ChunkTerms(q_hat, k_tilde, sol[..., :d_v], sol[..., d_v:], p, decay)


def _linear_terms(q, k, v) -> _ChunkTerms:
    """Intra-chunk terms of linear attention: Δ = V, P = Q Kᵀ ⊙ M, no decay."""
    c = q.shape[-2]
    causal = jnp.tril(jnp.ones((c, c), dtype=bool))
    p = jnp.where(causal, jnp.einsum("nbhid,nbhjd->nbhij", q, k), 0.0)
    return _ChunkTerms(q, k, v, None, p, None)


def _chunk_scan(terms: _ChunkTerms, state, remat):
    """Carries S across chunks: Δ = U − W Sᵀ, O = Q̂ Sᵀ + P Δ, S ← γ_c S + Δᵀ K̃ (PAPER §6.2)."""

    def step(s, x: _ChunkTerms):  # s: [b, h, d_v, d_k]
        delta = x.u
        if x.w is not None:
            delta = delta - jnp.einsum("bhck,bhvk->bhcv", x.w, s)
        o = jnp.einsum("bhck,bhvk->bhcv", x.q_hat, s) + jnp.einsum("bhij,bhjv->bhiv", x.p, delta)
        if x.decay is not None:
            s = x.decay[..., None, None] * s
        s = s + jnp.einsum("bhcv,bhck->bhvk", delta, x.k_tilde)
        return s, o

    if remat:
        step = jax.checkpoint(step)
    return lax.scan(step, state, terms)  # o: [n, b, h, c, d_v]


def _chunked(q, k, v, alpha, beta, initial_state, chunk_size, remat, kind):
    out_dtype, dtype = _dtypes(q, k, v)
    t = q.shape[1]
    state = _initial_state(initial_state, q, v, dtype)
    qc = _to_chunks(q.astype(dtype), chunk_size)
    kc = _to_chunks(k.astype(dtype), chunk_size)
    vc = _to_chunks(v.astype(dtype), chunk_size)
    # Padded steps: k = v = 0, β = 0 and log α = 0 (α = 1), so they leave the state unchanged.
    if kind == "linear":
        terms = _linear_terms(qc, kc, vc)
    else:
        betac = _to_chunks(beta.astype(dtype), chunk_size)
        log_alpha = None
        if kind == "gated":
            log_alpha = _to_chunks(_log_alpha(alpha, dtype), chunk_size)
        terms = _delta_terms(qc, kc, vc, log_alpha, betac)
    state, o = _chunk_scan(terms, state, remat)
    return _from_chunks(o, t).astype(out_dtype), state


def linear_attention(q, k, v, *, chunk_size, initial_state=None, remat=False):
    """Linear attention, chunk-parallel and exact.

    S_t = S_{t−1} + v_t k_tᵀ, o_t = S_t q_t (Eqs. 14–18, arXiv 2512.24695). Per chunk:
    O = Q Sᵀ + (Q Kᵀ ⊙ M) V and S ← S + Vᵀ K, M the causal mask with its diagonal.

    Args:
      q: queries [b, t, h, d_k].
      k: keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      chunk_size: tokens per chunk (any t works; the tail is padded internally).
      initial_state: S_0 [b, h, d_v, d_k] in the column convention (read-out S q); zeros when None.
      remat: rematerialize each chunk step in the backward pass (saves activation memory).

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


def delta_rule(q, k, v, beta, *, chunk_size, initial_state=None, remat=False):
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
      remat: rematerialize each chunk step in the backward pass (saves activation memory).

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k]
      in the compute dtype (float32, or float64 for float64 inputs).

    Raises:
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {"beta": beta}, initial_state)
    return _chunked(q, k, v, None, beta, initial_state, chunk_size, remat, "delta")


def gated_delta_rule(q, k, v, alpha, beta, *, chunk_size, initial_state=None, remat=False):
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
      remat: rematerialize each chunk step in the backward pass (saves activation memory).

    Returns:
      ``(o, S)``: outputs [b, t, h, d_v] in the input dtype and the final state S [b, h, d_v, d_k]
      in the compute dtype (float32, or float64 for float64 inputs).

    Raises:
      ValueError: on a non-positive or non-int ``chunk_size`` or mismatched shapes.
    """
    chunk_size = check_chunk_size(chunk_size)
    _check_inputs(q, k, v, {"alpha": alpha, "beta": beta}, initial_state)
    return _chunked(q, k, v, alpha, beta, initial_state, chunk_size, remat, "gated")
