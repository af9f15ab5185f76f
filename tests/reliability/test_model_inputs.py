"""The public model call, `generate` and the memory ops refuse bad inputs by name: token ids
outside the vocabulary, empty batches or sequences, a state of another batch size, α outside
[0, 1]."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn import models
from nestlearn.memory import architectures, matrix_memory, objectives, rules
from nestlearn.memory.scan import scan
from nestlearn.memory.titans import titans_memory

VOCAB = 50


@pytest.fixture(scope="module")
def model():
    c = models.default_config("transformer_pp")
    c.update(vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=2, max_len=32)
    return models.build(c, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_token_ids_outside_the_vocabulary_are_refused_with_the_offending_id(model, bad):
    tokens = jnp.ones((2, 4), jnp.int32).at[1, 2].set(bad)
    with pytest.raises(ValueError, match=rf"tokens\[1, 2\] = {bad} is not a token id"):
        model(tokens)
    with pytest.raises(ValueError, match=rf"prompt_tokens\[1, 2\] = {bad} .*\[0, {VOCAB}\)"):
        models.generate(model, tokens, max_new_tokens=2, rng=jax.random.key(0))


def test_traced_token_ids_are_not_checked_and_do_not_break_jit(model):
    graphdef, state = nnx.split(model)
    logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t)[0])(state, jnp.ones((1, 3), jnp.int32))
    assert logits.shape == (1, 3, VOCAB)


@pytest.mark.parametrize(("shape", "axis"), [((2, 0), "t = 0"), ((0, 3), "b = 0")])
def test_an_empty_batch_or_sequence_is_a_value_error_naming_the_shape(model, shape, axis):
    with pytest.raises(ValueError, match=rf"tokens has shape {re.escape(str(shape))}.*with {axis}"):
        model(jnp.zeros(shape, jnp.int32))


def test_a_state_of_another_batch_size_is_refused_naming_the_shapes(model):
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"state\.layers\[0\].* has shape \(2, .* need \(3, "):
        model(jnp.ones((3, 1), jnp.int32), state)
    logits, _ = model(jnp.ones((2, 1), jnp.int32), state)  # the right batch still streams
    assert logits.shape == (2, 1, VOCAB)


def _qkv(b=1, t=5, h=2, d=4):
    x = jax.random.normal(jax.random.key(0), (b, t, h, d))
    return x, x, x, jnp.full((b, t, h), 0.5)


@pytest.mark.parametrize("alpha", [5.0, -0.5, float("nan")])
def test_gated_delta_rule_refuses_alpha_outside_the_unit_interval(alpha):
    q, k, v, gate = _qkv()
    bad = gate.at[0, 3, 1].set(alpha)
    with pytest.raises(ValueError, match=r"alpha\[0, 3, 1\] = .* is outside \[0, 1\]"):
        matrix_memory.gated_delta_rule(q, k, v, bad, gate, chunk_size=2)
    with pytest.raises(ValueError, match="is outside"):
        matrix_memory.gated_delta_rule_recurrent(q, k, v, bad, gate)
    o, _ = jax.jit(lambda a: matrix_memory.gated_delta_rule(q, k, v, a, gate, chunk_size=2))(gate)
    assert np.isfinite(np.asarray(o)).all()  # a traced alpha is not checked


@pytest.mark.slow
def test_titans_and_the_generic_scan_refuse_a_forget_gate_outside_the_unit_interval():
    q, k, v, gate = _qkv()
    arch = architectures.mlp(2, 8)
    params = arch.init(jax.random.key(1), heads=2, d_in=4, d_out=4, dtype=jnp.float32)
    bad = gate.at[0, 0, 0].set(1.5)
    with pytest.raises(ValueError, match=r"alpha\[0, 0, 0\] = 1\.5 is outside"):
        titans_memory(q, k, v, gate, bad, gate, arch=arch, params=params, chunk_size=2)
    inputs = {"q": q, "k": k, "v": v, "step_size": gate, "retention": bad, "momentum_decay": gate}
    with pytest.raises(ValueError, match=r"inputs\['retention'\]\[0, 0, 0\] = 1\.5"):
        scan(arch, objectives.get("l2"), rules.titans(), params, inputs, chunk_size=2)


@pytest.mark.parametrize("op", ["linear_attention", "delta_rule", "gated_delta_rule"])
@pytest.mark.parametrize(("b", "t"), [(1, 0), (0, 5)])
def test_memory_ops_refuse_empty_shapes_by_name(op, b, t):
    q, k, v, gate = _qkv(b=b, t=t)
    gates = {"linear_attention": (), "delta_rule": (gate,), "gated_delta_rule": (gate, gate)}[op]
    axis = "t = 0" if t == 0 else "b = 0"
    with pytest.raises(ValueError, match=rf"q has shape .* with {axis}"):
        getattr(matrix_memory, op)(q, k, v, *gates, chunk_size=2)
