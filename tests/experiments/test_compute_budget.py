"""`experiments/compute_budget.py`: wall time summed per study from run records only."""

import json


def _write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_budget_sums_each_studys_records_and_skips_reports(tmp_path, load_script):
    script = load_script("compute_budget")
    _write(tmp_path / "lm" / "runs" / "a_s0.json", {"wall_s": 3600.0})
    _write(tmp_path / "lm" / "runs" / "a_s1.json", {"wall_s": 1800.0})
    _write(tmp_path / "lm" / "lr_runs" / "a_lr1.json", {"wall_s": 900.0})
    _write(tmp_path / "lm" / "results.json", {"wall_s": 1e9})  # a report, not a record
    _write(tmp_path / "continual" / "lm_runs" / "x-seed0.json", {"seconds": 720})
    _write(
        tmp_path / "adapters" / "ad.json", {"variants": {"a": {"wall_s": 10}, "b": {"wall_s": 5}}}
    )
    _write(tmp_path / "adapters" / "lost.json", {"variants": {"a": {"wall_s": None}}})
    script.main(["--root", str(tmp_path)])
    rows = json.loads((tmp_path / "compute.json").read_text())
    assert rows == {
        "adapters/ad": {"runs": 1, "seconds": 15.0, "without_time": 0},
        "adapters/lost": {"runs": 1, "seconds": 0.0, "without_time": 1},
        "continual/lm_runs": {"runs": 1, "seconds": 720.0, "without_time": 0},
        "lm": {"runs": 2, "seconds": 5400.0, "without_time": 0},
        "lm/lr_runs": {"runs": 1, "seconds": 900.0, "without_time": 0},
    }
    assert "| **all** | 6 | 1.95 |" in (tmp_path / "compute.md").read_text()
