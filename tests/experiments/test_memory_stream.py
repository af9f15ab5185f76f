"""experiments/memory_stream.py: a long stream through Hope's memories: finite, bounded, alive."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.train import restore_workdir, train_and_evaluate

ROOT = Path(__file__).resolve().parents[2]


def _modules():
    sys.path.insert(0, str(ROOT / "experiments" / "configs"))
    loaded = []
    for name, path in (
        ("memory_stream", ROOT / "experiments" / "memory_stream.py"),
        ("default_config", ROOT / "experiments" / "configs" / "default.py"),
    ):
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        loaded.append(module)
    return loaded


def _stream(arg, tokens, chunk, model=None):
    script, default = _modules()
    config = default.get_config(arg)
    model = model or models.build(config.model, rngs=nnx.Rngs(0))
    text = np.random.default_rng(0).integers(0, config.model.vocab_size, 10_000)
    trace = script.run_stream(model, script.stream_tokens(text, tokens), chunk, log_every=10**9)
    return script, trace


def test_the_stream_records_every_state_array_per_call():
    script, trace = _stream("smoke", 1024, 256)
    assert trace["tokens"] == [256, 512, 768, 1024]
    assert len(trace["loss"]) == 4 and np.all(np.isfinite(trace["loss"]))
    weights = [k for k in trace["norms"] if "weights" in k]
    assert weights, sorted(trace["norms"])  # the self-modifying memories' weights are traced
    assert all(len(v) == 4 for v in trace["norms"].values())
    assert trace["initial"].keys() == trace["norms"].keys() == trace["changes"].keys()
    writes = [max(trace["changes"][k]) for k in weights]
    assert all(w > 0 for w in writes), writes  # every memory weight is written
    rows = script.summary_rows(trace)
    assert len(rows) == len(trace["norms"]) and all(r[6] == "yes" for r in rows)
    assert script.collapsed(trace) == [k for k, r in zip(trace["norms"], rows) if r[7] == "yes"]
    with pytest.raises(ValueError, match="shorter than one --chunk"):
        script.run_stream(None, np.zeros(10, np.int32), 16)
    with pytest.raises(ValueError, match="empty"):
        script.stream_tokens(np.zeros(0, np.int32), 10)


def test_collapse_is_a_nonzero_state_decayed_below_the_ratio():
    script, _ = _modules()
    trace = {
        "initial": {"w": 2.0, "m": 0.0, "alive": 1.0},
        "norms": {"w": [1.0, 1e-4], "m": [0.5, 0.0], "alive": [0.5, 0.9]},
    }
    assert script.collapsed(trace) == ["w"]


@pytest.mark.slow
def test_a_million_tokens_through_the_default_hope_stay_finite_and_bounded():
    """Finite and bounded (`collapsed` is reported by the script, not asserted: docs/SEMANTICS.md
    §1.3 "Long streams")."""
    _, trace = _stream(None, 1 << 20, 4096)
    largest = max(max(v) for v in trace["norms"].values())
    print(f"largest state norm over 2^20 tokens: {largest:.4g}")
    assert np.all(np.isfinite(trace["loss"]))
    assert all(np.all(np.isfinite(v)) for v in trace["norms"].values())
    initial = max(max(trace["initial"].values()), 1.0)
    assert largest < 100 * initial, (largest, initial)


@pytest.mark.slow
def test_a_trained_hope_streamed_over_a_million_tokens_neither_explodes_nor_collapses(tmp_path):
    """The default smoke Hope (retention towards its meta-learned initial weights,
    docs/SEMANTICS.md §1.3 "Long streams") trained for 60 steps, then 2^20 tokens in one
    stream: every state array finite and within 100× of its initial norm, none decayed to zero,
    and every memory weight still written in the last call."""
    _, default = _modules()
    config = default.get_config("smoke")
    assert config.model.self_modifying.retention_target == "initial"
    config.train.num_steps = 60
    train_and_evaluate(config, tmp_path)
    run, state, rest = restore_workdir(tmp_path)
    script, trace = _stream("smoke", 1 << 20, 4096, nnx.merge(run.graphdef, state.params, rest))
    largest = max(max(v) for v in trace["norms"].values())
    print(f"largest state norm over 2^20 tokens: {largest:.4g}")
    assert np.all(np.isfinite(trace["loss"]))
    assert all(np.all(np.isfinite(v)) for v in trace["norms"].values())
    assert largest < 100 * max(max(trace["initial"].values()), 1.0), largest
    assert script.collapsed(trace) == []
    weights = [k for k in trace["norms"] if "weights" in k]
    last = {k: trace["changes"][k][-1] / trace["norms"][k][-1] for k in weights}
    assert all(v > 1e-6 for v in last.values()), last
