"""The LM comparison study (`experiments/configs/lm_comparison.py`) and its learning-rate
selection in experiments/lm_compare.py."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flax import nnx

from nestlearn import models
from nestlearn.models.hope import HOPE_WRITES

ROOT = Path(__file__).resolve().parents[2]


def _study():
    sys.path.insert(0, str(ROOT / "experiments" / "configs"))
    spec = importlib.util.spec_from_file_location(
        "lm_comparison", ROOT / "experiments" / "configs" / "lm_comparison.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _study()


@pytest.mark.parametrize("name", [*study.MODELS, *study.ABLATIONS])
def test_every_model_is_at_the_non_embedding_budget(name):
    config = study.get_config(name)
    model = nnx.eval_shape(lambda: models.build(config.model, rngs=nnx.Rngs(0)))
    n = models.count_params(model, embedding=False)
    target = study.TARGET_NON_EMBEDDING
    assert abs(n - target) <= study.PARAM_TOLERANCE * target, (name, n)
    assert config.data.seq_len == 1024
    assert config.train.num_steps * config.data.seq_len * config.data.batch_size >= 2**20


def test_hope_writes_and_ablations_switch_one_thing_each():
    hope = study.get_config("hope").model
    for key, value in HOPE_WRITES.items():
        assert hope.self_modifying[key] == value, key
    for name, (_, overrides) in study.ABLATIONS.items():
        model = study.get_config(name).model
        changed = {
            k for k in hope.self_modifying if model.self_modifying[k] != hope.self_modifying[k]
        }
        assert changed == set(overrides), name
        assert (model.cms.periods != hope.cms.periods) == (name == "hope_no_cms")
        assert name in study.PAPER_ABLATION
    with pytest.raises(ValueError, match="'gpt' is unknown"):
        study.get_config("gpt")


@pytest.mark.slow
def test_rates_are_chosen_on_seed_0_and_reused(tmp_path):
    """3 rates on seed 0, then seed 1 at the chosen one; the chosen run is seed 0's record."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "lm_compare.py"),
        "--study=lm_comparison",
        "--quick",
        "--variants=transformer_pp",
        "--seeds=0,1",
        "--ablations=",
        f"--out={out}",
        f"--workdir={tmp_path / 'work'}",
        f"--compilation_cache={tmp_path / 'cache'}",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = {
        float(p.stem.split("_lr")[1].split("_s")[0]): json.loads(p.read_text())
        for p in (out / "lr_runs").glob("*.json")
    }
    assert sorted(sweep) == sorted(study.LEARNING_RATES)
    losses = {lr: r["final"]["val_loss"] if r["final"] else float("inf") for lr, r in sweep.items()}
    best = min(losses, key=losses.get)
    seed0 = json.loads((out / "runs" / "transformer_pp_s0.json").read_text())
    seed1 = json.loads((out / "runs" / "transformer_pp_s1.json").read_text())
    assert seed0 == sweep[best]  # the selection run, not a second training
    assert seed1["lr"] == best and seed1["seed"] == 1
    assert seed1["non_embedding_parameters"] < seed1["parameters"]
    readme = (out / "README.md").read_text()
    assert "## Learning rate per model" in readme and "**(chosen)**" in readme
    assert "peak lr per model from 0.001, 0.003, 0.01" in readme
    hours = sum(r["wall_s"] for r in sweep.values()) / 3600
    assert f"The selection took\n{hours:.2f} hours of wall time over 3 runs" in readme


def test_gpu_study_is_ten_times_the_cpu_budget():
    spec = importlib.util.spec_from_file_location(
        "lm_comparison_gpu", ROOT / "experiments" / "configs" / "lm_comparison_gpu.py"
    )
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    for name in gpu.MODELS:
        c, cpu = gpu.get_config(name), study.get_config(name)
        assert c.train.num_steps * c.data.batch_size * c.data.seq_len == 10 * 2**20
        assert c.model.to_dict() == cpu.model.to_dict()  # the same models
