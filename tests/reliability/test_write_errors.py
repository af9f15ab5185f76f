"""A failed write (a full disk, an I/O error) stops the run at once, naming the file or workdir
and the cause, and leaves the committed checkpoints and the metrics file whole."""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess

import jax.numpy as jnp
import pytest
from helpers import TINY_CONFIG, run_main

from nestlearn.train import Checkpointer, MetricWriter, WriteError, read_metrics


class _FullDisk:
    """A file object whose writes fail like a full disk."""

    def write(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    flush = close = write


def test_a_failed_metric_write_raises_at_once_naming_the_file(tmp_path):
    writer = MetricWriter(tmp_path, resume_step=None)
    writer.write(1, "train", {"loss": 1.0})
    writer._file = _FullDisk()
    with pytest.raises(WriteError, match=r"metrics\.jsonl failed \(No space left on device\)"):
        writer.write(2, "train", {"loss": 0.5})
    writer.close()  # after a failed write, closing reports nothing more (and does not hang)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_a_failed_tensorboard_write_raises_instead_of_blocking(tmp_path):
    writer = MetricWriter(tmp_path, resume_step=None)
    writer._tb._writer = _FullDisk()
    with pytest.raises(WriteError, match=r"tensorboard/events\.out\.tfevents.*\(No space left"):
        for step in range(100):  # a queue of 10 would have blocked by now
            writer.write(step, "train", {"loss": 1.0})
    writer.close()


def test_the_resume_cut_replaces_metrics_atomically_and_only_when_needed(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "kind": "train"}) + "\n" for s in (1, 2, 3)))
    inode = os.stat(path).st_ino
    MetricWriter(tmp_path, resume_step=3, tensorboard=False).close()
    assert os.stat(path).st_ino == inode  # nothing to drop: the file is not rewritten

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(path), "write_text", full)
    with pytest.raises(WriteError, match="No space left"):
        MetricWriter(tmp_path, resume_step=1, tensorboard=False)
    monkeypatch.undo()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]  # the old file is whole


def _trees():
    return {"params": {"w": jnp.ones(3)}, "model_state": {}, "train": {"step": jnp.zeros(())}}


def _save(ckpt, step):
    ckpt.save(step, trees=_trees(), data={}, config={})


def test_a_failed_checkpoint_save_names_directory_step_cause_and_the_intact_one(tmp_path):
    ckpt = Checkpointer(tmp_path, level_names=(), max_to_keep=3)
    _save(ckpt, 1)
    ckpt.wait()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt._manager.save = full
    with pytest.raises(WriteError) as info:
        _save(ckpt, 2)
    message = str(info.value)
    assert str(tmp_path) in message and "step 2" in message and "No space left" in message
    assert "committed checkpoint (step 1) is intact" in message
    ckpt.close()  # reports nothing more
    assert Checkpointer(tmp_path, level_names=(), max_to_keep=3).all_steps() == [1]


def test_a_background_save_error_surfaces_at_the_next_check(tmp_path):
    ckpt = Checkpointer(tmp_path, level_names=(), max_to_keep=3)
    _save(ckpt, 4)
    ckpt.wait()

    def failed():
        raise ValueError("OUT_OF_RANGE: Failed writing: File too large [os_error_code='27']")

    ckpt._manager.check_for_errors = failed
    with pytest.raises(WriteError, match=r"checkpoint step 4 .* File too large"):
        ckpt.check()
    ckpt.close()


def _limit_file_size():
    """In the child: writes past 20 kB fail with EFBIG (a checkpoint's data file is larger)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))


def _losses(workdir):
    return [
        (r["step"], r["kind"], r.get("loss"), r.get("val_loss"))
        for r in read_metrics(workdir / "metrics.jsonl")
    ]


def _tmpfs(path, size):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


_ARGS = (
    f"--config={TINY_CONFIG}:hope_attention",
    "--config.train.num_steps=9",
    "--config.sample.num_samples=0",
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The metrics of an uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    done = run_main(*_ARGS, f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-2000:]
    return _losses(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["file_size_limit", "full_tmpfs"])
def test_a_write_error_in_training_exits_nonzero_then_a_rerun_resumes_exactly(
    tmp_path, reference, fault
):
    args = _ARGS
    if fault == "full_tmpfs":
        disk = tmp_path / "disk"
        # One checkpoint of the tiny run takes ~530 kB: the second one does not fit.
        if os.geteuid() != 0 or not _tmpfs(disk, "700k"):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        workdir, preexec = disk / "run", None
    else:
        workdir, preexec = tmp_path / "run", _limit_file_size
    try:
        failed = run_main(*args, f"--workdir={workdir}", timeout=120, preexec_fn=preexec)
        assert failed.returncode != 0
        # One line names workdir and cause (orbax's threads may log after it on the way out).
        stop = [
            line
            for line in failed.stderr.splitlines()
            if line.startswith(f"--mode=train --workdir={workdir}: WriteError")
        ]
        assert len(stop) == 1, failed.stderr[-3000:]
        assert "No space left on device" in stop[0] or "File too large" in stop[0], stop[0]
        committed = Checkpointer(workdir / "checkpoints", level_names=(), max_to_keep=9)
        steps = committed.all_steps()
        committed.close()
        assert steps == ([3] if fault == "full_tmpfs" else [])
        if fault == "full_tmpfs":
            subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        rerun = run_main(*args, f"--workdir={workdir}")
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert _losses(workdir) == reference
    finally:
        if fault == "full_tmpfs":
            subprocess.run(["umount", str(disk)], check=False)
        shutil.rmtree(workdir, ignore_errors=True)
