"""The Hope block: composition (Eqs. 94–97) and the self-modifying ablation switches in the config.

The generic contract suite (tests/models/test_contract.py) covers causality, pieces == whole,
generation and learning for `hope`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.memory.self_modifying import SelfModifyingConfig
from nestlearn.models import hope


def _config(**self_modifying):
    config = models.default_config("hope")
    config.d_model = 16
    config.num_heads = 2
    config.chunk_size = 4
    config.mlp_ratio = 2.0
    config.cms.periods = (1, 2)
    config.self_modifying.chunk_size = 2
    for key, value in self_modifying.items():
        config.self_modifying[key] = value
    return config


# A non-default value for every SelfModifyingConfig field but memory_chunk_size.
ABLATIONS = {
    "chunk_size": 4,
    "adaptive_q": True,
    "momentum": 0.0,
    "use_dgd": False,
    "use_decay": False,
    "adaptive_k": False,
    "adaptive_v": False,
    "stop_gradient_vhat": False,
    "stop_gradient_writes": True,
    "eta_max": 0.25,
    "eta_bias_init": -1.0,
    "alpha_bias_init": 2.0,
    "eta_alpha_per_channel": True,
    "normalize_qk": False,
    "normalize_v": False,
    "normalize_x": False,
    "kv_init_scale": 0.5,
    "project_inputs": True,
    "project_init": "random",
    "activation": "gelu",
    "hidden_expansion": 2.0,
    "dgd_step": "normalized",
    "retention_target": "zero",
    "remat": True,
}


def test_every_self_modifying_field_is_reachable_from_the_model_config():
    # memory_chunk_size and writes are the model's chunk_size and memory_writes.
    model_fields = {"memory_chunk_size", "writes"}
    fields = {f.name for f in dataclasses.fields(SelfModifyingConfig)} - model_fields
    assert set(ABLATIONS) == fields == set(models.default_config("hope").self_modifying.keys())
    for key, value in ABLATIONS.items():
        config = hope.self_modifying_config(_config(**{key: value}).self_modifying, 8)
        assert getattr(config, key) == value and config.memory_chunk_size == 8
    off = hope.self_modifying_config(_config().self_modifying, 8, writes=False)
    assert off.writes is False


def test_block_uses_the_configured_ablation():
    config = _config(adaptive_q=True, momentum=0.0, use_dgd=False)
    block = hope.HopeBlock(ml_collections.FrozenConfigDict(config), rngs=nnx.Rngs(0))
    memory_config = block.mixer.memory_config
    assert (memory_config.adaptive_q, memory_config.momentum, memory_config.use_dgd) == (
        True,
        0.0,
        False,
    )
    assert memory_config.memory_chunk_size == config.chunk_size
    assert "q" in block.mixer.memory_params  # the adaptive-q memory exists


def test_block_is_self_modifying_titans_then_cms():
    """y = CMS(x + SelfModifyingTitans(RMSNorm(x))) (Eqs. 94–97 inside pre-norm residuals)."""
    block = hope.HopeBlock(ml_collections.FrozenConfigDict(_config()), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 6, 16))

    @jax.jit
    def both(x):
        y, _ = block(x, None)
        normed = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)
        h, _ = block.mixer(normed * block.norm.scale[...], None)
        expected, _ = block.cms(x + h, None)
        return y, expected

    y, expected = both(x)
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


def test_bad_configs_are_named():
    config = _config()
    config.self_modifying.momentun = 0.5
    with pytest.raises(ValueError, match="momentun"):
        models.build(config, rngs=nnx.Rngs(0))
    config = _config(momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):
        models.build(config, rngs=nnx.Rngs(0))
    config = _config()
    config.kernel_impl = "fast"
    with pytest.raises(ValueError, match="kernel_impl='fast' is not one of"):
        models.build(config, rngs=nnx.Rngs(0))
