"""Adapter surgery on a tiny pretrained model: function preserved at step 0, frozen stays frozen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nestlearn.core import Level
from nestlearn.pretrained import adapters, load_gguf, lora


@nnx.jit
def _logits(model, tokens):
    return model(tokens)[0]


@pytest.fixture
def base(tiny_gguf):
    model, _ = load_gguf(tiny_gguf[0], max_len=64)
    return model


def _tokens(model, shape, seed=0):
    vocab = model.config.vocab_size
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


def _flat(state):
    return {"/".join(map(str, path)): np.asarray(v) for path, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("init", ["stack", "copies"])
def test_hope_attention_conversion_preserves_logits(base, init):
    tokens = _tokens(base, (2, 10))
    converted = adapters.convert_to_hope_attention(base, periods=(1, 2, 4), init=init)
    assert converted.config.name == "hope_attention"
    assert len(converted.blocks[0].cms.levels) == 3
    np.testing.assert_allclose(
        _logits(converted, tokens), _logits(base, tokens), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_hope_attention_online_equals_base_until_first_update(base):
    tokens = _tokens(base, (1, 8))
    converted = adapters.convert_to_hope_attention(
        base, layers=(1,), mode="online", chunk_sizes=(4, 8), inner_lr=0.5
    )
    got, expected = _logits(converted, tokens), _logits(base, tokens)
    np.testing.assert_allclose(got[:, :4], expected[:, :4], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got[:, 4:], expected[:, 4:], atol=1e-3)  # chunk 1 saw an update


def test_gate_floor_and_init():
    gate = adapters.MemoryGate(4, floor=0.1)
    h = jnp.ones((1, 3, 4))
    np.testing.assert_allclose(gate(h), 0.1 + 0.9 * 0.5)
    gate.b[...] = jnp.asarray(-1e4)
    np.testing.assert_allclose(gate(h), 0.1)  # a saturated gate stays at the floor
    with pytest.raises(ValueError, match="floor"):
        adapters.MemoryGate(4, floor=1.0)


def test_adapters_start_at_base_and_only_adapter_weights_train(base):
    """Hope-Attention CMS (level 1, period 2) in block 0 and a Titans pathway in block 1.

    At step 0 the logits equal the base model's. Over a few steps only CMS level 1, memory and
    gate parameters change, and the zero-initialised memory output projection does change: had
    its gradient been zero at step 0, nothing in the pathway could ever have moved. Switching
    the memory off (ablation) removes exactly its contribution.
    """
    tokens = _tokens(base, (2, 9), seed=3)  # the model sees 8 = 2 memory chunks of 4
    model = adapters.convert_to_hope_attention(base, layers=(0,), periods=(1, 2))
    model = adapters.add_memory_pathways(
        model, kind="titans", layers=(1,), num_heads=2, head_dim=8, chunk_size=4, depth=1
    )
    assert isinstance(model.blocks[1], adapters.MemoryAdapterBlock)
    np.testing.assert_allclose(
        _logits(model, tokens[:, :-1]), _logits(base, tokens[:, :-1]), rtol=1e-5, atol=1e-5
    )
    before = _flat(nnx.state(model, nnx.Param))
    graphdef, trainable, frozen, other = adapters.split_trainable(
        model, r"cms/levels/1/|/memory/|/gate/"
    )
    levels = (
        Level("cms_level_1", r"cms/levels/1/", optax.adam(1e-2), period=2),
        Level("memory", None, optax.adam(1e-2)),
    )
    train = adapters.make_adapter_step(graphdef, levels)
    opt_state = train.init(trainable)
    losses = []
    for _ in range(4):
        trainable, opt_state, loss = train.step(trainable, opt_state, tokens, frozen, other)
        losses.append(float(loss))
    trained_model = nnx.merge(graphdef, trainable, frozen, other)
    after = _flat(nnx.state(trained_model, nnx.Param))
    assert before.keys() == after.keys()
    trained = {k for k in before if not np.array_equal(before[k], after[k])}
    assert all(("cms/levels/1/" in k or "/memory/" in k or "/gate/" in k) for k in trained)
    assert any("out_proj" in k for k in trained) and any("cms/levels/1/w_out" in k for k in trained)
    assert losses[-1] < losses[0]
    values = adapters.gate_values(trained_model, tokens[:, :-1])
    assert set(values) == {1} and 0.05 <= values[1] <= 1.0

    # ablation removes exactly the memory's contribution: it equals zeroing its projection
    tokens = tokens[:, :-1]
    with_memory = _logits(trained_model, tokens)
    adapters.set_memory_enabled(trained_model, False)
    ablated = _logits(trained_model, tokens)
    adapters.set_memory_enabled(trained_model, True)
    out_proj = trained_model.blocks[1].memory.out_proj.kernel
    out_proj[...] = jnp.zeros_like(out_proj[...])
    np.testing.assert_array_equal(ablated, _logits(trained_model, tokens))
    assert not np.allclose(ablated, with_memory, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["titans", "self_modifying"])
def test_deep_memory_pathways_preserve_logits(base, kind):
    tokens = _tokens(base, (2, 8))
    model = adapters.add_memory_pathways(
        base, kind=kind, layers=(1,), num_heads=2, head_dim=8, chunk_size=4
    )
    np.testing.assert_array_equal(_logits(model, tokens), _logits(base, tokens))


def test_lora_starts_at_base_and_trains_only_factors(base):
    tokens = _tokens(base, (2, 9), seed=5)
    graphdef, params, other = nnx.split(base, nnx.Param, ...)
    factors = lora.lora_init(params, r"attn/w[qv]/kernel$", rank=2)
    assert len(factors) == 4  # wq and wv of 2 blocks
    assert lora.lora_param_count(factors) == 2 * (2 * (32 + 32) + 2 * (32 + 16))
    merged = lora.lora_merge(params, factors, alpha=4.0)
    jax.tree.map(np.testing.assert_array_equal, merged, params)
    train = adapters.make_adapter_step(
        graphdef, (Level("lora", None, optax.adam(1e-2)),), transform=lora.lora_transform(4.0)
    )
    opt_state = train.init(factors)
    new, opt_state, _ = train.step(factors, opt_state, tokens, params, other)
    assert any(np.abs(f["b"]).max() > 0 for f in new.values())
    with pytest.raises(ValueError, match="selects no 2-D kernel"):
        lora.lora_init(params, r"nothing", rank=2)


def test_bad_surgery_arguments(base):
    with pytest.raises(ValueError, match="layers"):
        adapters.add_memory_pathways(base, layers=(2,))
    with pytest.raises(ValueError, match="kind"):
        adapters.add_memory_pathways(base, kind="lstm")
    with pytest.raises(ValueError, match="init"):
        adapters.convert_to_hope_attention(base, init="random")
    with pytest.raises(ValueError, match="matches no parameter"):
        adapters.split_trainable(base, r"/memory/")


def test_gate_floor_keeps_a_collapsed_pathway_trainable(base):
    """Gate collapse: σ saturated at 0 beside a still-zero memory projection.

    With the projection at zero the model's output does not depend on the gate, so the gradient
    of the projection is exactly g times that of a fully open gate: the floor g_min keeps it at
    g_min of an ungated branch. Without a floor the saturated gate is exactly 0, so the pathway
    would have no gradient and could never move again.
    """
    tokens = _tokens(base, (2, 9), seed=7)
    model = adapters.add_memory_pathways(
        base, layers=(1,), num_heads=2, head_dim=8, chunk_size=4, depth=1, gate_floor=0.05
    )
    graphdef, trainable, frozen, other = adapters.split_trainable(
        model, r"memory/out_proj/|gate/b$"
    )

    @jax.jit
    def projection_grad(trainable, bias):
        trainable = jax.tree.map(lambda a: bias if a.ndim == 0 else a, trainable)

        def loss(trainable):
            model = nnx.merge(graphdef, trainable, frozen, other)
            return adapters.lm_loss(model(tokens[:, :-1])[0], tokens[:, 1:])

        grads = jax.grad(loss)(trainable)
        (grad,) = [g for g in jax.tree.leaves(grads) if g.ndim == 2]
        return grad

    open_gate = np.asarray(projection_grad(trainable, jnp.float32(40.0)))
    closed = np.asarray(projection_grad(trainable, jnp.float32(-40.0)))
    assert np.abs(open_gate).max() > 0
    np.testing.assert_allclose(closed, 0.05 * open_gate, rtol=1e-4, atol=1e-12)
    h = jnp.ones((1, 2, model.config.d_model))
    no_floor = adapters.MemoryGate(model.config.d_model, floor=0.0)
    no_floor.b[...] = jnp.float32(-1e4)
    assert not np.any(np.asarray(no_floor(h)))  # saturated: g = 0 exactly, a dead branch


def test_titans_forget_bias_and_step_bound(base):
    model = adapters.add_memory_pathways(
        base,
        layers=(1,),
        num_heads=2,
        head_dim=8,
        chunk_size=4,
        forget_bias=-8.0,
        chunk_step_max=2.0,
    )
    memory = model.blocks[1].memory
    bias = np.asarray(memory.gates.bias[...]).reshape(3, 2)  # [θ, α, η] × heads
    np.testing.assert_array_equal(bias[1], [-8.0, -8.0])
    np.testing.assert_array_equal(bias[[0, 2]], np.zeros((2, 2)))
    assert memory.gating.theta_max == pytest.approx(2.0 / 4)
    with pytest.raises(ValueError, match="chunk_step_max"):
        adapters.add_memory_pathways(base, layers=(1,), chunk_step_max=0.0)
