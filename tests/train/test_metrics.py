"""MetricWriter: resume truncation and the multi-host rule (only process 0 writes files)."""

from nestlearn.train.metrics import MetricWriter, read_metrics


def test_resume_drops_records_after_the_restored_step(tmp_path):
    writer = MetricWriter(tmp_path, resume_step=None, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": float(step)})
    writer.close()
    resumed = MetricWriter(tmp_path, resume_step=2, tensorboard=False)
    assert [r["step"] for r in resumed.records] == [1, 2]
    resumed.write(3, "train", {"loss": 0.5})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 0.5),
    ]


def test_a_secondary_process_keeps_records_in_memory_and_writes_nothing(tmp_path):
    primary = MetricWriter(tmp_path, resume_step=None, tensorboard=False)
    primary.write(1, "train", {"loss": 1.0})
    secondary = MetricWriter(tmp_path, resume_step=1, tensorboard=True, primary=False)
    record = secondary.write(2, "train", {"loss": 0.5})
    secondary.close()
    primary.close()
    assert record == {"step": 2, "kind": "train", "loss": 0.5}
    assert [r["step"] for r in secondary.records] == [1, 2]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "tensorboard").exists()
