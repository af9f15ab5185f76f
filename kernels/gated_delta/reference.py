"""Plain-JAX gated delta rule with momentum: the token recurrence and the chunked XLA form.

The recurrence (GDN Eq. 10 with a Titans momentum buffer; definitions in
:func:`nestlearn.kernels.gated_delta.api.gated_delta`):

    e_t = β_t (v_t − α_t S_{t−1} k_t)
    Z_t = m_t Z_{t−1} + e_t k_tᵀ
    S_t = α_t S_{t−1} + Z_t,        o_t = S_t q_t.

``gated_delta_recurrent`` is written straight from it: the oracle of every form, and the token
recurrence of ``nestlearn.memory``'s delta rules. ``gated_delta_chunked`` runs the kernels' chunk
body (:mod:`nestlearn.kernels.gated_delta.chunk`) under a ``lax.scan``: the XLA backend of the op
with momentum. Without momentum the op's XLA backend is :func:`nestlearn.memory.gated_delta_rule`
(the WY chunk form with a hand-written VJP), the library's one XLA Gated DeltaNet.

Layout: q, k [b, t, h, d_k]; v [b, t, h, d_v]; alpha, beta, momentum [b, t, h]; memory and momentum
states [b, h, d_v, d_k] (column convention, read-out S q). Computation is in the promotion of the
input dtype with float32; outputs come back in the input dtype, states stay in the compute dtype.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from nestlearn.kernels import chunk_scan
from nestlearn.kernels.gated_delta import chunk

from nestlearn.core.validation import check_chunk_size


class GatedDeltaState(NamedTuple):
    """State of the gated delta rule with momentum."""

    memory: jax.Array  # [b, h, d_v, d_k] S, compute dtype
    momentum: jax.Array  # [b, h, d_v, d_k] Z, compute dtype


def check_inputs(q, k, v, alpha, beta, momentum, initial_state) -> None:
    """Validates shapes against the module layout; raises ValueError naming the argument."""
    if q.ndim != 4:
        raise ValueError(f"q must have shape [b, t, h, d_k], got q.shape={q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q; got k.shape={k.shape}, q.shape={q.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "v must have shape [b, t, h, d_v] with the batch, time and heads of q; "
            f"got v.shape={v.shape}, q.shape={q.shape}"
        )
    b, t, h, d_k = q.shape
    if t < 1:
        raise ValueError(f"q must hold at least one token, got q.shape={q.shape}")
    gates = {"alpha": alpha, "beta": beta}
    if momentum is not None:
        gates["momentum"] = momentum
    for name, gate in gates.items():
        if gate.shape != (b, t, h):
            raise ValueError(
                f"{name} must have shape [b, t, h]={(b, t, h)}, got {name}.shape={gate.shape}"
            )
    if initial_state is None:
        return
    expected = (b, h, v.shape[-1], d_k)
    if momentum is None:
        if isinstance(initial_state, GatedDeltaState) or initial_state.shape != expected:
            got = jax.tree.map(jnp.shape, initial_state)
            raise ValueError(
                f"initial_state must be an array of shape [b, h, d_v, d_k]={expected} when "
                f"momentum is None, got {got}"
            )
    elif not isinstance(initial_state, GatedDeltaState) or any(
        x.shape != expected for x in initial_state
    ):
        got = jax.tree.map(jnp.shape, initial_state)
        raise ValueError(
            "initial_state must be a GatedDeltaState(memory, momentum) with both shaped "
            f"[b, h, d_v, d_k]={expected} when momentum is given, got {got}"
        )


def compute_dtypes(q, k, v):
    """(output dtype, compute dtype): the input promotion, and its promotion with float32."""
    out_dtype = jnp.result_type(q, k, v)
    return out_dtype, jnp.promote_types(out_dtype, jnp.float32)


def split_state(initial_state, momentum, shape, dtype):
    """(S_0, Z_0 or None) in ``dtype``; zeros when ``initial_state`` is None."""
    if initial_state is None:
        s0 = jnp.zeros(shape, dtype)
        return s0, (None if momentum is None else s0)
    if momentum is None:
        return initial_state.astype(dtype), None
    return initial_state.memory.astype(dtype), initial_state.momentum.astype(dtype)


def join_state(s, z):
    """The public final state: S alone without momentum, else GatedDeltaState(S, Z)."""
    return s if z is None else GatedDeltaState(s, z)


def gated_delta_recurrent(q, k, v, alpha, beta, *, initial_state=None, momentum=None):
    """Token-by-token gated delta rule with momentum (the oracle; module docstring).

    Args:
      q, k: [b, t, h, d_k]; v: [b, t, h, d_v]; alpha, beta: [b, t, h].
      initial_state: S_0 [b, h, d_v, d_k] (``momentum`` None) or GatedDeltaState; zeros if None.
      momentum: momentum decays m_t [b, t, h], or None (m ≡ 0: Gated DeltaNet).

    Returns:
      ``(o [b, t, h, d_v], final_state)`` as in :func:`gated_delta_chunked`.
    """
    check_inputs(q, k, v, alpha, beta, momentum, initial_state)
    out_dtype, dtype = compute_dtypes(q, k, v)
    b, _, h, d_k = q.shape
    s0, z0 = split_state(initial_state, momentum, (b, h, v.shape[-1], d_k), dtype)
    has_momentum = momentum is not None
    if not has_momentum:
        z0 = jnp.zeros_like(s0)
        momentum = jnp.zeros_like(alpha)
    xs = [jnp.moveaxis(x.astype(dtype), 1, 0) for x in (q, k, v, alpha, beta, momentum)]

    def step(carry, x):
        s, z = carry  # [b, h, d_v, d_k]
        q_t, k_t, v_t, a_t, b_t, m_t = x
        a_t, b_t, m_t = a_t[..., None, None], b_t[..., None], m_t[..., None, None]
        e = b_t * (v_t - jnp.einsum("bhvk,bhk->bhv", a_t * s, k_t))
        z = m_t * z + jnp.einsum("bhv,bhk->bhvk", e, k_t)
        s = a_t * s + z
        return (s, z), jnp.einsum("bhvk,bhk->bhv", s, q_t)

    (s, z), o = lax.scan(step, (s0, z0), xs)
    o = jnp.moveaxis(o, 0, 1).astype(out_dtype)
    return o, join_state(s, z if has_momentum else None)


def gated_delta_chunked(q, k, v, alpha, beta, *, chunk_size, initial_state=None, momentum=None):
    """Chunk-parallel gated delta rule with momentum in XLA (the CPU default).

    Args:
      q, k: [b, t, h, d_k]; v: [b, t, h, d_v]; alpha, beta: [b, t, h].
      chunk_size: tokens per chunk; any t works (the tail is padded with identity steps).
      initial_state: S_0 [b, h, d_v, d_k] (``momentum`` None) or GatedDeltaState; zeros if None.
      momentum: momentum decays m_t [b, t, h], or None for Gated DeltaNet.

    Returns:
      ``(o, final_state)``: o [b, t, h, d_v] in the input dtype; the final S [b, h, d_v, d_k]
      (``momentum`` None) or GatedDeltaState(S, Z), in the compute dtype.
    """
    chunk_size = check_chunk_size(chunk_size)
    check_inputs(q, k, v, alpha, beta, momentum, initial_state)
    out_dtype, dtype = compute_dtypes(q, k, v)
    b, t, h, d_k = q.shape
    d_v = v.shape[-1]
    s0, z0 = split_state(initial_state, momentum, (b, h, d_v, d_k), dtype)
    terms = chunk.chunk_terms(
        q, k, v, alpha, beta, momentum, chunk_size=chunk_size, d_k=d_k, d_v=d_v, dtype=dtype
    )
    flat = lambda x: None if x is None else x.reshape((b * h, *x.shape[2:]))
    o, (s, z) = chunk_scan.scan_chunks(chunk.chunk_step, terms, (flat(s0), flat(z0)))
    unflat = lambda x: None if x is None else x.reshape((b, h, *x.shape[1:]))
    return chunk.from_chunks(o, b, t, d_v).astype(out_dtype), join_state(unflat(s), unflat(z))
