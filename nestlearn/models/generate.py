"""Autoregressive sampling that carries the model state token by token.

The prompt is fed once; every new token is then fed alone with the carried state (KV caches,
memory states, online-CMS fast weights), so the prefix is never recomputed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nestlearn.core.validation import check_token_ids
from nestlearn.models.language_model import LanguageModel


def sample_logits(
    logits: jax.Array, rng: jax.Array, *, temperature: float = 1.0, top_k: int | None = None
) -> jax.Array:
    """Draws one token per row of logits [b, V]; temperature 0 is greedy (argmax)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must be in [1, {logits.shape[-1]}], got {top_k}")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(
    model: LanguageModel,
    prompt_tokens: jax.Array,
    *,
    max_new_tokens: int,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> jax.Array:
    """Continues `prompt_tokens` [b, t0] by `max_new_tokens` tokens.

    Args:
      model: the language model (not modified).
      prompt_tokens: [b, t0] integer tokens, t0 >= 1.
      max_new_tokens: tokens to append (>= 0).
      rng: PRNG key for sampling.
      temperature: softmax temperature; 0 means greedy decoding.
      top_k: sample among the k most likely tokens only (None: all).

    Returns:
      [b, t0 + max_new_tokens] int32: the prompt followed by the new tokens.

    Raises:
      ValueError: a prompt that is not [b, t0] with b, t0 ≥ 1, concrete prompt ids outside
        [0, vocab_size) (naming the first), or a negative `max_new_tokens`.
    """
    prompt_tokens = jnp.asarray(prompt_tokens)
    if prompt_tokens.ndim != 2 or min(prompt_tokens.shape) < 1:
        raise ValueError(
            f"prompt_tokens must be [b, t0] with b >= 1 and t0 >= 1, got {prompt_tokens.shape}"
        )
    check_token_ids(prompt_tokens, model.config.vocab_size, name="prompt_tokens")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    prompt_tokens = prompt_tokens.astype(jnp.int32)
    if max_new_tokens == 0:
        return prompt_tokens
    graphdef, weights = nnx.split(model)
    return _generate(graphdef, weights, prompt_tokens, rng, max_new_tokens, temperature, top_k)


@jax.jit(static_argnums=(0, 4, 5, 6))
def _generate(graphdef, weights, prompt, rng, max_new_tokens, temperature, top_k):
    model = nnx.merge(graphdef, weights)
    logits, state = model(prompt)
    keys = jax.random.split(rng, max_new_tokens)
    first = sample_logits(logits[:, -1], keys[0], temperature=temperature, top_k=top_k)

    def step(carry, key):
        token, state = carry
        logits, state = model(token[:, None], state)
        nxt = sample_logits(logits[:, -1], key, temperature=temperature, top_k=top_k)
        return (nxt, state), token

    (last, _), tokens = jax.lax.scan(step, (first, state), keys[1:])
    new = jnp.concatenate([tokens.T, last[:, None]], axis=1)  # [b, max_new_tokens]
    return jnp.concatenate([prompt, new], axis=1)
