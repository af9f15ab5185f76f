"""Adapter surgery on a pretrained `LanguageModel`: Hope-Attention CMS and gated memory pathways.

Every surgery returns a **new** `LanguageModel` that computes exactly what the input computes at
step 0; the input model is left unchanged (converted blocks are deep copies; untouched blocks,
the embedding and the final norm are shared, so train the returned model functionally — e.g.
with `split_trainable` and `make_adapter_step` — or `nnx.clone` it first).

- `convert_to_hope_attention` (ad-hoc level stacking, arXiv 2512.24695 §7.3): the MLP of each chosen
  block becomes a CMS (Eq. 70/74). `init="stack"` (sequential chain, Eq. 70): level 0 copies the
  pretrained MLP and its norm, the other levels start with a zero output projection, i.e. as
  identities (`CMS.from_mlp`). `init="copies"` (independent CMS, Eq. 74): every level copies the
  pretrained MLP and the aggregation weights m_ℓ start at 1/k, so Σ_ℓ m_ℓ MLP_ℓ = MLP. Either way
  the block equals the pretrained block until a level is updated (scheduled mode: before the first
  optimizer step; online mode: until the first chunk boundary, Eq. 71).
- `add_memory_pathways`: a Titans neural memory (Titans Eqs. 8–18) or a self-modifying Titans
  memory (Hope Eqs. 83–93) reads the same normed input as attention and joins the residual
  through a gate:

      h = RMSNorm(x);  x ← x + Attn(h) + g_t ⊙ M(h);  then the block's MLP / CMS,
      g_t = g_min + (1 − g_min) · σ(h_t · w_g + b_g)      (one scalar per token and layer)

  This is the MAG idea (Titans Eqs. 26–28, Titans §4: attention and memory as two branches
  combined by a σ-gate) made function-preserving: MAG multiplies σ(M(x)) into the attention
  branch, which would change the pretrained function; here the memory branch is added with its
  own gate. **Initialisation:** the memory's output projection is zero, so M(h) = 0 and the
  model is exactly the pretrained one at step 0. The gate starts at w_g = 0, b_g = 0, i.e.
  g = g_min + (1 − g_min)/2 ≈ 0.5 where σ' is largest (0.25), so ∂L/∂W_out = g · (…) ≠ 0 from the
  first step (a zero-initialised gate together with a zero projection would have no gradient at
  all). **Collapse guard:** the floor g_min (default 0.05) keeps the pathway's gradient at least
  g_min times that of an ungated branch however far σ saturates, so the optimizer can always
  re-open a closed gate; `gate_values` reports the mean gate of every adapted layer.
- `set_memory_enabled(model, False)` removes the memory branches at evaluation (ablation).

Shapes: b batch, t tokens, d width.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import nestlearn
from nestlearn.core import Level
from nestlearn.memory.self_modifying import SelfModifyingConfig
from nestlearn.models import default_config
from nestlearn.models.cms import CMS, validate_cms_config
from nestlearn.models.hope import SelfModifyingTitans
from nestlearn.models.language_model import LanguageModel
from nestlearn.models.mixers import Mixer
from nestlearn.models.titans_mixer import TitansMemory, titans_memory_config
from nestlearn.models.transformer import HopeAttentionBlock, TransformerBlock

__all__ = [
    "CMS_INITS",
    "MEMORY_KINDS",
    "MemoryAdapterBlock",
    "MemoryGate",
    "add_memory_pathways",
    "convert_to_hope_attention",
    "gate_values",
    "gate_values_from",
    "hidden_states",
    "lm_loss",
    "logits_from",
    "make_adapter_step",
    "path_filter",
    "set_memory_enabled",
    "split_trainable",
]

CMS_INITS = ("stack", "copies")
MEMORY_KINDS = ("titans", "self_modifying")


def _layers(model: LanguageModel, layers: Sequence[int] | None) -> tuple[int, ...]:
    n = len(model.blocks)
    chosen = tuple(range(n)) if layers is None else tuple(layers)
    bad = [i for i in chosen if not isinstance(i, int) or not 0 <= i < n]
    if bad or len(set(chosen)) != len(chosen):
        raise ValueError(f"layers={layers!r} must be distinct ints in [0, {n}); bad: {bad}")
    return chosen


def _rebuild(
    model: LanguageModel, config: ml_collections.ConfigDict, blocks: list
) -> LanguageModel:
    """A `LanguageModel` with `config` (its online-CMS switch), `blocks` and model's embed/norm."""
    small = ml_collections.ConfigDict(config.to_dict())
    small.num_layers = 1
    small.vocab_size = 1  # the embedding and head are replaced below; keep the throwaway small
    new = nnx.eval_shape(lambda: LanguageModel(small, rngs=nnx.Rngs(0)))
    new.config = ml_collections.FrozenConfigDict(config)
    new.embed = model.embed
    new.final_norm = model.final_norm
    if not model.tie_embeddings:
        new.head = model.head
    new.blocks = nnx.List(blocks)
    return new


def _transformer_block(block: Any) -> TransformerBlock:
    if not isinstance(block, TransformerBlock):
        raise ValueError(f"block must be a TransformerBlock, got {type(block).__name__}")
    return block


def convert_to_hope_attention(
    model: LanguageModel,
    *,
    layers: Sequence[int] | None = None,
    periods: Sequence[int] = (1, 4),
    init: str = "stack",
    mode: str = "scheduled",
    chunk_sizes: Sequence[int] = (16, 64),
    inner_lr: float = 1e-3,
) -> LanguageModel:
    """Hope-Attention: the chosen blocks' MLPs become CMS initialised from them.

    Args:
      model: a `LanguageModel` of `TransformerBlock`s (e.g. from `load_gguf`).
      layers: indices of the blocks to convert (None: all).
      periods: CMS level periods (scheduled mode: optimizer steps between updates of level i).
      init: "stack" (sequential; level 0 = the MLP, other levels identities) or "copies"
        (independent; every level = the MLP, aggregation weights 1/k). See the module docstring.
      mode: "scheduled" or "online" (in-context updates every chunk_sizes[ℓ] tokens, Eq. 71).
      chunk_sizes: online mode: tokens between updates of level ℓ.
      inner_lr: online mode: step size of the in-context updates.

    Returns:
      A new `LanguageModel` (config name "hope_attention") that equals `model` at step 0.
    """
    if init not in CMS_INITS:
        raise ValueError(f"init={init!r} is not one of {CMS_INITS}")
    chosen = _layers(model, layers)
    config = default_config("hope_attention")
    for key, value in model.config.items():
        if key != "name":
            config[key] = value
    config.cms.periods = tuple(periods)
    config.cms.mode = mode
    config.cms.variant = "sequential" if init == "stack" else "independent"
    config.cms.chunk_sizes = tuple(chunk_sizes)
    config.cms.inner_lr = inner_lr
    validate_cms_config(config.cms)
    frozen = ml_collections.FrozenConfigDict(config)
    rngs = nnx.Rngs(1)
    blocks = []
    for i, block in enumerate(model.blocks):
        if i not in chosen:
            blocks.append(block)
            continue
        block = _transformer_block(block)
        new = HopeAttentionBlock.from_transformer(block, frozen, rngs=rngs)
        if init == "copies":
            k = len(config.cms.periods)
            new.cms = CMS.from_mlp(
                [block.mlp] * k,
                norm=[block.mlp_norm] * k,
                periods=tuple(config.cms.periods),
                mode=mode,
                variant="independent",
                chunk_sizes=tuple(chunk_sizes),
                inner_lr=inner_lr,
                dtype=config.dtype,
                rngs=rngs,
            )
            for level in new.cms.levels:
                level.mix[...] = jnp.full((), 1.0 / k, jnp.float32)
        blocks.append(new)
    return _rebuild(model, config, blocks)


class MemoryGate(nnx.Module):
    """g_t = floor + (1 − floor) · σ(h_t · w + b), one scalar per token; w = 0, b = 0 at init."""

    def __init__(self, d_model: int, *, floor: float = 0.05):
        if not 0.0 <= floor < 1.0:
            raise ValueError(f"floor={floor} must lie in [0, 1)")
        self.floor = floor
        self.w = nnx.Param(jnp.zeros((d_model,), jnp.float32))
        self.b = nnx.Param(jnp.zeros((), jnp.float32))

    def __call__(self, h: jax.Array) -> jax.Array:
        """Args: h [b, t, d]. Returns g [b, t, 1] float32."""
        logit = h.astype(jnp.float32) @ self.w[...] + self.b[...]
        return (self.floor + (1.0 - self.floor) * jax.nn.sigmoid(logit))[..., None]


class MemoryAdapterBlock(nnx.Module):
    """A pretrained attention block with a gated memory branch beside attention (module doc).

    Wraps a `TransformerBlock` or `HopeAttentionBlock`; the state is `(block_state, memory_state)`.
    """

    def __init__(
        self,
        block: TransformerBlock | HopeAttentionBlock,
        memory: Mixer,
        *,
        d_model: int,
        gate_floor: float = 0.05,
    ):
        if not isinstance(block, (TransformerBlock, HopeAttentionBlock)):
            raise ValueError(
                "block must be a TransformerBlock or HopeAttentionBlock, got "
                f"{type(block).__name__}"
            )
        self.block = block
        self.memory = memory
        self.gate = MemoryGate(d_model, floor=gate_floor)
        self.memory_enabled = True

    def init_state(self, batch_size: int) -> tuple[Any, Any]:
        """(block state, memory state) of `batch_size` fresh sequences."""
        return self.block.init_state(batch_size), self.memory.init_state(batch_size)

    def __call__(self, x: jax.Array, state: Any) -> tuple[jax.Array, Any]:
        """Args: x [b, t, d]; state or None. Returns (y [b, t, d], new state)."""
        block_state, memory_state = (None, None) if state is None else state
        hope = isinstance(self.block, HopeAttentionBlock)
        cache, cms_state = (None, None) if block_state is None or not hope else block_state
        if not hope:
            cache = block_state
        h = self.block.attn_norm(x)
        y, cache = self.block.attn(h, cache)
        x = x + y.astype(x.dtype)
        m, memory_state = self.memory(h, memory_state)
        if self.memory_enabled:
            x = x + (self.gate(h) * m.astype(jnp.float32)).astype(x.dtype)
        if hope:
            out, cms_state = self.block.cms(x, cms_state)
            return out.astype(x.dtype), ((cache, cms_state), memory_state)
        x = x + self.block.mlp(self.block.mlp_norm(x)).astype(x.dtype)
        return x, (cache, memory_state)


def _make_memory(
    kind: str,
    d_model: int,
    *,
    num_heads: int,
    head_dim: int,
    chunk_size: int,
    depth: int,
    chunk_step_max: float,
    forget_bias: float | None,
    dtype: str,
    rngs: nnx.Rngs,
) -> Mixer:
    if kind == "titans":
        memory = titans_memory_config()
        memory.depth = depth
        memory.chunk_step_max = chunk_step_max
        mixer = TitansMemory(
            d_model,
            memory=memory,
            num_heads=num_heads,
            head_dim=head_dim,
            chunk_size=chunk_size,
            dtype=dtype,
            rngs=rngs,
        )
    elif kind == "self_modifying":
        config = SelfModifyingConfig(chunk_size=min(8, chunk_size), memory_chunk_size=chunk_size)
        mixer = SelfModifyingTitans(
            d_model, num_heads=num_heads, head_dim=head_dim, config=config, dtype=dtype, rngs=rngs
        )
    else:
        raise ValueError(f"kind={kind!r} is not one of {MEMORY_KINDS}")
    mixer.out_proj.kernel[...] = jnp.zeros_like(mixer.out_proj.kernel[...])
    if kind == "titans" and forget_bias is not None:  # gate bias [g, h]; gate 1 is α (forget)
        bias = mixer.gates.bias
        bias[...] = bias[...].at[num_heads : 2 * num_heads].set(forget_bias)
    return mixer


def add_memory_pathways(
    model: LanguageModel,
    *,
    kind: str = "titans",
    layers: Sequence[int] | None = None,
    num_heads: int = 4,
    head_dim: int = 32,
    chunk_size: int = 16,
    depth: int = 2,
    chunk_step_max: float = 1.0,
    forget_bias: float | None = None,
    gate_floor: float = 0.05,
    seed: int = 0,
) -> LanguageModel:
    """Adds a gated Titans / self-modifying memory branch beside attention in chosen blocks.

    Args:
      model: a `LanguageModel` of `TransformerBlock`s or `HopeAttentionBlock`s.
      kind: "titans" (`TitansMemory`, 2-layer MLP memory) or "self_modifying"
        (`SelfModifyingTitans`).
      layers: indices of the blocks that get a memory (None: all).
      num_heads, head_dim: heads and head width of the memory (independent of attention's).
      chunk_size: the memory's chunk (gradients of a chunk taken at the chunk-start state).
      depth: Titans memory MLP depth (1: a linear matrix memory); ignored by "self_modifying".
      chunk_step_max: Titans: the largest sum of inner step sizes θ_t over one chunk
        (θ_t = chunk_step_max/C · σ(·)); ignored by "self_modifying".
      forget_bias: Titans: initial bias of the forget gate α_t = σ(·) (None: the mixer's default
        −4, α ≈ 0.018 per token; −8 gives α ≈ 3e-4, i.e. memories that last thousands of
        tokens); ignored by "self_modifying".
      gate_floor: the gate's floor g_min.
      seed: initialisation of the new parameters.

    Returns:
      A new `LanguageModel` that equals `model` at step 0 (zero memory output projections).
    """
    if kind not in MEMORY_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {MEMORY_KINDS}")
    if not chunk_step_max > 0:
        raise ValueError(f"chunk_step_max={chunk_step_max!r} must be > 0")
    chosen = _layers(model, layers)
    config = ml_collections.ConfigDict(model.config.to_dict())
    rngs = nnx.Rngs(seed)
    d = config.d_model
    blocks = []
    for i, block in enumerate(model.blocks):
        if i not in chosen:
            blocks.append(block)
            continue
        memory = _make_memory(
            kind,
            d,
            num_heads=num_heads,
            head_dim=head_dim,
            chunk_size=chunk_size,
            depth=depth,
            chunk_step_max=chunk_step_max,
            forget_bias=forget_bias,
            dtype=config.dtype,
            rngs=rngs,
        )
        blocks.append(MemoryAdapterBlock(block, memory, d_model=d, gate_floor=gate_floor))
    return _rebuild(model, config, blocks)


def set_memory_enabled(model: LanguageModel, enabled: bool) -> None:
    """Switches every memory branch on or off in place (off: the ablation of the memory)."""
    for block in model.blocks:
        if isinstance(block, MemoryAdapterBlock):
            block.memory_enabled = bool(enabled)


def _offline(model: LanguageModel) -> None:
    if model.online:
        raise ValueError("model runs an online CMS (updates between chunks); split it by calls")


def hidden_states(model: LanguageModel, tokens: jax.Array, *, stop: int) -> jax.Array:
    """The residual stream entering block `stop` for fresh sequences tokens [b, t] → [b, t, d].

    `logits_from(model, hidden_states(model, tokens, stop=l), start=l)` equals `model(tokens)[0]`;
    the split lets a caller run the frozen blocks below the first adapted one once, outside the
    differentiated function (they do not depend on the adapter's parameters).
    """
    _offline(model)
    n = len(model.blocks)
    if not 0 <= stop <= n:
        raise ValueError(f"stop={stop} must lie in [0, {n}]")
    x = model.embed(jnp.asarray(tokens, jnp.int32)).astype(model.dtype)
    for block in model.blocks[:stop]:
        x, _ = block(x, None)
    return x


def logits_from(
    model: LanguageModel, x: jax.Array, *, start: int, positions: jax.Array | None = None
) -> jax.Array:
    """Runs blocks `start:` on the residual stream x [b, t, d]; logits [b, t or k, V] float32.

    Args:
      model: a (non-online) `LanguageModel`.
      x: the stream entering block `start` (`hidden_states(model, tokens, stop=start)`).
      start: the first block to run.
      positions: [b, k] int or None; when given, the head runs on these positions only (the
        vocabulary projection dominates the cost when a loss reads a few positions).
    """
    _offline(model)
    n = len(model.blocks)
    if not 0 <= start <= n:
        raise ValueError(f"start={start} must lie in [0, {n}]")
    if x.ndim != 3:
        raise ValueError(f"x must be [b, t, d], got shape {x.shape}")
    for block in model.blocks[start:]:
        x, _ = block(x, None)
    if positions is not None:
        positions = jnp.asarray(positions, jnp.int32)
        if positions.ndim != 2 or positions.shape[0] != x.shape[0]:
            raise ValueError(f"positions must be [b={x.shape[0]}, k], got {positions.shape}")
        x = jnp.take_along_axis(x, positions[..., None], axis=1)
    h = model.final_norm(x).astype(jnp.float32)
    if model.tie_embeddings:
        return h @ model.embed.embedding[...].astype(jnp.float32).T
    return h @ model.head.kernel[...].astype(jnp.float32)


def gate_values(model: LanguageModel, tokens: jax.Array) -> dict[int, float]:
    """Mean gate g_t over tokens [b, t] of every layer with a memory branch, {layer: value}."""
    x = model.embed(jnp.asarray(tokens, jnp.int32)).astype(model.dtype)
    return gate_values_from(model, x, start=0)


def gate_values_from(model: LanguageModel, x: jax.Array, *, start: int) -> dict[int, float]:
    """`gate_values` of the memory layers ≥ `start` from the stream x [b, t, d] entering `start`."""
    _offline(model)
    layers = [
        i for i, b in enumerate(model.blocks) if i >= start and isinstance(b, MemoryAdapterBlock)
    ]
    if not layers:
        return {}
    means = _gate_means(model, x, start)
    return {i: float(m) for i, m in zip(layers, means)}


@nnx.jit(static_argnums=2)
def _gate_means(model: LanguageModel, x: jax.Array, start: int) -> list[jax.Array]:
    means = []
    last = max(i for i, b in enumerate(model.blocks) if isinstance(b, MemoryAdapterBlock))
    for block in model.blocks[start : last + 1]:
        if isinstance(block, MemoryAdapterBlock):
            means.append(jnp.mean(block.gate(block.block.attn_norm(x))))
        x, _ = block(x, None)
    return means


def path_filter(pattern: str) -> Callable[[tuple, Any], bool]:
    """An nnx filter: `nnx.Param`s whose `/`-joined path matches `pattern` (`re.search`)."""
    regex = re.compile(pattern)

    def select(path: tuple, value: Any) -> bool:
        return isinstance(value, nnx.Param) and bool(regex.search("/".join(map(str, path))))

    return select


def split_trainable(model: nnx.Module, pattern: str) -> tuple[Any, nnx.State, nnx.State, nnx.State]:
    """(graphdef, trainable params, frozen params, other state) of `model`.

    Trainable are the `nnx.Param`s whose path matches `pattern` (e.g. r"/memory/|/gate/");
    `nnx.merge(graphdef, trainable, frozen, other)` rebuilds the model.

    Raises:
      ValueError: the pattern matches no parameter.
    """
    graphdef, trainable, frozen, other = nnx.split(model, path_filter(pattern), nnx.Param, ...)
    if not jax.tree.leaves(trainable):
        raise ValueError(f"pattern={pattern!r} matches no parameter of the model")
    return graphdef, trainable, frozen, other


def lm_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of logits [b, t, V] against targets [b, t]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def make_adapter_step(
    graphdef: Any,
    levels: Sequence[Level],
    *,
    transform: Callable[[Any, Any], Any] | None = None,
):
    """A jitted train step that updates only the trainable partition (frozen leaves are inputs).

    `step(trainable, opt_state, tokens [b, t+1], frozen, other) -> (trainable, opt_state, loss)`;
    the model is `nnx.merge(graphdef, *transform(trainable, frozen), other)` — by default
    `transform` returns `(trainable, frozen)`; LoRA passes a merge of low-rank factors into the
    frozen weights instead. Gradients are taken w.r.t. `trainable` only and `levels` (a
    `nestlearn.nested` spec over the trainable tree; e.g. one level per CMS level with its
    period) turns them into updates. Frozen weights are never differentiated nor written.

    Returns:
      `nestlearn.optim.scheduler.TrainStep` (`init(trainable)`, `step(...)`).
    """

    def loss_fn(trainable, tokens, frozen, other):
        parts = (trainable, frozen) if transform is None else transform(trainable, frozen)
        model = nnx.merge(graphdef, *parts, other)
        logits, _ = model(tokens[:, :-1])
        return lm_loss(logits, tokens[:, 1:])

    return nestlearn.make_train_step(loss_fn, levels, donate=False)
