"""End to end: `train_and_evaluate` on a tiny config, evaluation from the workdir, and the
non-finite guard."""

import json
import math

import pytest
import tiny_config

from nestlearn.train import NonFiniteError, evaluate_workdir, read_metrics, train_and_evaluate


def test_train_and_evaluate_writes_checkpoints_metrics_and_report(tmp_path):
    config = tiny_config.get_config("hope_attention")
    config.train.num_steps = 6
    config.train.eval_every = 3
    final = train_and_evaluate(config, tmp_path)

    records = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert train[-1]["loss"] < train[0]["loss"]
    # Levels at their periods (Eq. 71): CMS level 1 has period 3, the others period 1.
    assert [r["level/cms_level_1/updates"] for r in train] == [0, 0, 1, 1, 1, 2]
    assert train[-1]["level/backbone/updates"] == train[-1]["level/cms_level_0/updates"] == 6
    assert all(math.isfinite(r["grad_norm"]) for r in train)

    assert final["step"] == 6 and final["skipped_steps"] == 0
    assert final["val_perplexity"] == pytest.approx(math.exp(final["val_loss"]))
    assert final["val_bpc"] == pytest.approx(final["val_loss"] / math.log(2))  # char tokens
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "6"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    report = (tmp_path / "report.md").read_text()
    for heading in ("## Final metrics", "## Loss curves", "## Samples", "## Config"):
        assert heading in report
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(report.split("```json\n")[1].split("```")[0])["model"]["vocab_size"] > 0

    # The entry point for an existing workdir restores the final checkpoint exactly.
    result = evaluate_workdir(tmp_path, split="val", num_samples=1)
    assert result["step"] == 6
    assert result["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)
    assert len(result["samples"]) == 1 and result["samples"][0].startswith("a")

    # A run cannot resume into a different model: the error names what changed.
    config.model.d_model = 24
    with pytest.raises(ValueError, match=r"differs in \['model'\].*new --workdir"):
        train_and_evaluate(config, tmp_path)


def test_nonfinite_steps_are_skipped_then_stop_training_naming_step_and_levels(tmp_path):
    config = tiny_config.get_config("transformer_pp")
    config.optim.lr = 1e30
    config.optim.grad_clip = 0.0
    config.optim.warmup_steps = 0
    config.train.max_consecutive_nonfinite = 2
    with pytest.raises(NonFiniteError, match=r"stopping at step \d+: 2 consecutive.*backbone"):
        train_and_evaluate(config, tmp_path)
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert train and train[-1]["skipped"] >= 1
