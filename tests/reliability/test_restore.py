"""Restore tells a checkpoint that does not fit the model (an error naming the arrays, nothing
moved) and a storage error (retried, then an error, nothing moved) from a corrupt checkpoint
(moved aside without deleting an older copy); a run never starts over silently."""

import errno
import os
import shutil
import types
import warnings

import jax.numpy as jnp
import ml_collections
import pytest

from nestlearn.train import (
    CheckpointCorruptError,
    Checkpointer,
    CheckpointMismatchError,
    CheckpointReadError,
    trainer,
)


def _trees(scale=1.0, **params):
    p = {"w": jnp.ones((2, 3)) * scale, "b": jnp.ones(3) * scale, **params}
    return {"params": p, "model_state": {}, "train": {"step": jnp.asarray(1, jnp.int32)}}


def _checkpointer(path):
    ckpt = Checkpointer(path, level_names=(), max_to_keep=5)
    ckpt.retry_delay_s = 0.0
    return ckpt


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    ckpt = _checkpointer(path)
    for step in (3, 6):
        ckpt.save(step, trees=_trees(step), data={"position": step}, config={})
    ckpt.close()
    return path


@pytest.fixture
def workdir(saved, tmp_path):
    shutil.copytree(saved, tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.mark.parametrize(
    ("target", "named"),
    [
        (_trees(w=jnp.ones((3, 3))), r"params/w: checkpoint float32\[2, 3\], model .*\[3, 3\]"),
        (_trees(b=jnp.ones(3, jnp.int32)), r"params/b: checkpoint float32\[3\], model int32\[3\]"),
        (_trees(extra=jnp.ones(2)), r"params: 2 arrays vs 3 \(model-only \['extra'\]"),
    ],
    ids=["shape", "dtype", "extra_array"],
)
def test_a_checkpoint_of_another_model_is_named_and_left_in_place(workdir, target, named):
    ckpt = _checkpointer(workdir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointMismatchError, match=named):
            ckpt.restore(target)
    ckpt.close()
    assert sorted(os.listdir(workdir)) == ["3", "6"]  # nothing moved aside


def _failing_reads(ckpt, failures):
    """The first `failures` reads of the checkpointer's manager fail like a flaky disk."""
    real, calls = ckpt._manager.restore, []

    def restore(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise OSError(errno.EIO, "Input/output error")
        return real(*args, **kwargs)

    ckpt._manager.restore = restore


def test_a_transient_read_error_is_retried(workdir):
    ckpt = _checkpointer(workdir)
    _failing_reads(ckpt, failures=1)
    with pytest.warns(UserWarning, match=r"step 6 .*Input/output error\); retrying"):
        got = ckpt.restore(_trees())
    ckpt.close()
    assert got.step == 6 and float(got.trees["params"]["w"][0, 0]) == 6.0


def test_a_persistent_read_error_fails_loudly_and_moves_nothing(workdir):
    ckpt = _checkpointer(workdir)
    _failing_reads(ckpt, failures=10**6)
    with pytest.warns(UserWarning, match="retrying"):
        with pytest.raises(CheckpointReadError, match=r"step 6 .* failed 3 times .*Input/output"):
            ckpt.restore(_trees())
    ckpt.close()
    assert sorted(os.listdir(workdir)) == ["3", "6"]


def _damage(step_dir):
    data = max((step_dir / "params" / "d").iterdir(), key=os.path.getsize)
    os.truncate(data, os.path.getsize(data) // 2)


def test_a_corrupt_copy_moved_aside_never_replaces_an_older_one(workdir, saved):
    for copy in ("6", "6.1"):
        _damage(workdir / "6")
        ckpt = _checkpointer(workdir)
        with pytest.warns(UserWarning, match=rf"step 6 .* moved it to .*corrupt/{copy}\b"):
            assert ckpt.restore(_trees()).step == 3
        ckpt.close()
        shutil.copytree(saved / "6", workdir / "6")  # the same step, written again
    assert sorted(os.listdir(workdir / "corrupt")) == ["6", "6.1"]


def test_a_run_with_only_corrupt_checkpoints_does_not_start_over(workdir, monkeypatch):
    for step in ("3", "6"):
        _damage(workdir / step)
    run = types.SimpleNamespace(
        checkpointer=_checkpointer(workdir),
        config=ml_collections.ConfigDict({"train": {"num_steps": 9}}),
        state=None,
        rest=None,
    )
    monkeypatch.setattr(trainer, "checkpoint_trees", lambda state, rest: _trees())
    try:
        with pytest.warns(UserWarning, match="corrupted"):
            with pytest.raises(CheckpointCorruptError, match=r"no usable checkpoint.*\['3', '6'\]"):
                trainer.restore(run)
        with pytest.raises(CheckpointCorruptError, match=r"delete .*corrupt"):  # nor on a rerun
            trainer.restore(run)
    finally:
        run.checkpointer.close()
