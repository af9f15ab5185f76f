"""A run killed with SIGKILL mid-training and restarted logs exactly the losses of an
uninterrupted run (real processes, `experiments/main.py`)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nestlearn.train import read_metrics

ROOT = Path(__file__).resolve().parents[2]
STEPS = 14


def _launch(workdir):
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "main.py"),
        f"--config={ROOT / 'tests' / 'train' / 'tiny_config.py'}:hope_attention",
        f"--workdir={workdir}",
        f"--config.train.num_steps={STEPS}",
        "--config.train.checkpoint_every=4",
        "--config.train.eval_every=7",
        "--config.sample.num_samples=0",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _losses(workdir):
    return {
        r["step"]: r["loss"]
        for r in read_metrics(workdir / "metrics.jsonl")
        if r["kind"] == "train"
    }


def _finish(proc, timeout=300):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_reproduces_the_uninterrupted_losses(tmp_path):
    reference, victim = tmp_path / "reference", tmp_path / "victim"
    ref_proc = _launch(reference)  # both run at once to halve the wall time
    proc = _launch(victim)
    deadline = time.monotonic() + 300
    while max(_losses(victim), default=0) < 10:  # past the checkpoint at step 8
        assert proc.poll() is None, f"run ended before the kill: {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, "the run did not reach step 10 in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(victim))
    assert killed_at < STEPS and not (victim / "report.md").exists()
    assert [r for r in read_metrics(victim / "metrics.jsonl") if r["kind"] == "final"] == []

    _finish(_launch(victim))
    _finish(ref_proc)
    want, got = _losses(reference), _losses(victim)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert got == want  # bit-for-bit: same data order, params, optimizer and level states
    kinds = [(r["step"], r["kind"]) for r in read_metrics(victim / "metrics.jsonl")]
    assert kinds == [(r["step"], r["kind"]) for r in read_metrics(reference / "metrics.jsonl")]
    assert (victim / "report.md").exists()
