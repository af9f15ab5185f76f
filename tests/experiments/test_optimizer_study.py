"""experiments/optimizer_study.py: the LM's optimizers come from `config.levels` by name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nestlearn.optim as no
from nestlearn.train.levels import learning_rate_schedule, resolve_levels


def _direct(name, schedule):
    """The transforms as a user would write them, for comparison with the config's."""
    matrices = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
    return {
        "adamw": optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=0.1, mask=matrices),
        "muon": no.newton_schulz_momentum(schedule, 0.95, 5),
        "m3": no.m3(schedule, slow_period=16, form="printed", ema=False),
        "delta": no.delta_momentum(schedule, 0.9, form="arxiv"),
        "dmgd": no.deep_momentum(schedule, 0.999, 0.9, inner_lr=0.01),
    }[name]


@pytest.mark.parametrize("name", ["adamw", "muon", "m3", "delta", "dmgd"])
def test_the_config_level_is_the_optimizer(load_script, name):
    script = load_script("optimizer_study")
    s = script.get_settings(quick=True)
    config = script.lm_config(s, "synthetic", name, 0.01)
    spec = resolve_levels(config)[-1]
    assert spec.name == "backbone" and spec.select is None
    schedule = learning_rate_schedule(
        0.01, num_steps=s["lm_steps"], warmup_steps=s["lm_warmup"], min_lr_ratio=0.1
    )
    got_tx, want_tx = spec.transform(), _direct(name, schedule)
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros(3)}
    got_state, want_state = got_tx.init(params), want_tx.init(params)
    for t in range(3):
        grads = jax.tree.map(
            lambda p, t=t: jnp.sin(jnp.arange(p.size) + t).reshape(p.shape), params
        )
        got, got_state = got_tx.update(grads, got_state, params)
        want, want_state = want_tx.update(grads, want_state, params)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(a, b)
