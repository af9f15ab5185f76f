"""experiments/hope_layer_profile.py end to end at a tiny shape (`slow`: 12 compilations)."""

import json

import pytest


@pytest.mark.slow
def test_profile_times_every_variant_and_lists_ops(load_script, monkeypatch, tmp_path, capsys):
    profile = load_script("hope_layer_profile")
    monkeypatch.setattr(profile, "SHAPE", dict(b=1, t=128, h=1, d=16))
    out = tmp_path / "profile.json"
    monkeypatch.setattr("sys.argv", ["x", "--repeats", "1", "--trace", "--out", str(out)])
    profile.main()
    doc = json.loads(out.read_text())
    assert [r["variant"] for r in doc["rows"]] == list(profile.VARIANTS)
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in doc["rows"])
    assert doc["top_ops"] and all(o["ms_per_call"] >= 0 for o in doc["top_ops"])
    assert "| writes off |" in capsys.readouterr().out
