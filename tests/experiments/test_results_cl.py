"""Smoke tests of the continual-learning and optimizer-study scripts (`--quick`, synthetic data).

Each script runs end to end on tiny synthetic data and must write its markdown, JSON and plot;
a second invocation must skip the finished runs and reproduce the same table (resumable, same
seed → same numbers).
"""

import json

import numpy as np
import pytest


def _table(md: str) -> list[str]:
    """The markdown without the lines that record time, load and the command."""
    skip = ("Command:", "Wall time:", "Compute:", "Machine:", "| method", "| model", "| optimizer")
    return [
        line.rsplit("|", 2)[0]  # the last column is a timing
        for line in md.splitlines()
        if not line.startswith(skip) and "ms/step" not in line
    ]


@pytest.mark.slow
def test_continual_fmnist_quick_writes_results_resumes_and_reproduces(tmp_path, load_script):
    script = load_script("continual_fmnist")
    argv = ["--quick", "--data", "synthetic", "--out", str(tmp_path), "--seeds", "0"]
    argv += ["--methods", "cms_online,ewc,replay"]
    script.main(argv)
    for name in ("fmnist.md", "fmnist.json", "fmnist.png", "fmnist_stability.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "fmnist_runs" / "cms_online-seed0.json").read_text())
    matrix = np.asarray(result["score"])
    assert matrix.shape == (5, 5) and np.all((matrix >= 0) & (matrix <= 1))
    # online levels write every 1, 4, 16 batches (quick: 5 steps per task, 25 in all)
    assert result["levels"] == ["cms_level_0", "cms_level_1", "cms_level_2", "backbone"]
    assert np.sum(result["updates"], axis=0).tolist() == [25, 6, 1, 25]
    assert result["groups"] == ["embed", "cms_level_0", "cms_level_1", "cms_level_2", "head"]
    summary = json.loads((tmp_path / "fmnist.json").read_text())["methods"]
    assert set(summary) == {"cms_online", "ewc", "replay"}
    first = (tmp_path / "fmnist.md").read_text()
    ewc = tmp_path / "fmnist_runs" / "ewc-seed0.json"
    before = json.loads(ewc.read_text())
    ewc.unlink()
    script.main(argv)  # ewc is computed again, the others are read back from their JSON
    assert json.loads((tmp_path / "fmnist.json").read_text())["meta"]["computed"] == 1
    assert json.loads(ewc.read_text())["score"] == before["score"]  # same seed, same numbers
    assert _table((tmp_path / "fmnist.md").read_text()) == _table(first)
    with pytest.raises(ValueError, match="--methods: 'bogus'"):
        script.main(["--quick", "--methods", "bogus", "--out", str(tmp_path)])


@pytest.mark.slow
def test_optimizer_study_quick_writes_results_and_resumes(tmp_path, load_script):
    script = load_script("optimizer_study")
    argv = ["--quick", "--data", "synthetic", "--out", str(tmp_path)]
    argv += ["--workdir", str(tmp_path / "work")]
    script.main([*argv, "--problems", "mlp", "--optimizers", "m3,dmgd", "--best_seeds", ""])
    script.main([*argv, "--problems", "lm", "--optimizers", "adamw", "--best_seeds", ""])
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["lm-adamw-0.003.json", "mlp-dmgd-0.3.json", "mlp-m3-0.001.json"]
    lm = json.loads((tmp_path / "runs" / "lm-adamw-0.003.json").read_text())
    assert np.isfinite(lm["val_loss"]) and lm["val_loss"] < np.log(256)  # it learned something
    for name in ("optimizer_study.md", "results.json", "lm_loss.png"):
        assert (tmp_path / name).stat().st_size > 0
    first = (tmp_path / "optimizer_study.md").read_text()
    script.main([*argv, "--problems", "lm", "--optimizers", "adamw", "--best_seeds", ""])
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["computed"] == 0
    assert _table((tmp_path / "optimizer_study.md").read_text()) == _table(first)
    # The best rate's extra seed: another initialisation and order, averaged in the table.
    script.main([*argv, "--problems", "mlp", "--optimizers", "dmgd", "--best_seeds", "1"])
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["computed"] == 1
    seed0, seed1 = (
        json.loads((tmp_path / "runs" / f"mlp-dmgd-0.3{x}.json").read_text()) for x in ("", "-s1")
    )
    assert (seed0["seed"], seed1["seed"]) == (0, 1) and seed0["val_loss"] != seed1["val_loss"]
    mean = (seed0["val_loss"] + seed1["val_loss"]) / 2
    assert f"| {mean:.4f} ± " in (tmp_path / "optimizer_study.md").read_text()
    with pytest.raises(ValueError, match="must not repeat the grid seed"):
        script.main([*argv, "--best_seeds", "0"])


def test_continual_lm_quick_writes_results(tmp_path, load_script):
    script = load_script("continual_lm")
    argv = ["--quick", "--data", "synthetic", "--out", str(tmp_path), "--seeds", "0"]
    argv += ["--models", "transformer_pp,hope_attention"]
    script.main(argv)
    for name in ("lm.md", "lm.json", "lm.png", "lm_stability.png"):
        assert (tmp_path / name).stat().st_size > 0
    run = json.loads((tmp_path / "lm_runs" / "transformer_pp-seed0.json").read_text())
    matrix = np.asarray(run["score"])
    assert matrix.shape == (3, 3) and np.all(np.isfinite(matrix))
    assert run["summary"]["forgetting"] == pytest.approx(
        np.mean([matrix[2, j] - matrix[j:2, j].min() for j in range(2)])
    )
    assert run["groups"] == ["embed", "mixer", "ffn", "other"]
    reset = np.asarray(run["reset_score"])
    assert np.all(np.isfinite(reset[2, :, :2])) and np.all(np.isnan(reset[0]))
    # the scheduled CMS levels (periods 1, 2, 4 in --quick) and their updates per domain
    cms = json.loads((tmp_path / "lm_runs" / "hope_attention-seed0.json").read_text())
    assert cms["groups"][-4:] == ["cms_level_0", "cms_level_1", "cms_level_2", "other"]
    assert cms["levels"] == ["cms_level_0", "cms_level_1", "cms_level_2", "backbone"]
    assert cms["updates"] == [[4, 2, 1, 4]] * 3
    assert "## Where the forgetting lives" in (tmp_path / "lm.md").read_text()
    # a record made with other settings is refused, not mixed in
    run["settings"]["lr"] = 1.0
    (tmp_path / "lm_runs" / "transformer_pp-seed0.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="other settings"):
        script.main(argv)


def test_continual_lm_replay_and_ewc_change_only_the_later_domains(
    tmp_path, load_script, monkeypatch
):
    """Both baselines start from Transformer++'s initialisation and data: the first domain is
    the plain model's (no buffer, a zero Fisher), the later ones differ; EWC's strength is
    chosen by the final mean loss over `EWC_LAMBDAS` on the first seed."""
    script = load_script("continual_lm")
    monkeypatch.setattr(script, "EWC_LAMBDAS", script.EWC_LAMBDAS[::3])  # a choice of two
    argv = ["--quick", "--data", "synthetic", "--out", str(tmp_path), "--seeds", "0"]
    script.main([*argv, "--models", "transformer_pp,transformer_pp_replay,transformer_pp_ewc"])
    runs = tmp_path / "lm_runs"
    plain = np.asarray(json.loads((runs / "transformer_pp-seed0.json").read_text())["score"])
    replay = json.loads((runs / "transformer_pp_replay-seed0.json").read_text())
    assert replay["replay_windows"] == script.BASELINE_SETTINGS["replay_windows"]
    finals = {}
    for lam in script.EWC_LAMBDAS:
        ewc = json.loads((runs / f"transformer_pp_ewc-lam{lam:g}-seed0.json").read_text())
        assert ewc["ewc_lambda"] == lam
        finals[lam] = ewc["summary"]["average"]
        for other in (np.asarray(replay["score"]), np.asarray(ewc["score"])):
            np.testing.assert_allclose(other[0], plain[0], rtol=1e-5)
            assert np.all(np.abs(other[1:] - plain[1:]) > 0)
    report = json.loads((tmp_path / "lm.json").read_text())
    chosen = [row["ewc_lambda"] for row in report["ewc_strengths"] if row["chosen"]]
    assert chosen == [min(finals, key=finals.get)]
    assert report["models"]["transformer_pp_ewc"]["seeds"] == [0]
    assert "| EWC λ |" in (tmp_path / "lm.md").read_text()
    # --models picks what runs; the report keeps every finished run (nothing is recomputed)
    script.main([*argv, "--models", "transformer_pp_replay"])
    text = (tmp_path / "lm.md").read_text()
    assert "| Transformer++ |" in text and "| EWC λ |" in text and "--models" not in text
    assert "(0 computed by this invocation" in text
