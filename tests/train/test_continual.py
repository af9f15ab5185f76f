"""`nestlearn.train.continual`: the task loop, per-level movement, updates and resets."""

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nestlearn.core import Level
from nestlearn.optim import level_stats, nested
from nestlearn.train.continual import Task, level_movement, reset_level, train_tasks


class State(NamedTuple):
    params: dict
    opt_state: object


def _problem(lr_a: float, period_b: int = 2):
    """Linear regression y = x·(a + b) on two tasks with different true weights."""
    levels = (
        Level("a", r"^a$", optax.sgd(lr_a)),
        Level("b", None, optax.sgd(0.1), period=period_b),
    )
    tx = nested(levels)
    params = {"a": jnp.zeros(3), "b": jnp.full(3, 0.5)}
    truths = [jnp.array([1.0, -2.0, 0.5]), jnp.array([-1.0, 0.0, 2.0])]
    xs = jax.random.normal(jax.random.PRNGKey(0), (16, 3))

    def loss_fn(p, x, y):
        return jnp.mean((x @ (p["a"] + p["b"]) - y) ** 2)

    @jax.jit
    def step(state, x, y):
        value, grads = jax.value_and_grad(loss_fn)(state.params, x, y)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": value}
        for name, applied in level_stats(opt_state).items():
            metrics[f"level/{name}/updates"] = applied
        return State(optax.apply_updates(state.params, updates), opt_state), metrics

    def evaluate(p, j):
        return float(loss_fn(p, xs, xs @ truths[j]))

    def tasks(steps):
        return [Task(f"t{j}", itertools.repeat((xs, xs @ w)), steps) for j, w in enumerate(truths)]

    return levels, State(params, tx.init(params)), step, evaluate, tasks


def test_records_updates_movement_and_losses():
    levels, state, step, evaluate, tasks = _problem(lr_a=0.05, period_b=2)
    before = jax.device_get(state.params)
    _, rec = train_tasks(step, state, tasks(7), evaluate, levels)
    assert rec.tasks == ("t0", "t1") and rec.levels == ("a", "b")
    # period 2 over 7 + 7 steps: updates on steps 2, 4, 6 then 8, 10, 12, 14
    np.testing.assert_array_equal(rec.updates, [[7, 3], [7, 4]])
    assert len(rec.train_curve) == 14 and rec.skipped == 0
    # each task learned: its own loss fell below the starting loss, the other's rose after t1
    start = [evaluate(before, j) for j in range(2)]
    assert rec.score[0, 0] < 0.5 * start[0]
    assert rec.score[1, 1] < 0.5 * start[1]
    assert rec.score[1, 0] > rec.score[0, 0]
    assert np.isnan(rec.reset_score[0]).all()  # nothing earlier to forget after the first task


def test_reset_of_the_only_moving_level_restores_the_old_loss():
    # level a never moves (lr 0): resetting it changes nothing; resetting b undoes task 1
    levels, state, step, evaluate, tasks = _problem(lr_a=0.0, period_b=1)
    _, rec = train_tasks(step, state, tasks(5), evaluate, levels)
    assert rec.movement[0, 0] == 0.0 and rec.movement[1, 0] == 0.0
    assert rec.movement[1, 1] > 0
    np.testing.assert_allclose(rec.reset_score[1, 0, 0], rec.score[1, 0], rtol=1e-6)
    np.testing.assert_allclose(rec.reset_score[1, 1, 0], rec.score[0, 0], rtol=1e-6)
    assert not math.isclose(rec.score[1, 0], rec.score[0, 0], rel_tol=1e-3)


def test_locate_off_and_json():
    levels, state, step, evaluate, tasks = _problem(lr_a=0.05)
    _, rec = train_tasks(step, state, tasks(2), evaluate, levels, locate=False)
    assert np.isnan(rec.reset_score).all()
    out = rec.to_json()
    assert out["updates"] == [[2, 1], [2, 1]] and len(out["score"]) == 2


def test_level_movement_by_hand():
    before = {"a": np.array([3.0, 4.0]), "b": np.zeros(2)}
    after = {"a": np.array([3.0, 0.0]), "b": np.array([1.0, 0.0])}
    owners = ["a", "b"]
    # a: |(0, -4)| / |(3, 4)| = 0.8; b starts at zero: the absolute distance 1
    np.testing.assert_allclose(level_movement(before, after, owners, ["a", "b"]), [0.8, 1.0])
    mixed = reset_level(after, before, owners, "a")
    np.testing.assert_array_equal(mixed["a"], before["a"])
    np.testing.assert_array_equal(mixed["b"], after["b"])


@pytest.mark.parametrize(
    "tasks, match",
    [
        ([], "no tasks"),
        ([Task("x", iter(()), 1), Task("x", iter(()), 1)], "duplicate task names"),
        ([Task("x", iter(()), 0)], "task 'x' has steps=0"),
    ],
)
def test_bad_tasks_are_named(tasks, match):
    levels, state, step, evaluate, _ = _problem(lr_a=0.05)
    with pytest.raises(ValueError, match=match):
        train_tasks(step, state, tasks, evaluate, levels)


def test_groups_other_than_the_levels():
    # one group over everything: its movement is that of the whole vector; updates stay per level
    levels, state, step, evaluate, tasks = _problem(lr_a=0.05)
    everything = (Level("all", None, optax.identity()),)
    _, rec = train_tasks(step, state, tasks(3), evaluate, levels, groups=everything)
    assert rec.groups == ("all",) and rec.levels == ("a", "b")
    assert rec.movement.shape == (2, 1) and rec.reset_score.shape == (2, 1, 2)
    np.testing.assert_allclose(rec.reset_score[1, 0, 0], rec.score[0, 0], rtol=1e-6)
    np.testing.assert_array_equal(rec.updates, [[3, 1], [3, 2]])


def test_updates_unknown_without_the_level_metrics():
    levels, state, step, evaluate, tasks = _problem(lr_a=0.05)

    def bare(s, *batch):
        s, metrics = step(s, *batch)
        return s, {"loss": metrics["loss"]}

    _, rec = train_tasks(bare, state, tasks(2), evaluate, levels)
    assert np.isnan(rec.updates).all()
    assert rec.to_json()["updates"] == [[None, None], [None, None]]


def test_after_task_sees_each_task_in_order():
    levels, state, step, evaluate, tasks = _problem(lr_a=0.05)
    seen = []

    def after(i, s):
        seen.append((i, float(s.params["a"][0])))
        return s._replace(params={**s.params, "a": s.params["a"] * 0})

    _, rec = train_tasks(step, state, tasks(2), evaluate, levels, after_task=after)
    assert [i for i, _ in seen] == [0, 1] and seen[0][1] != 0.0
    # the hook's state is the one trained next: a restarts from zero on the second task
    assert rec.movement[1, 0] > 0 and seen[1][1] != seen[0][1]
