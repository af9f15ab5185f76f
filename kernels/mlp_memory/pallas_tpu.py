"""Titans MLP memory as a Pallas kernel lowered through Mosaic (TPU).

The grid is (sequence·head, chunk) with the chunk axis sequential ("arbitrary"); the memory
weights and momentum live in VMEM scratch across it and each grid step is the fused
:func:`chunk.chunk_step` on one chunk. Blocks span whole widths, which satisfies Mosaic's
(8, 128) tiling rule. The backward kernel visits the chunks in reverse with the cotangents of
the weights and momenta in scratch (:func:`backward`).
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import chunk_scan
from nestlearn.kernels.mlp_memory import chunk

_COMPILER_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def _specs(n: int, *, reverse: bool = False):
    """Block-spec makers on the grid (sequence·head i, chunk): one chunk of an array [bh, n, ...]
    (visited last to first with ``reverse``), and a per-sequence array [bh, ...]."""
    at = (lambda ci: n - 1 - ci) if reverse else (lambda ci: ci)

    def per_chunk(x):
        return pl.BlockSpec((None, None, *x.shape[2:]), lambda i, ci: (i, at(ci), 0, 0))

    def per_sequence(x):  # resident across chunks
        return pl.BlockSpec((None, *x.shape[1:]), lambda i, ci: (i,) + (0,) * (x.ndim - 1))

    return per_chunk, per_sequence


def forward(terms, state, *, save_starts, residual, block_sizes, interpret):
    """Runs the chunk scan of the MLP memory as one Mosaic TPU kernel.

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
    bh, n, c, _ = terms.k.shape
    d_out = terms.v.shape[-1]
    leaves, terms_tree = jax.tree.flatten(terms)
    state_leaves, state_tree = jax.tree.flatten(state)
    dtype = state_leaves[0].dtype

    per_chunk, per_sequence = _specs(n)
    out_shape = [jax.ShapeDtypeStruct((bh, n, c, d_out), dtype)]
    out_shape += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state_leaves]
    out_specs = [per_chunk(out_shape[0])] + [per_sequence(x) for x in state_leaves]
    if save_starts:
        starts = [jax.ShapeDtypeStruct((bh, n, *x.shape[1:]), x.dtype) for x in state_leaves]
        out_shape += starts
        out_specs += [per_chunk(x) for x in starts]
    kernel = functools.partial(
        chunk_scan.step_kernel,
        functools.partial(chunk.chunk_step, residual=residual),
        terms_tree=terms_tree,
        state_tree=state_tree,
        chunk_axis=1,
        save_starts=save_starts,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, n),
        in_specs=[per_chunk(x) for x in leaves] + [per_sequence(x) for x in state_leaves],
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(x.shape[1:], x.dtype) for x in state_leaves],
        interpret=interpret,
        name="mlp_memory_fwd_tpu",
        compiler_params=_COMPILER_PARAMS,
    )(*leaves, *state_leaves)
    n_state = len(state_leaves)
    o, ends, starts = outs[0], outs[1 : 1 + n_state], outs[1 + n_state :]
    starts = jax.tree.unflatten(state_tree, starts) if save_starts else None
    return o, jax.tree.unflatten(state_tree, ends), starts


def backward(terms, starts, d_o, d_state, *, residual, block_sizes, interpret):
    """Gradients of :func:`forward` as one Mosaic TPU kernel visiting the chunks in reverse.

    Grid (sequence·head, chunk) with the chunk axis sequential and mapped last to first; the
    cotangents of the weights and momenta live in VMEM scratch and each grid step is
    :func:`chunk_scan.chunk_vjp` of one chunk (:func:`chunk_scan.reverse_step_kernel`).

    Args:
      terms: the forward's stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      starts: ``(weights, momentum)`` at every chunk start, leaves [bh, n, ...].
      d_o: output cotangent [bh, n, c, d_out]; d_state: end-state cotangent, leaves [bh, ...].
      residual, block_sizes, interpret: as in :func:`forward`.

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    del block_sizes
    n = terms.k.shape[1]
    leaves, terms_tree = jax.tree.flatten(terms)
    start_leaves, state_tree = jax.tree.flatten(starts)
    end_leaves = jax.tree.leaves(d_state)
    per_chunk, per_sequence = _specs(n, reverse=True)
    kernel = functools.partial(
        chunk_scan.reverse_step_kernel,
        functools.partial(chunk.chunk_step, residual=residual),
        terms_tree=terms_tree,
        state_tree=state_tree,
        chunk_axis=1,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves + end_leaves],
        grid=(terms.k.shape[0], n),
        in_specs=[per_chunk(x) for x in leaves + start_leaves + [d_o]]
        + [per_sequence(x) for x in end_leaves],
        out_specs=[per_chunk(x) for x in leaves] + [per_sequence(x) for x in end_leaves],
        scratch_shapes=[pltpu.VMEM(x.shape[1:], x.dtype) for x in end_leaves],
        interpret=interpret,
        name="mlp_memory_bwd_tpu",
        compiler_params=_COMPILER_PARAMS,
    )(*leaves, *start_leaves, d_o, *end_leaves)
    d_terms = jax.tree.unflatten(terms_tree, outs[: len(leaves)])
    return d_terms, jax.tree.unflatten(state_tree, outs[len(leaves) :])
