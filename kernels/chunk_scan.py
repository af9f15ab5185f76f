"""Scan over chunks and the custom VJP shared by every chunked kernel in this package.

An op supplies ``step(x, state) -> (o, state)`` for one chunk of one (sequence·head), written in
plain jnp so that the same function is the kernel body, the XLA path and the backward pass. Its
kernels are forward functions ``forward(terms, state, *, save_starts) -> (o, state_end, starts)``
that also return the state at every chunk start when asked. The backward pass differentiates
each chunk with ``jax.vjp`` (:func:`chunk_vjp`), carrying the state cotangent from the last chunk
to the first, in one of two ways (:func:`kernel_with_vjp`):

- XLA: the forward kernel saves the chunk-start states and a ``lax.scan`` in reverse
  (:func:`scan_chunks_bwd`) recomputes and differentiates each chunk;
- Pallas: the forward pass keeps only its inputs; the backward pass recomputes the chunk-start
  states with the forward kernel and a backward kernel walks the chunks in reverse, its body
  (:func:`reverse_scan_kernel` for a loop inside one program, :func:`reverse_step_kernel` for one
  chunk per grid step) being the same :func:`chunk_vjp`.

The forward kernel bodies are generic too (:func:`scan_kernel`, :func:`step_kernel`): an op's
Pallas backend only chooses the grid, the block specs and the step.

Shapes: terms leaves [bh, n, ...] (bh sequences·heads, n chunks); state leaves [bh, ...];
outputs [bh, n, c, d] (or a pytree of such leaves: ``out_tree`` in the kernel bodies); saved
starts [bh, n, ...].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

BACKWARDS = ("pallas", "xla")  # the kernels' backward passes (:func:`kernel_with_vjp`)


def check_backward(backward) -> None:
    """Raises ValueError unless ``backward`` is one of :data:`BACKWARDS`."""
    if backward not in BACKWARDS:
        raise ValueError(f"{backward=} must be one of {BACKWARDS}")


def _chunk_major(tree):
    """[bh, n, ...] -> [n, bh, ...] for a scan over chunks (and back: the move is its inverse)."""
    return jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), tree)


def scan_chunks(step: Callable, terms, state):
    """XLA forward: ``lax.scan`` over chunks of ``step`` batched over bh.

    Returns:
      ``(o [bh, n, c, d], final state)`` (o: every output leaf of ``step``, stacked).
    """
    batched = jax.vmap(step)

    def body(carry, x):
        o, carry = batched(x, carry)
        return carry, o

    state, o = lax.scan(body, state, _chunk_major(terms))
    return _chunk_major(o), state


def chunk_vjp(step: Callable, x, start, d_o, d_state):
    """``(d_x, d_start)``: the cotangents of one chunk's terms and start state.

    Pulls ``(d_o, d_state)`` — cotangents of the chunk's output and end state — back through
    ``step(x, start)``; the forward is recomputed, so nothing but the start state is needed.
    """
    _, vjp = jax.vjp(step, x, start)
    return vjp((d_o, d_state))


def scan_chunks_bwd(step: Callable, terms, starts, d_o, d_state):
    """Backward of :func:`scan_chunks` from the saved chunk-start states.

    Args:
      step: the chunk step.
      terms: stacked terms [bh, n, ...].
      starts: the state at every chunk start, leaves [bh, n, ...].
      d_o: output cotangent [bh, n, c, d] (like the outputs); d_state: final-state cotangent.

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    batched = jax.vmap(lambda *args: chunk_vjp(step, *args))

    def body(d_carry, x):
        x_terms, start, d_o_chunk = x
        d_terms, d_carry = batched(x_terms, start, d_o_chunk, d_carry)
        return d_carry, d_terms

    xs = (_chunk_major(terms), _chunk_major(starts), _chunk_major(d_o))
    d_state, d_terms = lax.scan(body, d_state, xs, reverse=True)
    return _chunk_major(d_terms), d_state


def kernel_with_vjp(
    forward: Callable, step: Callable, backward: Callable | None = None
) -> Callable:
    """``op(terms, state) -> (o, state_end)`` running ``forward`` with a custom backward pass.

    Args:
      forward: kernel forward ``forward(terms, state, *, save_starts) -> (o, state_end, starts)``.
      step: the chunk step the kernel implements (module docstring).
      backward: kernel backward ``backward(terms, starts, d_o, d_state) -> (d_terms,
        d_initial_state)``; the backward pass then recomputes the chunk-start states with
        ``forward`` instead of saving them in the forward pass. None: the forward saves them and
        :func:`scan_chunks_bwd` (XLA) differentiates.
    """

    @jax.custom_vjp
    def op(terms, state):
        o, state, _ = forward(terms, state, save_starts=False)
        return o, state

    def fwd(terms, state):
        if backward is not None:
            o, end, _ = forward(terms, state, save_starts=False)
            return (o, end), (terms, state)
        o, end, starts = forward(terms, state, save_starts=True)
        return (o, end), (terms, starts)

    def bwd(residuals, cotangents):
        d_o, d_state = cotangents
        if backward is not None:
            terms, state = residuals
            _, _, starts = forward(terms, state, save_starts=True)
            return backward(terms, starts, d_o, d_state)
        terms, starts = residuals
        return scan_chunks_bwd(step, terms, starts, d_o, d_state)

    op.defvjp(fwd, bwd)
    return op


def _out_leaves(out_tree) -> int:
    """How many output arrays a step's output has (``out_tree`` None: one array)."""
    return 1 if out_tree is None else out_tree.num_leaves


def _write_out(refs, o, at=None) -> None:
    """Writes the output leaves of one chunk into their refs (at chunk ``at``, or whole)."""
    for ref, x in zip(refs, jax.tree.leaves(o), strict=True):
        if at is None:
            ref[...] = x.astype(ref.dtype)
        else:
            ref[at] = x.astype(ref.dtype)


def _forward_refs(refs, terms_tree, state_tree, save_starts: bool, out_tree=None):
    """Splits a forward kernel's refs: inputs (terms, initial state), outputs (o leaves, end
    state, chunk-start states when ``save_starts``), and what is left (scratch)."""
    n_terms, n_state = terms_tree.num_leaves, state_tree.num_leaves
    sizes = [n_terms, n_state, _out_leaves(out_tree), n_state, n_state if save_starts else 0]
    groups, at = [], 0
    for size in sizes:
        groups.append(refs[at : at + size])
        at += size
    terms, inits, o, ends, starts = groups
    return jax.tree.unflatten(terms_tree, terms), inits, o, ends, starts, refs[at:]


def scan_kernel(
    step: Callable,
    *refs,
    terms_tree,
    state_tree,
    n_chunks: int,
    save_starts: bool,
    out_tree=None,
):
    """Pallas body of a forward kernel that walks all ``n_chunks`` chunks of its block in order.

    Ref order: terms leaves [n, ...], initial-state leaves; then the outputs: o [n, c, d] (one ref
    per leaf of ``out_tree``, the structure of ``step``'s output; None: one array), end-state
    leaves and, with ``save_starts``, the state at every chunk start [n, ...]. The state is the
    loop carry; each chunk is ``step``.
    """
    terms, inits, o, ends, starts, _ = _forward_refs(
        refs, terms_tree, state_tree, save_starts, out_tree
    )

    def body(c, state):
        for ref, x in zip(starts, jax.tree.leaves(state)):
            ref[c] = x
        o_c, state = step(jax.tree.map(lambda r: r[c], terms), state)
        _write_out(o, o_c, c)
        return state

    state = jax.tree.unflatten(state_tree, [r[...] for r in inits])
    state = lax.fori_loop(0, n_chunks, body, state)
    for ref, x in zip(ends, jax.tree.leaves(state)):
        ref[...] = x


def step_kernel(
    step: Callable,
    *refs,
    terms_tree,
    state_tree,
    chunk_axis: int,
    save_starts: bool,
    out_tree=None,
):
    """Pallas body of a forward kernel with one chunk per grid step along ``chunk_axis``.

    The refs of :func:`scan_kernel` taken per chunk (terms and starts [...], o leaves [c, d]),
    then scratch refs holding the state across the grid steps.
    """
    terms, inits, o, ends, starts, scratch = _forward_refs(
        refs, terms_tree, state_tree, save_starts, out_tree
    )
    i = pl.program_id(chunk_axis)

    @pl.when(i == 0)
    def _():
        for scr, init in zip(scratch, inits):
            scr[...] = init[...]

    for ref, scr in zip(starts, scratch):
        ref[...] = scr[...]
    state = jax.tree.unflatten(state_tree, [scr[...] for scr in scratch])
    o_c, state = step(jax.tree.map(lambda r: r[...], terms), state)
    _write_out(o, o_c)
    for scr, x in zip(scratch, jax.tree.leaves(state)):
        scr[...] = x

    @pl.when(i == pl.num_programs(chunk_axis) - 1)
    def _():
        for ref, scr in zip(ends, scratch):
            ref[...] = scr[...]


def _backward_refs(refs, terms_tree, state_tree, out_tree=None):
    """Splits a backward kernel's refs: inputs (terms, starts, dO leaves, dS_end), outputs
    (dterms, dS_initial), and what is left (scratch). dO comes back as a tree of refs like the
    step's output (one ref when ``out_tree`` is None)."""
    n_terms, n_state = terms_tree.num_leaves, state_tree.num_leaves
    sizes = [n_terms, n_state, _out_leaves(out_tree), n_state, n_terms, n_state]
    groups, at = [], 0
    for size in sizes:
        groups.append(refs[at : at + size])
        at += size
    terms, starts, d_o, d_end, d_terms, d_init = groups
    terms = jax.tree.unflatten(terms_tree, terms)
    starts = jax.tree.unflatten(state_tree, starts)
    d_o = d_o[0] if out_tree is None else jax.tree.unflatten(out_tree, d_o)
    return terms, starts, d_o, d_end, d_terms, d_init, refs[at:]


def reverse_scan_kernel(
    step: Callable, *refs, terms_tree, state_tree, n_chunks: int, out_tree=None
):
    """Pallas body of a backward kernel that walks all ``n_chunks`` chunks of its block in reverse.

    Ref order: terms leaves [n, ...], chunk-start state leaves [n, ...], dO [n, c, d] (one ref per
    output leaf, ``out_tree`` as in :func:`scan_kernel`), end-state cotangent leaves; then the
    outputs: terms cotangents [n, ...] and initial-state cotangents. The state cotangent is the
    loop carry; each chunk is :func:`chunk_vjp`.
    """
    terms, starts, d_o, d_end, d_terms, d_init, _ = _backward_refs(
        refs, terms_tree, state_tree, out_tree
    )

    def body(i, d_state):
        c = n_chunks - 1 - i
        at = lambda r: r[c]
        x, start = jax.tree.map(at, terms), jax.tree.map(at, starts)
        d_x, d_state = chunk_vjp(step, x, start, jax.tree.map(at, d_o), d_state)
        for ref, g in zip(d_terms, jax.tree.leaves(d_x)):
            ref[c] = g.astype(ref.dtype)
        return d_state

    init = jax.tree.unflatten(state_tree, [r[...] for r in d_end])
    d_state = lax.fori_loop(0, n_chunks, body, init)
    for ref, g in zip(d_init, jax.tree.leaves(d_state)):
        ref[...] = g.astype(ref.dtype)


def reverse_step_kernel(
    step: Callable, *refs, terms_tree, state_tree, chunk_axis: int, out_tree=None
):
    """Pallas body of a backward kernel with one chunk per grid step along ``chunk_axis``.

    The index maps visit the chunks last to first; the state cotangent lives in scratch refs
    (after the refs of :func:`reverse_scan_kernel`, which this one takes per chunk: terms and
    starts [...], dO leaves [c, d]).
    """
    terms, starts, d_o, d_end, d_terms, d_init, scratch = _backward_refs(
        refs, terms_tree, state_tree, out_tree
    )
    i = pl.program_id(chunk_axis)

    @pl.when(i == 0)
    def _():
        for scr, end in zip(scratch, d_end):
            scr[...] = end[...]

    x, start = jax.tree.map(lambda r: r[...], (terms, starts))
    d_state = jax.tree.unflatten(state_tree, [scr[...] for scr in scratch])
    d_o = jax.tree.map(lambda r: r[...], d_o)
    d_x, d_state = chunk_vjp(step, x, start, d_o, d_state)
    for ref, g in zip(d_terms, jax.tree.leaves(d_x)):
        ref[...] = g.astype(ref.dtype)
    for scr, g in zip(scratch, jax.tree.leaves(d_state)):
        scr[...] = g

    @pl.when(i == pl.num_programs(chunk_axis) - 1)
    def _():
        for ref, scr in zip(d_init, scratch):
            ref[...] = scr[...]
