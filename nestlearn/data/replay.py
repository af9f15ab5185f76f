"""A class-balanced replay buffer: indices of stored training examples, drawn into new batches.

The rehearsal baseline of continual learning (`experiments/continual_fmnist.py`): after each
task, `per_class` training examples of each of its classes join the buffer (without replacement);
while later tasks train, every batch is paired with a batch drawn uniformly from the buffer.
Host-side numpy: the buffer holds indices into the training arrays, not the examples.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["replay_add", "replay_sample"]


def replay_add(
    buffer: np.ndarray,
    labels: np.ndarray,
    classes: Iterable[int],
    per_class: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The buffer [m] int64 with up to `per_class` new indices of each class appended.

    Args:
      buffer: indices already stored (int64; `np.zeros(0, np.int64)` when empty).
      labels: the training labels [n] the indices point into.
      classes: the classes to store (a finished task's).
      per_class: examples per class (fewer when a class has fewer).
      rng: the draw's generator.
    """
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    for c in classes:
        of_c = np.flatnonzero(labels == c)
        take = min(per_class, of_c.size)
        buffer = np.concatenate([buffer, rng.choice(of_c, size=take, replace=False)])
    return buffer


def replay_sample(buffer: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator):
    """Indices of `shape` drawn uniformly (with replacement) from a non-empty buffer."""
    if buffer.size == 0:
        raise ValueError("replay_sample: the buffer is empty")
    return rng.choice(buffer, size=shape)
