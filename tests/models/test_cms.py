"""Continuum Memory System: equations, from_mlp, scheduled periods and online chunk updates."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.core import tree_paths
from nestlearn.models.cms import CMS, cms_apply, cms_level_selectors
from nestlearn.models.layers import MLP, RMSNorm, SwiGLU


def tiny_hope_attention(**cms):
    config = models.default_config("hope_attention")
    config.update(vocab_size=16, d_model=16, num_layers=1, num_heads=2, max_len=32, mlp_ratio=2.0)
    config.cms.update(cms)
    return config


def _swiglu(w, x):
    return (jax.nn.silu(x @ w["w_gate"]) * (x @ w["w_in"])) @ w["w_out"]


def _norm(w, x):
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * w["norm"]


@pytest.mark.parametrize("variant", ["sequential", "independent"])
def test_cms_apply_matches_equations(x64, variant):
    keys = iter(jax.random.split(jax.random.key(0), 20))
    d, f = 4, 6
    levels = [
        {
            "norm": 1 + 0.1 * jax.random.normal(next(keys), (d,), jnp.float64),
            "w_in": jax.random.normal(next(keys), (d, f), jnp.float64),
            "w_gate": jax.random.normal(next(keys), (d, f), jnp.float64),
            "w_out": jax.random.normal(next(keys), (f, d), jnp.float64),
            "mix": jnp.asarray(0.5 + i, jnp.float64),
        }
        for i in range(3)
    ]
    x = jax.random.normal(next(keys), (2, 3, d), jnp.float64)
    apply = jax.jit(functools.partial(cms_apply, variant=variant, ffn="swiglu", act="gelu"))
    y = apply(levels, x)
    if variant == "sequential":  # Eq. 70 with a pre-norm residual per level
        ref = x
        for w in levels:
            ref = ref + _swiglu(w, _norm(w, ref))
    else:  # Eq. 74: a learned weighted sum of the levels, each reading x
        ref = x + sum(w["mix"] * _swiglu(w, _norm(w, x)) for w in levels)
    np.testing.assert_allclose(y, ref, rtol=1e-12)
    # Per-sequence (online) weights: sequence i with its own copy gives the same output.
    batched = [jax.tree.map(lambda a: jnp.stack([a, a]), w) for w in levels]
    np.testing.assert_allclose(apply(batched, x), y, rtol=1e-12)


@pytest.mark.parametrize("variant", ["sequential", "independent"])
@pytest.mark.parametrize("kind", [SwiGLU, MLP])
def test_cms_from_mlp_reproduces_the_mlp(kind, variant):
    mlp = kind(8, 12, rngs=nnx.Rngs(0))
    norm = RMSNorm(8)
    norm.scale[...] = jnp.linspace(0.5, 1.5, 8)
    cms = CMS.from_mlp(mlp, norm=norm, periods=(1, 4, 16), variant=variant, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 5, 8))
    y, _ = nnx.jit(lambda cms, x: cms(x))(cms, x)
    expected = nnx.jit(lambda mlp, norm, x: x + mlp(norm(x)))(mlp, norm, x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert len(cms.levels) == 3


def test_hope_attention_from_transformer_block_is_the_same_function():
    config = tiny_hope_attention(periods=(1, 8))
    block = models.TransformerBlock(config, rngs=nnx.Rngs(0))
    hope = models.HopeAttentionBlock.from_transformer(block, config, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (2, 5, 16))
    call = nnx.jit(lambda blk, x: blk(x, None)[0])
    np.testing.assert_allclose(call(hope, x), call(block, x), rtol=1e-5, atol=1e-6)


def test_level_selectors_partition_cms_parameters():
    config = tiny_hope_attention(periods=(1, 3, 5))
    config.num_layers = 2
    model = models.build(config, rngs=nnx.Rngs(0))
    paths = tree_paths(nnx.state(model, nnx.Param))
    selectors = cms_level_selectors(config)
    assert [s[2] for s in selectors] == [1, 3, 5]

    for path in paths:
        hits = [name for name, regex, _ in selectors if re.search(regex, path)]
        assert len(hits) == ("/cms/" in f"/{path}"), (path, hits)
    for i, (_, regex, _) in enumerate(selectors):
        owned = [p for p in paths if re.search(regex, p)]
        assert owned and all(f"cms/levels/{i}/" in p for p in owned)
    assert cms_level_selectors(models.default_config("transformer_pp")) == ()


def test_scheduled_level_changes_only_every_period():
    from nestlearn.core import Level
    from nestlearn.optim.scheduler import nested

    config = tiny_hope_attention(periods=(1, 2, 3))
    model = models.build(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    levels = [Level("backbone", None, optax.adam(1e-2))] + [
        Level(name, regex, optax.sgd(1e-1), period=period)
        for name, regex, period in cms_level_selectors(config)
    ]
    tx = nested(levels)
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)

    def loss_fn(params):
        logits, _ = nnx.merge(graphdef, params, rest)(tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def level_kernel(params, i):
        return np.asarray(params["blocks"][0]["cms"]["levels"][i]["w_in"]["kernel"][...])

    opt_state = tx.init(params)
    for s in range(1, 7):
        before = [level_kernel(params, i) for i in range(3)]
        params, opt_state = step(params, opt_state)
        for i, period in enumerate((1, 2, 3)):
            changed = not np.array_equal(before[i], level_kernel(params, i))
            assert changed == (s % period == 0), (s, i)


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, weights, tokens, state):
    return nnx.merge(graphdef, weights)(tokens, state)


@pytest.mark.parametrize("rule, lr", [("sgd", 0.5), ("adam", 0.05)])
def test_online_levels_step_only_at_their_chunk_boundaries_and_match_reference(rule, lr):
    """Dynamic evaluation (Eq. 71 in context) against a plain loop over chunks, for SGD (the
    default, θ ← θ − lr Σg) and for another optax rule driving the same clock."""
    sizes = (2, 4, 8)
    config = tiny_hope_attention(
        mode="online", chunk_sizes=sizes, inner_lr=lr, online_rule=rule, periods=(1, 1, 1)
    )
    model = models.build(config, rngs=nnx.Rngs(0))
    graphdef, weights = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 16)

    # Fed in base chunks: level l changes exactly when the tokens seen reach a multiple of C(l).
    state = model.init_state(2)
    history = [state.layers[0][1].weights]
    for j in range(8):
        _, state = _apply(graphdef, weights, tokens[:, 2 * j : 2 * j + 2], state)
        history.append(state.layers[0][1].weights)
    for j in range(1, 9):
        for level, size in enumerate(sizes):
            old, new = history[j - 1][level]["w_out"], history[j][level]["w_out"]
            assert (not np.array_equal(old, new)) == ((2 * j) % size == 0), (j, level)

    # Reference: run the plain model (no online updates; causal, so the whole sequence serves
    # every prefix) with the current fast weights, take the gradient of chunk j's summed
    # next-token loss, sum the gradients per level and step each level at its boundaries with
    # its own optax rule (elementwise, so one rule over both sequences equals one per sequence).
    block = model.blocks[0]
    fast = [jax.tree.map(lambda a: jnp.stack([a, a]), w) for w in block.cms.level_weights()]
    acc = [jax.tree.map(jnp.zeros_like, w) for w in fast]
    tx = getattr(optax, rule)(lr)
    rule_states = [tx.init(w) for w in fast]

    @jax.jit
    @functools.partial(jax.value_and_grad, has_aux=True)
    def chunk_loss(fast, j):
        cms_state = models.CMSOnlineState(tuple(fast), None, ())
        logits, _ = model.forward(tokens, ((None, cms_state),))
        chunk_logits = jax.lax.dynamic_slice_in_dim(logits, 2 * j, 2, axis=1)
        chunk = jax.lax.dynamic_slice_in_dim(tokens, 2 * j, 2, axis=1)
        loss = optax.softmax_cross_entropy_with_integer_labels(chunk_logits[:, :-1], chunk[:, 1:])
        return jnp.sum(loss), chunk_logits

    ref_logits = []
    for j in range(8):
        (_, logits), grads = chunk_loss(fast, j)
        ref_logits.append(logits)
        acc = [jax.tree.map(jnp.add, a, g) for a, g in zip(acc, grads)]
        for level, size in enumerate(sizes):
            if (2 * j + 2) % size == 0:
                updates, rule_states[level] = tx.update(acc[level], rule_states[level])
                fast[level] = optax.apply_updates(fast[level], updates)
                acc[level] = jax.tree.map(jnp.zeros_like, acc[level])
    logits, state = _apply(graphdef, weights, tokens, None)
    np.testing.assert_allclose(logits, jnp.concatenate(ref_logits, axis=1), rtol=2e-4, atol=2e-5)
    # Adam's m/√v turns float32 noise in a near-zero gradient into a visible step difference.
    atol = 2e-5 if rule == "sgd" else 2e-4
    for got, want in zip(state.layers[0][1].weights, fast):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=atol)


def test_nested_variant_resets_to_learned_initial_weights():
    sizes = (2, 4)
    config = tiny_hope_attention(
        mode="online", chunk_sizes=sizes, inner_lr=0.5, periods=(1, 1), variant="nested"
    )
    model = models.build(config, rngs=nnx.Rngs(0))
    graphdef, weights = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 16)
    initial = model.blocks[0].cms.level_weights()[0]["w_out"]
    state = model.init_state(2)
    for j, reset in enumerate((False, True, False)):  # after 2, 4, 6 tokens
        _, state = _apply(graphdef, weights, tokens[:, 2 * j : 2 * j + 2], state)
        fast = state.layers[0][1].weights[0]["w_out"]
        assert np.array_equal(fast, jnp.broadcast_to(initial, fast.shape)) == reset, j


def test_cms_config_errors_name_the_key():
    config = tiny_hope_attention(variant="nested")
    with pytest.raises(ValueError, match=r"cms\.variant='nested'"):
        models.build(config, rngs=nnx.Rngs(0))
    config = tiny_hope_attention(mode="online", online_rule="sgdd")
    with pytest.raises(ValueError, match=r"cms\.online_rule='sgdd'.*'adamw'"):
        models.build(config, rngs=nnx.Rngs(0))
    config = tiny_hope_attention(mode="online", chunk_sizes=(4, 6, 16))
    with pytest.raises(ValueError, match=r"cms\.chunk_sizes"):
        models.build(config, rngs=nnx.Rngs(0))
    config = tiny_hope_attention(periods=(1, 0))
    with pytest.raises(ValueError, match=r"cms\.periods"):
        models.build(config, rngs=nnx.Rngs(0))


def test_online_pieces_of_any_length_equal_one_call():
    """Streaming with pieces that cut base chunks anywhere (`chunk_aligned`) equals one call."""
    config = tiny_hope_attention(mode="online", chunk_sizes=(4, 8), inner_lr=0.5, periods=(1, 1))
    model = models.build(config, rngs=nnx.Rngs(0))
    graphdef, weights = nnx.split(model)
    tokens = jax.random.randint(jax.random.key(3), (2, 19), 0, 16)
    whole, whole_state = _apply(graphdef, weights, tokens, None)
    state, pieces, start = None, [], 0
    for size in (3, 6, 1, 9):
        logits, state = _apply(graphdef, weights, tokens[:, start : start + size], state)
        pieces.append(logits)
        start += size
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), whole, rtol=1e-5, atol=1e-5)
    for got, want in zip(state.layers[0][1].weights, whole_state.layers[0][1].weights):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert int(state.online.count) == 19 % 4 and int(state.online.committed) == 16
