"""Seed statistics, tables, curves and heat maps of `nestlearn.eval.compare`."""

import json
import math
import time

import numpy as np
import pytest

from nestlearn.eval import compare


def test_mean_std_is_the_sample_statistics():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        x = rng.normal(size=n)
        m, s = compare.mean_std(x.tolist())
        # Straight from the definitions: s² = Σ (x − m)² / (n − 1).
        ref_m = sum(x) / n
        ref_s = math.sqrt(sum((v - ref_m) ** 2 for v in x) / (n - 1))
        assert m == pytest.approx(ref_m, rel=1e-12)
        assert s == pytest.approx(ref_s, rel=1e-12)
    assert compare.mean_std([2.5]) == (2.5, 0.0)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")], [[1.0, 2.0]]])
def test_mean_std_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="values"):
        compare.mean_std(bad)


def test_format_mean_std():
    assert compare.format_mean_std([1.0, 2.0, 3.0], 2) == "2.00 ± 1.00"
    assert compare.format_mean_std([1.23456], 3) == "1.235"


def test_differs_uses_the_standard_error_of_the_difference():
    a = [1.00, 1.01, 0.99]  # std 0.01
    se = math.sqrt(2 * 0.01**2 / 3)
    assert compare.differs(a, [v + 2.5 * se for v in a])
    assert not compare.differs(a, [v + 1.5 * se for v in a])
    assert not compare.differs([1.0], [5.0])  # no spread to judge by
    # A single value borrows the other side's spread: se = 0.01·√(1/3 + 1).
    se1 = 0.01 * math.sqrt(1 / 3 + 1)
    assert compare.differs(a, [1.0 + 2.5 * se1])
    assert not compare.differs([1.0 + 1.5 * se1], a)


def test_markdown_table():
    text = compare.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]
    with pytest.raises(ValueError, match=r"rows\[1\] has 1 cells, header has 2"):
        compare.markdown_table(["a", "b"], [[1, 2], [3]])


def test_mean_curve_and_its_errors():
    x = [0, 10, 20]
    ys = [[3.0, 2.0, 1.0], [5.0, 2.0, 2.0]]
    cx, m, s = compare.mean_curve([(x, y) for y in ys])
    np.testing.assert_array_equal(cx, x)
    np.testing.assert_allclose(m, [4.0, 2.0, 1.5])
    np.testing.assert_allclose(s, [math.sqrt(2), 0.0, math.sqrt(0.5)])
    _, _, s1 = compare.mean_curve([(x, ys[0])])
    np.testing.assert_array_equal(s1, 0.0)
    with pytest.raises(ValueError, match="other x values"):
        compare.mean_curve([(x, ys[0]), ([0, 10, 30], ys[1])])
    with pytest.raises(ValueError, match="x has shape"):
        compare.mean_curve([([0, 1], [1.0, 2.0, 3.0])])
    with pytest.raises(ValueError, match="empty"):
        compare.mean_curve([])


def test_plots_are_written(tmp_path):
    curves = {
        "a": [([0, 1, 2], [3.0, 2.0, 1.0]), ([0, 1, 2], [3.5, 2.5, 1.5])],
        "b": [([0, 1], [2, 1])],
    }
    path = compare.plot_curves(curves, tmp_path / "c.png", xlabel="x", ylabel="y", title="t")
    assert path.stat().st_size > 1000
    maps = {"m1": np.eye(2, 3), "m2": np.full((2, 3), 0.5)}
    path = compare.plot_heatmaps(
        maps,
        tmp_path / "h.png",
        row_labels=["0", "1"],
        col_labels=["a", "b", "c"],
        xlabel="len",
        ylabel="depth",
    )
    assert path.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"maps\['m'\] has shape \(3, 3\), expected \(2, 3\)"):
        compare.plot_heatmaps(
            {"m": np.zeros((3, 3))},
            tmp_path / "x.png",
            row_labels=["0", "1"],
            col_labels=["a", "b", "c"],
            xlabel="",
            ylabel="",
        )


def test_source_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "nestlearn").mkdir()
    f = tmp_path / "nestlearn" / "a.py"
    f.write_text("x = 1\n")
    first = compare.source_fingerprint(tmp_path)
    assert compare.source_fingerprint(tmp_path) == first
    (tmp_path / "notes.txt").write_text("not a source")
    assert compare.source_fingerprint(tmp_path) == first
    f.write_text("x = 2\n")
    assert compare.source_fingerprint(tmp_path) != first


def test_load_range_and_run_meta():
    runs = [{"load_average": "2.5 1.0 0.5", "seconds": 3.0}, {"seconds": 1.5}]
    runs.append({"load_average": "0.7 0.6 0.6", "seconds": 0.5})
    assert compare.load_range(runs) == (0.7, 2.5, 1)
    assert compare.load_range([{"seconds": 1.0}]) is None
    meta = compare.run_meta("experiments/x.py", ["--seeds=0"], time.perf_counter(), runs, 1)
    assert meta["command"] == "python experiments/x.py --seeds=0"
    assert (meta["computed"], meta["total"], meta["run_seconds"]) == (1, 3, 5.0)
    assert 0 <= meta["wall_seconds"] < 60 and meta["machine"]["cpu_count"] >= 1


def test_records_written_atomically_read_back_in_name_order(tmp_path):
    assert compare.read_records(tmp_path / "missing") == []
    compare.write_json_atomic(tmp_path / "runs" / "b_s0.json", {"model": "b"})
    compare.write_json_atomic(tmp_path / "runs" / "a_s1.json", {"model": "a", "x": [1, 2]})
    (tmp_path / "runs" / "c_s0.tmp").write_text("{half")  # an interrupted write is not a record
    assert compare.read_records(tmp_path / "runs") == [{"model": "a", "x": [1, 2]}, {"model": "b"}]


def test_cached_record_refuses_another_protocol(tmp_path):
    path = tmp_path / "run.json"
    assert compare.cached_record(path, settings={"lr": 1}) is None
    path.write_text(json.dumps({"settings": {"lr": 1, "periods": [1, 4]}, "data": "real", "x": 3}))
    got = compare.cached_record(path, settings={"lr": 1, "periods": (1, 4)}, data="real")
    assert got["x"] == 3  # tuples compare as JSON lists
    with pytest.raises(ValueError, match=r"run.json was made with other settings.*'lr': 2"):
        compare.cached_record(path, settings={"lr": 2, "periods": (1, 4)}, data="real")
    with pytest.raises(ValueError, match="other data"):
        compare.cached_record(path, settings={"lr": 1, "periods": [1, 4]}, data="synthetic")
