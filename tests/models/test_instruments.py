"""The mixers' memory instruments (`Mixer.memory_stats`) and their capture from a model.

The matrix mixers' glue (one run over the doubled batch, queries k_t and k_{t+1}) is checked
against a numpy loop of the delta rule on the mixer's own features; every registered model with
an in-context memory records one set per layer inside `capture_memory_stats` and none outside.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.memory.instruments import MemoryStats
from nestlearn.models import DeltaNet, GatedDeltaNet, LinearAttention, MACBlock, Mixer
from nestlearn.models.instruments import capture_memory_stats, recording


@pytest.mark.parametrize("cls", [LinearAttention, DeltaNet, GatedDeltaNet])
@pytest.mark.parametrize("fresh", [True, False])
def test_matrix_mixer_stats_equal_the_delta_rule_loop_on_its_features(cls, fresh):
    b, t, h, d = 2, 9, 2, 4
    mixer = cls(16, num_heads=h, head_dim=d, chunk_size=4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (b, t, 16))
    inputs, gates, _ = mixer.features(x, None)
    s0 = None if fresh else 0.3 * jax.random.normal(jax.random.key(2), (b, h, d, d))
    stats = mixer.memory_stats(inputs, gates, s0)["memory"]

    k = np.asarray(inputs[1], np.float64)
    k = k / np.sqrt(np.sum(k * k, -1, keepdims=True) + 1e-6)
    v = np.asarray(inputs[2], np.float64)
    ones = np.ones((b, t, h))
    if cls is LinearAttention:
        alpha, beta = ones, ones
    elif cls is DeltaNet:
        alpha, beta = ones, 1 / (1 + np.exp(-np.asarray(gates[:, :, 0], np.float64)))
    else:
        g = 1 / (1 + np.exp(-np.asarray(gates, np.float64)))
        alpha, beta = g[:, :, 0], g[:, :, 1]
    s = np.zeros((b, h, d, d)) if fresh else np.asarray(s0, np.float64)
    start = s.copy()
    before, after = np.zeros((b, t, h)), np.zeros((b, t, h))
    for i in range(b):
        for j in range(h):
            for n in range(t):
                kk, vv = k[i, n, j], v[i, n, j]
                before[i, n, j] = 0.5 * np.sum((s[i, j] @ kk - vv) ** 2)
                if cls is LinearAttention:
                    s[i, j] = s[i, j] + np.outer(vv, kk)
                else:
                    erase = np.eye(d) - beta[i, n, j] * np.outer(kk, kk)
                    s[i, j] = alpha[i, n, j] * s[i, j] @ erase + beta[i, n, j] * np.outer(vv, kk)
                after[i, n, j] = 0.5 * np.sum((s[i, j] @ kk - vv) ** 2)
    per_seq = lambda m: np.linalg.norm(m.reshape(b, -1), axis=1).mean()
    want = {
        "inner_loss_before": before.mean(),
        "inner_loss_after": after.mean(),
        "eta_mean": beta.mean(),
        "eta_p05": np.percentile(beta, 5),
        "eta_p95": np.percentile(beta, 95),
        "alpha_mean": alpha.mean(),
        "alpha_p05": np.percentile(alpha, 5),
        "alpha_p95": np.percentile(alpha, 95),
        "state_norm": per_seq(s),
        "update_norm": per_seq(s - start),
    }
    for key, value in want.items():
        np.testing.assert_allclose(float(getattr(stats, key)), value, rtol=2e-5, err_msg=key)


#: Models whose instrument test runs by default (the rest are `slow`).
_INSTRUMENTS_FAST = ("linear_attention", "deltanet", "gated_deltanet", "transformer_pp")
MEMORY_MODELS = (
    "hope",
    "linear_attention",
    "deltanet",
    "gated_deltanet",
    "titans_lmm",
    "titans_mac",
    "titans_mag",
    "titans_mal",
)


def _tiny(name, **changes):
    config = models.default_config(name)
    config.update(d_model=16, num_layers=2, num_heads=2, max_len=32, chunk_size=4, **changes)
    if "self_modifying" in config:
        config.self_modifying.chunk_size = 2
    return models.build(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "name",
    [
        n if n in _INSTRUMENTS_FAST else pytest.param(n, marks=pytest.mark.slow)
        for n in (*MEMORY_MODELS, "transformer_pp", "hope_attention")
    ],
)
def test_every_memory_model_records_one_set_per_layer_inside_capture_only(name, monkeypatch):
    model = _tiny(name)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jax.random.randint(
        jax.random.key(0), (2, 10), 0, 256
    )  # 10: a partial chunk at the end

    @jax.jit
    def captured(params, rest, tokens):
        return capture_memory_stats(nnx.merge(graphdef, params, rest), tokens)

    logits, layers = captured(params, rest, tokens)

    # Outside the capture nothing computes instruments, and the forward pass is the same.
    def refuse(*args, **kwargs):
        raise AssertionError("memory_stats called outside capture_memory_stats")

    for cls in (*_subclasses(Mixer), MACBlock):
        monkeypatch.setattr(cls, "memory_stats", refuse, raising=False)
    assert not recording()
    plain = jax.jit(lambda p, r, x: nnx.merge(graphdef, p, r)(x)[0])(params, rest, tokens)
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-5)
    if name not in MEMORY_MODELS:
        assert layers == {}
        return
    names = {"memory", "generators"} if name == "hope" else {"memory"}
    assert sorted(layers) == [0, 1] and all(set(m) == names for m in layers.values())
    for memories in layers.values():
        for stats in memories.values():
            assert isinstance(stats, MemoryStats)
            values = [v for v in stats if v is not None]
            assert all(np.isfinite(v) for v in values)
            assert stats.update_norm > 0 and stats.state_norm > 0
            if stats.eta_mean is not None:
                assert stats.eta_p05 <= stats.eta_mean <= stats.eta_p95
                assert 0 < stats.alpha_p05 <= stats.alpha_p95 <= 1


def _subclasses(cls):
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


def test_an_online_cms_model_records_nothing_and_runs():
    config = models.default_config("hope")
    config.update(d_model=16, num_layers=1, num_heads=2, max_len=32, chunk_size=4)
    config.self_modifying.chunk_size = 2
    config.cms.mode = "online"
    config.cms.chunk_sizes = (4, 8, 16)
    model = models.build(config, rngs=nnx.Rngs(0))
    logits, layers = capture_memory_stats(model, jnp.zeros((1, 8), jnp.int32))
    assert layers == {} and logits.shape == (1, 8, config.vocab_size)
