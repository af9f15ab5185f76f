"""Titans MLP memory as a Pallas kernel lowered through Triton (GPU).

One program per (sequence·head) walks its chunks in order with the memory weights and momentum
(W₁, W₂ and their momenta) in registers; each chunk — per-token gradients at the chunk-start
weights, the decay/momentum combination and the chunk-start read-out — is the fused
:func:`chunk.chunk_step`. Widths are zero-padded to powers of two ≥ 16 (zero rows/columns of the
weights stay zero and do not change the real ones); the chunk size must be a power of two ≥ 16.
The backward kernel walks the chunks in reverse carrying the cotangents of the weights and
momenta (:func:`backward`).
"""

import functools

from nestlearn.kernels import per_sequence
from nestlearn.kernels.dispatch import Unavailable
from nestlearn.kernels.gated_delta.pallas_triton import check_chunk_size, padded_width
from nestlearn.kernels.mlp_memory import chunk
from nestlearn.kernels.mlp_memory.config import BlockSizes

__all__ = [
    "MAX_STATE_BYTES",
    "backward",
    "check_chunk_size",
    "check_state_size",
    "forward",
    "padded_width",
]

MAX_STATE_BYTES = per_sequence.MAX_STATE_BYTES


def check_state_size(d_in: int, d_out: int, hidden: int) -> None:
    """Raises Unavailable when W₁, W₂ and their momenta (padded widths) exceed MAX_STATE_BYTES."""
    state_bytes = 2 * 4 * hidden * (d_in + d_out)
    if state_bytes > MAX_STATE_BYTES:
        raise Unavailable(
            f"pallas_triton holds one memory per program: weights and momenta of d_in={d_in}, "
            f"d_out={d_out}, hidden={hidden} take {state_bytes // 1024} KiB > "
            f"{MAX_STATE_BYTES // 1024} KiB; use implementation='xla'"
        )


def _launch(block_sizes: BlockSizes, interpret: bool) -> dict:
    return dict(
        name="mlp_memory",
        num_warps=block_sizes.num_warps,
        num_stages=block_sizes.num_stages,
        interpret=interpret,
    )


def forward(terms, state, *, save_starts, residual, block_sizes: BlockSizes, interpret: bool):
    """Runs the chunk scan of the MLP memory as one Triton kernel
    (:func:`per_sequence.triton_forward`).

    Args:
      terms: stacked :class:`chunk.ChunkTerms` [bh, n, ...] with power-of-two widths.
      state: ``(weights, momentum)`` as :class:`chunk.Weights` with leaves [bh, ...].
      save_starts: also return the state at every chunk start (residuals for the backward).
      residual: M(x) = x + W₁σ(W₂x).
      block_sizes: Triton launch parameters.
      interpret: run in the GPU-style Pallas interpreter.

    Returns:
      ``(o [bh, n, c, d_out], state_end, starts)``; starts has leaves [bh, n, ...] or is None.
    """
    check_chunk_size(terms.k.shape[2])
    step = functools.partial(chunk.chunk_step, residual=residual)
    launch = _launch(block_sizes, interpret)
    return per_sequence.triton_forward(step, terms, state, save_starts=save_starts, **launch)


def backward(terms, starts, d_o, d_state, *, residual, block_sizes: BlockSizes, interpret: bool):
    """Gradients of :func:`forward` as one Triton kernel walking the chunks in reverse
    (:func:`per_sequence.triton_backward`), carrying the cotangents of the weights and momenta.

    Args:
      terms: the forward's stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      starts: ``(weights, momentum)`` at every chunk start, leaves [bh, n, ...].
      d_o: output cotangent [bh, n, c, d_out]; d_state: end-state cotangent, leaves [bh, ...].
      residual, block_sizes, interpret: as in :func:`forward`.

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    step = functools.partial(chunk.chunk_step, residual=residual)
    launch = _launch(block_sizes, interpret)
    return per_sequence.triton_backward(step, terms, starts, d_o, d_state, **launch)
