"""The errors that stop a run because of its files: a failed write, or a checkpoint that cannot
be restored. Each message names the workdir (or file) and the cause."""

from __future__ import annotations

__all__ = ["CheckpointCorruptError", "CheckpointMismatchError", "CheckpointReadError", "WriteError"]


class WriteError(RuntimeError):
    """Writing a checkpoint or a metric record failed (a full disk, an I/O error).

    The run stops at once; the checkpoints committed before the failure stay intact, so a rerun
    after the cause is fixed resumes from the newest of them.
    """


class CheckpointMismatchError(ValueError):
    """A checkpoint whose arrays (paths, shapes or dtypes) do not fit the model being restored.

    Nothing is moved or truncated: the checkpoint belongs to another model or config.
    """


class CheckpointReadError(RuntimeError):
    """Reading a checkpoint failed with an I/O error on every retry; nothing was moved."""


class CheckpointCorruptError(RuntimeError):
    """No usable checkpoint is left: every one failed its integrity check (moved to `corrupt/`).

    Raised instead of silently starting the run over, which would discard its metrics.
    """
