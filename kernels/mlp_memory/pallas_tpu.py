"""Titans MLP memory as a Pallas kernel lowered through Mosaic (TPU).

The grid is (sequence·head, chunk) with the chunk axis sequential ("arbitrary"); the memory
weights and momentum live in VMEM scratch across it and each grid step is the fused
:func:`chunk.chunk_step` on one chunk (:mod:`nestlearn.kernels.per_sequence`). Blocks span whole
widths, which satisfies Mosaic's (8, 128) tiling rule. The backward kernel visits the chunks in
reverse with the cotangents of the weights and momenta in scratch (:func:`backward`).
"""

import functools

from nestlearn.kernels import per_sequence
from nestlearn.kernels.mlp_memory import chunk


def forward(terms, state, *, save_starts, residual, block_sizes, interpret):
    """Runs the chunk scan of the MLP memory as one Mosaic TPU kernel
    (:func:`per_sequence.tpu_forward`).

    Args:
      terms: stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      state: ``(weights, momentum)`` as :class:`chunk.Weights` with leaves [bh, ...].
      save_starts: also return the state at every chunk start.
      residual: M(x) = x + W₁σ(W₂x).
      block_sizes: unused on TPU (the Triton launch parameters).
      interpret: False, or ``pltpu.InterpretParams()`` for the TPU interpreter.

    Returns:
      ``(o [bh, n, c, d_out], state_end, starts)``; starts has leaves [bh, n, ...] or is None.
    """
    del block_sizes
    step = functools.partial(chunk.chunk_step, residual=residual)
    return per_sequence.tpu_forward(
        step, terms, state, save_starts=save_starts, name="mlp_memory", interpret=interpret
    )


def backward(terms, starts, d_o, d_state, *, residual, block_sizes, interpret):
    """Gradients of :func:`forward` as one Mosaic TPU kernel visiting the chunks in reverse
    (:func:`per_sequence.tpu_backward`), the cotangents of the weights and momenta in scratch.

    Args:
      terms: the forward's stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      starts: ``(weights, momentum)`` at every chunk start, leaves [bh, n, ...].
      d_o: output cotangent [bh, n, c, d_out]; d_state: end-state cotangent, leaves [bh, ...].
      residual, block_sizes, interpret: as in :func:`forward`.

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    del block_sizes
    step = functools.partial(chunk.chunk_step, residual=residual)
    return per_sequence.tpu_backward(
        step, terms, starts, d_o, d_state, name="mlp_memory", interpret=interpret
    )
