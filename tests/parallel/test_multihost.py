"""A real two-process run (`jax.distributed`, gloo CPU collectives) equals one process.

Two processes with 4 host CPU devices each start `jax.distributed` from the environment
(coordinator on localhost, a free port) through `nestlearn.parallel.initialize`, train tiny Hope
and Transformer++ models on one (2, 2, 2) mesh spanning both, each process feeding only its own
rows of every batch, and save orbax checkpoints shard by shard. A single process with 8 devices
then trains the same steps on the same mesh, restores the two-process checkpoint onto a
(1, 4, 2) mesh and takes one more step.

Tolerance: losses within 1e-5 and restored parameters within 1e-4 of the one-process run — the
bounds of test_spmd.py, for the same reason: the same computation with a different order of the
float32 gradient all-reduce (across processes, gloo sums the per-process partial sums). The
sharded step is otherwise exact (float64: 2e-15, docs/scaling.md §1.1).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
LOSS_ATOL, PARAM_ATOL = 1e-5, 1e-4
STEPS = 2
MODELS = ("hope", "transformer_pp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    inherited = os.environ.get("XLA_FLAGS", "")
    env.update(
        XLA_FLAGS=f"{inherited} --xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        **extra,
    )
    return env


def _lines(stdout: str, tag: str) -> list[dict]:
    return [
        json.loads(ln[len(tag) + 1 :]) for ln in stdout.splitlines() if ln.startswith(tag + " ")
    ]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_restore_on_one_process(tmp_path):
    script = str(HERE / "multihost_run.py")
    address = f"localhost:{_free_port()}"
    workers = [
        subprocess.Popen(
            [sys.executable, script, "worker", str(STEPS), str(tmp_path), *MODELS],
            env=_env(
                4,
                JAX_COORDINATOR_ADDRESS=address,
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for w in workers:
            out, err = w.communicate(timeout=1200)
            assert w.returncode == 0, err[-4000:]
            outputs.append(_lines(out, "MULTIHOST"))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for i, reports in enumerate(outputs):
        assert [r["model"] for r in reports] == list(MODELS)
        for r in reports:
            assert (r["process"], r["processes"], r["devices"], r["local_devices"]) == (i, 2, 8, 4)
            assert r["rows"] == [4 * i, 4 * i + 4]  # batch 8: each process holds its own half
    for a, b in zip(*outputs):
        assert a["losses"] == b["losses"]  # the replicated loss is one value, seen by both

    proc = subprocess.run(
        [sys.executable, script, "check", str(STEPS), str(tmp_path), *MODELS],
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (check,) = _lines(proc.stdout, "MULTIHOST_CHECK")
    assert (check["devices"], check["processes"]) == (8, 1)
    for multi, one in zip(outputs[0], check["models"], strict=True):
        reference = one["reference_losses"]
        assert len(reference) == STEPS + 1 and len(set(reference)) == STEPS + 1
        for a, b in zip(multi["losses"], reference[:STEPS]):
            assert abs(a - b) <= LOSS_ATOL, (multi["losses"], reference)
        assert one["restored_step"] == STEPS
        assert one["restored_on_target_sharding"]
        assert one["restored_param_max_abs"] <= PARAM_ATOL, one
        assert abs(one["restored_next_loss"] - reference[STEPS]) <= LOSS_ATOL, one
