"""Plain-JAX Titans MLP memory: the token recurrence (oracle) and the chunked XLA form.

Titans Eqs. 12–14 and 16–18 with per-token gradients at the chunk-start weights; definitions in
:func:`nestlearn.kernels.mlp_memory.api.mlp_memory`. Layout: q, k [b, t, h, d_in]; v
[b, t, h, d_out]; theta, alpha, eta [b, t, h]; params {"w1": [h, d_out, n], "w2": [h, n, d_in]}
(the layout of ``nestlearn.memory.architectures.residual_mlp``); state leaves [b, h, ...].
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from nestlearn.kernels import chunk_scan
from nestlearn.kernels.gated_delta.chunk import from_chunks
from nestlearn.kernels.gated_delta.reference import check_chunk_size, compute_dtypes
from nestlearn.kernels.mlp_memory import chunk


class MLPMemoryState(NamedTuple):
    """State of the MLP memory (the fields of ``nestlearn.memory.titans.TitansState``)."""

    weights: dict  # {"w1": [b, h, d_out, n], "w2": [b, h, n, d_in]} M, compute dtype
    momentum: dict  # like weights: the momentum S of Titans Eq. 14, compute dtype


def check_inputs(q, k, v, theta, alpha, eta, params, initial_state, residual) -> None:
    """Validates shapes against the module layout; raises ValueError naming the argument."""
    if q.ndim != 4:
        raise ValueError(f"q must have shape [b, t, h, d_in], got q.shape={q.shape}")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q; got k.shape={k.shape}, q.shape={q.shape}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(
            "v must have shape [b, t, h, d_out] with the batch, time and heads of q; "
            f"got v.shape={v.shape}, q.shape={q.shape}"
        )
    b, t, h, d_in = q.shape
    d_out = v.shape[-1]
    if t < 1:
        raise ValueError(f"q must hold at least one token, got q.shape={q.shape}")
    for name, gate in {"theta": theta, "alpha": alpha, "eta": eta}.items():
        if gate.shape != (b, t, h):
            raise ValueError(
                f"{name} must have shape [b, t, h]={(b, t, h)}, got {name}.shape={gate.shape}"
            )
    if not isinstance(params, Mapping) or set(params) != {"w1", "w2"}:
        raise ValueError(f"params must be a dict with keys 'w1' and 'w2', got {params!r}")
    w1, w2 = params["w1"], params["w2"]
    if w1.ndim != 3 or w2.ndim != 3 or w1.shape[0] != h or w2.shape[0] != h:
        raise ValueError(
            f"params must be w1 [h, d_out, n] and w2 [h, n, d_in] with h={h}; "
            f"got w1.shape={w1.shape}, w2.shape={w2.shape}"
        )
    n = w2.shape[1]
    if w1.shape != (h, d_out, n) or w2.shape != (h, n, d_in):
        raise ValueError(
            f"params must be w1 [h, d_out, n]={(h, d_out, n)} and w2 [h, n, d_in]={(h, n, d_in)}; "
            f"got w1.shape={w1.shape}, w2.shape={w2.shape}"
        )
    if residual and d_out != d_in:
        raise ValueError(f"residual=True needs d_out == d_in, got {d_in=}, {d_out=}")
    if initial_state is None:
        return
    expected = {"w1": (b, h, d_out, n), "w2": (b, h, n, d_in)}
    got = jax.tree.map(jnp.shape, initial_state)
    if not isinstance(initial_state, MLPMemoryState) or any(
        not isinstance(x, Mapping) or {key: x[key].shape for key in x} != expected
        for x in initial_state
    ):
        raise ValueError(
            f"initial_state must be an MLPMemoryState whose weights and momentum are {expected}, "
            f"got {got}"
        )


def initial_weights(params, initial_state, batch, dtype):
    """(weights, momentum) as :class:`chunk.Weights` [b, h, ...] in ``dtype``."""
    if initial_state is None:
        w = chunk.Weights(
            *(jnp.broadcast_to(params[key], (batch, *params[key].shape)) for key in ("w1", "w2"))
        )
        w = jax.tree.map(lambda x: x.astype(dtype), w)
        return w, jax.tree.map(jnp.zeros_like, w)
    return tuple(chunk.Weights(x["w1"].astype(dtype), x["w2"].astype(dtype)) for x in initial_state)


def to_state(weights, momentum) -> MLPMemoryState:
    """The public state from internal :class:`chunk.Weights`."""
    return MLPMemoryState(weights._asdict(), momentum._asdict())


def _apply(w: chunk.Weights, x, residual):
    """M(x) for one memory, straight from Eqs. 89/91: W₁ σ(W₂ x) (+ x)."""
    y = w.w1 @ jax.nn.silu(w.w2 @ x)
    return y + x if residual else y


def mlp_memory_recurrent(
    q, k, v, theta, alpha, eta, *, params, chunk_size, initial_state=None, residual=False
):
    """Token-by-token Titans MLP memory with gradients at the chunk-start weights (the oracle).

    Every token t in the chunk starting at t' computes u_t = ∇_M ½‖M(k_t) − v_t‖² at M_{t'}
    (``jax.grad``), S_t = η_t S_{t−1} − θ_t u_t, M_t = (1 − α_t) M_{t−1} + S_t, and reads
    o_t = M_{t'}(q_t) (Titans Eqs. 13–14, 16–18).

    Returns:
      ``(o [b, t, h, d_out], MLPMemoryState)`` as in :func:`mlp_memory_chunked`.
    """
    chunk_size = check_chunk_size(chunk_size)
    check_inputs(q, k, v, theta, alpha, eta, params, initial_state, residual)
    out_dtype, dtype = compute_dtypes(q, k, v)
    t = q.shape[1]
    w0, s0 = initial_weights(params, initial_state, q.shape[0], dtype)
    starts = (jnp.arange(t) % chunk_size) == 0

    def loss(w, k_t, v_t):
        return 0.5 * jnp.sum((_apply(w, k_t, residual) - v_t) ** 2)

    def one_memory(w0, s0, q, k, v, theta, alpha, eta):  # one (batch, head): [t, ...]
        def step(carry, x):
            w, s, w_start = carry
            start, q_t, k_t, v_t, th, al, et = x
            w_start = jax.tree.map(lambda a, b: jnp.where(start, a, b), w, w_start)
            u = jax.grad(loss)(w_start, k_t, v_t)
            s = jax.tree.map(lambda s_, u_: et * s_ - th * u_, s, u)
            w = jax.tree.map(lambda w_, s_: (1.0 - al) * w_ + s_, w, s)
            return (w, s, w_start), _apply(w_start, q_t, residual)

        xs = (starts, q, k, v, theta, alpha, eta)
        (w, s, _), o = lax.scan(step, (w0, s0, w0), xs)
        return o, w, s

    per_head = jax.vmap(one_memory, in_axes=(0, 0, 1, 1, 1, 1, 1, 1), out_axes=(1, 0, 0))
    per_batch = jax.vmap(per_head)
    cast = lambda x: x.astype(dtype)
    o, w, s = per_batch(w0, s0, *map(cast, (q, k, v, theta, alpha, eta)))
    return o.astype(out_dtype), to_state(w, s)


def mlp_memory_chunked(
    q,
    k,
    v,
    theta,
    alpha,
    eta,
    *,
    params,
    chunk_size,
    initial_state=None,
    residual=False,
    remat=False,
):
    """Chunk-parallel Titans MLP memory in XLA (the CPU default).

    Args and returns as :func:`nestlearn.kernels.mlp_memory.api.mlp_memory` (without the backend
    switch): ``(o [b, t, h, d_out] in the input dtype, MLPMemoryState in the compute dtype)``.
    ``remat=True`` recomputes each chunk step in the backward pass instead of storing its
    activations (``jax.checkpoint``; on the 2-core CPU also the faster choice, which is why
    ``nestlearn.memory.titans_memory`` passes its ``remat=True`` default).
    """
    chunk_size = check_chunk_size(chunk_size)
    check_inputs(q, k, v, theta, alpha, eta, params, initial_state, residual)
    out_dtype, dtype = compute_dtypes(q, k, v)
    b, t, h, d_in = q.shape
    d_out = v.shape[-1]
    w0, s0 = initial_weights(params, initial_state, b, dtype)
    terms = chunk.chunk_terms(
        q, k, v, theta, alpha, eta, chunk_size=chunk_size, d_in=d_in, d_out=d_out, dtype=dtype
    )
    flat = lambda x: x.reshape((b * h, *x.shape[2:]))
    unflat = lambda x: x.reshape((b, h, *x.shape[1:]))
    step = lambda x, state: chunk.chunk_step(x, state, residual=residual)
    if remat:
        step = jax.checkpoint(step)
    o, (w, s) = chunk_scan.scan_chunks(step, terms, jax.tree.map(flat, (w0, s0)))
    w, s = jax.tree.map(unflat, (w, s))
    return from_chunks(o, b, t, d_out).astype(out_dtype), to_state(w, s)
