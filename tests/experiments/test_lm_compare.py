"""experiments/lm_compare.py records a diverged run and reports it without averaging it."""

import copy
import json
import math

import pytest


@pytest.fixture(scope="module")
def lm_compare(load_script):
    return load_script("lm_compare")


def test_divergence_reads_the_first_nonfinite_step(lm_compare):
    records = [
        {"kind": "train", "step": 5, "loss": 3.0, "skipped": 0},
        {"kind": "eval", "step": 5, "val_loss": 3.1},
        {"kind": "train", "step": 10, "loss": 2.5, "skipped": 0},
        {"kind": "train", "step": 12, "loss": 2.4, "skipped": 1},
        {"kind": "train", "step": 13, "loss": math.nan, "skipped": 2},
        {"kind": "train", "step": 14, "loss": math.inf, "skipped": 3},
    ]
    d = lm_compare.divergence(records, "stop")
    assert d == {
        "first_nonfinite_step": 12,
        "stopped_at_step": 14,
        "last_finite_step": 10,
        "last_finite_loss": 2.5,
        "message": "stop",
    }


def test_a_diverged_run_is_recorded_and_reported_not_averaged(lm_compare, tmp_path, monkeypatch):
    quick = lm_compare.config_for

    def exploding(variant, seed, is_quick, study):
        c = quick(variant, seed, is_quick, study)
        c.optim.lr = 1e30  # the first update makes every later gradient non-finite
        c.optim.grad_clip = 0.0
        c.train.num_steps = 10
        c.train.eval_every = c.train.checkpoint_every = 10
        return c

    monkeypatch.setattr(lm_compare, "config_for", exploding)
    out = tmp_path / "out"
    record = lm_compare.train_one("transformer_pp", 0, out, tmp_path / "work", quick=True)
    limit = record["config"]["train"]["max_consecutive_nonfinite"]
    d = record["diverged"]
    assert record["final"] is None
    assert 1 < d["first_nonfinite_step"] <= 3
    assert d["stopped_at_step"] == d["first_nonfinite_step"] + limit - 1 < 10
    assert d["last_finite_step"] < d["first_nonfinite_step"]
    assert math.isfinite(d["last_finite_loss"])
    saved = json.loads((out / "runs" / "transformer_pp_s0.json").read_text())
    assert saved["diverged"] == d

    # Two finished seeds beside the diverged one: the mean is over the finished two only.
    for seed, loss in ((1, 2.0), (2, 2.2)):
        finished = copy.deepcopy(saved)
        finished.update(seed=seed, diverged=None, tokens_per_sec=100.0)
        finished["final"] = {
            k: loss for k in ("val_loss", "val_bpc", "val_perplexity", "test_loss", "test_bpc")
        }
        (out / "runs" / f"transformer_pp_s{seed}.json").write_text(json.dumps(finished))
    lm_compare.write_report(out, "test")
    summary = json.loads((out / "results.json").read_text())["transformer_pp"]
    assert summary["seeds"] == [1, 2]
    assert summary["val_loss"][0] == pytest.approx(2.1)
    assert summary["diverged"]["0"]["first_nonfinite_step"] == d["first_nonfinite_step"]
    readme = (out / "README.md").read_text()
    assert "| 2.1000 ± 0.1414 |" in readme
    assert "2 (+1 diverged)" in readme
    assert f"| Transformer++ | 0 | {d['first_nonfinite_step']} | {d['stopped_at_step']} |" in readme
    assert (out / "loss_vs_tokens.png").exists()

    # A diverged ablation beside a finished Hope: listed as diverged, not compared.
    for variant, source in (("hope", 1), ("hope_no_dgd", 0)):
        record = json.loads((out / "runs" / f"transformer_pp_s{source}.json").read_text())
        record.update(variant=variant, seed=0)
        (out / "runs" / f"{variant}_s0.json").write_text(json.dumps(record))
    lm_compare.write_report(out, "test")
    readme = (out / "README.md").read_text()
    assert (
        "| Hope w/o DGD |" in readme
        and "| diverged | diverged | — | — | 0 (+1 diverged) |" in readme
    )
    assert (out / "ablations_loss_vs_tokens.png").exists()

    # The probe's section: the late gap's mean and standard error over the seeds that have one.
    for seed, gap in ((1, 0.1), (2, 0.3)):
        record = json.loads((out / "runs" / f"transformer_pp_s{seed}.json").read_text())
        record.update(variant="hope", seed=seed)
        record["probe"] = {
            "has_memory": True,
            "loss_on": 2.0,
            "loss_off": 2.0 + gap / 2,
            "positions": [0, 8],
            "loss_by_position_on": [2.5, 1.5],
            "loss_by_position_off": [2.5, 1.5 + gap],
            "late_start": 8,
            "late_gap": gap,
            "late_gap_se": 0.01,
            "num_sequences": 4,
            "seq_len": 16,
        }
        (out / "runs" / f"hope_s{seed}.json").write_text(json.dumps(record))
    lm_compare.write_report(out, "test")
    readme = (out / "README.md").read_text()
    assert "| Hope | yes | +0.2000 | 0.1000 | +2.0 | +0.1000 ± 0.0100, +0.3000 ± 0.0100 |" in readme
    assert (out / "loss_by_position.png").exists()


def test_a_run_that_ends_with_a_nonfinite_validation_loss_is_recorded_as_diverged(
    lm_compare, tmp_path, monkeypatch
):
    """Skipped steps can leave a run that finishes but evaluates to NaN: it is diverged, not
    a finished run whose NaN would enter the means."""
    train = lm_compare.train_and_evaluate

    def nan_at_the_end(config, workdir):
        final = train(config, workdir)
        return {**final, "val_loss": float("nan"), "skipped_steps": 3}

    monkeypatch.setattr(lm_compare, "train_and_evaluate", nan_at_the_end)
    out = tmp_path / "out"
    record = lm_compare.train_one("transformer_pp", 0, out, tmp_path / "work", quick=True)
    assert record["final"] is None and record["probe"] is None
    assert record["diverged"]["message"] == "non-finite validation loss after 3 skipped steps"
    lm_compare.write_report(out, "test")  # no NaN reaches a mean
    assert "diverged" in json.loads((out / "results.json").read_text())["transformer_pp"]
