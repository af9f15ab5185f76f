"""Gated delta rule with momentum as a Pallas kernel lowered through Mosaic (TPU).

The grid is (sequence·head, value block, chunk); the chunk axis is sequential ("arbitrary") and
the state block S[v-block, :] (and Z) lives in VMEM scratch across it, so only one chunk of
q/k/v/coefficients is resident at a time. Each grid step is :func:`chunk.chunk_step`. Blocks span
whole key/value widths (Mosaic's (8, 128) tiling rule is met by full dimensions); a value block
other than d_v must be a multiple of 128.
"""

import functools

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from nestlearn.kernels import triangular
from nestlearn.kernels.gated_delta import chunk
from nestlearn.kernels.gated_delta.config import BlockSizes

LANES = 128


def _kernel(*refs, treedef, n_terms, has_momentum, save_starts):
    terms = jax.tree.unflatten(treedef, refs[:n_terms])
    refs = list(refs[n_terms:])
    n_states = 2 if has_momentum else 1
    inits, refs = refs[:n_states], refs[n_states:]
    o_ref, ends, refs = refs[0], refs[1 : 1 + n_states], refs[1 + n_states :]
    starts = refs[:n_states] if save_starts else []
    scratch = refs[-n_states:]
    c = pl.program_id(2)

    @pl.when(c == 0)
    def _():
        for scr, init in zip(scratch, inits):
            scr[...] = init[...]

    for start, scr in zip(starts, scratch):
        start[...] = scr[...]
    x = jax.tree.map(lambda r: r[...], terms)
    z = scratch[1][...] if has_momentum else None
    o, (s, z) = chunk.chunk_step(x, (scratch[0][...], z), triangular.unit_lower_solve)
    o_ref[...] = o.astype(o_ref.dtype)
    scratch[0][...] = s
    if has_momentum:
        scratch[1][...] = z

    @pl.when(c == pl.num_programs(2) - 1)
    def _():
        for end, scr in zip(ends, scratch):
            end[...] = scr[...]


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
    block_v = block_sizes.value_block(d_v)
    if block_v != d_v and block_v % LANES:
        raise ValueError(f"{block_v=} must equal {d_v=} or be a multiple of {LANES} for pallas_tpu")
    s0, z0 = state
    has_momentum = z0 is not None
    dtype = s0.dtype

    def per_chunk(x):  # one chunk of one (sequence·head)
        return pl.BlockSpec((None, None, *x.shape[2:]), lambda i, j, ci: (i, ci, 0, 0))

    leaves, treedef = jax.tree.flatten(terms)
    in_specs = [per_chunk(x) for x in leaves]
    in_specs[2] = pl.BlockSpec((None, None, c, block_v), lambda i, j, ci: (i, ci, 0, j))  # v
    state_spec = pl.BlockSpec((None, block_v, d_k), lambda i, j, ci: (i, j, 0))
    starts_spec = pl.BlockSpec((None, None, block_v, d_k), lambda i, j, ci: (i, ci, j, 0))
    states = [s0] + ([z0] if has_momentum else [])
    in_specs += [state_spec] * len(states)
    out_shape = [jax.ShapeDtypeStruct((bh, n, c, d_v), dtype)]
    out_shape += [jax.ShapeDtypeStruct((bh, d_v, d_k), dtype)] * len(states)
    out_specs = [pl.BlockSpec((None, None, c, block_v), lambda i, j, ci: (i, ci, 0, j))]
    out_specs += [state_spec] * len(states)
    if save_starts:
        out_shape += [jax.ShapeDtypeStruct((bh, n, d_v, d_k), dtype)] * len(states)
        out_specs += [starts_spec] * len(states)
    kernel = functools.partial(
        _kernel,
        treedef=treedef,
        n_terms=len(leaves),
        has_momentum=has_momentum,
        save_starts=save_starts,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, d_v // block_v, n),
        in_specs=in_specs,
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM((block_v, d_k), dtype)] * len(states),
        interpret=interpret,
        name="gated_delta_fwd_tpu",
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
    )(*leaves, *states)
    o, s, *rest = outs
    z = rest.pop(0) if has_momentum else None
    s_starts = rest.pop(0) if save_starts else None
    z_starts = rest.pop(0) if save_starts and has_momentum else None
    return o, (s, z), ((s_starts, z_starts) if save_starts else None)
