"""experiments/optimizer_resilience.py: the band and divergence rules, and a smoke run."""

import json
import math

import pytest


@pytest.fixture(scope="module")
def resilience(load_script):
    return load_script("optimizer_resilience")


def _record(finals, initial=10.0):
    return {
        "grid": [1e-3, 1e-2, 1e-1],
        "seeds": list(range(len(finals[0]))),
        "final_loss": finals,
        "curves": [[[initial] for _ in row] for row in finals],
    }


def test_band_is_relative_to_the_best_of_any_optimizer(resilience):
    records = {
        "lsq": {
            "a": {0.0: _record([[1.0, 1.0], [1.05, 1.15], [2.0, 2.0]])},
            "b": {0.0: _record([[1.5, 1.5], [1.7, 1.7], [math.inf, 1.0]])},
        }
    }
    summary = resilience.summarise(records)["lsq"]
    assert summary["best_loss"] == 1.0
    assert summary["a"]["band"] == [1e-3, 1e-2]  # mean 1.1 is within 10%
    assert summary["b"]["band"] == [] and summary["b"]["own_band"] == [1e-3]
    assert summary["b"]["diverged"] == [1e-1]  # one non-finite seed
    assert summary["a"]["best"]["0.0"] == {"loss": 1.0, "lr": 1e-3}


@pytest.mark.slow
def test_quick_run_writes_records_and_tables(resilience, tmp_path):
    resilience.main(
        ["--quick", "--problems", "lsq", "--optimizers", "delta", "--out", str(tmp_path)]
    )
    assert len(list((tmp_path / "runs").glob("lsq-delta-noise*.json"))) == 2
    summary = json.loads((tmp_path / "resilience.json").read_text())["summary"]
    assert set(summary["lsq"]["delta"]["best"]) == {"0.0", "0.1"}
    assert "Delta momentum" in (tmp_path / "resilience.md").read_text()
    assert (tmp_path / "resilience_lsq.png").stat().st_size > 0


def test_lm_records_of_several_seeds_merge_per_rate(resilience):
    one = {"optimizer": "sgdm", "grid": [0.1, 1.0], "seeds": [0], "final_loss": [[2.0], [3.0]]}
    two = {**one, "seeds": [1], "final_loss": [[2.5], [float("inf")]]}
    for r in (one, two):
        r["seconds"] = 1.0
    merged = resilience.merge_seeds([one, two])
    assert merged["seeds"] == [0, 1] and merged["final_loss"] == [[2.0, 2.5], [3.0, float("inf")]]
    assert merged["seconds"] == 2.0
    with pytest.raises(ValueError, match="different rate grids"):
        resilience.merge_seeds([one, {**two, "grid": [0.1]}])
