"""Instruments of an in-context memory: is it learning in context, is it about to blow up?

`MemoryStats` summarises one memory over a batch of sequences:

- ``inner_loss_before`` / ``inner_loss_after``: the inner objective ½‖M(k_t) − v_t‖² (mean over
  tokens, heads and sequences) read at the state before token t's write and after it. For a
  memory that is exact per token (linear attention, DeltaNet, Gated DeltaNet; :func:`matrix_stats`)
  these are ½‖S_{t−1}k_t − v_t‖² and ½‖S_t k_t − v_t‖²; for a chunk-parallel memory (Titans, the
  self-modifying memory; :func:`chunk_stats`) they are read at the state at the start and at the
  end of t's chunk, for the tokens of the chunk. A memory that learns in context has
  after < before.
- ``eta_mean`` / ``eta_p05`` / ``eta_p95``: the step size η_t over tokens × heads (× channels):
  β_t of the delta rules (1 for linear attention), θ_t of Titans, η_t of the self-modifying memory.
- ``alpha_mean`` / ``alpha_p05`` / ``alpha_p95``: the retention α_t: α_t of Gated DeltaNet and of
  the self-modifying memory, 1 − α_t of Titans (its α_t is a forget gate), 1 for linear attention
  and DeltaNet.
- ``state_norm``: ‖state_end‖ per sequence (Frobenius norm over heads and weight leaves; momentum
  is not part of it), mean over sequences.
- ``update_norm``: ‖state_end − state_start‖ per sequence, mean over sequences: how far the
  sequence moved the memory.

Every field is a scalar in float32 (or the inputs' dtype where wider), or None where a memory has
no such quantity (the summary of Hope's generator memories leaves η and α to the output memory,
which shares them). The functions are pure and jit-friendly; they are meant for a forward pass of
their own (the train loop's instrumented step), so the memories' training computation is left as
it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "ChunkRecord",
    "MemoryStats",
    "chunk_stats",
    "half_squared_error",
    "matrix_stats",
    "summarize",
]

_PERCENTILES = (5.0, 95.0)


class MemoryStats(NamedTuple):
    """Instruments of one memory over a batch (module docstring); scalars, or None."""

    inner_loss_before: jax.Array  # mean ½‖M(k_t) − v_t‖² before t's write (chunk start)
    inner_loss_after: jax.Array  # the same after the write (chunk end)
    eta_mean: jax.Array | None  # step size η_t: mean,
    eta_p05: jax.Array | None  # 5th percentile,
    eta_p95: jax.Array | None  # 95th percentile
    alpha_mean: jax.Array | None  # retention α_t: mean,
    alpha_p05: jax.Array | None  # 5th percentile,
    alpha_p95: jax.Array | None  # 95th percentile
    state_norm: jax.Array  # mean over sequences of ‖state_end‖
    update_norm: jax.Array  # mean over sequences of ‖state_end − state_start‖


class ChunkRecord(NamedTuple):
    """Per-token quantities of one chunk, for :func:`chunk_stats`; leaves [b, c, ...]."""

    loss_before: jax.Array  # [b, c, ...] ½‖M_start(k_t) − v_t‖²
    loss_after: jax.Array  # [b, c, ...] ½‖M_end(k_t) − v_t‖²
    eta: jax.Array | None  # [b, c, ...] step sizes η_t
    alpha: jax.Array | None  # [b, c, ...] retentions α_t


def _wide(x: jax.Array) -> jax.Array:
    """x in float32, or in its own dtype where that is wider."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def half_squared_error(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """½‖prediction − target‖² over the last axis, in float32 or wider: [..., d] → [...]."""
    diff = _wide(prediction) - _wide(target)
    return 0.5 * jnp.sum(diff * diff, axis=-1)


def _spread(x: jax.Array | None) -> tuple[jax.Array | None, ...]:
    """(mean, 5th percentile, 95th percentile) of every element of x, or Nones."""
    if x is None:
        return None, None, None
    x = _wide(x).reshape(-1)
    low, high = jnp.percentile(x, jnp.asarray(_PERCENTILES, x.dtype))
    return jnp.mean(x), low, high


def _sequence_norm(tree: Any) -> jax.Array:
    """Mean over the leading (batch) axis of the Frobenius norm of each sequence's leaves."""
    leaves = [_wide(x) for x in jax.tree.leaves(tree)]
    squares = sum(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1) for x in leaves)
    return jnp.mean(jnp.sqrt(squares))


def summarize(
    loss_before: jax.Array,
    loss_after: jax.Array,
    *,
    eta: jax.Array | None,
    alpha: jax.Array | None,
    start: Any,
    end: Any,
) -> MemoryStats:
    """`MemoryStats` from per-token losses, gates and the states at both ends of the sequences.

    Args:
      loss_before: per-token inner losses before the writes, any shape (averaged).
      loss_after: per-token inner losses after the writes, any shape (averaged).
      eta: per-token step sizes, any shape, or None.
      alpha: per-token retentions, any shape, or None.
      start: the memory state at the start of the sequences, leaves [b, ...].
      end: the memory state at the end, leaves like ``start``.
    """
    delta = jax.tree.map(lambda e, s: _wide(e) - _wide(s), end, start)
    return MemoryStats(
        jnp.mean(_wide(loss_before)),
        jnp.mean(_wide(loss_after)),
        *_spread(eta),
        *_spread(alpha),
        _sequence_norm(end),
        _sequence_norm(delta),
    )


def matrix_stats(
    k: jax.Array,
    v: jax.Array,
    reads_after: jax.Array,
    reads_next: jax.Array,
    *,
    initial_state: jax.Array,
    final_state: jax.Array,
    eta: jax.Array,
    alpha: jax.Array,
) -> MemoryStats:
    """Stats of a matrix memory that is exact per token (o_t = S_t q_t), from two of its reads.

    The inner loss before token t's write is ½‖S_{t−1}k_t − v_t‖², after it ½‖S_t k_t − v_t‖²
    (the delta rule's objective; linear attention is scored on the same one). A caller obtains
    both from one run of the memory over the batch doubled: queries k_t give S_t k_t, queries
    k_{t+1} give S_t k_{t+1}, which is the read before token t + 1's write; token 1's is S_0 k_1.

    Args:
      k: keys [b, t, h, d_k], as the memory saw them.
      v: values [b, t, h, d_v], as the memory saw them.
      reads_after: S_t k_t [b, t, h, d_v].
      reads_next: S_t k_{t+1} [b, t, h, d_v] (the last token's is unused).
      initial_state: S_0 [b, h, d_v, d_k].
      final_state: S_T [b, h, d_v, d_k].
      eta: step sizes β_t [b, t, h].
      alpha: retentions α_t [b, t, h].
    """
    first = jnp.einsum("bhvk,bhk->bhv", _wide(initial_state), _wide(k[:, 0]))  # S_0 k_1
    before = jnp.concatenate([first[:, None], _wide(reads_next[:, :-1])], axis=1)
    return summarize(
        half_squared_error(before, v),
        half_squared_error(reads_after, v),
        eta=eta,
        alpha=alpha,
        start=initial_state,
        end=final_state,
    )


def chunk_stats(
    step: Callable[[Any, Any], tuple[Any, ChunkRecord]],
    initial: Any,
    xs: Any,
    *,
    chunk: int,
    weights: Callable[[Any], Any] = lambda state: state,
) -> MemoryStats:
    """Stats of a chunk-parallel memory, run chunk by chunk from ``initial`` over ``xs``.

    Args:
      step: ``step(state, xs_chunk) -> (state after the chunk, ChunkRecord)`` for one chunk of
        the memory's inputs (leaves [b, c', ...], c' = ``chunk``, or shorter for the last one);
        the record's losses are read at ``state`` (before) and at the state it returns (after).
      initial: the memory state at the start of the sequences, leaves [b, ...].
      xs: the memory's inputs, leaves [b, t, ...].
      chunk: the chunk length; chunk boundaries at multiples of it, as in the memory itself.
      weights: the part of a state that the norms measure (e.g. the weights without momentum).

    Returns:
      `MemoryStats` over every token of ``xs``.
    """
    t = jax.tree.leaves(xs)[0].shape[1]
    full = t // chunk * chunk
    state, records = initial, []
    if full:
        split = lambda a: a[:, :full].reshape(a.shape[0], t // chunk, chunk, *a.shape[2:])
        blocks = jax.tree.map(lambda a: split(a).swapaxes(0, 1), xs)  # leaves [n, b, c, ...]
        state, recs = jax.lax.scan(step, state, blocks)
        records.append(
            jax.tree.map(lambda a: a.swapaxes(0, 1).reshape(a.shape[1], full, *a.shape[3:]), recs)
        )
    if full < t:
        state, rec = step(state, jax.tree.map(lambda a: a[:, full:], xs))
        records.append(rec)
    record = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=1), *records)
    return summarize(
        record.loss_before,
        record.loss_after,
        eta=record.eta,
        alpha=record.alpha,
        start=weights(initial),
        end=weights(state),
    )
