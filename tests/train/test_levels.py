"""Levels from `config.levels`: rules by name, defaults from `config.optim`, CMS levels from the
model, the schedules, the errors, the command line, and the fixed AdamW recipe they replace."""

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tiny_config
from absl import flags
from flax import nnx
from ml_collections import config_flags

import nestlearn.optim
from nestlearn import models
from nestlearn.core import Level
from nestlearn.optim.scheduler import nested
from nestlearn.train import (
    available_rules,
    build_levels,
    learning_rate_schedule,
    level_config,
    resolve_levels,
    validate_config,
)
from nestlearn.train.step import TrainState, build_train_step, split_model

CONFIGS = Path(__file__).resolve().parents[2] / "experiments" / "configs"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"config_{name}", CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _command_line(config_arg, *overrides):
    """The config `experiments/main.py --config=<config_arg> <overrides>` would train."""
    argv = ["main.py", f"--config={config_arg}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values, sys_argv=argv)
    flag_values(argv)
    return flag_values.config


def _reference_lr(step, *, peak, warmup, total, end):
    # Linear warmup from 0, then cosine decay to `end` at `total` (written from the definition).
    if step < warmup:
        return peak * step / warmup
    frac = min(1.0, (step - warmup) / (total - warmup))
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * frac))


def test_schedule_is_warmup_then_cosine_or_constant():
    schedule = learning_rate_schedule(2e-3, num_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    for step in (0, 1, 5, 10, 11, 40, 99, 100, 150):
        want = _reference_lr(step, peak=2e-3, warmup=10, total=100, end=2e-4)
        assert float(schedule(step)) == pytest.approx(want, rel=1e-5, abs=1e-9)
    constant = learning_rate_schedule(2e-3, num_steps=100, kind="constant", warmup_steps=10)
    assert [float(constant(s)) for s in (0, 50, 100)] == [pytest.approx(2e-3)] * 3


def test_levels_follow_the_model_cms_periods_and_a_transformer_has_one_level():
    levels = build_levels(tiny_config.get_config("hope_attention"))
    assert [(lv.name, lv.select, lv.period) for lv in levels] == [
        ("cms_level_0", r"(^|/)cms/levels/0/", 1),
        ("cms_level_1", r"(^|/)cms/levels/1/", 3),  # cms_level_2 of the default: no such level
        ("backbone", None, 1),
    ]
    assert [lv.name for lv in build_levels(tiny_config.get_config("transformer_pp"))] == [
        "backbone"
    ]


def test_a_slow_cms_level_sums_its_period_and_reads_the_schedule_in_training_steps():
    config = tiny_config.get_config("hope_attention")
    config.levels.cms_level_1.rule = "sgd"
    config.levels.cms_level_1.learning_rate = 0.5 * config.optim.lr
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
    schedule = resolve_levels(config)[1].schedule
    slow = []
    for step in range(1, 7):
        grads = jax.tree.map(lambda p, s=step: jnp.full_like(p, float(s)), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        slow.append(float(params["blocks"]["0"]["cms"]["levels"]["1"]["w"][0]))
    # Eq. 71: period 3 → updates at steps 3 and 6 with the summed gradients 1+2+3 and 4+5+6, at
    # the learning rate of training steps 0 and 3 (its update count times its period).
    first = -float(schedule(0)) * 6
    second = first - float(schedule(3)) * 15
    assert first < 0 and float(schedule(3)) != float(schedule(1))
    assert float(schedule(0)) == pytest.approx(0.5 * config.optim.lr)
    np.testing.assert_allclose(slow, [0, 0, first, first, first, second], rtol=1e-6)


def _fixed_adamw_levels(config):
    """The levels every shipped config trained with before `config.levels`, written out: AdamW
    (optim.b1, b2, eps, weight decay on matrices) on the backbone and on each scheduled CMS
    level, warmup + cosine from optim.lr, a CMS level's schedule read at updates · period."""
    o = config.optim
    warmup = min(o.warmup_steps, max(config.train.num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(config.train.num_steps, warmup + 1), o.lr * o.min_lr_ratio
    )

    def adamw(lr):
        matrices = lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)
        return optax.adamw(lr, o.b1, o.b2, o.eps, weight_decay=o.weight_decay, mask=matrices)

    cms = [
        Level(name, regex, adamw(lambda n, k=period: 1.0 * schedule(n * k)), period)
        for name, regex, period in models.cms_level_selectors(config.model)
    ]
    return (*cms, Level("backbone", None, adamw(schedule)))


def _run(levels, params, grads):
    tx = nested(levels)
    update = jax.jit(tx.update)
    state = tx.init(params)
    for g in grads:
        updates, state = update(g, state, params)
        params = optax.apply_updates(params, updates)
    return jax.device_get(params)


@pytest.mark.parametrize("name", ["hope_attention", "transformer_pp"])
def test_the_shipped_levels_update_bit_for_bit_like_the_fixed_adamw_recipe(name):
    config = tiny_config.get_config(name)  # hope_attention: CMS levels of periods 1 and 3
    config.train.num_steps = 8
    params = {
        "embed": {"embedding": jnp.ones((6, 4))},
        "blocks": {
            "0": {
                "attn": {"w": jnp.ones((4, 4)), "b": jnp.ones(4)},
                "cms": {"levels": {i: {"w": jnp.ones((4, 4)), "b": jnp.ones(4)} for i in "01"}},
            }
        },
    }
    if name == "transformer_pp":
        del params["blocks"]["0"]["cms"]
    keys = jax.random.split(jax.random.key(0), 7)
    grads = [jax.tree.map(lambda p, k=k: jax.random.normal(k, p.shape), params) for k in keys]
    new = _run(build_levels(config), params, grads)
    jax.tree.map(
        np.testing.assert_array_equal, new, _run(_fixed_adamw_levels(config), params, grads)
    )
    assert not np.array_equal(new["blocks"]["0"]["attn"]["w"], params["blocks"]["0"]["attn"]["w"])


@pytest.mark.slow
def test_the_default_levels_train_a_hope_model_bit_for_bit_like_the_fixed_adamw_recipe():
    config = tiny_config.get_config("hope_attention")
    config.model.vocab_size = 64
    config.train.num_steps = 6
    model = models.build(config.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    tokens = jax.random.randint(jax.random.key(0), (6, 2, 9), 0, 64)
    runs = []
    for levels in (build_levels(config), _fixed_adamw_levels(config)):
        step = build_train_step(levels, params=params, grad_clip=1.0, graphdef=graphdef)
        state = TrainState.create(jax.tree.map(jnp.copy, params), levels, seed=0)
        losses = []
        for i in range(6):
            state, metrics = step(state, rest, tokens[i, :, :-1], tokens[i, :, 1:])
            losses.append(float(metrics["loss"]))
        runs.append((losses, jax.device_get(state.params)))
    (losses, params_new), (losses_ref, params_ref) = runs
    assert losses == losses_ref
    jax.tree.map(np.testing.assert_array_equal, params_new, params_ref)


@pytest.mark.parametrize(
    "config_arg",
    [
        "default.py",
        "default.py:smoke",
        "transformer_pp.py",
        "hope_760m.py",
        "hope_1p3b.py",
        "results_lm.py:hope,quick",
        "results_lm.py:titans_mac",
        "memory_study.py:hope",
    ],
)
def test_every_shipped_config_takes_a_backbone_rule_from_the_command_line(config_arg, monkeypatch):
    monkeypatch.syspath_prepend(str(CONFIGS))  # memory_study imports results_lm
    config = _command_line(
        str(CONFIGS / config_arg),
        "--config.levels.backbone.rule=m3",
        "--config.levels.backbone.learning_rate=0.02",
    )
    validate_config(config)
    backbone = resolve_levels(config)[-1]
    assert (backbone.name, backbone.select, backbone.rule) == ("backbone", None, "m3")
    assert backbone.factory is nestlearn.optim.m3
    assert backbone.kwargs == {}  # the adamw section (b2, weight_decay, …) is left behind
    assert float(backbone.schedule(10**6)) == pytest.approx(0.02 * config.optim.min_lr_ratio)
    assert isinstance(build_levels(config)[-1].rule, optax.GradientTransformation)


def test_a_cms_level_is_overridden_by_name_and_its_rule_section_is_used():
    config = _command_line(
        f"{CONFIGS / 'default.py'}:smoke",
        "--config.levels.cms_level_1.rule=delta_momentum",
        "--config.levels.cms_level_1.period=2",
        "--config.levels.cms_level_1.schedule=constant",
        "--config.levels.cms_level_0.adamw.b2=0.99",
        "--config.levels.cms_level_0.clip=0.5",
    )
    validate_config(config)
    specs = {spec.name: spec for spec in resolve_levels(config)}
    slow, fast = specs["cms_level_1"], specs["cms_level_0"]
    assert (slow.rule, slow.period, slow.select) == ("delta_momentum", 2, r"(^|/)cms/levels/1/")
    assert float(slow.schedule(0)) == float(slow.schedule(19)) == pytest.approx(3e-3)
    assert fast.kwargs["b2"] == 0.99 and fast.kwargs["b1"] == config.optim.b1 == 0.9
    assert fast.clip == 0.5 and specs["backbone"].kwargs["b2"] == 0.95


def test_rules_resolve_from_nestlearn_optim_then_optax():
    rules = available_rules()
    for name in ("m3", "delta_momentum", "deep_momentum", "newton_schulz_momentum", "dgd"):
        assert name in rules and getattr(nestlearn.optim, name)
    for name in ("adamw", "sgd", "lion", "muon"):
        assert name in rules
    assert "nested" not in rules and "scale_by_m3" not in rules  # no learning_rate: no rule


def _config_with(**changes):
    config = tiny_config.get_config("hope_attention")
    for key, value in changes.items():
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        with node.unlocked():
            node[leaf] = value
    return config


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        (
            {"levels.backbone.rule": "adamz"},
            r"'levels.backbone.rule'='adamz' is unknown; allowed: \[.*'delta_momentum'.*'lion'",
        ),
        (
            {"levels.cms_level_1.perod": 2},
            r"'levels.cms_level_1.perod' is unknown; allowed: \['accumulate', 'clip', 'learning",
        ),
        (
            {"levels.backbone.adamw.b3": 0.9},
            r"'levels.backbone.adamw.b3' is not a keyword of rule 'adamw' .*allowed: \['b1', 'b2'",
        ),
        (
            {
                "levels.backbone.rule": "m3",
                "levels.backbone.m3": ml_collections.ConfigDict({"b2": 0.9}),
            },
            r"'levels.backbone.m3.b2' is not a keyword of rule 'm3' .*allowed: \['beta1', 'beta2'",
        ),
        (
            {"levels.backbone.schedule": "linear"},
            r"'levels.backbone.schedule'='linear' is not allowed; allowed: \['warmup_cosine'",
        ),
        ({"levels.backbone.period": 0}, r"'levels.backbone.period'=0 must be an integer >= 1"),
        ({"levels.cms_level_2.rule": "sgd"}, r"'levels.cms_level_2' configures a CMS level the"),
        ({"levels.head": level_config()}, r"at most one level may have select=None.*'backbone'"),
        ({"model.cms.periods": (1, 2, 4, 8)}, r"'levels.cms_level_3' is missing"),
    ],
)
def test_bad_levels_name_the_level_and_the_key(changes, pattern):
    if "model.cms.periods" in changes:
        changes["model.cms.chunk_sizes"] = (8, 16, 32, 64)
    with pytest.raises(ValueError, match=pattern):
        validate_config(_config_with(**changes))


def test_a_named_level_selects_by_regex_and_the_catch_all_keeps_the_rest():
    config = _config_with(
        **{
            "levels.embed": level_config(
                select=r"embed", rule="sgd", schedule="constant", learning_rate=0.1
            )
        }
    )
    validate_config(config)
    assert [(lv.name, lv.select) for lv in build_levels(config)][-2:] == [
        ("embed", "embed"),
        ("backbone", None),
    ]


def test_a_run_saved_before_config_levels_resumes_only_with_the_rules_it_ran():
    from nestlearn.train import trainer
    from nestlearn.train.checkpoint import dump_config

    now = dump_config(tiny_config.get_config("hope_attention"))  # CMS levels 0 and 1
    for cms_rule, changed in (("adamw", []), ("sgd", ["cms_level_0", "cms_level_1"])):
        saved = {k: v for k, v in now.items() if k != "levels"}
        saved["optim"] = {**now["optim"], "cms_rule": cms_rule, "cms_lr_scale": 1.0}
        saved = trainer._upgrade(saved)
        assert "cms_rule" not in saved["optim"]
        keys = trainer._fixed_on_resume(now, saved)
        differ = [k for k in keys if trainer._lookup(now, k) != trainer._lookup(saved, k)]
        assert differ == [f"levels.{name}.rule" for name in changed]
