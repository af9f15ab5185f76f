"""experiments/memory_influence.py: the writes' effect on an untrained model's predictions."""

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_buckets_cover_the_window_once():
    script = _load("memory_influence", ROOT / "experiments" / "memory_influence.py")
    assert script.buckets(1024) == [(0, 64), (64, 256), (256, 512), (512, 1024)]
    assert script.buckets(64) == [(0, 16), (16, 32), (32, 64)]


def test_writes_change_the_predictions_from_the_first_written_state_on():
    script = _load("memory_influence", ROOT / "experiments" / "memory_influence.py")
    sys.path.insert(0, str(ROOT / "experiments" / "configs"))
    study = _load("memory_study", ROOT / "experiments" / "configs" / "memory_study.py")
    tokens = jax.random.randint(jax.random.key(0), (2, 64), 0, 256)
    # DeltaNet reads S_t after writing token t: every position changes.
    delta = script.influence(study.get_config("deltanet,quick"), tokens, seed=0)
    assert delta.shape == (64,) and np.all(delta > 0.05), delta
    # Hope's output memory reads the state at the start of its chunk (8 tokens in quick mode):
    # the first chunk is unchanged, the later ones are not (the model's default write rule).
    hope = script.influence(study.get_config("hope_w0,quick"), tokens, seed=0)
    assert np.all(hope[:8] < 1e-5), hope[:8]
    assert hope[8:].mean() > 0.01, hope[8:]
