"""Training over a sequence of tasks, with forgetting located by level.

`train_tasks` trains one state through tasks in order, the optimizer state carried across
(continual learning: no task boundary reaches the levels). After task i it records

- `score[i, j]`: the evaluation of task j (a loss or an accuracy, whatever `evaluate` returns;
  `nestlearn.eval.continual` summarises this matrix);
- `updates[i, ℓ]`: how many updates training level ℓ applied during task i (a level of period
  k gets about steps/k; a level that is never updated can neither learn nor forget);
- for each parameter group g (by default the training levels; any partition of the parameters
  given as `Level`s, e.g. embeddings / mixer / each CMS level):
  `movement[i, g]`: how far the group moved during task i, relative to where it started it,
  ‖θ_g(after i) − θ_g(before i)‖₂ / ‖θ_g(before i)‖₂ over all of its leaves; and
  `reset_score[i, g, j]` for every earlier task j < i: the score on task j when group g alone
  is put back to its value before task i, every other group kept. Close to `score[i-1, j]`: the
  forgetting of task j during task i lives in g; close to `score[i, j]`: g did not cause it.
  Entries with j ≥ i are NaN.

The loop is generic: a step function, the batches of each task and an evaluation function, so
the same record is produced for a language model (`build_train_step`) and for a small
classifier. The groups only partition the parameters here (`nestlearn.core.assign_levels`);
the rules live in the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from nestlearn.core import Level, assign_levels

__all__ = [
    "Task",
    "TaskRecord",
    "level_movement",
    "reset_level",
    "train_tasks",
]


class Task(NamedTuple):
    """One task of a sequence: its name, an iterator of batches (tuples of arrays) and steps."""

    name: str
    batches: Iterator[tuple[Any, ...]]
    steps: int


class TaskRecord(NamedTuple):
    """What `train_tasks` measured; shapes in the comments (T tasks, L levels)."""

    tasks: tuple[str, ...]
    levels: tuple[str, ...]  # the training levels
    groups: tuple[str, ...]  # the measured parameter groups
    score: np.ndarray  # [T, T] score on task j after task i
    updates: np.ndarray  # [T, L] updates each training level applied during task i (NaN: unknown)
    movement: np.ndarray  # [T, G] relative movement of each group during task i
    reset_score: np.ndarray  # [T, G, T] score on task j < i, group g reset to before task i
    train_curve: tuple[float, ...]  # training loss at every step, tasks concatenated
    skipped: int  # non-finite steps skipped by the step's guard
    train_seconds: float  # time in training steps (evaluation excluded)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready lists (NaN kept as NaN; `json.dumps` writes it as NaN)."""
        return {
            "tasks": list(self.tasks),
            "levels": list(self.levels),
            "groups": list(self.groups),
            "score": self.score.tolist(),
            "updates": [[int(u) if np.isfinite(u) else None for u in row] for row in self.updates],
            "movement": self.movement.tolist(),
            "reset_score": self.reset_score.tolist(),
            "train_curve": list(self.train_curve),
            "skipped": self.skipped,
            "train_seconds": self.train_seconds,
        }


def level_movement(before: Any, after: Any, owners: Sequence[str], names: Sequence[str]):
    """‖θ_ℓ(after) − θ_ℓ(before)‖₂ / ‖θ_ℓ(before)‖₂ for each level name, over its leaves.

    Args:
      before, after: two parameter pytrees of one structure.
      owners: the owning level of every leaf (`assign_levels`), in leaf order.
      names: the levels to measure, in the order of the result.

    Returns:
      float64 array [len(names)]; a level whose leaves all start at zero gets the absolute
      distance instead (nothing to be relative to).
    """
    b = [np.asarray(x, np.float64) for x in jax.tree.leaves(before)]
    a = [np.asarray(x, np.float64) for x in jax.tree.leaves(after)]
    if len(a) != len(b) or len(b) != len(owners):
        raise ValueError(
            f"level_movement: {len(b)} leaves before, {len(a)} after, {len(owners)} owners"
        )
    out = np.zeros(len(names))
    for k, name in enumerate(names):
        diff = sum(float(np.sum((x - y) ** 2)) for x, y, o in zip(a, b, owners) if o == name)
        base = sum(float(np.sum(y**2)) for y, o in zip(b, owners) if o == name)
        out[k] = np.sqrt(diff / base) if base > 0 else np.sqrt(diff)
    return out


def reset_level(params: Any, before: Any, owners: Sequence[str], name: str) -> Any:
    """`params` with the leaves of level `name` replaced by those of `before`."""
    leaves, treedef = jax.tree.flatten(params)
    old = jax.tree.leaves(before)
    mixed = [o if owner == name else p for p, o, owner in zip(leaves, old, owners)]
    return jax.tree.unflatten(treedef, mixed)


def _updates(metrics: dict[str, Any], names: Sequence[str]) -> np.ndarray:
    keys = [f"level/{n}/updates" for n in names]
    if not all(k in metrics for k in keys):
        return np.full(len(names), np.nan)
    return np.array([int(metrics[k]) for k in keys], np.float64)


def train_tasks(
    train_step: Callable[..., tuple[Any, dict[str, Any]]],
    state: Any,
    tasks: Sequence[Task],
    evaluate: Callable[[Any, int], float],
    levels: Sequence[Level],
    *,
    groups: Sequence[Level] | None = None,
    locate: bool = True,
    after_task: Callable[[int, Any], Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Any, TaskRecord]:
    """Trains `state` on `tasks` in order and records the module docstring's measurements.

    Args:
      train_step: `train_step(state, *batch) -> (state, metrics)`; may donate `state`. The
        metrics need `loss`; `level/<name>/updates` (as `build_train_step` reports them) gives
        the update counts (NaN without them).
      state: has `params` (the pytree the groups partition) and may have `skipped`.
      tasks: the tasks, in training order.
      evaluate: `evaluate(params, j) -> score on task j` (a float: a loss, an accuracy).
      levels: the levels of the step (their names, for the update counts).
      groups: the parameter groups to measure (only their selectors are used); default
        `levels`.
      locate: measure `reset_score` (G × i evaluations after task i); off: NaN.
      after_task: `after_task(i, state) -> state`, called after task i is measured (e.g. to
        anchor a penalty or fill a replay buffer).
      log: called with one progress line after each task.

    Returns:
      The final state and the `TaskRecord`.

    Raises:
      ValueError: no tasks, a task with steps < 1, or duplicate task names.
    """
    if not tasks:
        raise ValueError("train_tasks: no tasks")
    names_t = [t.name for t in tasks]
    if len(set(names_t)) != len(names_t):
        raise ValueError(f"train_tasks: duplicate task names {names_t}")
    for t in tasks:
        if int(t.steps) < 1:
            raise ValueError(f"train_tasks: task {t.name!r} has steps={t.steps}; need >= 1")
    groups = tuple(levels if groups is None else groups)
    owners = assign_levels(groups, state.params)
    names_l = [lv.name for lv in levels]
    names_g = [g.name for g in groups]
    n_t = len(tasks)
    score = np.full((n_t, n_t), np.nan)
    updates = np.zeros((n_t, len(names_l)))
    movement = np.zeros((n_t, len(names_g)))
    reset_score = np.full((n_t, len(names_g), n_t), np.nan)
    curve: list[float] = []
    counted = np.zeros(len(names_l))
    train_seconds = 0.0
    for i, task in enumerate(tasks):
        before = jax.device_get(state.params)  # a host copy: the step may donate the state
        start = time.perf_counter()
        metrics: dict[str, Any] = {}
        for _ in range(int(task.steps)):
            state, metrics = train_step(state, *next(task.batches))
            curve.append(float(metrics["loss"]))
        jax.block_until_ready(state.params)
        train_seconds += time.perf_counter() - start
        total = _updates(metrics, names_l)
        updates[i] = total - counted
        counted = total
        movement[i] = level_movement(before, state.params, owners, names_g)
        for j in range(n_t):
            score[i, j] = float(evaluate(state.params, j))
        if locate:
            for k, name in enumerate(names_g):
                reset = reset_level(state.params, before, owners, name)
                for j in range(i):
                    reset_score[i, k, j] = float(evaluate(reset, j))
        if log is not None:
            log(
                f"after {task.name}: "
                + ", ".join(f"{n} {score[i, j]:.3f}" for j, n in enumerate(names_t))
                + " | moved "
                + ", ".join(f"{n} {m:.3g}" for n, m in zip(names_g, movement[i]))
            )
        if after_task is not None:
            state = after_task(i, state)
    record = TaskRecord(
        tasks=tuple(names_t),
        levels=tuple(names_l),
        groups=tuple(names_g),
        score=score,
        updates=updates,
        movement=movement,
        reset_score=reset_score,
        train_curve=tuple(curve),
        skipped=int(getattr(state, "skipped", 0)),
        train_seconds=train_seconds,
    )
    return state, record
