"""Gated delta rule with momentum as a Pallas kernel lowered through Triton (GPU).

One program per (sequence·head, value block) walks the chunks of its sequence in order, carrying
the state block S[v-block, :] (and Z) in registers; each chunk is :func:`chunk.chunk_step`. The
backward kernel walks the same blocks from the last chunk to the first, carrying the state's
cotangent (:func:`backward`). Triton
needs power-of-two tensor sizes, so the wrapper pads d_k and d_v to powers of two ≥ 16 and
requires a power-of-two chunk size ≥ 16 (tl.dot operands are at least 16 wide).
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from nestlearn.kernels import chunk_scan, triangular
from nestlearn.kernels.gated_delta import chunk
from nestlearn.kernels.gated_delta.config import BlockSizes

MIN_WIDTH = 16  # tl.dot needs every operand dimension ≥ 16
DEFAULT_BLOCK_V = 16  # value columns per program when BlockSizes.block_v is None (config.py)


def padded_width(d: int) -> int:
    """Key/value width the Triton kernel works with: the next power of two ≥ 16."""
    return max(MIN_WIDTH, pl.next_power_of_2(d))


def check_chunk_size(chunk_size: int) -> None:
    """Raises ValueError unless ``chunk_size`` is a power of two ≥ 16."""
    if chunk_size < MIN_WIDTH or chunk_size & (chunk_size - 1):
        raise ValueError(f"{chunk_size=} must be a power of two ≥ {MIN_WIDTH} for pallas_triton")


def _step(x, state):
    """The chunk step inside a kernel body: the triangular solve in masks and products."""
    return chunk.chunk_step(x, state, triangular.unit_lower_solve)


def _value_block(block_sizes: BlockSizes, d_v: int) -> int:
    block_v = block_sizes.value_block(d_v, default=DEFAULT_BLOCK_V)
    if block_v < MIN_WIDTH or block_v & (block_v - 1):
        raise ValueError(f"{block_v=} must be a power of two ≥ {MIN_WIDTH} for pallas_triton")
    return block_v


def _specs(leaves, n: int, c: int, d_k: int, block_v: int):
    """Block specs on the grid (sequence·head i, value block j): (terms, per-value-block arrays
    [bh, n, c, d_v], states [bh, d_v, d_k], chunk-start states [bh, n, d_v, d_k])."""

    def whole(x):  # the whole sequence of one (sequence·head), same block for every value block
        return pl.BlockSpec((None, *x.shape[1:]), lambda i, j: (i,) + (0,) * (x.ndim - 1))

    values = pl.BlockSpec((None, n, c, block_v), lambda i, j: (i, 0, 0, j))
    terms = [whole(x) for x in leaves]
    terms[2] = values  # v
    state = pl.BlockSpec((None, block_v, d_k), lambda i, j: (i, j, 0))
    starts = pl.BlockSpec((None, n, block_v, d_k), lambda i, j: (i, 0, j, 0))
    return terms, values, state, starts


def _compiler_params(block_sizes: BlockSizes):
    return plgpu.CompilerParams(num_warps=block_sizes.num_warps, num_stages=block_sizes.num_stages)


def forward(terms, state, *, save_starts, block_sizes: BlockSizes, interpret: bool):
    """Runs the chunk scan as one Triton kernel.

    Args:
      terms: stacked :class:`chunk.ChunkTerms` [bh, n, ...] with power-of-two widths.
      state: initial ``(S_0, Z_0)``, each [bh, d_v, d_k] (Z_0 None without momentum).
      save_starts: also return the state at every chunk start (residuals for the backward).
      block_sizes: tiling; ``block_v`` splits d_v across programs.
      interpret: run in the GPU-style Pallas interpreter (any platform).

    Returns:
      ``(o [bh, n, c, d_v], (S_end, Z_end), starts)``; starts is ``(S, Z)`` at every chunk start
      [bh, n, d_v, d_k] when ``save_starts``, else None.
    """
    bh, n, c, d_k = terms.k.shape
    d_v = terms.v.shape[-1]
    check_chunk_size(c)
    block_v = _value_block(block_sizes, d_v)
    leaves, terms_tree = jax.tree.flatten(terms)
    states, state_tree = jax.tree.flatten(state)
    n_state, dtype = len(states), states[0].dtype
    in_specs, values_spec, state_spec, starts_spec = _specs(leaves, n, c, d_k, block_v)
    out_shape = [jax.ShapeDtypeStruct((bh, n, c, d_v), dtype)]
    out_shape += [jax.ShapeDtypeStruct((bh, d_v, d_k), dtype)] * n_state
    out_specs = [values_spec] + [state_spec] * n_state
    if save_starts:
        out_shape += [jax.ShapeDtypeStruct((bh, n, d_v, d_k), dtype)] * n_state
        out_specs += [starts_spec] * n_state
    kernel = functools.partial(
        chunk_scan.scan_kernel,
        _step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        n_chunks=n,
        save_starts=save_starts,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, d_v // block_v),
        in_specs=in_specs + [state_spec] * n_state,
        out_specs=out_specs,
        interpret=interpret,
        name="gated_delta_fwd_triton",
        compiler_params=_compiler_params(block_sizes),
    )(*leaves, *states)
    end = jax.tree.unflatten(state_tree, outs[1 : 1 + n_state])
    starts = jax.tree.unflatten(state_tree, outs[1 + n_state :]) if save_starts else None
    return outs[0], end, starts


def backward(terms, starts, d_o, d_state, *, block_sizes: BlockSizes, interpret: bool):
    """Gradients of :func:`forward` as one Triton kernel walking the chunks in reverse.

    Each program (sequence·head, value block) carries the cotangent of its rows of (S, Z) from
    the last chunk to the first (:func:`chunk_scan.reverse_scan_kernel`): every chunk is
    recomputed from its start state and differentiated (:func:`chunk_scan.chunk_vjp`). Rows of S
    are independent, so each value block yields the gradients of v in its columns and a partial
    sum of the gradients of the shared terms (q, k and the coefficients), added up afterwards.

    Args:
      terms: the forward's stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      starts: ``(S, Z)`` at every chunk start [bh, n, d_v, d_k] (Z None without momentum).
      d_o: output cotangent [bh, n, c, d_v]; d_state: ``(dS_end, dZ_end)`` [bh, d_v, d_k].
      block_sizes: tiling, as in :func:`forward`.
      interpret: run in the GPU-style Pallas interpreter.

    Returns:
      ``(d_terms, (dS_0, dZ_0))``.
    """
    bh, n, c, d_k = terms.k.shape
    d_v = terms.v.shape[-1]
    block_v = _value_block(block_sizes, d_v)
    blocks = d_v // block_v
    leaves, terms_tree = jax.tree.flatten(terms)
    start_leaves, state_tree = jax.tree.flatten(starts)
    terms_specs, values_spec, state_spec, starts_spec = _specs(leaves, n, c, d_k, block_v)
    n_state = len(start_leaves)

    def partial_sums(x):  # a shared term's gradient, one partial sum per value block
        shape = jax.ShapeDtypeStruct((bh, blocks, *x.shape[1:]), x.dtype)
        index = lambda i, j: (i, j) + (0,) * (x.ndim - 1)
        return shape, pl.BlockSpec((None, None, *x.shape[1:]), index)

    out = [partial_sums(x) for x in leaves]
    out[2] = jax.ShapeDtypeStruct(leaves[2].shape, leaves[2].dtype), values_spec  # dv
    out += [(jax.ShapeDtypeStruct((bh, d_v, d_k), start_leaves[0].dtype), state_spec)] * n_state
    kernel = functools.partial(
        chunk_scan.reverse_scan_kernel,
        _step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        n_chunks=n,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[shape for shape, _ in out],
        grid=(bh, blocks),
        in_specs=terms_specs + [starts_spec] * n_state + [values_spec] + [state_spec] * n_state,
        out_specs=[spec for _, spec in out],
        interpret=interpret,
        name="gated_delta_bwd_triton",
        compiler_params=_compiler_params(block_sizes),
    )(*leaves, *start_leaves, d_o, *jax.tree.leaves(d_state))
    d_terms = [g if i == 2 else g.sum(axis=1) for i, g in enumerate(outs[: len(leaves)])]
    d_init = jax.tree.unflatten(state_tree, outs[len(leaves) :])
    return jax.tree.unflatten(terms_tree, d_terms), d_init


def pad_widths(d_k: int, d_v: int) -> tuple[int, int]:
    """(d_k, d_v) as the Triton kernel needs them."""
    return padded_width(d_k), padded_width(d_v)
