"""The in-context memory probe: `nestlearn.eval.probe`, `probe_workdir`, the run report and the CLI.

The end-to-end tests share one short run of `experiments/configs/default.py:smoke` (Hope, whose
output memory writes every `chunk_size` tokens); the CLI tests check that `--mode=probe` and
`--mode=eval` on a workdir without a checkpoint fail with a message naming it and create nothing.
"""

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nestlearn import models
from nestlearn.eval import probe
from nestlearn.train import (
    NoCheckpointError,
    build_run,
    evaluate_workdir,
    probe_workdir,
    train_and_evaluate,
)
from nestlearn.train.trainer import on_mesh, probe_run

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"
KEYS = (
    "loss_on",
    "loss_off",
    "positions",
    "loss_by_position_on",
    "loss_by_position_off",
    "late_gap",
    "late_gap_se",
    "has_memory",
)


def _config(name, arg="smoke"):
    path = ROOT / "experiments" / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


# --- compare: the summary ------------------------------------------------------------------


def test_compare_buckets_the_positions_and_measures_the_late_gap():
    rng = np.random.default_rng(0)
    on = rng.uniform(1.0, 3.0, (5, 32))
    off = on + rng.uniform(0.0, 0.2, (5, 32)) * (np.arange(32) >= 10)
    result = probe.compare(on, off, has_memory=True)
    assert result["positions"] == list(range(0, 32, 2))  # 16 buckets of 2 positions
    np.testing.assert_allclose(result["loss_by_position_on"], on.reshape(5, 16, 2).mean((0, 2)))
    np.testing.assert_allclose(result["loss_by_position_off"], off.reshape(5, 16, 2).mean((0, 2)))
    assert result["loss_on"] == pytest.approx(on.mean())
    assert result["loss_off"] == pytest.approx(off.mean())
    per_sequence = (off[:, 16:] - on[:, 16:]).mean(axis=1)  # the late half, positions 16–31
    assert result["late_start"] == 16
    assert result["late_gap"] == pytest.approx(per_sequence.mean())
    assert result["late_gap_se"] == pytest.approx(per_sequence.std(ddof=1) / math.sqrt(5))
    assert result["late_gap"] > 0 and result["num_sequences"] == 5 and result["seq_len"] == 32
    json.dumps(result)  # JSON-able


def test_compare_short_windows_and_one_sequence():
    on = np.arange(10.0)[None]  # n 1, t 10: 10 buckets, no standard error
    result = probe.compare(on, on + 1.0, has_memory=True)
    assert result["positions"] == list(range(10))
    assert result["late_gap"] == pytest.approx(1.0) and result["late_gap_se"] is None


def test_compare_without_memory_reports_equal_losses():
    on = np.random.default_rng(1).uniform(1.0, 3.0, (4, 16))
    result = probe.compare(on, None, has_memory=False)
    assert result["has_memory"] is False
    assert result["loss_off"] == result["loss_on"]
    assert result["loss_by_position_off"] == result["loss_by_position_on"]
    assert result["late_gap"] == 0.0 and result["late_gap_se"] == 0.0
    with pytest.raises(ValueError, match="without in-context memory"):
        probe.compare(on, on, has_memory=False)


def test_compare_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"on \(2, 8\) and off \(2, 9\)"):
        probe.compare(np.zeros((2, 8)), np.zeros((2, 9)), has_memory=True)
    with pytest.raises(ValueError, match=r"\[n, t\]"):
        probe.compare(np.zeros(8), None, has_memory=False)


# --- a model without memory: one evaluation -------------------------------------------------


def test_probe_run_of_a_model_without_memory_evaluates_once(tmp_path):
    from nestlearn.data.iterator import eval_batches

    config = _config("transformer_pp")
    config.train.progress_bar = False
    run = build_run(config, tmp_path)
    run.checkpointer.close()
    assert not models.has_memory(run.config.model)
    batches = [
        on_mesh(b, run.mesh)
        for b in eval_batches(
            run.data.val,
            batch_size=config.data.batch_size,
            seq_len=config.data.seq_len,
            max_batches=1,
        )
    ]
    result = probe_run(run, run.state.params, run.rest, batches, tmp_path)
    assert result["has_memory"] is False and result["model"] == "transformer_pp"
    assert result["loss_on"] == result["loss_off"] and result["late_gap"] == 0.0
    assert math.isfinite(result["loss_on"])
    assert json.loads((tmp_path / "probe.json").read_text())["has_memory"] is False
    assert (tmp_path / "probe.png").read_bytes()[:8] == PNG


# --- a trained Hope smoke run ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke")
    config = _config("default")
    config.train.num_steps = 10
    config.train.eval_every = 10
    config.train.checkpoint_every = 10
    config.train.progress_bar = False
    config.sample.num_samples = 0
    final = train_and_evaluate(config, workdir)
    return workdir, config, final


@pytest.mark.slow
def test_every_training_run_reports_the_probe(smoke_run):
    workdir, config, final = smoke_run
    result = json.loads((workdir / "probe.json").read_text())
    assert set(KEYS) <= set(result)
    assert result["has_memory"] is True and result["model"] == "hope"
    t = config.data.seq_len
    assert result["positions"] == list(range(0, t, t // probe.NUM_BUCKETS))
    assert result["num_sequences"] == config.data.batch_size * config.train.eval_batches
    # The writes-on loss is the run's validation loss (same batches, same parameters).
    assert result["loss_on"] == pytest.approx(final["val_loss"], rel=1e-5)
    # Equal-sized buckets: the late gap is the mean gap of the late buckets.
    late = len(result["positions"]) // 2
    gap = np.mean(result["loss_by_position_off"][late:]) - np.mean(
        result["loss_by_position_on"][late:]
    )
    assert result["late_gap"] == pytest.approx(gap, abs=1e-9)
    # Hope's output memory is read at chunk starts, so the tokens of the first chunk read the
    # initial memory either way; after it the writes change the loss.
    first_chunk = min(config.model.chunk_size, config.model.self_modifying.chunk_size)
    buckets = first_chunk // (t // probe.NUM_BUCKETS)
    np.testing.assert_allclose(
        result["loss_by_position_off"][:buckets],
        result["loss_by_position_on"][:buckets],
        rtol=1e-6,
    )
    assert result["loss_by_position_off"][buckets:] != result["loss_by_position_on"][buckets:]
    report = (workdir / "report.md").read_text()
    assert "## In-context memory probe" in report and "](probe.png)" in report
    assert f"{result['late_gap']:+.4f}" in report
    assert (workdir / "probe.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_probe_workdir_reproduces_the_run_probe(smoke_run):
    workdir, config, _ = smoke_run
    stored = json.loads((workdir / "probe.json").read_text())
    (workdir / "probe.json").unlink()
    result = probe_workdir(workdir)
    assert result["step"] == config.train.num_steps
    for key in ("loss_on", "loss_off", "late_gap"):
        assert result[key] == pytest.approx(stored[key], rel=1e-6, abs=1e-9)
    np.testing.assert_allclose(result["loss_by_position_off"], stored["loss_by_position_off"])
    assert json.loads((workdir / "probe.json").read_text())["loss_off"] == result["loss_off"]


# --- no checkpoint: a clear error, nothing created ---------------------------------------------


def test_api_without_checkpoint_names_the_workdir_and_creates_nothing(tmp_path):
    for fn in (probe_workdir, evaluate_workdir):
        with pytest.raises(NoCheckpointError, match=re.escape(str(tmp_path))):
            fn(tmp_path)
        missing = tmp_path / "missing"
        with pytest.raises(NoCheckpointError, match="missing"):
            fn(missing)
        assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["probe", "eval"])
def test_cli_without_checkpoint_names_the_workdir_and_creates_nothing(tmp_path, mode):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "main.py"),
            f"--mode={mode}",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert f"--mode={mode}: workdir='{tmp_path}' holds no checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
