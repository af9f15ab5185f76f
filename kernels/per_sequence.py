"""Pallas calls of a chunk scan whose whole state one program holds: one (sequence·head) each.

For memories whose chunk step couples the whole state (an MLP memory: the hidden error needs all
of W₁), the grid runs one program per sequence·head and every block spans whole widths. The
kernel bodies are :mod:`nestlearn.kernels.chunk_scan`'s; what this module adds is the
``pallas_call`` of each backend, for any step ``step(x, state) -> (o, state)`` whose output o is
an array [c, d] or a pytree of them (e.g. the generated tokens of Hope's generator memories):

* Triton (GPU): grid (bh,); the program loops over the chunks with the state in registers
  (:func:`triton_forward`), and the backward kernel loops over them in reverse with the state's
  cotangent (:func:`triton_backward`).
* Mosaic TPU: grid (bh, chunk) with the chunk axis sequential; the state (or its cotangent,
  visiting the chunks last to first) lives in VMEM scratch (:func:`tpu_forward`,
  :func:`tpu_backward`).

:func:`scan` is the op built from them: backend switch (:mod:`nestlearn.kernels.dispatch`) and
custom VJP (:func:`chunk_scan.kernel_with_vjp`), with :func:`chunk_scan.scan_chunks` as its XLA
form.

Shapes: terms leaves [bh, n, c, ...] (bh sequences·heads, n chunks of c tokens), state leaves
[bh, ...], output leaves [bh, n, c, ...].
"""

import functools
from collections.abc import Callable

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as plgpu
from nestlearn.kernels import chunk_scan, dispatch

_TPU_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def output_shape(step: Callable, terms, state):
    """o [bh, n, c, ...] of ``step`` over ``terms`` [bh, n, ...] from ``state`` [bh, ...]: one
    ``ShapeDtypeStruct`` per leaf of the step's output, in its tree."""
    bh, n = jax.tree.leaves(terms)[0].shape[:2]
    one = lambda tree, lead: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape[lead:], x.dtype), tree
    )
    o, _ = jax.eval_shape(step, one(terms, 2), one(state, 1))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((bh, n, *x.shape), x.dtype), o)


def _whole(x) -> pl.BlockSpec:
    """Everything of one (sequence·head) of an array [bh, ...], on the grid (bh,)."""
    return pl.BlockSpec((None, *x.shape[1:]), lambda i: (i,) + (0,) * (x.ndim - 1))


def _triton_params(num_warps: int, num_stages: int):
    return plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def triton_forward(
    step, terms, state, *, save_starts, name, num_warps=4, num_stages=1, interpret=False
):
    """The chunk scan of ``step`` as one Triton kernel (grid (bh,)).

    Returns:
      ``(o [bh, n, c, d], state_end, starts)``; starts has leaves [bh, n, ...] (the state at
      every chunk start) when ``save_starts``, else None.
    """
    bh, n = jax.tree.leaves(terms)[0].shape[:2]
    leaves, terms_tree = jax.tree.flatten(terms)
    state_leaves, state_tree = jax.tree.flatten(state)
    out_shape, out_tree = jax.tree.flatten(output_shape(step, terms, state))
    n_out = len(out_shape)
    out_shape += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state_leaves]
    if save_starts:
        out_shape += [jax.ShapeDtypeStruct((bh, n, *x.shape[1:]), x.dtype) for x in state_leaves]
    kernel = functools.partial(
        chunk_scan.scan_kernel,
        step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        n_chunks=n,
        save_starts=save_starts,
        out_tree=out_tree,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh,),
        in_specs=[_whole(x) for x in leaves + state_leaves],
        out_specs=[_whole(x) for x in out_shape],
        interpret=interpret,
        name=f"{name}_fwd_triton",
        compiler_params=_triton_params(num_warps, num_stages),
    )(*leaves, *state_leaves)
    return _split_forward(outs, out_tree, n_out, state_tree, save_starts)


def triton_backward(
    step, terms, starts, d_o, d_state, *, name, num_warps=4, num_stages=1, interpret=False
):
    """Gradients of :func:`triton_forward` as one Triton kernel walking the chunks in reverse.

    One program per (sequence·head) carries the state's cotangent from the last chunk to the
    first (:func:`chunk_scan.reverse_scan_kernel`); every chunk is recomputed from its start
    state and differentiated (:func:`chunk_scan.chunk_vjp`).

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    leaves, terms_tree = jax.tree.flatten(terms)
    start_leaves, state_tree = jax.tree.flatten(starts)
    end_leaves = jax.tree.leaves(d_state)
    d_o_leaves, out_tree = jax.tree.flatten(d_o)
    inputs = [*leaves, *start_leaves, *d_o_leaves, *end_leaves]
    kernel = functools.partial(
        chunk_scan.reverse_scan_kernel,
        step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        n_chunks=leaves[0].shape[1],
        out_tree=out_tree,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves + end_leaves],
        grid=(leaves[0].shape[0],),
        in_specs=[_whole(x) for x in inputs],
        out_specs=[_whole(x) for x in leaves + end_leaves],
        interpret=interpret,
        name=f"{name}_bwd_triton",
        compiler_params=_triton_params(num_warps, num_stages),
    )(*inputs)
    d_terms = jax.tree.unflatten(terms_tree, outs[: len(leaves)])
    return d_terms, jax.tree.unflatten(state_tree, outs[len(leaves) :])


def _split_forward(outs, out_tree, n_out: int, state_tree, save_starts: bool):
    """A forward ``pallas_call``'s flat outputs as ``(o, state_end, starts or None)``."""
    n_state = state_tree.num_leaves
    o = jax.tree.unflatten(out_tree, outs[:n_out])
    ends = jax.tree.unflatten(state_tree, outs[n_out : n_out + n_state])
    starts = jax.tree.unflatten(state_tree, outs[n_out + n_state :]) if save_starts else None
    return o, ends, starts


def _tpu_specs(n: int, *, reverse: bool = False):
    """Block-spec makers on the grid (sequence·head i, chunk): one chunk of an array [bh, n, ...]
    (visited last to first with ``reverse``), and a per-sequence array [bh, ...]."""
    at = (lambda ci: n - 1 - ci) if reverse else (lambda ci: ci)

    def per_chunk(x):
        rest = (0,) * (x.ndim - 2)
        return pl.BlockSpec((None, None, *x.shape[2:]), lambda i, ci: (i, at(ci), *rest))

    def per_sequence(x):  # resident across chunks
        return pl.BlockSpec((None, *x.shape[1:]), lambda i, ci: (i,) + (0,) * (x.ndim - 1))

    return per_chunk, per_sequence


def tpu_forward(step, terms, state, *, save_starts, name, interpret=False):
    """The chunk scan of ``step`` as one Mosaic TPU kernel (grid (bh, n), state in scratch).

    ``interpret``: False, or ``pltpu.InterpretParams()`` for the TPU interpreter. Returns as
    :func:`triton_forward`.
    """
    bh, n = jax.tree.leaves(terms)[0].shape[:2]
    leaves, terms_tree = jax.tree.flatten(terms)
    state_leaves, state_tree = jax.tree.flatten(state)
    per_chunk, per_sequence = _tpu_specs(n)
    out_shape, out_tree = jax.tree.flatten(output_shape(step, terms, state))
    n_out = len(out_shape)
    out_specs = [per_chunk(x) for x in out_shape] + [per_sequence(x) for x in state_leaves]
    out_shape += [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in state_leaves]
    if save_starts:
        starts = [jax.ShapeDtypeStruct((bh, n, *x.shape[1:]), x.dtype) for x in state_leaves]
        out_shape += starts
        out_specs += [per_chunk(x) for x in starts]
    kernel = functools.partial(
        chunk_scan.step_kernel,
        step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        chunk_axis=1,
        save_starts=save_starts,
        out_tree=out_tree,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=(bh, n),
        in_specs=[per_chunk(x) for x in leaves] + [per_sequence(x) for x in state_leaves],
        out_specs=out_specs,
        scratch_shapes=[pltpu.VMEM(x.shape[1:], x.dtype) for x in state_leaves],
        interpret=interpret,
        name=f"{name}_fwd_tpu",
        compiler_params=_TPU_PARAMS,
    )(*leaves, *state_leaves)
    return _split_forward(outs, out_tree, n_out, state_tree, save_starts)


def tpu_backward(step, terms, starts, d_o, d_state, *, name, interpret=False):
    """Gradients of :func:`tpu_forward` as one Mosaic TPU kernel visiting the chunks in reverse.

    Grid (sequence·head, chunk) with the chunk axis sequential and mapped last to first; the
    state's cotangent lives in VMEM scratch and each grid step is :func:`chunk_scan.chunk_vjp` of
    one chunk (:func:`chunk_scan.reverse_step_kernel`). Returns ``(d_terms, d_initial_state)``.
    """
    leaves, terms_tree = jax.tree.flatten(terms)
    start_leaves, state_tree = jax.tree.flatten(starts)
    end_leaves = jax.tree.leaves(d_state)
    d_o_leaves, out_tree = jax.tree.flatten(d_o)
    bh, n = leaves[0].shape[:2]
    per_chunk, per_sequence = _tpu_specs(n, reverse=True)
    kernel = functools.partial(
        chunk_scan.reverse_step_kernel,
        step,
        terms_tree=terms_tree,
        state_tree=state_tree,
        chunk_axis=1,
        out_tree=out_tree,
    )
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves + end_leaves],
        grid=(bh, n),
        in_specs=[per_chunk(x) for x in leaves + start_leaves + d_o_leaves]
        + [per_sequence(x) for x in end_leaves],
        out_specs=[per_chunk(x) for x in leaves] + [per_sequence(x) for x in end_leaves],
        scratch_shapes=[pltpu.VMEM(x.shape[1:], x.dtype) for x in end_leaves],
        interpret=interpret,
        name=f"{name}_bwd_tpu",
        compiler_params=_TPU_PARAMS,
    )(*leaves, *start_leaves, *d_o_leaves, *end_leaves)
    d_terms = jax.tree.unflatten(terms_tree, outs[: len(leaves)])
    return d_terms, jax.tree.unflatten(state_tree, outs[len(leaves) :])


# State that one Triton program holds. Measured on an H200 with the MLP memory
# (`python -m nestlearn.kernels.mlp_memory.bench --t 8192`, docs/kernels.md §6): 128 KiB (d 128,
# hidden 64) compiles and runs; 256 KiB did not finish compiling in 40 s; 512 KiB exceeds the
# shared memory (360,448 bytes asked, 232,448 available).
MAX_STATE_BYTES = 128 * 1024


def check_triton(terms, state) -> None:
    """Raises Unavailable unless every axis of every chunk term and state leaf is 1 or a power of
    two ≥ 16 (Triton tensors and ``tl.dot`` operands) and one sequence·head's state takes at most
    :data:`MAX_STATE_BYTES`."""
    one = [x.shape[2:] for x in jax.tree.leaves(terms)] + [
        x.shape[1:] for x in jax.tree.leaves(state)
    ]
    for shape in one:
        for size in shape:
            if size & (size - 1) or 1 < size < 16:
                raise dispatch.Unavailable(
                    f"pallas_triton needs every per-chunk width to be 1 or a power of two ≥ 16, "
                    f"got a block of shape {shape}; use implementation='xla'"
                )
    state_bytes = sum(x[0].size * x.dtype.itemsize for x in jax.tree.leaves(state))
    if state_bytes > MAX_STATE_BYTES:
        raise dispatch.Unavailable(
            f"pallas_triton holds one state per program: {state_bytes // 1024} KiB > "
            f"{MAX_STATE_BYTES // 1024} KiB; use implementation='xla'"
        )


def scan(
    step: Callable,
    terms,
    state,
    *,
    name: str,
    implementation: str | None = None,
    interpret=False,
    backward: str = "pallas",
    num_warps: int = 4,
    num_stages: int = 1,
):
    """``(o [bh, n, c, d], state_end)``: ``step`` over the chunks of every sequence·head (o: the
    step's output tree, every leaf stacked over the chunks).

    Args:
      step: ``step(x, state) -> (o, state)`` on one chunk (plain jnp that lowers in a Pallas
        body: 2-D blocks, products, masks).
      terms: leaves [bh, n, c, ...]; state: leaves [bh, ...].
      name: the op's name (kernel names and messages).
      implementation: None (the platform's default order, :mod:`nestlearn.kernels.dispatch`),
        "xla" (:func:`chunk_scan.scan_chunks`), "pallas_triton" or "pallas_tpu".
      interpret: run a Pallas backend in its interpreter (CPU).
      backward: "pallas" (backward kernels, chunk-start states recomputed) or "xla" (saved
        chunk-start states, XLA reverse scan): :func:`chunk_scan.kernel_with_vjp`.
      num_warps, num_stages: the Triton launch.

    Raises:
      dispatch.Unavailable: an explicitly requested backend that cannot run here (for Triton
        also shapes it cannot tile or a state too large for one program, :func:`check_triton`).
    """
    chunk_scan.check_backward(backward)

    def xla():
        return chunk_scan.scan_chunks(step, terms, state)

    def run(forward, backward_kernel):
        bwd = backward_kernel if backward == "pallas" else None
        return chunk_scan.kernel_with_vjp(forward, step, bwd)(terms, state)

    def triton():
        dispatch.require_platform("pallas_triton", "gpu", interpret)
        check_triton(terms, state)
        launch = dict(name=name, num_warps=num_warps, num_stages=num_stages)
        launch["interpret"] = bool(interpret)
        return run(
            functools.partial(triton_forward, step, **launch),
            functools.partial(triton_backward, step, **launch),
        )

    def tpu():
        dispatch.require_platform("pallas_tpu", "tpu", interpret)
        params = pltpu.InterpretParams() if interpret is True else interpret
        launch = dict(name=name, interpret=params)
        return run(
            functools.partial(tpu_forward, step, **launch),
            functools.partial(tpu_backward, step, **launch),
        )

    backends = {"xla": xla, "pallas_triton": triton, "pallas_tpu": tpu}
    return dispatch.dispatch(name, implementation, backends)
