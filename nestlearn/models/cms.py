"""Continuum Memory System (CMS): a chain of MLP levels, each with its own update frequency.

arXiv 2512.24695 §7.1, Eqs. 70–74; choices the paper leaves open: docs/SEMANTICS.md §6.2. Level ℓ is
a pre-norm residual feed-forward layer h ← h + MLP_ℓ(RMSNorm_ℓ(h)) (the paper leaves norms out of
its equations), so a CMS with a single level is exactly a Transformer++ MLP sub-layer. Variants:

- sequential (Eq. 70): y = MLP^(f_k)(··· MLP^(f_1)(x)), levels applied in index order;
- nested (Eq. 72): the same chain; in online mode level ℓ is reset to its learned initial weights
  θ_0^(ℓ) whenever its parent (level ℓ+1, the next slower one) reaches a chunk boundary;
- independent (Eq. 74): y = x + Σ_ℓ m_ℓ MLP_ℓ(RMSNorm_ℓ(x)), a learned weighted aggregation with
  one scalar m_ℓ per level (`mix`, initialised to 1).

Modes:

- scheduled: the levels are ordinary `nnx.Param` groups under `cms/levels/<i>/`; the train-step
  scheduler updates level i every `periods[i]` steps with the summed task-loss gradient (Eq. 71
  over the training stream; see `cms_level_selectors`). The forward pass is stateless.
- online: inside a sequence, level ℓ steps on the summed task-loss gradient of the tokens it has
  seen every `chunk_sizes[ℓ]` tokens (Eq. 71 in context, dynamic-evaluation style). The steps are
  the level scheduler's (`nestlearn.optim.nested`) with the base chunk as its clock
  (`online_transform`), so any optax rule can drive them (`online_rule`, default SGD at
  `inner_lr`). The fast weights and the optimizer state are per sequence and live in the block
  state as a `CMSOnlineState`; the parameters are their meta-learned initial values.
  `LanguageModel` computes the chunk gradients and calls `cms_online_update`.

Shapes: b batch, t tokens, d width, f hidden width.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from nestlearn.core.level import Level
from nestlearn.models.layers import (
    MLP,
    RMSNorm,
    SwiGLU,
    activation,
    compute_dtype,
    mlp_apply,
    mlp_hidden_size,
    rms_norm,
    swiglu_apply,
)
from nestlearn.optim.registry import available_rules, rule_factory
from nestlearn.optim.scheduler import NestedState, nested

VARIANTS = ("sequential", "nested", "independent")
MODES = ("scheduled", "online")
FFNS = ("swiglu", "mlp")

LevelWeights = Mapping[str, jax.Array]


class CMSOnlineState(NamedTuple):
    """Per-sequence fast weights of an online CMS (Eq. 71 in context) and their optimizer."""

    weights: tuple[dict, ...]  # per level {name: [b, ...] float32}: current fast weights θ^(ℓ)
    opt_state: NestedState  # of `online_transform`, per sequence (leading axis b when batched)
    initial: tuple[dict, ...]  # per level {name: [...] float32}: learned initial weights θ_0^(ℓ)


def validate_cms_config(cms: ml_collections.ConfigDict) -> None:
    """Raises `ValueError` naming the bad `cms.*` key."""
    periods = tuple(cms.periods)
    if not periods or any(not isinstance(p, int) or p < 1 for p in periods):
        raise ValueError(f"cms.periods must be a non-empty tuple of ints >= 1, got {cms.periods}")
    if cms.mode not in MODES:
        raise ValueError(f"cms.mode={cms.mode!r} is not one of {MODES}")
    if cms.variant not in VARIANTS:
        raise ValueError(f"cms.variant={cms.variant!r} is not one of {VARIANTS}")
    if cms.ffn not in FFNS:
        raise ValueError(f"cms.ffn={cms.ffn!r} is not one of {FFNS}")
    activation(cms.activation)
    if cms.variant == "nested" and cms.mode != "online":
        raise ValueError(
            "cms.variant='nested' resets levels inside a sequence; it needs "
            f"cms.mode='online', got cms.mode={cms.mode!r}"
        )
    if cms.mode == "online":
        sizes = tuple(cms.chunk_sizes)
        if len(sizes) != len(periods):
            raise ValueError(
                f"cms.chunk_sizes {sizes} needs one entry per level "
                f"(cms.periods has {len(periods)})"
            )
        if any(not isinstance(c, int) or c < 1 for c in sizes) or list(sizes) != sorted(sizes):
            raise ValueError(f"cms.chunk_sizes must be ascending ints >= 1, got {sizes}")
        if any(c % sizes[0] for c in sizes):
            raise ValueError(f"cms.chunk_sizes {sizes} must all be multiples of the first")
        if not cms.inner_lr > 0:
            raise ValueError(f"cms.inner_lr must be > 0, got {cms.inner_lr}")
        rule = cms.get("online_rule", "sgd")
        if not isinstance(rule, str) or rule_factory(rule) is None:
            raise ValueError(f"cms.online_rule={rule!r} is not a rule; any of {available_rules()}")


def level_apply(
    weights: LevelWeights, x: jax.Array, *, ffn: str, act: str, eps: float = 1e-6
) -> jax.Array:
    """MLP_ℓ(RMSNorm_ℓ(x)) of one level (no residual, no mix); weights shared or per sequence.

    `eps` is the RMSNorm epsilon (1e-6 by default; a converted pretrained model passes its own).
    """
    h = rms_norm(x, weights["norm"], eps=eps)
    if ffn == "swiglu":
        return swiglu_apply(weights, h)
    return mlp_apply(weights, h, act=act)


def cms_apply(
    levels: Sequence[LevelWeights],
    x: jax.Array,
    *,
    variant: str,
    ffn: str,
    act: str,
    eps: float = 1e-6,
) -> jax.Array:
    """The CMS forward pass, Eq. 70 (sequential, nested) or Eq. 74 (independent).

    Args:
      levels: one weight dict per level; leaves [...] (shared) or [b, ...] (per sequence).
      x: [b, t, d].
      eps: the RMSNorm epsilon of every level.

    Returns:
      y: [b, t, d].
    """
    if variant == "independent":
        y = x
        for w in levels:
            mix = w["mix"].astype(x.dtype)
            mix = mix.reshape(mix.shape + (1,) * (x.ndim - mix.ndim))
            y = y + mix * level_apply(w, x, ffn=ffn, act=act, eps=eps)
        return y
    h = x
    for w in levels:
        h = h + level_apply(w, h, ffn=ffn, act=act, eps=eps)
    return h


def online_transform(
    chunk_sizes: Sequence[int], *, rule: str = "sgd", learning_rate: float = 1e-3
) -> optax.GradientTransformationExtraArgs:
    """The in-context optimizer of an online CMS: Eq. 71 with the base chunk as the clock.

    One scheduler level per CMS level (`nestlearn.optim.nested`): level ℓ of the fast weights (a
    tuple with one dict per level, paths `<ℓ>/<name>`) applies `rule(learning_rate)` to the
    gradients summed over its chunk every chunk_sizes[ℓ] / chunk_sizes[0] base chunks, and emits
    zeros in between; with `rule="sgd"` that is θ ← θ − lr · Σ(gradients since its last step).

    Args:
      chunk_sizes: C(ℓ) per level, ascending multiples of C(0).
      rule: a rule name (`nestlearn.optim.rule_factory`: any nestlearn.optim transform or optax
        alias).
      learning_rate: the rule's learning rate (`cms.inner_lr`).
    """
    factory = rule_factory(rule)
    if factory is None:
        raise ValueError(f"online CMS rule {rule!r} is not a rule; any of {available_rules()}")
    base = chunk_sizes[0]
    return nested(
        tuple(
            Level(f"cms_level_{i}", rf"^{i}/", factory(learning_rate), period=c // base)
            for i, c in enumerate(chunk_sizes)
        )
    )


def _batched(weights: tuple[dict, ...], initial: tuple[dict, ...]) -> bool:
    """Whether the fast weights carry a leading batch axis that θ_0 has not."""
    return jax.tree.leaves(weights)[0].ndim > jax.tree.leaves(initial)[0].ndim


def cms_online_init(
    initial: tuple[dict, ...],
    transform: optax.GradientTransformation,
    batch_size: int | None = None,
) -> CMSOnlineState:
    """The online state at θ_0: fast weights (per sequence when `batch_size`) and a fresh optimizer.

    Args:
      initial: θ_0^(ℓ) per level (float32, no batch axis).
      transform: `online_transform` of the CMS.
      batch_size: sequences of the batch; None keeps one set of fast weights (a single stream).
    """
    weights = initial
    init = transform.init
    if batch_size is not None:
        weights = jax.tree.map(lambda w: jnp.broadcast_to(w, (batch_size, *w.shape)), initial)
        init = jax.vmap(init)
    return CMSOnlineState(weights, init(weights), initial)


def cms_online_update(
    state: CMSOnlineState,
    grads: tuple[dict, ...],
    *,
    transform: optax.GradientTransformation,
    tokens_seen: jax.Array,
    chunk_sizes: Sequence[int],
    variant: str,
) -> CMSOnlineState:
    """One base chunk's step of the online levels (Eq. 71), and the nested resets (Eq. 72).

    Every level adds the chunk's gradients (summed over its tokens, half-open chunks,
    docs/SEMANTICS.md §6.2) and steps with its rule when tokens_seen ≡ 0 (mod C(ℓ)), through
    `transform` (per sequence when the weights are batched). For the nested variant, level ℓ is
    then reset when tokens_seen ≡ 0 (mod C(ℓ+1)): weights to θ_0^(ℓ), its accumulator, clock and
    rule state to their initial values.

    Args:
      state: the state before the update.
      grads: per-level gradients of the chunk's summed loss, shaped like `state.weights`.
      transform: `online_transform` of the CMS (its clock must be this chunk count).
      tokens_seen: [] int32, tokens processed including this chunk (for the nested resets).
      chunk_sizes: C(ℓ) per level (ascending).
      variant: the CMS variant.
    """
    update = transform.update
    batched = _batched(state.weights, state.initial)
    if batched:
        update = jax.vmap(update)
    updates, opt_state = update(grads, state.opt_state, state.weights)
    weights = list(optax.apply_updates(state.weights, updates))
    if variant == "nested":
        batch = jax.tree.leaves(state.weights)[0].shape[0] if batched else None
        fresh = cms_online_init(state.initial, transform, batch)
        levels = dict(opt_state.levels)
        for level in range(len(chunk_sizes) - 1):
            reset = tokens_seen % chunk_sizes[level + 1] == 0
            pick = lambda new, old, r=reset: jnp.where(r, new, old)
            weights[level] = jax.tree.map(pick, fresh.weights[level], weights[level])
            name = f"cms_level_{level}"
            levels[name] = jax.tree.map(pick, fresh.opt_state.levels[name], levels[name])
        opt_state = NestedState(levels)
    return CMSOnlineState(tuple(weights), opt_state, state.initial)


class CMSLevel(nnx.Module):
    """One CMS level: RMSNorm + feed-forward (+ aggregation weight `mix` when independent)."""

    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        ffn: str = "swiglu",
        independent: bool = False,
        zero_out: bool = False,
        rngs: nnx.Rngs,
    ):
        out_init = nnx.initializers.zeros if zero_out else nnx.initializers.lecun_normal()
        self.norm = RMSNorm(d_model)
        self.w_in = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        if ffn == "swiglu":
            self.w_gate = nnx.Linear(d_model, hidden, use_bias=False, rngs=rngs)
        self.w_out = nnx.Linear(hidden, d_model, use_bias=False, kernel_init=out_init, rngs=rngs)
        if independent:
            self.mix = nnx.Param(jnp.ones((), jnp.float32))

    def weights(self) -> dict[str, jax.Array]:
        """All parameters of the level as {name: array}, the input of `level_apply`."""
        out = {"norm": self.norm.scale[...], "w_in": self.w_in.kernel[...]}
        if hasattr(self, "w_gate"):
            out["w_gate"] = self.w_gate.kernel[...]
        out["w_out"] = self.w_out.kernel[...]
        if hasattr(self, "mix"):
            out["mix"] = self.mix[...]
        return out


class CMS(nnx.Module):
    """Continuum Memory System (Eqs. 70–74): levels under `levels/<i>/`, one per entry of `periods`.

    Example:
      >>> cms = CMS(32, 64, periods=(1, 4), rngs=nnx.Rngs(0))
      >>> y, _ = cms(jnp.ones((2, 5, 32)))                 # scheduled mode: stateless
    """

    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        periods: Sequence[int] = (1, 4, 16),
        mode: str = "scheduled",
        variant: str = "sequential",
        chunk_sizes: Sequence[int] = (16, 64, 256),
        inner_lr: float = 1e-3,
        online_rule: str = "sgd",
        ffn: str = "swiglu",
        act: str = "gelu",
        dtype: str = "float32",
        zero_out_levels: Sequence[int] = (),
        norm_eps: float = 1e-6,
        rngs: nnx.Rngs,
    ):
        cfg = ml_collections.ConfigDict(
            dict(
                periods=tuple(periods),
                mode=mode,
                variant=variant,
                chunk_sizes=tuple(chunk_sizes),
                inner_lr=inner_lr,
                online_rule=online_rule,
                ffn=ffn,
                activation=act,
            )
        )
        validate_cms_config(cfg)
        self.periods = tuple(periods)
        self.mode = mode
        self.variant = variant
        self.chunk_sizes = tuple(chunk_sizes)
        self.inner_lr = inner_lr
        self.online_rule = online_rule
        self.ffn = ffn
        self.act = act
        self.dtype = compute_dtype(dtype)
        self.norm_eps = norm_eps
        self.levels = nnx.List(
            [
                CMSLevel(
                    d_model,
                    hidden,
                    ffn=ffn,
                    independent=variant == "independent",
                    zero_out=i in zero_out_levels,
                    rngs=rngs,
                )
                for i in range(len(self.periods))
            ]
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> CMS:
        """Builds the CMS of a model config (fields `d_model`, `mlp_ratio`, `dtype`, `cms.*`)."""
        cms = config.cms
        return cls(
            config.d_model,
            mlp_hidden_size(config.d_model, config.mlp_ratio),
            periods=tuple(cms.periods),
            mode=cms.mode,
            variant=cms.variant,
            chunk_sizes=tuple(cms.chunk_sizes),
            inner_lr=cms.inner_lr,
            online_rule=cms.get("online_rule", "sgd"),
            ffn=cms.ffn,
            act=cms.activation,
            dtype=config.dtype,
            rngs=rngs,
        )

    @classmethod
    def from_mlp(
        cls,
        mlp: SwiGLU | MLP | Sequence[SwiGLU | MLP],
        *,
        norm: RMSNorm | Sequence[RMSNorm] | None = None,
        periods: Sequence[int],
        rngs: nnx.Rngs,
        **kwargs,
    ) -> CMS:
        """A CMS whose levels start from existing MLP weights ("ad-hoc level stacking").

        The paper's rule (arXiv 2512.24695 §7.3; docs/SEMANTICS.md §6.2 row 5) starts every level
        from a pretrained MLP. With one `mlp` (and its pre-norm `norm`), level 0 copies it and every
        other level starts with a zero output projection, so the CMS initially computes x +
        mlp(norm(x)), the pretrained residual MLP sub-layer. With a sequence of MLPs, level i copies
        `mlp[i]`. Unless `norm_eps` is given, the levels use the epsilon of the first `norm` (if
        any).

        Args:
          mlp: a `SwiGLU` or `MLP`, or one per level.
          norm: the RMSNorm before the MLP (scale copied), one per level, or None (ones).
          periods: the level periods.
          rngs: random streams for the levels that are not copied.
          **kwargs: further `CMS` arguments (mode, variant, chunk_sizes, inner_lr, dtype).
        """
        mlps = list(mlp) if isinstance(mlp, Sequence) else [mlp]
        norms = list(norm) if isinstance(norm, Sequence) else [norm] * len(mlps)
        if len(mlps) not in (1, len(periods)) or len(norms) != len(mlps):
            raise ValueError(
                f"need one mlp or one per level ({len(periods)}), got {len(mlps)} "
                f"mlps and {len(norms)} norms"
            )
        kinds = {type(m) for m in mlps}
        if len(kinds) != 1 or not kinds <= {SwiGLU, MLP}:
            raise ValueError(f"mlp must be SwiGLU or MLP modules of one kind, got {kinds}")
        ffn = "swiglu" if SwiGLU in kinds else "mlp"
        d_model, hidden = mlps[0].w_in.kernel.shape
        if ffn == "mlp":
            kwargs.setdefault("act", mlps[0].act)
        if norms[0] is not None:
            kwargs.setdefault("norm_eps", norms[0].eps)
        zero_out = tuple(range(len(mlps), len(periods)))
        cms = cls(
            d_model, hidden, periods=periods, ffn=ffn, zero_out_levels=zero_out, rngs=rngs, **kwargs
        )
        for level, source, source_norm in zip(cms.levels, mlps, norms):
            if source.w_in.kernel.shape != (d_model, hidden):
                raise ValueError(
                    f"all mlps need w_in of shape {(d_model, hidden)}, got "
                    f"{source.w_in.kernel.shape}"
                )
            for name in ("w_in", "w_gate", "w_out"):
                if hasattr(level, name):
                    getattr(level, name).kernel[...] = getattr(source, name).kernel[...]
            if source_norm is not None:
                level.norm.scale[...] = source_norm.scale[...]
        return cms

    def level_weights(self) -> tuple[dict[str, jax.Array], ...]:
        """The learned (initial) weights of every level."""
        return tuple(level.weights() for level in self.levels)

    def online_transform(self) -> optax.GradientTransformationExtraArgs:
        """The in-context optimizer of the online mode (`online_transform`)."""
        return online_transform(
            self.chunk_sizes, rule=self.online_rule, learning_rate=self.inner_lr
        )

    def init_state(self, batch_size: int) -> CMSOnlineState | None:
        """None in scheduled mode; per-sequence copies of the learned weights in online mode."""
        if self.mode == "scheduled":
            return None
        return cms_online_init(self.level_weights(), self.online_transform(), batch_size)

    def __call__(
        self, x: jax.Array, state: CMSOnlineState | None = None
    ) -> tuple[jax.Array, CMSOnlineState | None]:
        """Args: x [b, t, d]; state: None or the online state. Returns (y [b, t, d], state).

        The online fast weights are read, not written, here: inside a chunk they are frozen
        (Eq. 71); `LanguageModel` applies the updates between chunks.
        """
        if self.mode == "online" and state is None:
            state = self.init_state(x.shape[0])
        levels = self.level_weights() if state is None else state.weights
        y = cms_apply(
            levels,
            x.astype(self.dtype),
            variant=self.variant,
            ffn=self.ffn,
            act=self.act,
            eps=self.norm_eps,
        )
        return y, state


def cms_level_selectors(config: ml_collections.ConfigDict) -> tuple[tuple[str, str, int], ...]:
    """(name, regex, period) of every CMS level, for building one scheduler `Level` each.

    The regex `(^|/)cms/levels/<i>/` matches the `/`-joined key path of every parameter of level
    i in every block, and nothing else, so the regexes partition the CMS parameters; every other
    leaf belongs to the backbone. Models without a `cms` section give `()`. In online mode the
    parameters are the meta-learned initial weights and still follow `periods`.

    Args:
      config: a model config (the model section of an experiment config).
    """
    if "cms" not in config:
        return ()
    validate_cms_config(config.cms)
    return tuple(
        (f"cms_level_{i}", rf"(^|/)cms/levels/{i}/", int(period))
        for i, period in enumerate(config.cms.periods)
    )
