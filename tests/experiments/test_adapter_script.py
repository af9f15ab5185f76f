"""experiments/adapter.py: the continual report's stability and plasticity."""

import pytest


def test_stability_and_the_plot(load_script, tmp_path):
    script = load_script("adapter")
    phases = ["a", "b", "c"]
    record = {
        "phases": [
            {"phase": "a", "ppl": {"a": 10.0}},
            {"phase": "b", "ppl": {"a": 12.0, "b": 20.0}},
            {"phase": "c", "ppl": {"a": 11.0, "b": 26.0, "c": 30.0}},
        ]
    }
    plastic, forgot = script.stability(record, phases)
    assert plastic == pytest.approx((20.0 + 30.0) / 2)  # b after b, c after c
    assert forgot == pytest.approx(((11.0 - 10.0) + (26.0 - 20.0)) / 2)
    runs = [{"variants": {"lora": record, "frozen": record}}] * 2
    script.plot_stability(runs, phases, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0
