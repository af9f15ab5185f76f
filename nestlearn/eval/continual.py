"""Continual-learning metrics from an accuracy (or loss) matrix; pure numpy.

A run over T tasks (or domains) trained one after the other gives the matrix

    A[i, j] = score on task j after training on tasks 0..i,     A ∈ R^{T×T}.

Only the lower triangle (j ≤ i) is used: entries above the diagonal (tasks not yet seen) may be
anything, NaN included. With `higher_is_better=True` A holds accuracies; with False it holds
losses (or perplexities), and "forgetting" is then the rise of the loss. Definitions (T ≥ 1):

- final average accuracy (Chaudhry et al. 2018, "ACC"):  ā = (1/T) Σ_j A[T−1, j]
- average incremental accuracy (Rebuffi et al. 2017): (1/T) Σ_i (1/(i+1)) Σ_{j≤i} A[i, j]
- just-learned accuracy: A[i, i] for each i — how well the model has learned the task it was
  just trained on; a forgetting figure means nothing unless this is well above chance
- forgetting of task j < T−1 (Chaudhry et al. 2018): f_j = max_{i<T−1} A[i, j] − A[T−1, j]
  (losses: f_j = A[T−1, j] − min_{i<T−1} A[i, j]); the average forgetting F is the mean of f_j
- backward transfer (Lopez-Paz & Ranzato 2017): BWT = (1/(T−1)) Σ_{j<T−1} (A[T−1, j] − A[j, j])

F and BWT are 0 for T = 1 (nothing could be forgotten).

Where the forgetting lives (`locate_forgetting`, from `nestlearn.train.continual.train_tasks`'s
`reset_score` R[i, g, j]: task j's score after task i with parameter group g alone put back to
its value before task i): over every pair j < i, the *step forgetting* is the loss of score on
j during task i, A[i−1, j] − A[i, j] (losses: A[i, j] − A[i−1, j]), and group g *recovers*
R[i, g, j] − A[i, j] of it (losses: A[i, j] − R[i, g, j]). A group that recovers most of the
step forgetting holds what task i overwrote; one that recovers nothing did not cause it (a reset
can also hurt: the other groups adapted to the group's new values).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ContinualMetrics",
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "check_matrix",
    "forgetting",
    "just_learned",
    "locate_forgetting",
    "summarize",
]


class ContinualMetrics(NamedTuple):
    """The summary of one accuracy (or loss) matrix."""

    average: float  # ā, the mean of the last row
    incremental: float  # mean over i of the mean of row i's seen tasks
    forgetting: float  # F, mean of f_j over j < T−1 (0 for T = 1)
    backward_transfer: float  # BWT (0 for T = 1)
    just_learned: tuple[float, ...]  # A[i, i] for i in 0..T−1
    just_learned_mean: float  # mean of the diagonal


def check_matrix(matrix, *, name: str = "matrix") -> np.ndarray:
    """Returns `matrix` as a float64 [T, T] array.

    Raises:
      ValueError: naming `name` when the matrix is not square 2-D with T ≥ 1 or its lower
        triangle (diagonal included) is not finite.
    """
    a = np.asarray(matrix, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 1:
        raise ValueError(f"{name} must be a square [T, T] matrix with T >= 1, got shape {a.shape}")
    lower = a[np.tril_indices(a.shape[0])]
    if not np.all(np.isfinite(lower)):
        bad = [tuple(int(k) for k in ij) for ij in zip(*np.tril_indices(a.shape[0]))]
        bad = [ij for ij, v in zip(bad, lower) if not np.isfinite(v)]
        raise ValueError(f"{name} has non-finite entries on or below the diagonal at {bad}")
    return a


def average_accuracy(matrix) -> float:
    """ā = (1/T) Σ_j A[T−1, j]: the mean score over all tasks after the last one."""
    a = check_matrix(matrix)
    return float(a[-1].mean())


def average_incremental_accuracy(matrix) -> float:
    """(1/T) Σ_i mean_{j≤i} A[i, j]: the mean over time of the score on the tasks seen so far."""
    a = check_matrix(matrix)
    return float(np.mean([a[i, : i + 1].mean() for i in range(a.shape[0])]))


def just_learned(matrix) -> np.ndarray:
    """A[i, i] for every i: the score on each task right after training on it, [T]."""
    return np.diag(check_matrix(matrix)).copy()


def forgetting(matrix, *, higher_is_better: bool = True) -> np.ndarray:
    """f_j for j < T−1: the best earlier score on task j minus its final score, [T−1].

    With `higher_is_better=False` (losses) f_j = A[T−1, j] − min_{i<T−1} A[i, j]; in both cases a
    positive f_j means the model got worse on task j.
    """
    a = check_matrix(matrix)
    t = a.shape[0]
    out = np.empty(t - 1)
    for j in range(t - 1):
        earlier = a[j : t - 1, j]
        out[j] = earlier.max() - a[-1, j] if higher_is_better else a[-1, j] - earlier.min()
    return out


def backward_transfer(matrix) -> float:
    """BWT = (1/(T−1)) Σ_{j<T−1} (A[T−1, j] − A[j, j]); 0 for T = 1."""
    a = check_matrix(matrix)
    t = a.shape[0]
    if t == 1:
        return 0.0
    return float(np.mean(a[-1, : t - 1] - np.diag(a)[: t - 1]))


def summarize(matrix, *, higher_is_better: bool = True) -> ContinualMetrics:
    """All the metrics of the module docstring for one matrix."""
    a = check_matrix(matrix)
    f = forgetting(a, higher_is_better=higher_is_better)
    diag = just_learned(a)
    return ContinualMetrics(
        average=average_accuracy(a),
        incremental=average_incremental_accuracy(a),
        forgetting=float(f.mean()) if f.size else 0.0,
        backward_transfer=backward_transfer(a),
        just_learned=tuple(float(x) for x in diag),
        just_learned_mean=float(diag.mean()),
    )


def locate_forgetting(matrix, reset, *, higher_is_better: bool = True) -> tuple[float, np.ndarray]:
    """The mean step forgetting and, per group, the mean score its reset recovers.

    Args:
      matrix: A [T, T] (T ≥ 2).
      reset: R [T, G, T], R[i, g, j] for j < i (other entries are ignored).
      higher_is_better: as in `summarize`.

    Returns:
      (mean over j < i of the step forgetting, [G] mean over j < i of what each group's reset
      recovers), in the module docstring's sign convention: positive is forgetting / recovery.

    Raises:
      ValueError: naming the shapes when they do not fit, or T < 2.
    """
    a = check_matrix(matrix)
    r = np.asarray(reset, dtype=np.float64)
    t = a.shape[0]
    if t < 2 or r.ndim != 3 or r.shape[0] != t or r.shape[2] != t:
        raise ValueError(
            f"locate_forgetting: need matrix [T, T], T >= 2, reset [T, G, T]; got "
            f"{a.shape} and {r.shape}"
        )
    sign = 1.0 if higher_is_better else -1.0
    pairs = [(i, j) for i in range(1, t) for j in range(i)]
    step = np.mean([sign * (a[i - 1, j] - a[i, j]) for i, j in pairs])
    recovered = np.mean([sign * (r[i, :, j] - a[i, j]) for i, j in pairs], axis=0)
    return float(step), recovered
