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

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from nestlearn.kernels import chunk_scan
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

# Weights and momenta of one memory, float32, that one program holds. Measured on an H200
# (`python -m nestlearn.kernels.mlp_memory.bench --t 8192`, docs/kernels.md §6): 128 KiB (d 128,
# hidden 64) compiles and runs; 256 KiB (d 128, hidden 128) did not finish compiling in 40 s;
# 512 KiB (d 128, hidden 256) exceeds the shared memory (360,448 bytes asked, 232,448 available).
MAX_STATE_BYTES = 128 * 1024


def check_state_size(d_in: int, d_out: int, hidden: int) -> None:
    """Raises Unavailable when W₁, W₂ and their momenta (padded widths) exceed MAX_STATE_BYTES."""
    state_bytes = 2 * 4 * hidden * (d_in + d_out)
    if state_bytes > MAX_STATE_BYTES:
        raise Unavailable(
            f"pallas_triton holds one memory per program: weights and momenta of d_in={d_in}, "
            f"d_out={d_out}, hidden={hidden} take {state_bytes // 1024} KiB > "
            f"{MAX_STATE_BYTES // 1024} KiB; use implementation='xla'"
        )


def whole(x) -> pl.BlockSpec:
    """Everything of one (sequence·head) of an array [bh, ...], on the grid (bh,)."""
    return pl.BlockSpec((None, *x.shape[1:]), lambda i: (i,) + (0,) * (x.ndim - 1))


def _compiler_params(block_sizes: BlockSizes):
    return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)


def forward(terms, state, *, save_starts, residual, block_sizes: BlockSizes, interpret: bool):
    """Runs the chunk scan of the MLP memory as one Triton kernel.

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
    bh, n, c, _ = terms.k.shape
    d_out = terms.v.shape[-1]
    check_chunk_size(c)
    leaves, terms_tree = jax.tree.flatten(terms)
    state_leaves, state_tree = jax.tree.flatten(state)

    def with_chunks(x):  # a state leaf [bh, ...] saved per chunk: [bh, n, ...]
        return jax.ShapeDtypeStruct((bh, n, *x.shape[1:]), x.dtype)

    dtype = state_leaves[0].dtype
    out_shape = [jax.ShapeDtypeStruct((bh, n, c, d_out), dtype)]
    out_shape += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state_leaves]
    if save_starts:
        out_shape += [with_chunks(x) for x in state_leaves]
    kernel = functools.partial(
        chunk_scan.scan_kernel,
        functools.partial(chunk.chunk_step, residual=residual),
        terms_tree=terms_tree,
        state_tree=state_tree,
        n_chunks=n,
        save_starts=save_starts,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh,),
        in_specs=[whole(x) for x in leaves + state_leaves],
        out_specs=[whole(x) for x in out_shape],
        interpret=interpret,
        name="mlp_memory_fwd_triton",
        compiler_params=_compiler_params(block_sizes),
    )(*leaves, *state_leaves)
    n_state = len(state_leaves)
    o, ends, starts = outs[0], outs[1 : 1 + n_state], outs[1 + n_state :]
    starts = jax.tree.unflatten(state_tree, starts) if save_starts else None
    return o, jax.tree.unflatten(state_tree, ends), starts


def backward(terms, starts, d_o, d_state, *, residual, block_sizes: BlockSizes, interpret: bool):
    """Gradients of :func:`forward` as one Triton kernel walking the chunks in reverse.

    One program per (sequence·head) carries the cotangents of the weights and momenta from the
    last chunk to the first (:func:`chunk_scan.reverse_scan_kernel`); every chunk is recomputed
    from its start state and differentiated (:func:`chunk_scan.chunk_vjp`).

    Args:
      terms: the forward's stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      starts: ``(weights, momentum)`` at every chunk start, leaves [bh, n, ...].
      d_o: output cotangent [bh, n, c, d_out]; d_state: end-state cotangent, leaves [bh, ...].
      residual, block_sizes, interpret: as in :func:`forward`.

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    leaves, terms_tree = jax.tree.flatten(terms)
    start_leaves, state_tree = jax.tree.flatten(starts)
    end_leaves = jax.tree.leaves(d_state)
    inputs = [*leaves, *start_leaves, d_o, *end_leaves]
    kernel = functools.partial(
        chunk_scan.reverse_scan_kernel,
        functools.partial(chunk.chunk_step, residual=residual),
        terms_tree=terms_tree,
        state_tree=state_tree,
        n_chunks=terms.k.shape[1],
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves + end_leaves],
        grid=(terms.k.shape[0],),
        in_specs=[whole(x) for x in inputs],
        out_specs=[whole(x) for x in leaves + end_leaves],
        interpret=interpret,
        name="mlp_memory_bwd_triton",
        compiler_params=_compiler_params(block_sizes),
    )(*inputs)
    d_terms = jax.tree.unflatten(terms_tree, outs[: len(leaves)])
    return d_terms, jax.tree.unflatten(state_tree, outs[len(leaves) :])
