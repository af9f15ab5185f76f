"""A deterministic, checkpointable batch iterator over a token stream.

The stream is cut into `n = (len(tokens) − 1) // seq_len` windows of `seq_len + 1` tokens (stride
`seq_len`; inputs are the first `seq_len`, targets the last `seq_len`). The windows are visited in
an order that is a pure function of `(seed, epoch)`, so the whole iterator state is three integers
— `IteratorState(seed, epoch, position)` — which go into the checkpoint: restoring them resumes the
exact batch sequence. A batch that runs past the end of an epoch continues into the next.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from nestlearn.core.validation import check_token_ids

__all__ = ["Batch", "BatchIterator", "IteratorState", "eval_batches"]


class Batch(NamedTuple):
    """One batch of next-token prediction."""

    inputs: np.ndarray  # [b, t] int32
    targets: np.ndarray  # [b, t] int32, inputs shifted left by one


class IteratorState(NamedTuple):
    """Everything needed to resume a `BatchIterator`."""

    seed: int  # seed of the per-epoch window permutation
    epoch: int  # epochs completed
    position: int  # windows of the current epoch already served


def _num_windows(tokens: np.ndarray, seq_len: int, arg: str, vocab_size: int | None) -> int:
    if vocab_size is not None:
        check_token_ids(tokens, vocab_size, name=arg)
    if tokens.ndim != 1:
        raise ValueError(f"{arg} must be a 1-D token stream, got shape {tokens.shape}")
    if seq_len < 1:
        raise ValueError(f"seq_len={seq_len} must be >= 1")
    n = (tokens.shape[0] - 1) // seq_len
    if n < 1:
        raise ValueError(
            f"{arg} has {tokens.shape[0]} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    return n


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> Batch:
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]  # [b, t+1]
    w = tokens[idx].astype(np.int32)
    return Batch(w[:, :-1], w[:, 1:])


class BatchIterator(Iterator[Batch]):
    """Shuffled windows of a token stream, resumable from `state`.

    Example:
      it = BatchIterator(tokens, batch_size=8, seq_len=128, seed=0)
      batch = next(it)
      saved = it.state            # IteratorState; `dict(saved._asdict())` is JSON
      it2 = BatchIterator(tokens, batch_size=8, seq_len=128, seed=0)
      it2.restore(saved)          # next(it2) == next(it)
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        batch_size: int,
        seq_len: int,
        seed: int,
        shuffle: bool = True,
        vocab_size: int | None = None,
    ):
        """Args: see the class docstring; with `vocab_size`, every id must lie in
        [0, vocab_size) (ValueError naming the first that does not)."""
        tokens = np.asarray(tokens)
        self.num_windows = _num_windows(tokens, seq_len, "tokens", vocab_size)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.shuffle = shuffle
        self._state = IteratorState(int(seed), 0, 0)
        self._order_epoch, self._order = -1, np.empty(0, np.int64)

    @property
    def state(self) -> IteratorState:
        return self._state

    def restore(self, state: IteratorState | dict[str, Any]) -> None:
        """Continues from a saved `state` (an `IteratorState` or its `_asdict()`)."""
        state = IteratorState(**state) if isinstance(state, dict) else state
        if not 0 <= state.position < self.num_windows or state.epoch < 0:
            raise ValueError(f"state={state} does not fit {self.num_windows} windows per epoch")
        self._state = IteratorState(int(state.seed), int(state.epoch), int(state.position))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            n = self.num_windows
            self._order = (
                np.random.default_rng([self._state.seed, epoch]).permutation(n)
                if self.shuffle
                else np.arange(n)
            )
            self._order_epoch = epoch
        return self._order

    def __next__(self) -> Batch:
        seed, epoch, pos = self._state
        picked = []
        for _ in range(self.batch_size):
            picked.append(self._epoch_order(epoch)[pos])
            pos += 1
            if pos == self.num_windows:
                epoch, pos = epoch + 1, 0
        self._state = IteratorState(seed, epoch, pos)
        return _windows(self.tokens, np.asarray(picked) * self.seq_len, self.seq_len)


def eval_batches(
    tokens: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    max_batches: int,
    vocab_size: int | None = None,
) -> list[Batch]:
    """The first `max_batches` batches of consecutive windows (no shuffle), fixed for a run.

    A last batch with fewer windows than `batch_size` is dropped unless it would be the only one.
    With `vocab_size`, every id must lie in [0, vocab_size) (ValueError naming the first that
    does not).
    """
    tokens = np.asarray(tokens)
    n = _num_windows(tokens, seq_len, "tokens", vocab_size)
    starts = np.arange(n) * seq_len
    batches = [starts[i : i + batch_size] for i in range(0, n, batch_size)]
    full = [s for s in batches if len(s) == batch_size] or batches[:1]
    return [_windows(tokens, s, seq_len) for s in full[:max_batches]]
