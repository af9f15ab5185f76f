"""Passkey task layout and scores, and the split forward pass used to train adapters on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nestlearn.pretrained import adapters, load_gguf, passkey


@pytest.fixture(scope="module")
def tiny(tiny_gguf):
    """(full-attention model, window-4 model, tokenizer, prompts) of the tiny 2-layer GGUF."""
    full, tok = load_gguf(tiny_gguf[0], max_len=64)
    windowed, _ = load_gguf(tiny_gguf[0], max_len=64, window=4)
    return full, windowed, tok, passkey.PasskeyPrompts.build(tok, num_digits=3)


def _haystack(tok):
    return tok.encode("the cat sat on a mat and then the dog ran in the hall. " * 8)


def test_batch_layout(tiny):
    _, _, tok, prompts = tiny
    hay = _haystack(tok)
    lo = passkey.min_distance(prompts)
    length = passkey.min_length(prompts, lo + 9) + 2
    batch = passkey.passkey_batch(
        np.random.default_rng(0), hay, tok, prompts, length=length, distances=[lo, lo + 4, lo + 9]
    )
    assert batch.tokens.shape == (3, length) and batch.positions.shape == (3, 3)
    np.testing.assert_array_equal(batch.distance, [lo, lo + 4, lo + 9])
    np.testing.assert_array_equal(batch.distance, batch.positions[:, 0] - batch.needle[:, -1])
    rows = np.arange(3)[:, None]
    # teacher forcing: the token after each target position is the target digit
    np.testing.assert_array_equal(batch.tokens[rows, batch.positions + 1], batch.targets)
    np.testing.assert_array_equal(batch.tokens[rows, batch.needle], batch.targets)
    assert batch.positions[0, -1] == length - 2  # the example ends with the last digit
    for row, target in zip(batch.tokens, batch.targets):
        key = tok.decode(target)
        text = tok.decode(row)
        assert passkey.NEEDLE.format(key=key) in text
        assert text.endswith(passkey.QUESTION + " " + key)
    with pytest.raises(ValueError, match="distances"):
        passkey.passkey_batch(
            np.random.default_rng(0), hay, tok, prompts, length=length, distances=[lo - 1]
        )
    with pytest.raises(ValueError, match="distances"):
        passkey.passkey_batch(
            np.random.default_rng(0), hay, tok, prompts, length=length, distances=[lo + 12]
        )
    with pytest.raises(ValueError, match="haystack"):
        passkey.passkey_batch(
            np.random.default_rng(0), hay[:5], tok, prompts, length=length, distances=[lo]
        )


def test_scores_match_a_plain_reference(x64):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3, 7))
    targets = rng.integers(0, 7, (4, 3))
    targets[0] = logits[0].argmax(-1)  # one example fully right
    scores = passkey.passkey_scores(jnp.asarray(logits), jnp.asarray(targets))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    hits = logits.argmax(-1) == targets
    np.testing.assert_allclose(scores["loss"], nll.mean(), rtol=1e-12)
    np.testing.assert_allclose(scores["digit_accuracy"], hits.mean())
    np.testing.assert_allclose(scores["exact"], hits.all(-1).mean())
    assert scores["exact"] >= 0.25
    with pytest.raises(ValueError, match="logits"):
        passkey.passkey_scores(jnp.zeros((4, 3)), jnp.zeros((4, 3), jnp.int32))


@pytest.fixture(scope="module")
def needle_batch(tiny):
    """Two examples at the shortest distance, and the same with another key in the needle."""
    _, _, tok, prompts = tiny
    lo = passkey.min_distance(prompts)
    batch = passkey.passkey_batch(
        np.random.default_rng(3),
        _haystack(tok),
        tok,
        prompts,
        length=passkey.min_length(prompts, lo) + 4,
        distances=[lo, lo],
    )
    digit_of = {int(token): i for i, token in enumerate(prompts.digits)}
    shifted = [[prompts.digits[(digit_of[int(t)] + 1) % 10] for t in row] for row in batch.targets]
    other = batch.tokens.copy()
    other[np.arange(2)[:, None], batch.needle] = shifted  # another key, the same answer
    assert not np.array_equal(other, batch.tokens)
    return batch, other


@pytest.fixture(scope="module")
def memory_model(tiny):
    """The windowed tiny model with a Titans pathway in block 1 and a non-zero projection."""
    model = adapters.add_memory_pathways(
        tiny[1], kind="titans", layers=(1,), num_heads=2, head_dim=8, chunk_size=4, depth=1
    )
    out_proj = model.blocks[1].memory.out_proj.kernel  # as if trained
    out_proj[...] = jax.random.normal(jax.random.key(0), out_proj.shape) * 0.3
    return model


@nnx.jit
def _split_logits(model, tokens, positions):
    """Logits at positions [b, k] computed as hidden_states + logits_from, split at 0, 1, 2."""
    return [
        adapters.logits_from(
            model, adapters.hidden_states(model, tokens, stop=s), start=s, positions=positions
        )
        for s in (0, 1, 2)
    ]


def test_split_forward_equals_the_model(memory_model, needle_batch):
    batch, _ = needle_batch
    tokens = jnp.asarray(batch.tokens)
    positions = jnp.asarray(np.stack([batch.positions[0], [0, 7, 3]]), jnp.int32)
    whole = nnx.jit(lambda m, t: m(t)[0])(memory_model, tokens)
    expected = np.take_along_axis(np.asarray(whole), np.asarray(positions)[..., None], 1)
    for split in _split_logits(memory_model, tokens, positions):
        np.testing.assert_allclose(split, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stop"):
        adapters.hidden_states(memory_model, tokens, stop=3)
    with pytest.raises(ValueError, match="positions"):
        adapters.logits_from(memory_model, tokens[..., None], start=2, positions=positions[0])


def test_window_hides_the_needle_and_the_memory_carries_it(tiny, memory_model, needle_batch):
    """Two layers of a 4-token window see 6 tokens back: the needle is far out of reach.

    Changing only the key in the needle leaves the windowed base model's answer logits bit-equal,
    while a memory pathway (non-zero projection) makes them depend on the needle — the only route
    by which the adapted model can retrieve the key.
    """
    batch, other = needle_batch
    assert batch.distance.min() > 2 * (4 - 1)
    pos = jnp.asarray(batch.positions)
    windowed = tiny[1]
    for split in zip(
        _split_logits(windowed, jnp.asarray(batch.tokens), pos),
        _split_logits(windowed, jnp.asarray(other), pos),
    ):
        np.testing.assert_array_equal(*split)
    a = _split_logits(memory_model, jnp.asarray(batch.tokens), pos)[0]
    b = _split_logits(memory_model, jnp.asarray(other), pos)[0]
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-4
