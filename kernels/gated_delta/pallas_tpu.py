"""Gated delta rule with momentum as a Pallas kernel lowered through Mosaic (TPU).

The grid is (sequence·head, value block, chunk); the chunk axis is sequential ("arbitrary") and
the state block S[v-block, :] (and Z) lives in VMEM scratch across it, so only one chunk of
q/k/v/coefficients is resident at a time. Each grid step is :func:`chunk.chunk_step`. Blocks span
whole key/value widths (Mosaic's (8, 128) tiling rule is met by full dimensions); a value block
other than d_v must be a multiple of 128. The backward kernel visits the chunks in reverse with the
state's cotangent in scratch (:func:`backward`).
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import chunk_scan, triangular
from nestlearn.kernels.gated_delta import chunk
from nestlearn.kernels.gated_delta.config import BlockSizes

LANES = 128
_COMPILER_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _step(x, state):
    """The chunk step inside a kernel body: the triangular solve in masks and products."""
    return chunk.chunk_step(x, state, triangular.unit_lower_solve)


def _value_block(block_sizes: BlockSizes, d_v: int) -> int:
    block_v = block_sizes.value_block(d_v)
    if block_v != d_v and block_v % LANES:
        raise ValueError(f"{block_v=} must equal {d_v=} or be a multiple of {LANES} for pallas_tpu")
    return block_v


def _specs(leaves, n: int, c: int, d_k: int, block_v: int, *, reverse: bool = False):
    """Block specs on the grid (sequence·head i, value block j, chunk): (terms, per-value-block
    chunk [c, block_v], state [block_v, d_k], chunk-start state [block_v, d_k]); ``reverse``
    visits the chunks last to first."""
    at = (lambda ci: n - 1 - ci) if reverse else (lambda ci: ci)

    def per_chunk(x):  # one chunk of one (sequence·head)
        return pl.BlockSpec((None, None, *x.shape[2:]), lambda i, j, ci: (i, at(ci), 0, 0))

    values = pl.BlockSpec((None, None, c, block_v), lambda i, j, ci: (i, at(ci), 0, j))
    terms = [per_chunk(x) for x in leaves]
    terms[2] = values  # v
    state = pl.BlockSpec((None, block_v, d_k), lambda i, j, ci: (i, j, 0))
    starts = pl.BlockSpec((None, None, block_v, d_k), lambda i, j, ci: (i, at(ci), j, 0))
    return terms, values, state, starts


def forward(terms, state, *, save_starts, block_sizes: BlockSizes, interpret):
    """Runs the chunk scan as one Mosaic TPU kernel.

    Args:
      terms: stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      state: initial ``(S_0, Z_0)``, each [bh, d_v, d_k] (Z_0 None without momentum).
      save_starts: also return the state at every chunk start (residuals for the backward).
      block_sizes: tiling; ``block_v`` splits d_v across programs.
      interpret: False, or ``pltpu.InterpretParams()`` (or True) for the TPU interpreter.

    Returns:
      ``(o [bh, n, c, d_v], (S_end, Z_end), starts)``; starts is ``(S, Z)`` at every chunk start
      [bh, n, d_v, d_k] when ``save_starts``, else None.
    """
    bh, n, c, d_k = terms.k.shape
    d_v = terms.v.shape[-1]
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
        chunk_scan.step_kernel,
        _step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        chunk_axis=2,
        save_starts=save_starts,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, d_v // block_v, n),
        in_specs=in_specs + [state_spec] * n_state,
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((block_v, d_k), dtype)] * n_state,
        interpret=interpret,
        name="gated_delta_fwd_tpu",
        compiler_params=_COMPILER_PARAMS,
    )(*leaves, *states)
    end = jax.tree.unflatten(state_tree, outs[1 : 1 + n_state])
    starts = jax.tree.unflatten(state_tree, outs[1 + n_state :]) if save_starts else None
    return outs[0], end, starts


def backward(terms, starts, d_o, d_state, *, block_sizes: BlockSizes, interpret):
    """Gradients of :func:`forward` as one Mosaic TPU kernel visiting the chunks in reverse.

    Grid (sequence·head, value block, chunk) with the chunk axis sequential and mapped last to
    first; the cotangent of the state block lives in VMEM scratch and each grid step is
    :func:`chunk_scan.chunk_vjp` of one chunk (:func:`chunk_scan.reverse_step_kernel`). Each value
    block yields a partial sum of the shared terms' gradients, added up afterwards.

    Args:
      terms: the forward's stacked :class:`chunk.ChunkTerms` [bh, n, ...].
      starts: ``(S, Z)`` at every chunk start [bh, n, d_v, d_k] (Z None without momentum).
      d_o: output cotangent [bh, n, c, d_v]; d_state: ``(dS_end, dZ_end)`` [bh, d_v, d_k].
      block_sizes: tiling, as in :func:`forward`.
      interpret: as in :func:`forward`.

    Returns:
      ``(d_terms, (dS_0, dZ_0))``.
    """
    bh, n, c, d_k = terms.k.shape
    d_v = terms.v.shape[-1]
    block_v = _value_block(block_sizes, d_v)
    blocks = d_v // block_v
    leaves, terms_tree = jax.tree.flatten(terms)
    start_leaves, state_tree = jax.tree.flatten(starts)
    n_state = len(start_leaves)
    dtype = start_leaves[0].dtype
    specs = _specs(leaves, n, c, d_k, block_v, reverse=True)
    terms_specs, values_spec, state_spec, starts_spec = specs

    def partial_sums(x):  # a shared term's gradient, one partial sum per value block
        shape = jax.ShapeDtypeStruct((bh, blocks, *x.shape[1:]), x.dtype)
        index = lambda i, j, ci: (i, j, n - 1 - ci) + (0,) * (x.ndim - 2)
        return shape, pl.BlockSpec((None, None, None, *x.shape[2:]), index)

    out = [partial_sums(x) for x in leaves]
    out[2] = jax.ShapeDtypeStruct(leaves[2].shape, leaves[2].dtype), values_spec  # dv
    out += [(jax.ShapeDtypeStruct((bh, d_v, d_k), dtype), state_spec)] * n_state
    kernel = functools.partial(
        chunk_scan.reverse_step_kernel,
        _step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        chunk_axis=2,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[shape for shape, _ in out],
        grid=(bh, blocks, n),
        in_specs=terms_specs + [starts_spec] * n_state + [values_spec] + [state_spec] * n_state,
        out_specs=[spec for _, spec in out],
        scratch_shapes=[pltpu.VMEM((block_v, d_k), dtype)] * n_state,
        interpret=interpret,
        name="gated_delta_bwd_tpu",
        compiler_params=_COMPILER_PARAMS,
    )(*leaves, *start_leaves, d_o, *jax.tree.leaves(d_state))
    d_terms = [g if i == 2 else g.sum(axis=1) for i, g in enumerate(outs[: len(leaves)])]
    d_init = jax.tree.unflatten(state_tree, outs[len(leaves) :])
    return jax.tree.unflatten(terms_tree, d_terms), d_init
