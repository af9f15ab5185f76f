"""Levels of an experiment: backbone + scheduled CMS levels, and the warmup-cosine schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_config

from nestlearn.optim.scheduler import nested
from nestlearn.train import build_levels, learning_rate_schedule


def _reference_lr(step, *, peak, warmup, total, end):
    # Linear warmup from 0, then cosine decay to `end` at `total` (written from the definition).
    if step < warmup:
        return peak * step / warmup
    frac = min(1.0, (step - warmup) / (total - warmup))
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


def test_schedule_is_warmup_then_cosine():
    config = tiny_config.get_config()
    config.optim.lr, config.optim.warmup_steps, config.optim.min_lr_ratio = 2e-3, 10, 0.1
    schedule = learning_rate_schedule(config.optim, 100)
    for step in (0, 1, 5, 10, 11, 40, 99, 100, 150):
        want = _reference_lr(step, peak=2e-3, warmup=10, total=100, end=2e-4)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-9)


def test_levels_follow_the_model_cms_periods_and_a_transformer_has_one_level():
    levels = build_levels(tiny_config.get_config("hope_attention"))
    assert [(lv.name, lv.period) for lv in levels] == [
        ("cms_level_0", 1),
        ("cms_level_1", 3),
        ("backbone", 1),
    ]
    assert [lv.name for lv in build_levels(tiny_config.get_config("transformer_pp"))] == [
        "backbone"
    ]


def test_a_slow_cms_level_sums_its_period_and_reads_the_schedule_in_training_steps():
    config = tiny_config.get_config("hope_attention")
    config.optim.cms_rule = "sgd"
    config.optim.cms_lr_scale = 0.5
    config.optim.warmup_steps = 0
    config.train.num_steps = 12
    params = {
        "blocks": {
            "0": {
                "cms": {"levels": {"0": {"w": jnp.zeros(2)}, "1": {"w": jnp.zeros(2)}}},
                "attn": {"w": jnp.zeros((2, 2))},
            }
        }
    }
    tx = nested(build_levels(config))
    state = tx.init(params)
    schedule = learning_rate_schedule(config.optim, 12)
    slow = []
    for step in range(1, 7):
        grads = jax.tree.map(lambda p, s=step: jnp.full_like(p, float(s)), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        slow.append(float(params["blocks"]["0"]["cms"]["levels"]["1"]["w"][0]))
    # Eq. 71: period 3 → updates at steps 3 and 6 with the summed gradients 1+2+3 and 4+5+6, at
    # the learning rate of training steps 0 and 3 (its update count times its period).
    first = -0.5 * float(schedule(0)) * 6
    second = first - 0.5 * float(schedule(3)) * 15
    assert first < 0 and float(schedule(3)) != float(schedule(1))
    np.testing.assert_allclose(slow, [0, 0, first, first, first, second], rtol=1e-6)
