"""Scan over chunks and the custom VJP shared by every chunked kernel in this package.

An op supplies ``step(x, state) -> (o, state)`` for one chunk of one (sequence·head), written in
plain jnp so that the same function is the kernel body, the XLA path and the backward pass. Its
kernels are forward functions ``forward(terms, state, *, save_starts) -> (o, state_end, starts)``
that also return the state at every chunk start when asked; the backward pass recomputes each
chunk in XLA from those saved states and differentiates it with ``jax.vjp``, carrying the state
cotangent from the last chunk to the first.

Shapes: terms leaves [bh, n, ...] (bh sequences·heads, n chunks); state leaves [bh, ...];
outputs [bh, n, c, d]; saved starts [bh, n, ...].
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def _chunk_major(tree):
    """[bh, n, ...] -> [n, bh, ...] for a scan over chunks (and back: the move is its inverse)."""
    return jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), tree)


def scan_chunks(step: Callable, terms, state):
    """XLA forward: ``lax.scan`` over chunks of ``step`` batched over bh.

    Returns:
      ``(o [bh, n, c, d], final state)``.
    """
    batched = jax.vmap(step)

    def body(carry, x):
        o, carry = batched(x, carry)
        return carry, o

    state, o = lax.scan(body, state, _chunk_major(terms))
    return jnp.moveaxis(o, 0, 1), state


def scan_chunks_bwd(step: Callable, terms, starts, d_o, d_state):
    """Backward of :func:`scan_chunks` from the saved chunk-start states.

    Args:
      step: the chunk step.
      terms: stacked terms [bh, n, ...].
      starts: the state at every chunk start, leaves [bh, n, ...].
      d_o: output cotangent [bh, n, c, d]; d_state: final-state cotangent.

    Returns:
      ``(d_terms, d_initial_state)``.
    """
    batched = jax.vmap(step)

    def body(d_carry, x):
        x_terms, start, d_o_chunk = x
        _, vjp = jax.vjp(batched, x_terms, start)
        d_terms, d_carry = vjp((d_o_chunk, d_carry))
        return d_carry, d_terms

    xs = (_chunk_major(terms), _chunk_major(starts), jnp.moveaxis(d_o, 1, 0))
    d_state, d_terms = lax.scan(body, d_state, xs, reverse=True)
    return _chunk_major(d_terms), d_state


def kernel_with_vjp(forward: Callable, step: Callable) -> Callable:
    """``op(terms, state) -> (o, state_end)`` running ``forward`` with an XLA backward pass.

    Args:
      forward: kernel forward ``forward(terms, state, *, save_starts) -> (o, state_end, starts)``.
      step: the chunk step the kernel implements (module docstring).
    """

    @jax.custom_vjp
    def op(terms, state):
        o, state, _ = forward(terms, state, save_starts=False)
        return o, state

    def fwd(terms, state):
        o, state, starts = forward(terms, state, save_starts=True)
        return (o, state), (terms, starts)

    def bwd(residuals, cotangents):
        terms, starts = residuals
        d_o, d_state = cotangents
        return scan_chunks_bwd(step, terms, starts, d_o, d_state)

    op.defvjp(fwd, bwd)
    return op
