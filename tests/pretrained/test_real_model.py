"""Real SmolLM2-135M-Instruct checks (downloads ~93 MB into the nestlearn cache on first use)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn.models import generate
from nestlearn.pretrained import (
    fetch_smollm2,
    llama_forward,
    load_gguf,
    model_from_checkpoint,
    read_gguf,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_path():
    return fetch_smollm2()


def test_architecture_and_tokenizer(smollm2_path):
    ck = read_gguf(smollm2_path, num_layers=1)
    hp = ck.hparams
    assert (hp.vocab_size, hp.d_model, hp.num_heads, hp.num_kv_heads, hp.ffn_hidden) == (
        49152,
        576,
        9,
        3,
        1536,
    )
    assert hp.tied and hp.norm_eps == pytest.approx(1e-5) and hp.rope_theta == 1e5
    _, tok = load_gguf(smollm2_path, num_layers=1)
    assert tok.encode("<|im_start|>").tolist() == [1] and tok.eos_id == 2
    text = "The capital of France is Paris. 2024!"
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(" Paris")) == 1


def test_two_layers_match_numpy_reference(smollm2_path):
    ck = read_gguf(smollm2_path, num_layers=2)
    model = model_from_checkpoint(ck, max_len=64)
    tokens = np.random.default_rng(0).integers(0, ck.hparams.vocab_size, (2, 16))
    expected = llama_forward(ck.tensors, ck.hparams, tokens)
    got = np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, jnp.asarray(tokens)), np.float64)
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-4


def test_greedy_answer_to_a_factual_prompt(smollm2_path):
    model, tok = load_gguf(smollm2_path, max_len=128)
    prompt = tok.encode("The capital of France is")
    out = generate(
        model, jnp.asarray(prompt)[None], max_new_tokens=3, rng=jax.random.key(0), temperature=0.0
    )
    assert tok.decode(np.asarray(out)[0, len(prompt) :]).startswith(" Paris")
