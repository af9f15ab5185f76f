"""The run's instruments: memory statistics and level updates in metrics.jsonl and TensorBoard,
the level statistics of the train step, and what a non-finite run records."""

import importlib.util
import math
from pathlib import Path

import jax
import numpy as np
import pytest
import tiny_config
from flax import nnx

from nestlearn import models
from nestlearn.memory.instruments import MemoryStats
from nestlearn.optim.scheduler import level_stats
from nestlearn.train import NonFiniteError, build_levels, read_metrics, train_and_evaluate
from nestlearn.train.instruments import LevelMonitor, describe, memory_metrics
from nestlearn.train.step import TrainState, build_train_step, split_model

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"
FIELDS = MemoryStats._fields


def _default_smoke():
    spec = importlib.util.spec_from_file_location("config_default", CONFIGS / "default.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("smoke")


@pytest.mark.slow
def test_default_smoke_run_logs_memory_and_level_instruments(tmp_path):
    config = _default_smoke()  # Hope, one layer, CMS levels of periods 1 and 4
    config.train.num_steps = 8
    config.train.log_every = 4
    config.train.eval_every = config.train.checkpoint_every = 8
    config.train.progress_bar = False
    config.sample.num_samples = 0
    assert tuple(config.model.cms.periods) == (1, 4)
    final = train_and_evaluate(config, tmp_path)

    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [4, 8]
    for record in train:
        for prefix, fields in (
            ("memory/layer_0/", FIELDS),
            (
                "memory/layer_0/generators/",
                [f for f in FIELDS if not f.startswith(("eta", "alpha"))],
            ),
        ):
            for field in fields:
                assert math.isfinite(record[prefix + field]), prefix + field
        assert "memory/layer_0/generators/eta_mean" not in record
        assert not any(k.startswith("memory/layer_1/") for k in record)  # one layer
        assert record["memory/layer_0/eta_p05"] <= record["memory/layer_0/eta_p95"]
        assert record["memory/layer_0/update_norm"] > 0
    # The period-4 level has applied 8 // 4 = 2 updates after 8 steps; the others 8.
    assert [r["level/cms_level_1/updates"] for r in train] == [1, 2]
    assert train[-1]["level/cms_level_0/updates"] == train[-1]["level/backbone/updates"] == 8
    for name in ("backbone", "cms_level_0", "cms_level_1"):
        assert train[-1][f"level/{name}/update_norm"] > 0
    assert final["level/cms_level_1/updates"] == 2
    assert not any("step_update_norm" in k for r in train for k in r)
    # Whatever goes to metrics.jsonl goes to TensorBoard as well.
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.*"))
    for tag in ("memory/layer_0/inner_loss_before", "level/cms_level_1/update_norm"):
        assert f"train/{tag}".encode() in events


def test_train_step_reports_each_levels_update_norm_and_the_monitor_keeps_the_last():
    config = tiny_config.get_config("hope_attention")
    config.model.vocab_size = 64
    config.model.cms.periods = (1, 4)
    config.optim.warmup_steps = 0  # a level's first update at lr schedule(0) would be 0
    model = models.build(config.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    names = [lv.name for lv in levels]
    step = build_train_step(levels, params=params, grad_clip=1.0, graphdef=graphdef)
    state = TrainState.create(params, levels, seed=0)
    monitor = LevelMonitor(level_stats(state.opt_state))
    owners = {
        "cms_level_0": "cms/levels/0/",
        "cms_level_1": "cms/levels/1/",
    }

    def level_of(path):
        key = jax.tree_util.keystr(path, simple=True, separator="/")
        return next((n for n, part in owners.items() if part in key), "backbone")

    tokens = jax.random.randint(jax.random.key(0), (8, 2, 9), 0, 64)
    for i in range(8):
        before = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
        state, metrics = step(state, rest, tokens[i, :, :-1], tokens[i, :, 1:])
        metrics = jax.device_get(metrics)
        monitor.update(metrics)
        after = jax.tree.leaves(jax.device_get(state.params))
        squares = dict.fromkeys(names, 0.0)
        for (path, old), new in zip(before, after):
            squares[level_of(path)] += float(np.sum((np.float64(new) - np.float64(old)) ** 2))
        for name in names:
            norm = metrics[f"level/{name}/step_update_norm"]
            np.testing.assert_allclose(norm, math.sqrt(squares[name]), rtol=1e-4, atol=1e-9)
        slow = metrics["level/cms_level_1/step_update_norm"]
        assert (slow > 0) == (i % 4 == 3)  # applies on steps 4 and 8 only
        if i == 3:
            last_slow = float(slow)
        if i in (4, 5):  # between its updates the monitor keeps the last applied norm
            assert monitor.metrics()["level/cms_level_1/update_norm"] == last_slow
    assert monitor.metrics()["level/cms_level_1/updates"] == 2
    assert monitor.metrics()["level/backbone/updates"] == 8


def test_a_nonfinite_run_records_the_step_and_its_instruments(tmp_path):
    config = tiny_config.get_config("deltanet")
    config.optim.lr = 1e30
    config.optim.grad_clip = 0.0
    config.optim.warmup_steps = 0
    config.train.log_every = 100  # only the non-finite steps are logged
    config.train.max_consecutive_nonfinite = 2
    with pytest.raises(NonFiniteError, match=r"stopping at step (\d+).*memory instruments") as err:
        train_and_evaluate(config, tmp_path)
    train = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 2 and all("non-finite gradients" in r["nonfinite"] for r in train)
    last = train[-1]
    assert str(err.value).startswith(f"stopping at step {last['step']}:")
    assert set(FIELDS) <= {k.removeprefix("memory/layer_0/") for k in last}
    assert "memory/layer_0/state_norm=" in str(err.value)  # the summary names the largest states


def test_memory_metrics_names_and_describe():
    one = lambda x: np.float32(x)
    stats = MemoryStats(*(one(i) for i in range(len(FIELDS))))
    generators = stats._replace(eta_mean=None, eta_p05=None, eta_p95=None)
    generators = generators._replace(alpha_mean=None, alpha_p05=None, alpha_p95=None)
    metrics = memory_metrics({1: {"memory": stats, "generators": generators}})
    assert metrics["memory/layer_1/update_norm"] == len(FIELDS) - 1
    assert metrics["memory/layer_1/generators/state_norm"] == FIELDS.index("state_norm")
    assert len(metrics) == len(FIELDS) + len(FIELDS) - 6
    metrics["memory/layer_1/inner_loss_after"] = float("nan")
    text = describe(metrics)
    assert "non-finite: memory/layer_1/inner_loss_after" in text
    assert "largest state norms: memory/layer_1/state_norm=8" in text
    assert describe({}) == "no memory instruments"
