"""Registry, config validation, parameter counting and the slow/fast state split."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.models.registry import MemoryState


def test_required_models_are_registered_with_consistent_configs():
    assert {"transformer_pp", "hope_attention"} <= set(models.available())
    for name in models.available():
        config = models.default_config(name)
        assert config.name == name
        for key in models.base_config(name):
            assert key in config, (name, key)
        assert not any(isinstance(v, list) for v in config.values()), name
    assert models.default_config("transformer_pp") is not models.default_config("transformer_pp")


def test_register_refuses_a_different_block_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        models.register(
            "transformer_pp",
            models.HopeAttentionBlock,
            models.transformer.default_transformer_config,
        )
    with pytest.raises(ValueError, match="unknown model name='nope'"):
        models.default_config("nope")


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("d_modle", 8, "unknown key"),
        ("dtype", "float16", "dtype"),
        ("num_layers", 0, "num_layers"),
        ("kernel_impl", "cuda", "kernel_impl"),
        ("num_heads", 3, "head_dim=0"),
    ],
)
def test_build_rejects_bad_configs_naming_the_key(key, value, match):
    config = models.default_config("transformer_pp")
    config[key] = value
    with pytest.raises(ValueError, match=match):
        models.build(config, rngs=nnx.Rngs(0))


def _tiny(name, **overrides):
    config = models.default_config(name)
    config.update(vocab_size=16, d_model=16, num_layers=1, num_heads=2, max_len=8, mlp_ratio=2.0)
    config.update(overrides)
    return config


def test_count_params_matches_a_hand_count():
    d, v, f = 16, 16, 32  # f = mlp_hidden_size(16, 2.0)
    per_block = 4 * d * d + 3 * d * f + 2 * d  # q,k,v,o + SwiGLU + two norm scales
    tied = models.build(_tiny("transformer_pp"), rngs=nnx.Rngs(0))
    assert models.count_params(tied) == v * d + per_block + d
    untied = models.build(_tiny("transformer_pp", tie_embeddings=False), rngs=nnx.Rngs(0))
    assert models.count_params(untied) == 2 * v * d + per_block + d
    assert models.count_params(nnx.state(untied, nnx.Param)) == models.count_params(untied)
    # without the embedding and the untied head: the blocks and the final norm
    assert models.count_params(tied, embedding=False) == per_block + d
    assert models.count_params(untied, embedding=False) == per_block + d


def test_memory_state_is_split_from_params():
    model = models.build(_tiny("transformer_pp"), rngs=nnx.Rngs(0))
    n = models.count_params(model)
    model.blocks[0].fast = MemoryState(jnp.zeros((3, 4)))
    _, params, fast, _ = nnx.split(model, nnx.Param, MemoryState, ...)
    assert models.count_params(model) == n
    assert [x.shape for x in jax.tree.leaves(fast)] == [(3, 4)]
    assert models.count_params(params) == n


def test_remat_and_bfloat16_keep_the_function():
    tokens = jax.random.randint(jax.random.key(0), (2, 6), 0, 16)

    def loss_and_grad(config):
        model = models.build(config, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            logits, _ = nnx.merge(graphdef, params, rest)(tokens)
            return jnp.mean(logits**2), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (l0, logits0), g0 = loss_and_grad(_tiny("transformer_pp"))
    (l1, _), g1 = loss_and_grad(_tiny("transformer_pp", remat=True))
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    bf16 = models.build(_tiny("transformer_pp", dtype="bfloat16"), rngs=nnx.Rngs(0))
    logits_bf16, _ = nnx.jit(lambda m, x: m(x))(bf16, tokens)
    assert logits_bf16.dtype == jnp.float32
    np.testing.assert_allclose(logits_bf16, logits0, atol=0.05)


def test_model_and_generate_reject_bad_input():
    model = models.build(_tiny("transformer_pp"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="tokens must be integer"):
        model(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="prompt_tokens"):
        models.generate(model, jnp.zeros((3,), jnp.int32), max_new_tokens=2, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="top_k"):
        models.sample_logits(jnp.zeros((1, 4)), jax.random.key(0), top_k=9)


def test_top_k_sampling_stays_in_the_top_k():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.9]])
    draws = jax.vmap(lambda k: models.sample_logits(logits, k, top_k=2))(
        jax.random.split(jax.random.key(0), 64)
    )
    assert set(np.asarray(draws).ravel()) == {1, 3}


_BF16_FAST = ("transformer_pp", "deltanet")


@pytest.mark.parametrize(
    "name",
    [n if n in _BF16_FAST else pytest.param(n, marks=pytest.mark.slow) for n in models.available()],
)
def test_bfloat16_compute_trains_every_model(name):
    """dtype="bfloat16": float32 params and logits, finite float32 gradients close to float32's."""
    tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 16)

    def loss_and_grad(dtype):
        model = models.build(_tiny(name, dtype=dtype, chunk_size=4), rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            logits, _ = nnx.merge(graphdef, params, rest)(tokens)
            logp = jax.nn.log_softmax(logits[:, :-1])
            return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], -1)), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (l32, _), g32 = loss_and_grad("float32")
    (l16, logits16), g16 = loss_and_grad("bfloat16")
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(l16, l32, rtol=0.02)
    flat32 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g32)])
    flat16 = jnp.concatenate([g.ravel() for g in jax.tree.leaves(g16)])
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g16))
    assert bool(jnp.all(jnp.isfinite(flat16)))
    cosine = jnp.dot(flat16, flat32) / (jnp.linalg.norm(flat16) * jnp.linalg.norm(flat32))
    assert cosine > 0.98, cosine
