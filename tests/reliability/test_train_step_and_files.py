"""A train state whose trees do not fit the levels, and a truncated GGUF file, are refused with
a message that names both trees or the file and what was expected."""

import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from helpers import write_tiny_gguf

from nestlearn import models
from nestlearn.core import Level
from nestlearn.pretrained.gguf_loader import read_gguf
from nestlearn.train import TrainState, build_train_step
from nestlearn.train.step import split_model


def _model(num_layers):
    c = models.default_config("transformer_pp")
    c.update(vocab_size=20, d_model=8, num_layers=num_layers, num_heads=2, max_len=16)
    return split_model(models.build(c, rngs=nnx.Rngs(0)))


def test_a_state_that_does_not_fit_the_levels_names_both_structures():
    graphdef, params, rest = _model(1)
    _, other, _ = _model(2)
    levels = (Level("all", None, optax.adam(1e-3)),)
    step = build_train_step(levels, params=params, grad_clip=1.0, graphdef=graphdef)
    tokens = jnp.ones((1, 4), jnp.int32)
    with pytest.raises(ValueError) as info:
        step(TrainState.create(other, levels, seed=0), rest, tokens, tokens)
    message = str(info.value)
    assert "state.params (the gradients) does not match the levels' params" in message
    assert "only paths ['blocks/1/attn/wk/kernel'" in message
    assert message.count("PyTreeDef(") == 2  # both structures


@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.5, 0.999])
def test_a_truncated_gguf_file_is_named_with_what_it_lacks(tmp_path, fraction):
    full = tmp_path / "full.gguf"
    write_tiny_gguf(full)
    raw = full.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(ValueError, match=rf"truncated or corrupt GGUF file {cut}: .*bytes"):
        read_gguf(cut)
