"""Public entry of the Titans MLP-memory op: validation, layout, backend switch and custom VJP.

Pallas backends run the fused forward pass and, by default, the backward pass (a kernel walking
the chunks in reverse from recomputed chunk-start states; ``BlockSizes.backward="xla"`` uses an
XLA reverse scan from states the forward saved instead): :func:`chunk_scan.kernel_with_vjp`.
"""

import functools

import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import chunk_scan, dispatch
from nestlearn.kernels.gated_delta.chunk import from_chunks
from nestlearn.kernels.gated_delta.reference import check_chunk_size, compute_dtypes
from nestlearn.kernels.mlp_memory import chunk, pallas_tpu, pallas_triton, reference
from nestlearn.kernels.mlp_memory.config import BlockSizes


def _run_kernel(module, widths, q, k, v, theta, alpha, eta, params, initial_state, **static):
    """Layout → kernel (with custom VJP) → layout, for one Pallas backend module."""
    chunk_size, residual = static.pop("chunk_size"), static["residual"]
    out_dtype, dtype = compute_dtypes(q, k, v)
    b, t, h, d_in = q.shape
    d_out, hidden = v.shape[-1], params["w2"].shape[1]
    d_inp, d_outp, hiddenp = widths
    w0, s0 = reference.initial_weights(params, initial_state, b, dtype)
    terms = chunk.chunk_terms(
        q, k, v, theta, alpha, eta, chunk_size=chunk_size, d_in=d_inp, d_out=d_outp, dtype=dtype
    )

    def to_kernel(w: chunk.Weights) -> chunk.Weights:  # [b, h, ...] -> padded [bh, ...]
        w1 = w.w1.reshape((b * h, d_out, hidden))
        w2 = w.w2.reshape((b * h, hidden, d_in))
        return chunk.Weights(
            jnp.pad(w1, [(0, 0), (0, d_outp - d_out), (0, hiddenp - hidden)]),
            jnp.pad(w2, [(0, 0), (0, hiddenp - hidden), (0, d_inp - d_in)]),
        )

    def from_kernel(w: chunk.Weights) -> chunk.Weights:
        return chunk.Weights(
            w.w1[:, :d_out, :hidden].reshape((b, h, d_out, hidden)),
            w.w2[:, :hidden, :d_in].reshape((b, h, hidden, d_in)),
        )

    forward = functools.partial(module.forward, **static)
    step = functools.partial(chunk.chunk_step, residual=residual)
    backward = None
    if static["block_sizes"].backward == "pallas":
        backward = functools.partial(module.backward, **static)
    op = chunk_scan.kernel_with_vjp(forward, step, backward)
    o, (w, s) = op(terms, (to_kernel(w0), to_kernel(s0)))
    o = from_chunks(o, b, t, d_out).astype(out_dtype)
    return o, reference.to_state(from_kernel(w), from_kernel(s))


def mlp_memory(
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
    implementation=None,
    interpret=False,
    block_sizes: BlockSizes | None = None,
):
    """Titans deep memory (2-layer SiLU MLP), chunk-parallel, one fused kernel per chunk scan.

    Per head, memory M(x) = W₁ σ(W₂ x) (+ x when ``residual``, Hope Eqs. 89/91), σ = SiLU,
    loss ℓ(M; k, v) = ½‖M(k) − v‖² (Titans Eq. 12; the factor 2 of ‖·‖² is absorbed into θ as in
    Titans Eq. 17 and ``nestlearn.memory.titans``). For token t in the chunk that starts at t'
    (chunks of ``chunk_size`` tokens; docs/SEMANTICS.md §5.2):

        u_t = ∇_M ℓ(M_{t'}; k_t, v_t)                 (gradient at the chunk-start weights, Eq. 16)
        S_t = η_t S_{t−1} − θ_t u_t                    (momentum, Eqs. 14 and 18)
        M_t = (1 − α_t) M_{t−1} + S_t                  (forgetting, Eq. 13)
        o_t = M_{t'}(q_t)                              (read at the chunk-start weights)

    Each chunk is one fused step (:mod:`nestlearn.kernels.mlp_memory.chunk`): the per-token
    gradients, their decay/momentum-weighted sums and the read-out are matrix products.

    Args:
      q, k: queries and keys [b, t, h, d_in].
      v: values [b, t, h, d_out].
      theta: step sizes θ_t [b, t, h].
      alpha: forget gates α_t ∈ [0, 1] [b, t, h] (retention 1 − α_t).
      eta: momentum decays η_t [b, t, h].
      params: meta-learned initial weights {"w1": [h, d_out, n], "w2": [h, n, d_in]} (the layout
        of ``nestlearn.memory.architectures.residual_mlp``), used when ``initial_state`` is None.
      chunk_size: tokens per chunk; any t ≥ 1 works (padded tokens are identity steps).
        ``pallas_triton`` needs a power of two ≥ 16.
      initial_state: an ``MLPMemoryState`` to continue from, or None (params, zero momentum).
      residual: M(x) = x + W₁σ(W₂x) (needs d_out == d_in).
      implementation: None (default order for the platform, with fallback and a warning) or one
        of "xla", "pallas_triton", "pallas_mosaic_gpu" (not implemented: raises), "pallas_tpu".
      interpret: run a Pallas backend in its interpreter (CPU).
      block_sizes: Triton launch parameters and the backward pass; None for the defaults.

    Returns:
      ``(o, MLPMemoryState(weights, momentum))``: o [b, t, h, d_out] in the promoted input dtype;
      weights and momentum {"w1": [b, h, d_out, n], "w2": [b, h, n, d_in]} at the end of the
      sequence, in the compute dtype (float32, or float64 for float64 inputs).

    Raises:
      ValueError: bad shapes or chunk size (naming the argument).
      dispatch.Unavailable: an explicitly requested backend that cannot run here.
    """
    chunk_size = check_chunk_size(chunk_size)
    reference.check_inputs(q, k, v, theta, alpha, eta, params, initial_state, residual)
    block_sizes = BlockSizes() if block_sizes is None else block_sizes
    args = (q, k, v, theta, alpha, eta, params, initial_state)
    static = dict(chunk_size=chunk_size, residual=residual, block_sizes=block_sizes)
    d_in, d_out, hidden = q.shape[-1], v.shape[-1], params["w2"].shape[1]

    def xla():
        return reference.mlp_memory_chunked(
            *args[:6],
            params=params,
            chunk_size=chunk_size,
            initial_state=initial_state,
            residual=residual,
        )

    def triton():
        dispatch.require_platform("pallas_triton", "gpu", interpret)
        pallas_triton.check_chunk_size(chunk_size)
        widths = tuple(pallas_triton.padded_width(d) for d in (d_in, d_out, hidden))
        pallas_triton.check_state_size(*widths)
        return _run_kernel(pallas_triton, widths, *args, interpret=bool(interpret), **static)

    def tpu():
        dispatch.require_platform("pallas_tpu", "tpu", interpret)
        params_ = pltpu.InterpretParams() if interpret is True else interpret
        return _run_kernel(pallas_tpu, (d_in, d_out, hidden), *args, interpret=params_, **static)

    backends = {"xla": xla, "pallas_triton": triton, "pallas_tpu": tpu}
    return dispatch.dispatch("mlp_memory", implementation, backends)
