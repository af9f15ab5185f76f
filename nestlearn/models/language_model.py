"""The language model: embedding → `num_layers` registered blocks → final RMSNorm → head.

`LanguageModel(config, *, rngs)` builds its blocks from the block class registered under
`config.name` (see `registry`); `build(config, rngs=...)` validates the config first.

Streaming: `model(tokens, state)` returns `(logits, new_state)`; feeding a sequence in pieces with
the state carried equals one call. `state=None` means fresh sequences.

Online CMS (docs/SEMANTICS.md §6.2 row 4): when `config.cms.mode == "online"`, the model runs as
dynamic evaluation. It scans over base chunks of c = `cms.chunk_sizes[0]` tokens; inside a chunk
every online CMS level is frozen; after a chunk the gradient of that chunk's next-token loss (summed
over its tokens and the within-chunk targets, Eq. 71) w.r.t. each sequence's fast weights is added
to the level's accumulator, and level ℓ steps every `chunk_sizes[ℓ]` tokens with the rule
`cms.online_rule` at `cms.inner_lr` (`cms_online_update`: the level scheduler with the chunk as its
clock).
The fast weights start from the CMS parameters, and the outer loss backpropagates through the inner
steps. Tokens of an incomplete chunk are kept in the state and recomputed with the next call, so
pieces of any length (generation included) equal one call; the in-context update of a chunk happens
once all of its tokens have been seen (no flush of a final partial chunk). With `memory_writes`
False there is no in-context update: the online levels keep their initial weights (the CMS
parameters) and the model runs in one pass, like a scheduled CMS.

Shapes: b batch, t tokens, d width, V vocabulary, c base chunk.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from nestlearn.core.validation import check_nonempty, check_token_ids
from nestlearn.kernels.kernel_impl import KERNEL_IMPLS
from nestlearn.models import registry
from nestlearn.models.cms import (
    CMSOnlineState,
    cms_online_update,
    online_transform,
    validate_cms_config,
)
from nestlearn.models.layers import DTYPES, RMSNorm, compute_dtype
from nestlearn.models.mixers import ChunkStream, chunk_aligned


class OnlinePending(NamedTuple):
    """Chunk bookkeeping of a model with an online CMS."""

    tokens: jax.Array  # [b, c] int32; tokens of the current, incomplete base chunk
    count: jax.Array  # [] int32; how many of `tokens` are valid (0 <= count < c)
    committed: jax.Array  # [] int32; tokens in completed chunks (a multiple of c)


class LMState(NamedTuple):
    """Streaming state of a `LanguageModel`."""

    layers: tuple  # one block state per layer (online CMS: the states at the current chunk start)
    online: OnlinePending | None  # online CMS bookkeeping, None otherwise


def _is_online(leaf: Any) -> bool:
    return isinstance(leaf, CMSOnlineState)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks a model config against its registered default; `ValueError` names the bad key."""
    if "name" not in config:
        raise ValueError("model config has no 'name' field")
    default = registry.default_config(config.name)
    unknown = sorted(set(config.keys()) - set(default.keys()))
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in the config of model {config.name!r}; "
            f"allowed: {sorted(default.keys())}"
        )
    missing = sorted(set(default.keys()) - set(config.keys()))
    if missing:
        raise ValueError(f"missing key(s) {missing} in the config of model {config.name!r}")
    for key in ("vocab_size", "d_model", "num_layers", "num_heads", "max_len", "chunk_size"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise ValueError(f"{key} must be an int >= 1, got {config[key]!r}")
    if not isinstance(config.head_dim, int) or config.head_dim < 0:
        raise ValueError(f"head_dim must be an int >= 0, got {config.head_dim!r}")
    if config.head_dim == 0 and config.d_model % config.num_heads:
        raise ValueError(
            f"head_dim=0 needs d_model ({config.d_model}) divisible by num_heads "
            f"({config.num_heads})"
        )
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype={config.dtype!r} is not one of {tuple(DTYPES)}")
    if config.kernel_impl not in KERNEL_IMPLS:
        raise ValueError(f"kernel_impl={config.kernel_impl!r} is not one of {KERNEL_IMPLS}")
    if not config.mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0, got {config.mlp_ratio!r}")
    if not isinstance(config.memory_writes, bool):
        raise ValueError(f"memory_writes must be a bool, got {config.memory_writes!r}")
    for key, value in config.items():
        if isinstance(value, list):
            raise ValueError(f"{key} is a list; configs hold tuples")
    if "cms" in config:
        cms_unknown = sorted(set(config.cms.keys()) - set(default.cms.keys()))
        if cms_unknown:
            raise ValueError(
                f"unknown key(s) {cms_unknown} in cms; allowed: {sorted(default.cms.keys())}"
            )
        validate_cms_config(config.cms)
    if "self_modifying" in config:
        _validate_self_modifying(config)
    if not config.memory_writes and not registry.has_memory(config):
        raise ValueError(
            f"model.memory_writes=False, but model {config.name!r} has no in-context memory to "
            "switch off (models with one: the matrix mixers, Titans, Hope, or any model with "
            "cms.mode='online'); leave it True"
        )


def _validate_self_modifying(config: ml_collections.ConfigDict) -> None:
    """The `self_modifying` sub-config's values, checked before the model is built.

    A bad value is reported as `self_modifying.<key> ...` (e.g. `self_modifying.eta_max must be
    > 0, got -1.0`).
    """
    from nestlearn.models.hope import self_modifying_config

    try:
        self_modifying_config(config.self_modifying, config.chunk_size, writes=True)
    except (TypeError, ValueError) as e:
        message = str(e)
        first = message.split(" ", 1)[0]
        if first in config.self_modifying:
            raise ValueError(f"self_modifying.{message}") from None
        raise ValueError(f"self_modifying: {message}") from None


class LanguageModel(nnx.Module):
    """Causal language model over registered blocks.

    Example:
      >>> config = default_config("transformer_pp")
      >>> model = build(config, rngs=nnx.Rngs(0))
      >>> logits, state = model(jnp.zeros((2, 16), jnp.int32))          # fresh sequences
      >>> logits, state = model(jnp.zeros((2, 1), jnp.int32), state)    # continue them
    """

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        block_cls = registry.spec(config.name).block_cls
        self.config = ml_collections.FrozenConfigDict(config)
        self.dtype = compute_dtype(config.dtype)
        self.remat = bool(config.remat)
        # Online CMS: dynamic evaluation, unless the in-context writes are off.
        self.online = "cms" in config and config.cms.mode == "online" and config.memory_writes
        self.base_chunk = int(config.cms.chunk_sizes[0]) if self.online else 0
        self.embed = nnx.Embed(
            config.vocab_size,
            config.d_model,
            embedding_init=nnx.initializers.normal(0.02),
            rngs=rngs,
        )
        self.blocks = nnx.List(
            [block_cls(self.config, rngs=rngs) for _ in range(config.num_layers)]
        )
        self.final_norm = RMSNorm(config.d_model)
        self.tie_embeddings = bool(config.tie_embeddings)
        if not self.tie_embeddings:
            self.head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> LMState:
        """The state of `batch_size` fresh sequences."""
        layers = tuple(block.init_state(batch_size) for block in self.blocks)
        online = None
        if self.online:
            online = OnlinePending(
                tokens=jnp.zeros((batch_size, self.base_chunk), jnp.int32),
                count=jnp.zeros((), jnp.int32),
                committed=jnp.zeros((), jnp.int32),
            )
        return LMState(layers=layers, online=online)

    def __call__(
        self, tokens: jax.Array, state: LMState | None = None
    ) -> tuple[jax.Array, LMState]:
        """Runs the model on `tokens`, continuing `state` (None: fresh sequences).

        Args:
          tokens: [b, t] integer token ids in [0, vocab_size), b ≥ 1, t ≥ 1.
          state: the `LMState` of b sequences (a previous call's), or None.

        Returns:
          `(logits [b, t, V] float32, new state)`.

        Raises:
          ValueError: tokens not integer [b, t], an empty batch or sequence, concrete ids
            outside [0, vocab_size) (naming the first one; traced ids are not checked), or a
            state whose layers or shapes do not fit b sequences of this model.
        """
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integer [b, t], got {tokens.dtype} {tokens.shape}")
        check_nonempty(tokens.shape, "bt", name="tokens")
        check_token_ids(tokens, self.config.vocab_size)
        if state is not None:
            self._check_state(state, tokens.shape[0])
        if self.online:
            return self._online_call(tokens, state)
        layers = (None,) * len(self.blocks) if state is None else state.layers
        logits, layers = self.forward(tokens, layers)
        return logits, LMState(layers=layers, online=None)

    def _check_state(self, state: LMState, batch: int) -> None:
        """ValueError naming the first leaf of `state` whose shape differs from a fresh state's."""
        if not isinstance(state, LMState) or len(state.layers) != len(self.blocks):
            layers = len(state.layers) if isinstance(state, LMState) else type(state).__name__
            raise ValueError(f"state has {layers} layers, model {len(self.blocks)}")
        fresh = jax.eval_shape(lambda: self.init_state(batch))
        got, want = jax.tree.structure(state), jax.tree.structure(fresh)
        if got != want:
            raise ValueError(f"state has structure {got}, a model state has {want}")
        flat = jax.tree_util.tree_flatten_with_path(state)[0]
        for (path, leaf), expected in zip(flat, jax.tree.leaves(fresh)):
            if jnp.shape(leaf) != expected.shape:
                raise ValueError(
                    f"state{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}, but "
                    f"{batch} sequence(s) of tokens [b, t] need {expected.shape}: the state "
                    "belongs to another batch size (or model)"
                )

    def forward(self, tokens: jax.Array, layers: tuple) -> tuple[jax.Array, tuple]:
        """One pass through every block with the given block states (no online updates)."""
        x = self.embed(tokens).astype(self.dtype)  # [b, t, d]
        new_layers = []
        for block, layer_state in zip(self.blocks, layers):
            if self.remat:
                x, layer_state = nnx.remat(lambda blk, h, s: blk(h, s))(block, x, layer_state)
            else:
                x, layer_state = block(x, layer_state)
            new_layers.append(layer_state)
        h = self.final_norm(x).astype(jnp.float32)
        if self.tie_embeddings:
            logits = h @ self.embed.embedding[...].astype(jnp.float32).T
        else:
            logits = h @ self.head.kernel[...].astype(jnp.float32)
        return logits, tuple(new_layers)

    def _chunk_loss(self, fast: list, layers: tuple, tokens: jax.Array):
        """Summed next-token loss of one chunk as a function of the online fast weights."""
        leaves, treedef = jax.tree.flatten(layers, is_leaf=_is_online)
        fast_iter = iter(fast)
        leaves = [
            leaf._replace(weights=next(fast_iter)) if _is_online(leaf) else leaf for leaf in leaves
        ]
        logits, new_layers = self.forward(tokens, jax.tree.unflatten(treedef, leaves))
        loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
        return jnp.sum(loss), (logits, new_layers)

    def _online_run(self, state: tuple, tokens: jax.Array) -> tuple[jax.Array, tuple]:
        """Dynamic evaluation of whole base chunks from `state` = (layers, committed tokens).

        tokens [b, t'] with t' a multiple of the base chunk c (each chunk: forward, the gradient
        of its summed next-token loss w.r.t. the online fast weights, one `cms_online_update`)
        or t' < c (a partial chunk: forward only; its update waits for the chunk's last token).
        Returns (logits [b, t', V], state after the chunks) for `chunk_aligned`.
        """
        b, t = tokens.shape
        c = self.base_chunk
        if t < c:
            return self.forward(tokens, state[0])[0], state
        cms = self.config.cms
        transform = online_transform(
            tuple(cms.chunk_sizes), rule=cms.get("online_rule", "sgd"), learning_rate=cms.inner_lr
        )
        grad_fn = jax.value_and_grad(self._chunk_loss, has_aux=True)

        def body(carry, chunk):  # chunk [b, c]
            layers, committed = carry
            fast = [
                leaf.weights
                for leaf in jax.tree.leaves(layers, is_leaf=_is_online)
                if _is_online(leaf)
            ]
            (_, (logits, new_layers)), grads = grad_fn(fast, layers, chunk)
            grads_iter = iter(grads)
            seen = committed + c
            update = lambda leaf: cms_online_update(
                leaf,
                next(grads_iter),
                transform=transform,
                tokens_seen=seen,
                chunk_sizes=tuple(cms.chunk_sizes),
                variant=cms.variant,
            )
            layers = jax.tree.map(
                lambda leaf: update(leaf) if _is_online(leaf) else leaf,
                new_layers,
                is_leaf=_is_online,
            )
            return (layers, seen), logits

        chunks = tokens.reshape(b, t // c, c).swapaxes(0, 1)  # [K, b, c]
        state, logits = jax.lax.scan(body, state, chunks)
        return logits.swapaxes(0, 1).reshape(b, t, -1), state

    def _online_call(self, tokens: jax.Array, state: LMState | None):
        """Online CMS: whole chunks through `_online_run`, streamed by `chunk_aligned`."""
        b = tokens.shape[0]
        tokens = tokens.astype(jnp.int32)
        stream = None
        if state is not None:
            start = (state.layers, state.online.committed)
            stream = ChunkStream(start, state.online.tokens, state.online.count)
        fresh = self.init_state(b)
        logits, stream = chunk_aligned(
            self._online_run,
            tokens,
            stream,
            chunk=self.base_chunk,
            initial=(fresh.layers, fresh.online.committed),
        )
        layers, committed = stream.start
        pending = OnlinePending(tokens=stream.pending, count=stream.count, committed=committed)
        return logits, LMState(layers=layers, online=pending)


def build(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> LanguageModel:
    """Validates `config` and builds the `LanguageModel` of the model it names."""
    validate_config(config)
    return LanguageModel(config, rngs=rngs)
