"""Public entry of the gated delta op: validation, layout, backend switch and custom VJP.

Pallas backends run the forward pass and, by default, the backward pass (a kernel walking the
chunks in reverse from recomputed chunk-start states; ``BlockSizes.backward="xla"`` uses an XLA
reverse scan from states the forward saved instead): :func:`chunk_scan.kernel_with_vjp`.
"""

import functools

import jax
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import chunk_scan, dispatch
from nestlearn.kernels.gated_delta import chunk, pallas_tpu, pallas_triton, reference
from nestlearn.kernels.gated_delta.config import BlockSizes


def _run_kernel(
    module,
    widths,
    q,
    k,
    v,
    alpha,
    beta,
    momentum,
    initial_state,
    *,
    chunk_size,
    block_sizes,
    interpret,
):
    """Layout → kernel (with custom VJP) → layout, for one Pallas backend module."""
    out_dtype, dtype = reference.compute_dtypes(q, k, v)
    b, t, h, d_k = q.shape
    d_v = v.shape[-1]
    d_kp, d_vp = widths
    s0, z0 = reference.split_state(initial_state, momentum, (b, h, d_v, d_k), dtype)
    terms = chunk.chunk_terms(
        q, k, v, alpha, beta, momentum, chunk_size=chunk_size, d_k=d_kp, d_v=d_vp, dtype=dtype
    )

    def to_kernel(x):  # [b, h, d_v, d_k] -> [bh, d_vp, d_kp]
        if x is None:
            return None
        x = x.reshape((b * h, d_v, d_k))
        return jax.numpy.pad(x, [(0, 0), (0, d_vp - d_v), (0, d_kp - d_k)])

    def from_kernel(x):
        return None if x is None else x[:, :d_v, :d_k].reshape((b, h, d_v, d_k))

    forward = functools.partial(module.forward, block_sizes=block_sizes, interpret=interpret)
    backward = None
    if block_sizes.backward == "pallas":
        backward = functools.partial(module.backward, block_sizes=block_sizes, interpret=interpret)
    op = chunk_scan.kernel_with_vjp(forward, chunk.chunk_step, backward)
    o, (s, z) = op(terms, (to_kernel(s0), to_kernel(z0)))
    o = chunk.from_chunks(o, b, t, d_v).astype(out_dtype)
    return o, reference.join_state(from_kernel(s), from_kernel(z))


def gated_delta(
    q,
    k,
    v,
    alpha,
    beta,
    *,
    chunk_size,
    initial_state=None,
    implementation=None,
    interpret=False,
    momentum=None,
    block_sizes: BlockSizes | None = None,
):
    """Gated delta rule with an optional Titans momentum, chunk-parallel (exact).

    Per head, with memory S and momentum buffer Z in R^{d_v×d_k} (column convention, read-out S q):

        e_t = β_t (v_t − α_t S_{t−1} k_t)
        Z_t = m_t Z_{t−1} + e_t k_tᵀ
        S_t = α_t S_{t−1} + Z_t,          o_t = S_t q_t.

    e_t k_tᵀ is the negative gradient of ½‖(α_t S_{t−1}) k_t − v_t‖² at the decayed state, times
    β_t: the Titans surprise of Eq. 8 for the linear memory M = S. Z is Titans' momentum ("past
    surprise", Eqs. 9–10 and 14) with per-token decay m_t = η_t, and α_t is the retention
    (1 − α_t^Titans) of Eq. 13. Exactly: Titans Eqs. 13–14 with a linear memory M and
    ℓ = ½‖M k − v‖²,

        M_t = (1 − α^T_t) M_{t−1} + S^T_t,   S^T_t = η_t S^T_{t−1} − θ_t (M_{t−1} k_t − v_t) k_tᵀ,

    is this op with α_t = 1 − α^T_t, m_t = η_t, β_t = θ_t/α_t and v_t ← α_t v_t, M = S and
    S^T = Z (docs/kernels.md §1).

    With ``momentum=None`` (m ≡ 0) Z_t = e_t k_tᵀ and the op is Gated DeltaNet,
    S_t = S_{t−1}(α_t(I − β_t k_t k_tᵀ)) + β_t v_t k_tᵀ (GDN Eq. 10; Titans App. C; Hope Eq. 93
    with β = η/α, docs/kernels.md §1), with the layout and semantics of
    ``nestlearn.memory.gated_delta_rule``. The chunk form (WY/UT representation with gating and
    momentum) is derived in :mod:`nestlearn.kernels.gated_delta.chunk` and docs/kernels.md.

    Args:
      q, k: queries and keys [b, t, h, d_k].
      v: values [b, t, h, d_v].
      alpha: retention α_t [b, t, h] (any real; (0, 1] is the intended range, 0 is exact).
      beta: step sizes β_t [b, t, h].
      chunk_size: tokens per chunk; any t ≥ 1 works (the tail is padded with identity steps).
        ``pallas_triton`` needs a power of two ≥ 16.
      initial_state: without momentum S_0 [b, h, d_v, d_k]; with momentum a
        ``GatedDeltaState(memory, momentum)``; None means zeros.
      implementation: None (default order for the platform, with fallback and a warning), or one
        of "xla", "pallas_triton", "pallas_mosaic_gpu" (not implemented: raises), "pallas_tpu"
        (an explicit request raises if it cannot run).
      interpret: run a Pallas backend in its interpreter (CPU): GPU-style for Triton, the TPU
        interpreter (``pltpu.InterpretParams``, very slow) for Mosaic TPU.
      momentum: momentum decays m_t [b, t, h], or None.
      block_sizes: kernel tiling and backward pass (:class:`BlockSizes`); None for the defaults.

    Returns:
      ``(o, final_state)``: o [b, t, h, d_v] in the promoted input dtype; the final S
      [b, h, d_v, d_k] (``momentum`` None) or ``GatedDeltaState(S, Z)`` in the compute dtype
      (float32, or float64 for float64 inputs). Passing it back as ``initial_state`` continues
      the stream.

    Raises:
      ValueError: bad shapes, chunk size or block sizes (naming the argument).
      dispatch.Unavailable: an explicitly requested backend that cannot run here.
    """
    chunk_size = reference.check_chunk_size(chunk_size)
    reference.check_inputs(q, k, v, alpha, beta, momentum, initial_state)
    block_sizes = BlockSizes() if block_sizes is None else block_sizes
    args = (q, k, v, alpha, beta, momentum, initial_state)
    d_k, d_v = q.shape[-1], v.shape[-1]

    def xla():
        if momentum is None:  # Gated DeltaNet: the library's one XLA form
            # Imported here: nestlearn.memory imports nestlearn.kernels (a cycle at import time).
            from nestlearn.memory import matrix_memory

            return matrix_memory.gated_delta_rule(
                q, k, v, alpha, beta, chunk_size=chunk_size, initial_state=initial_state
            )
        return reference.gated_delta_chunked(
            q,
            k,
            v,
            alpha,
            beta,
            chunk_size=chunk_size,
            initial_state=initial_state,
            momentum=momentum,
        )

    def triton():
        dispatch.require_platform("pallas_triton", "gpu", interpret)
        pallas_triton.check_chunk_size(chunk_size)
        widths = pallas_triton.pad_widths(d_k, d_v)
        return _run_kernel(
            pallas_triton,
            widths,
            *args,
            chunk_size=chunk_size,
            block_sizes=block_sizes,
            interpret=bool(interpret),
        )

    def tpu():
        dispatch.require_platform("pallas_tpu", "tpu", interpret)
        params = pltpu.InterpretParams() if interpret is True else interpret
        return _run_kernel(
            pallas_tpu,
            (d_k, d_v),
            *args,
            chunk_size=chunk_size,
            block_sizes=block_sizes,
            interpret=params,
        )

    backends = {"xla": xla, "pallas_triton": triton, "pallas_tpu": tpu}
    return dispatch.dispatch("gated_delta", implementation, backends)
