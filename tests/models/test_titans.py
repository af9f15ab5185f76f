"""Titans MAC segment semantics; block configs and errors.

The generic contract suite (tests/models/test_contract.py) covers causality, pieces == whole,
generation and learning for every registered model, these included.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.models import titans

SEGMENT = 4
T = 3 * SEGMENT


def _mac_config():
    config = models.default_config("titans_mac")
    config.d_model = 16
    config.num_heads = 2
    config.chunk_size = SEGMENT
    config.num_persistent = 2
    return ml_collections.FrozenConfigDict(config)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, weights, x):
    return nnx.merge(graphdef, weights)(x, None)[0]


@pytest.fixture(scope="module")
def mac():
    block = titans.MACBlock(_mac_config(), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, T, 16))
    return block, x


def _run(block, x):
    return _apply(*nnx.split(block), x)


def test_mac_without_writes_attends_within_segments_only(mac):
    """θ = 0 and no forgetting freeze the memory: each segment then equals a fresh call on it."""
    block, x = mac
    frozen = nnx.clone(block)
    bias = frozen.write_gates.bias[...]
    frozen.write_gates.bias[...] = bias.at[: 2 * 2].set(-1e4)  # θ and the forget gate ≈ 0
    y = _run(frozen, x)
    for s in range(1, T // SEGMENT):
        piece = slice(s * SEGMENT, (s + 1) * SEGMENT)
        np.testing.assert_allclose(y[:, piece], _run(frozen, x[:, piece]), atol=1e-5, rtol=1e-5)


def test_mac_memory_carries_context_across_segments(mac):
    """With writes, the first segment reaches later segments only through the memory."""
    block, x = mac
    y = _run(block, x)
    changed = _run(block, x.at[:, 1].add(1.0))
    np.testing.assert_allclose(changed[:, :1], y[:, :1], atol=1e-6)
    assert float(jnp.max(jnp.abs(changed[:, SEGMENT:] - y[:, SEGMENT:]))) > 1e-5


def test_mac_reads_the_initial_memory_in_the_first_segment(mac):
    """h = M*_0(q) enters the first segment's attention: the initial memory changes its output."""
    block, x = mac
    other = nnx.clone(block)
    for name in other.memory_params:
        leaf = other.memory_params[name]
        leaf[...] = leaf[...] + 0.5
    y, y_other = _run(block, x[:, :SEGMENT]), _run(other, x[:, :SEGMENT])
    assert float(jnp.max(jnp.abs(y - y_other))) > 1e-5


@pytest.mark.parametrize("name", ["titans_lmm", "titans_mac", "titans_mag", "titans_mal"])
def test_unknown_memory_key_is_named(name):
    config = models.default_config(name)
    config.memory.depht = 3
    with pytest.raises(ValueError, match="depht"):
        models.build(config, rngs=nnx.Rngs(0))


def test_default_configs_hold_tuples_and_registered_names():
    for name in (
        "deltanet",
        "gated_deltanet",
        "titans_lmm",
        "titans_mac",
        "titans_mag",
        "titans_mal",
    ):
        assert name in models.available()
        config = models.default_config(name)
        assert config.name == name
        assert not any(isinstance(v, list) for v in config.values())
