"""The LM comparison's shared sizes, and smoke runs of experiments/lm_compare.py and niah.py."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.eval import niah

ROOT = Path(__file__).resolve().parents[2]


def _results_lm():
    spec = importlib.util.spec_from_file_location(
        "results_lm", ROOT / "experiments" / "configs" / "results_lm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


results_lm = _results_lm()


@pytest.mark.parametrize("variant", results_lm.VARIANTS)
def test_every_variant_is_at_the_parameter_budget(variant):
    config = results_lm.get_config(variant)
    model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
    n = models.count_params(model)
    target = results_lm.TARGET_PARAMS
    assert abs(n - target) <= results_lm.PARAM_TOLERANCE * target, (variant, n)


def test_ablations_change_one_switch_each():
    hope = results_lm.get_config("hope").model
    for name, (_, overrides) in results_lm.ABLATIONS.items():
        model = results_lm.get_config(name).model
        assert model.name == "hope"
        changed = {
            k
            for k in hope.self_modifying.keys()
            if model.self_modifying[k] != hope.self_modifying[k]
        }
        assert changed == set(overrides), name
        assert (model.cms.periods != hope.cms.periods) == (name == "hope_no_cms")
    with pytest.raises(ValueError, match="variant='gpt' is unknown"):
        results_lm.get_config("gpt")
    with pytest.raises(ValueError, match="must be 'quick'"):
        results_lm.get_config("hope,slow")


def _run(script, *args, cache):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), *args, f"--compilation_cache={cache}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_quick_runs_are_deterministic_and_the_niah_script_runs(tmp_path):
    cache = tmp_path / "cache"
    runs = []
    for name in ("a", "b"):
        _run(
            "lm_compare.py",
            "--quick",
            "--variants=transformer_pp",
            "--seeds=0",
            "--ablations=",
            f"--out={tmp_path / name}",
            f"--workdir={tmp_path / name}_runs",
            cache=cache,
        )
        runs.append(json.loads((tmp_path / name / "runs" / "transformer_pp_s0.json").read_text()))
    assert runs[0]["curve"] == runs[1]["curve"]
    assert runs[0]["final"]["val_loss"] == runs[1]["final"]["val_loss"]
    assert runs[0]["final"]["test_loss"] == runs[1]["final"]["test_loss"]
    assert "Transformer++" in (tmp_path / "a" / "README.md").read_text()
    assert (tmp_path / "a" / "loss_vs_tokens.png").exists()
    _run(
        "niah.py",
        "--quick",
        "--models=transformer_pp,deltanet",
        "--seeds=0,1",
        "--samples=1",
        "--model_overrides=chunk_size=8",
        f"--out={tmp_path / 'niah'}",
        f"--workdir={tmp_path / 'ckpt'}",
        "--checkpoint_every=2",
        cache=cache,
    )
    # each run checkpointed its training and removed the checkpoints with its record written
    assert (tmp_path / "ckpt" / "niah").is_dir() and not any((tmp_path / "ckpt" / "niah").iterdir())
    record = json.loads((tmp_path / "niah" / "runs" / "transformer_pp_s0.json").read_text())
    assert record["protocol"]["start"] == "from scratch"
    assert [c["length"] for c in record["curve"]] == [160, 384]  # the quick curriculum, in order
    assert record["protocol"]["stage_tasks"] == {"160": ["passkey"], "384": list(niah.TASKS)}
    assert record["protocol"]["model_overrides"] == ["chunk_size=8"]
    assert record["exact_writes_off"] is None  # no in-context memory: one evaluation
    memory = json.loads((tmp_path / "niah" / "runs" / "deltanet_s0.json").read_text())
    assert memory["exact_writes_off"].keys() == memory["exact"].keys()
    assert set(record["exact"]) == {"passkey", "number", "uuid"}
    for task in record["exact"].values():
        for by_depth in task.values():
            assert len(by_depth) == 5 and all(0 <= x <= 1 for x in by_depth)
    readme = (tmp_path / "niah" / "README.md").read_text()
    assert "Transformer++" in readme and (tmp_path / "niah" / "heatmap_exact.png").exists()
    # two seeds: each cell is their mean ± std, and results.json keeps both
    seed1 = json.loads((tmp_path / "niah" / "runs" / "transformer_pp_s1.json").read_text())
    values = [100 * np.mean(r["exact"]["passkey"]["384"]) for r in (record, seed1)]
    summary = json.loads((tmp_path / "niah" / "results.json").read_text())["transformer_pp"]
    assert summary["seeds"] == [0, 1] and len(summary["exact"]["passkey"]["384"]) == 2
    want = f"{np.mean(values):.0f} ± {np.std(values, ddof=1):.0f}"
    assert f"| Transformer++ | {want} |" in readme
    assert "--seeds=0,1" in readme
    assert "| DeltaNet | off |" in readme  # the writes-off rows
    assert (tmp_path / "niah" / "train_curves.png").exists()


@pytest.mark.slow
def test_recall_script_runs_and_reports(tmp_path):
    out = tmp_path / "recall"
    _run(
        "recall.py",
        "--quick",
        "--models=gated_deltanet",
        "--gap=8",
        "--model_overrides=alpha_bias=6",
        f"--out={out}",
        cache=tmp_path,
    )
    record = json.loads((out / "runs" / "gated_deltanet_s0.json").read_text())
    assert record["protocol"]["pairs"] == 4 and list(record["accuracy"]) == ["4", "8", "16"]
    assert record["protocol"]["gap"] == 8
    assert record["protocol"]["model_overrides"] == ["alpha_bias=6"]
    for accuracy in (record["accuracy"], record["accuracy_writes_off"]):
        assert all(0 <= a <= 1 for a in accuracy.values())
    readme = (out / "README.md").read_text()
    assert "Gated DeltaNet" in readme and "--gap=8" in readme and "writes off (%)" in readme


def _memory_study():
    sys.path.insert(0, str(ROOT / "experiments" / "configs"))
    spec = importlib.util.spec_from_file_location(
        "memory_study", ROOT / "experiments" / "configs" / "memory_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name", ["hope", "hope_alpha7", "titans_lmm", "deltanet", "gated_deltanet"]
)
def test_the_memory_study_has_long_windows_at_the_parameter_budget(name):
    study = _memory_study()
    config = study.get_config(name)
    if name == "hope_alpha7":
        assert config.model.self_modifying.alpha_bias_init == 7.0
        assert study.get_config("hope").model.self_modifying.alpha_bias_init != 7.0
    assert config.data.seq_len == 1024 and config.data.seq_len <= config.model.max_len
    assert config.train.num_steps * config.data.batch_size * 1024 == study.TRAIN_TOKENS
    model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
    assert models.has_memory(config.model)
    n = models.count_params(model)
    assert abs(n - study.TARGET_PARAMS) <= study.PARAM_TOLERANCE * study.TARGET_PARAMS
    with pytest.raises(ValueError, match="hope_attention"):
        study.get_config("hope_attention")
