"""nestlearn.train: config validation, levels, train/eval steps, checkpoints, metrics and the loop.

`train_and_evaluate(config, workdir)` runs one experiment end to end; `evaluate_workdir` evaluates
and samples from the newest checkpoint of an existing run, `probe_workdir` runs its in-context
memory probe (`nestlearn.eval.probe`); `train_tasks` trains over a sequence of tasks and
locates the forgetting by parameter group.
"""

from nestlearn.train.checkpoint import Checkpointer, Restored
from nestlearn.train.config import base_config, validate_config
from nestlearn.train.continual import Task, TaskRecord, train_tasks
from nestlearn.train.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointReadError,
    WriteError,
)
from nestlearn.train.levels import (
    LevelSpec,
    available_rules,
    build_levels,
    learning_rate_schedule,
    level_config,
    resolve_levels,
)
from nestlearn.train.metrics import MetricWriter, read_metrics
from nestlearn.train.step import TrainState, build_eval_step, build_train_step, cross_entropy
from nestlearn.train.trainer import (
    NoCheckpointError,
    NonFiniteError,
    Run,
    build_run,
    evaluate_workdir,
    probe_workdir,
    restore_workdir,
    train_and_evaluate,
)

__all__ = [
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointReadError",
    "Checkpointer",
    "LevelSpec",
    "MetricWriter",
    "NoCheckpointError",
    "NonFiniteError",
    "Restored",
    "Run",
    "Task",
    "TaskRecord",
    "TrainState",
    "WriteError",
    "available_rules",
    "base_config",
    "build_eval_step",
    "build_levels",
    "build_run",
    "build_train_step",
    "cross_entropy",
    "evaluate_workdir",
    "learning_rate_schedule",
    "level_config",
    "probe_workdir",
    "read_metrics",
    "resolve_levels",
    "restore_workdir",
    "train_and_evaluate",
    "train_tasks",
    "validate_config",
]
