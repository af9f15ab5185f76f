"""Hope's self-modifying (self-referential) deep associative memory (Eqs. 83–93, arXiv 2512.24695).

Every projection of the layer is itself an in-context memory, a residual MLP
M_□(x) = x + W₁ σ(W₂ x) (Eqs. 89/91) per head, for □ ∈ {k, v, q, η, α, memory}:

    o_t = M_memory(q_t), k_t = M_k(x_t), v_t = M_v(x_t), η_t = M_η(x_t), α_t = M_α(x_t)  (Eq. 83)
    v̂_□,t = M_□(v_t)                                                                  (Eq. 84)
    min_{M_□} ½‖M_□(k_t) − v̂_□,t‖²                                                    (Eqs. 85–86)

and every memory takes one DGD step with weight decay and Titans-style momentum per token:

    S_t = β S_{t−1} − η_t ∇L(M_□,c; k_t, v̂_□,t)       (momentum, Titans Eqs. 9–10)
    W₂_t = W₂_{t−1} (α_t I − η_t k_t k_tᵀ) + S₂_t     (Eq. 88 on the input-side weight)
    W₁_t = α_t W₁_{t−1} + S₁_t                         (α decays the output-side weight)

with β = ``momentum`` (β = 0 gives Eq. 88 as printed). With ``retention_target="initial"`` the
retention decays each weight towards its meta-learned initial value W₀ instead of towards zero,
α_t W → W₀ + α_t (W − W₀) (W₂'s erase term −η_t W₂ k_t k_tᵀ is unchanged): the deviation
W − W₀ obeys the recursion above, and a memory left unwritten returns to W₀, not to the zero
weights that are a fixed point of a residual-MLP memory's writes (docs/SEMANTICS.md §1.3).

By default x is ℓ2-normalised per head before generation and k, q, v after it, so the self-generated
targets v̂ = M(v) have the scale of the keys (unnormalised v lets the target outrun the prediction
and the memories diverge; see docs/SEMANTICS.md §1.3). Causal chunking (arXiv 2512.24695 §8.2, Eq.
90; docs/SEMANTICS.md §1.2 rows 1–2): the sequence is cut into chunks; inside a chunk, every
generated quantity (k, v, q, η, α, v̂) and every gradient comes from the states at the end of the
previous chunk, index C⌊(t−1)/C⌋, while α, the DGD erase factor and the momentum act token by token.
The generator memories (k, v, q, η, α) use ``chunk_size``; the output memory uses
``memory_chunk_size``, and o_t reads the output memory at the start of its own chunk. A sequence
whose length is not a multiple of a chunk size ends with one shorter chunk (nothing is padded or
dropped).

Chunk-parallel form. Per token the gradient of the residual MLP at the chunk-start weights is
rank one per layer: ∇W₁ = e aᵀ, ∇W₂ = δ kᵀ with e = M(k) − v̂, a = σ(W₂k), δ = (W₁ᵀe) ⊙ σ'(W₂k).
So the end-of-chunk momentum and W₁ are weighted sums of these outer products (one matmul each),
with weights from cumulative products of α and powers of β. The running W₂ enters its own update
through the DGD erase term r_t kᵀ, r_t = W₂_{t−1} k_t; the r_t solve one unit lower-triangular
c×c system per chunk (the UT transform of DeltaNet/GDN, GDN §3.1). Cumulative decays
live in log space (log α = log_sigmoid(·)), so every decay ratio is exp of a non-positive number.

On a GPU or TPU, ``kernel_impl="pallas"`` runs the output memory's chunks on Pallas kernels whose
body is the same chunk write (:func:`self_modifying_memory`, docs/kernels.md §4).

Layout: b batch, t tokens, h heads, d width, n hidden width of a memory, c chunk length, e = 1 for
per-head η/α or d for per-channel η/α. Numerics: compute and state dtype is the promotion of the
input and parameter dtypes with float32; outputs are cast back to the input dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nestlearn.kernels import kernel_impl as kernel_switch
from nestlearn.kernels import per_sequence
from nestlearn.kernels.dispatch import Unavailable
from nestlearn.kernels.triangular import unit_lower_inverse, unit_lower_solve
from nestlearn.memory import architectures, instruments

__all__ = [
    "SelfModifyingConfig",
    "SelfModifyingState",
    "kernel_support",
    "self_modifying_init",
    "self_modifying_memory",
    "self_modifying_memory_recurrent",
]

Params = dict[str, Any]

_GENERATORS = ("k", "v", "q", "eta", "alpha")
DGD_STEPS = ("printed", "normalized", "chunk_normalized", "token_normalized")
RETENTION_TARGETS = ("zero", "initial")
_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class SelfModifyingConfig:
    """Options of the self-modifying memory; docs/SEMANTICS.md §1 states each default and option.

    Attributes:
      chunk_size: chunk length C of the k, v, q, η, α memories (arXiv 2512.24695 §8.2).
      memory_chunk_size: chunk length of the output memory M_memory (arXiv 2512.24695 §8.2).
      adaptive_q: q_t = M_q(x_t) is a self-modifying memory; False uses the static query input
        (Eq. 83).
      momentum: constant momentum decay β ∈ [0, 1) on every memory; 0 is Eq. 88 as printed
        (the "w/o momentum" ablation). It scales a chunk's gradient step by up to 1/(1 − β).
      use_dgd: apply the DGD erase factor (α_t I − η_t k_t k_tᵀ) of Eq. 88 to the input-side weight
        W₂; False is plain GD with weight decay (the "w/o DGD" ablation).
      use_decay: α_t from M_α; False fixes α ≡ 1 (the "w/o weight decay" ablation).
      adaptive_k: k_t = M_k(x_t); False uses a static linear projection (the "static k" ablation).
      adaptive_v: v_t = M_v(x_t); False uses a static linear projection (the "static v" ablation).
      stop_gradient_vhat: the inner loss treats v̂ as a constant target; False differentiates
        the inner loss through v̂ = M(v_t) as well. The outer loss backpropagates through v̂
        either way (docs/SEMANTICS.md §1.2 row 11).
      stop_gradient_writes: the outer loss does not backpropagate through the inner writes (the
        state increments are straight-through constants).
      eta_max: η_t = eta_max · sigmoid(·).
      eta_bias_init: initial learned bias of the η readout.
      alpha_bias_init: initial learned bias of the α readout; α = sigmoid(·) starts near
        sigmoid(alpha_bias_init) (near full retention).
      eta_alpha_per_channel: η and α per channel (e = d) instead of per head (e = 1).
      normalize_qk: ℓ2-normalise q_t and k_t (arXiv 2512.24695 §8.3).
      normalize_v: ℓ2-normalise v_t after generation (targets v̂ = M(v) at the keys' scale).
      normalize_x: ℓ2-normalise the per-head input x_t before generation.
      kv_init_scale: W₁ of the initial M_k and M_v is normal with std kv_init_scale/√n, so that
        k ≠ v from the start; 0 makes them the identity (then k = v and, with normalised v, every
        inner gradient is zero until the outer loop separates M_k from M_v).
      project_inputs: each adaptive generator of k and v (and q when ``adaptive_q``) reads its
        own learned linear map of the per-head input, □_t = M_□(P_□ x_t), P_□ [d, d] initialised
        as ``project_init`` says (Titans' separate q/k/v projections, Eq. 76, in front of Eq. 83);
        False feeds every generator the same x_t. With one shared x_t the residual identity of
        Eq. 89 puts x_t in both k_t and v_t, and only the MLP part can separate key features
        from value features (docs/SEMANTICS.md §1.2 row 13a).
      project_init: the initial P_□ of ``project_inputs``: "identity" (the generators start as
        without projections) or "random" (normal with std 1/√d, a different map per generator,
        as Titans' projections: k and v start unrelated).
      activation: σ of the residual MLPs, a key of ``architectures.ACTIVATIONS``.
      hidden_expansion: hidden width n = round(hidden_expansion · d) when ``self_modifying_init``
        is given no ``hidden``.
      dgd_step: "printed" uses η_t in Eq. 88; "normalized" uses η'_t = η_t / (1 + η_t‖k_t‖²)
        (Eq. 57) in both the erase and the gradient term; "chunk_normalized"
        keeps η_t in the erase term and divides the gradient step of each layer by one plus the
        trace of that layer's inner curvature over the chunk (:func:`_layer_steps`), so that a
        chunk's step on the chunk-start weights stays a contraction whatever the memory's scale;
        "token_normalized" gives W₂ the chunk-normalised step and W₁ Eq. 57's step on its own
        input, η_t / (1 + η_t‖a_t‖²) with a_t = σ(W₂k_t), taken token by token inside the chunk
        (W₁'s gradient at the running W₁, as in the per-token Eq. 88; a_t from the chunk-start
        W₂): each token's write then removes the fraction η_t‖a_t‖²/(1 + η_t‖a_t‖²) of its own
        error, whatever the scale of the memory (docs/SEMANTICS.md §1.3).
      retention_target: what α_t decays each memory towards: "zero" (Eq. 88 as printed, α_t W)
        or "initial", the meta-learned initial weights W₀ of ``params`` (W₀ + α_t (W − W₀)),
        also when streaming from an ``initial_state``.
      remat: rematerialise each chunk in the backward pass (``jax.checkpoint``).
      writes: the in-context writes; False keeps every memory at its initial state through the
        whole sequence (no write, no decay, no momentum) while k, v, q, η, α and the reads are
        computed as before from that state — the control of docs/SEMANTICS.md §1.2 row 21.
    """

    chunk_size: int = 8
    memory_chunk_size: int = 64
    adaptive_q: bool = False
    momentum: float = 0.5
    use_dgd: bool = True
    use_decay: bool = True
    adaptive_k: bool = True
    adaptive_v: bool = True
    stop_gradient_vhat: bool = True
    stop_gradient_writes: bool = False
    eta_max: float = 0.1
    eta_bias_init: float = 0.0
    alpha_bias_init: float = 4.0
    eta_alpha_per_channel: bool = False
    normalize_qk: bool = True
    normalize_v: bool = True
    normalize_x: bool = True
    kv_init_scale: float = 1.0
    project_inputs: bool = False
    project_init: str = "identity"
    activation: str = "silu"
    hidden_expansion: float = 1.0
    dgd_step: str = "printed"
    retention_target: str = "zero"
    remat: bool = True
    writes: bool = True

    def __post_init__(self):
        for name in ("chunk_size", "memory_chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            try:
                size = operator.index(value)
            except TypeError:
                raise ValueError(f"{name} must be a positive int, got {value!r}") from None
            if size < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in (
            "adaptive_q",
            "use_dgd",
            "use_decay",
            "adaptive_k",
            "adaptive_v",
            "stop_gradient_vhat",
            "stop_gradient_writes",
            "eta_alpha_per_channel",
            "normalize_qk",
            "normalize_v",
            "normalize_x",
            "project_inputs",
            "remat",
            "writes",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in (
            "momentum",
            "eta_max",
            "eta_bias_init",
            "alpha_bias_init",
            "kv_init_scale",
            "hidden_expansion",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a real number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.eta_max <= 0.0:
            raise ValueError(f"eta_max must be > 0, got {self.eta_max!r}")
        if self.project_init not in ("identity", "random"):
            raise ValueError(
                f"project_init must be 'identity' or 'random', got {self.project_init!r}"
            )
        if self.kv_init_scale < 0.0:
            raise ValueError(f"kv_init_scale must be >= 0, got {self.kv_init_scale!r}")
        if self.hidden_expansion <= 0.0:
            raise ValueError(f"hidden_expansion must be > 0, got {self.hidden_expansion!r}")
        if self.activation not in architectures.ACTIVATIONS:
            raise ValueError(
                f"activation={self.activation!r} is not one of {sorted(architectures.ACTIVATIONS)}"
            )
        if self.dgd_step not in DGD_STEPS:
            raise ValueError(f"dgd_step must be one of {DGD_STEPS}, got {self.dgd_step!r}")
        if self.retention_target not in RETENTION_TARGETS:
            raise ValueError(
                f"retention_target must be one of {RETENTION_TARGETS}, "
                f"got {self.retention_target!r}"
            )


class SelfModifyingState(NamedTuple):
    """Fast state of every self-modifying memory, one per sequence.

    Both fields map a memory name ("k", "v", "q", "eta", "alpha" when adaptive, and "memory") to
    residual-MLP weights {"w1": [b, h, d, n], "w2": [b, h, n, d]} in the compute dtype.
    """

    weights: dict[str, Params]  # current weights W of each memory
    momentum: dict[str, Params]  # momentum S of each memory (same shapes; zeros at the start)


class _Tokens(NamedTuple):
    """Per-token quantities generated by the k, v, q, η, α memories (per sequence and head)."""

    k: jax.Array  # [c, d] keys (ℓ2-normalised when normalize_qk)
    v: jax.Array  # [c, d] values, the inputs of v̂ = M(v)
    q: jax.Array  # [c, d] queries of the output memory
    eta: jax.Array  # [c, e] effective inner step (η_t or η'_t)
    log_alpha: jax.Array  # [c, e] log α_t (0 without decay)


class _Memory(NamedTuple):
    """One residual-MLP memory inside the chunk scans (leading axes [g] when stacked)."""

    w1: jax.Array  # [d, n] output-side weight W₁
    s1: jax.Array  # [d, n] its momentum S₁
    w2: jax.Array  # [n, d] input-side weight W₂
    s2: jax.Array  # [n, d] its momentum S₂


def _adaptive_generators(config: SelfModifyingConfig) -> tuple[str, ...]:
    """Names of the self-modifying generator memories, in a fixed order."""
    adaptive = {
        "k": config.adaptive_k,
        "v": config.adaptive_v,
        "q": config.adaptive_q,
        "eta": True,
        "alpha": True,
    }
    return tuple(name for name in _GENERATORS if adaptive[name])


def _projected_generators(config: SelfModifyingConfig) -> tuple[str, ...]:
    """Generators that read their own input map P_□ x_t (``project_inputs``), in a fixed order."""
    if not config.project_inputs:
        return ()
    return tuple(n for n in _adaptive_generators(config) if n in ("k", "v", "q"))


def _generator_inputs(x: jax.Array, static: Params, names: tuple[str, ...]) -> jax.Array | None:
    """Inputs of the generators ``names``, P_□ x or x: x [c, d] -> [c, g, d]; None (every
    generator reads x itself) without ``project_inputs``."""
    maps = static.get("inputs")
    if not maps:
        return None
    return jnp.stack([x @ maps[n].T if n in maps else x for n in names], axis=1)


def self_modifying_init(
    key: jax.Array,
    *,
    heads: int,
    dim: int,
    hidden: int | None = None,
    config: SelfModifyingConfig,
    dtype: Any = jnp.float32,
) -> Params:
    """Meta-learned initial weights of the self-modifying memory (Eqs. 83, 89/91).

    Args:
      key: PRNG key.
      heads: number of heads h.
      dim: per-head width d.
      hidden: hidden width n of every residual MLP; None uses round(config.hidden_expansion · d).
      config: the layer's options.
      dtype: parameter dtype.

    Returns:
      A dict with the residual-MLP initial states {"w1": [h, d, n], "w2": [h, n, d]} under "k",
      "v", "eta", "alpha", "memory" and, when ``config.adaptive_q``, "q" (W₂ LeCun-normal; W₁ = 0,
      the identity map, except for M_k and M_v, whose W₁ has std ``kv_init_scale``/√n);
      a static k or v is a linear projection {"w": [h, d, d]}
      initialised to the identity; "eta_bias" and "alpha_bias" ([h] per head, [h, d] per channel)
      are the learned biases of the η and α readouts; with ``config.project_inputs``, "inputs"
      maps each projected generator (:func:`_projected_generators`) to its input map P_□
      [h, d, d], initialised to the identity (``project_init="random"``: normal, std 1/√d).
    """
    if not isinstance(config, SelfModifyingConfig):
        raise ValueError(f"config must be a SelfModifyingConfig, got {type(config).__name__}")
    if hidden is None:
        hidden = max(1, round(config.hidden_expansion * dim))
    for name, value in (("heads", heads), ("dim", dim), ("hidden", hidden)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    arch = architectures.residual_mlp(hidden, config.activation)
    names = (*_adaptive_generators(config), "memory")
    keys = dict(zip(names, jax.random.split(key, len(names))))
    params: Params = {
        name: arch.init(keys[name], heads=heads, d_in=dim, d_out=dim, dtype=dtype) for name in names
    }
    for name in ("k", "v"):
        if name in params and config.kv_init_scale:
            key_w1 = jax.random.fold_in(keys[name], 1)
            w1 = jax.random.normal(key_w1, (heads, dim, hidden), jnp.float32) / math.sqrt(hidden)
            params[name]["w1"] = (config.kv_init_scale * w1).astype(dtype)
    identity = jnp.broadcast_to(jnp.eye(dim, dtype=dtype), (heads, dim, dim))
    for name, adaptive in (("k", config.adaptive_k), ("v", config.adaptive_v)):
        if not adaptive:
            params[name] = {"w": identity}
    bias_shape = (heads, dim) if config.eta_alpha_per_channel else (heads,)
    projected = _projected_generators(config)
    if projected:
        params["inputs"] = {name: identity for name in projected}
        if config.project_init == "random":
            for name in projected:
                key_p = jax.random.fold_in(keys[name], 2)
                p = jax.random.normal(key_p, (heads, dim, dim), jnp.float32) / math.sqrt(dim)
                params["inputs"][name] = p.astype(dtype)
    params["eta_bias"] = jnp.full(bias_shape, config.eta_bias_init, dtype)
    params["alpha_bias"] = jnp.full(bias_shape, config.alpha_bias_init, dtype)
    return params


# ----------------------------------------------------------------------------------------------
# Shared definition: generation (Eqs. 83–84), inner-loss gradient factors (Eqs. 86–87).
# Everything below works on one sequence and one head; the public functions vmap over both.
# ----------------------------------------------------------------------------------------------


def _mlp(w: Params, x: jax.Array, sigma: Callable) -> jax.Array:
    """Residual MLP x + W₁ σ(W₂ x) (Eqs. 89/91); w1: [d, n], w2: [n, d], x: [c, d]."""
    return x + sigma(x @ w["w2"].T) @ w["w1"].T


def _l2_normalize(x: jax.Array) -> jax.Array:
    return x * lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + _NORM_EPS)


def _normalized_step(eta: jax.Array, k: jax.Array) -> jax.Array:
    """Eq. 57's η' = η / (1 + η‖k‖²) per token; per channel η / (1 + Σ_j η_j k_j²). [c, e]."""
    return eta / (1.0 + jnp.sum(eta * k * k, axis=-1, keepdims=True))


def _generate(
    outputs: dict[str, jax.Array],
    static: Params,
    x: jax.Array,
    q_in: jax.Array,
    config: SelfModifyingConfig,
) -> _Tokens:
    """k, v, q, η, α of a block of tokens from the generator outputs (Eq. 83).

    ``outputs`` maps each adaptive generator □ to M_□(x) [c, d], read from its state at the
    chunk start; a static k or v is the linear projection in ``static``. η and α are per-head
    scalars (the channel mean of M_η(x_t), M_α(x_t) plus a learned bias) or per-channel (M(x_t)
    plus a learned bias), squashed as η = η_max·sigmoid(·), α = sigmoid(·).
    """

    def project(name: str) -> jax.Array:
        if name in outputs:
            return outputs[name]
        return x @ static[name]["w"].T

    def readout(y: jax.Array, bias: jax.Array) -> jax.Array:
        # y: [c, d]; bias: [e] -> [c, e]
        if config.eta_alpha_per_channel:
            return y + bias
        return jnp.mean(y, axis=-1, keepdims=True) + bias

    k = project("k")
    v = project("v")
    q = outputs.get("q", q_in)
    if config.normalize_qk:
        k, q = _l2_normalize(k), _l2_normalize(q)
    if config.normalize_v:
        v = _l2_normalize(v)
    eta = config.eta_max * jax.nn.sigmoid(readout(outputs["eta"], static["eta_bias"]))
    if config.use_decay:
        log_alpha = jax.nn.log_sigmoid(readout(outputs["alpha"], static["alpha_bias"]))
    else:
        log_alpha = jnp.zeros_like(eta)
    if config.dgd_step == "normalized":
        eta = _normalized_step(eta, k)
    return _Tokens(k, v, q, eta, log_alpha)


def _gradient_factors(
    w: Params, k: jax.Array, v: jax.Array, config: SelfModifyingConfig
) -> tuple[jax.Array, jax.Array, tuple[tuple[jax.Array, jax.Array], ...], tuple]:
    """Rank-one factors of the per-token gradient of ½‖M(k_t) − v̂_t‖² at the weights ``w``.

    Returns (e, a, terms, slopes) with ∇W₁_t = e_t a_tᵀ and ∇W₂_t = Σ_(δ, ρ) ∈ terms δ_t ρ_tᵀ;
    e: [c, d], a: [c, n], δ: [c, n], ρ: [c, d]; ``slopes`` pairs each ρ with σ'(W₂ρ) [c, n] (the
    inputs of :func:`_layer_steps`). With ``stop_gradient_vhat`` the target v̂ = M(v) is a
    constant of the inner loss; otherwise the inner gradient also flows through M(v_t)
    (docs/SEMANTICS.md §1.2 row 11).
    """
    sigma = architectures.ACTIVATIONS[config.activation]
    w1, w2 = w["w1"], w["w2"]

    def act_and_slope(z):
        return jax.jvp(sigma, (z,), (jnp.ones_like(z),))

    a_k, slope_k = act_and_slope(k @ w2.T)  # [c, n]
    a_v, slope_v = act_and_slope(v @ w2.T)  # [c, n]
    e = (k + a_k @ w1.T) - (v + a_v @ w1.T)  # [c, d] residual M(k) − v̂
    back = e @ w1  # [c, n] W₁ᵀ e
    if config.stop_gradient_vhat:
        return e, a_k, ((back * slope_k, k),), ((slope_k, k),)
    return e, a_k - a_v, ((back * slope_k, k), (-back * slope_v, v)), ((slope_k, k), (slope_v, v))


def _layer_steps(
    eta: jax.Array, a: jax.Array, w1: jax.Array, slopes: tuple, config: SelfModifyingConfig
) -> tuple[jax.Array, jax.Array]:
    """Gradient steps (η₁ for W₁, η₂ for W₂) of the c tokens of one chunk, each [c, e].

    With ``dgd_step="chunk_normalized"`` each layer's step is η_t / (1 + τ) with τ the trace of
    the layer's Gauss–Newton curvature summed over the chunk (docs/SEMANTICS.md §1.3):
      τ₁ = Σ_t η_t ‖a_t‖²                                  (W₁; per output channel when e = d)
      τ₂ = Σ_t Σ_(s, ρ) (Σ_j η_t,j ρ_t,j²) Σ_n s_t,n² ‖W₁[:, n]‖²   (W₂, one scalar)
    The chunk's gradient step on the chunk-start weights is then a contraction (its largest
    eigenvalue is at most τ/(1 + τ) < 1) for any keys and any memory scale; with one token and a
    linear memory it is the normalised DGD step η/(1 + η‖k‖²) of Eq. 57. With
    ``dgd_step="token_normalized"`` W₂'s step is the same and W₁'s is Eq. 57's per token,
    η_t / (1 + η_t‖a_t‖²) (:func:`_write_chunk` applies it token by token). Otherwise (η, η).

    Args:
      eta: [c, e] per-token step sizes η_t.
      a: [c, n] the W₁ gradient factor (σ(W₂k), or σ(W₂k) − σ(W₂v)).
      w1: [d, n] the output-side weight at the chunk start.
      slopes: pairs (σ'(W₂ρ) [c, n], ρ [c, d]) of the W₂ gradient terms.
      config: the layer's options.
    """
    if config.dgd_step not in ("chunk_normalized", "token_normalized"):
        return eta, eta
    columns = jnp.sum(w1 * w1, axis=0)  # [n] ‖W₁[:, n]‖²
    tau2 = sum(
        jnp.sum(jnp.sum(eta * rho * rho, axis=-1) * jnp.sum(s * s * columns, axis=-1))
        for s, rho in slopes
    )
    curvature1 = eta * jnp.sum(a * a, axis=-1, keepdims=True)  # [c, e] η_t‖a_t‖²
    if config.dgd_step == "token_normalized":
        return eta / (1.0 + curvature1), eta / (1.0 + tau2)
    return eta / (1.0 + jnp.sum(curvature1, axis=0)), eta / (1.0 + tau2)


def _erase_steps(eta: jax.Array, k: jax.Array, config: SelfModifyingConfig) -> jax.Array:
    """Step sizes [c, e] of the DGD erase (α_t I − η_t k_t k_tᵀ) of Eq. 88.

    η_t, except with ``dgd_step="token_normalized"``: Eq. 57's η_t / (1 + η_t‖k_t‖²) (per channel
    η / (1 + Σ_j η_j k_j²)), so that the erase factor stays a contraction for any η_t.
    """
    return _normalized_step(eta, k) if config.dgd_step == "token_normalized" else eta


# ----------------------------------------------------------------------------------------------
# Writes: token by token (reference) and one chunk in closed form (fast path).
# ----------------------------------------------------------------------------------------------


def _write_token(
    w: Params, s: Params, tok: _Tokens, config: SelfModifyingConfig, anchor: Params | None = None
) -> tuple[Params, Params]:
    """One token of Eq. 88 with momentum; tok fields have a leading axis of length 1.

    ``anchor`` holds the weights W₀ that α decays towards (None: zero).
    """
    beta = config.momentum
    e, a, terms, slopes = _gradient_factors(w, tok.k, tok.v, config)
    eta1, eta2 = (x[0] for x in _layer_steps(tok.eta, a, w["w1"], slopes, config))  # [e] each
    alpha = jnp.exp(tok.log_alpha[0])  # [e]
    s1 = beta * s["w1"] - jnp.outer(eta1 * e[0], a[0])
    s2 = beta * s["w2"] - sum(jnp.outer(delta[0], eta2 * rho[0]) for delta, rho in terms)
    a1, a2 = (0.0, 0.0) if anchor is None else (anchor["w1"], anchor["w2"])
    w1 = a1 + alpha[:, None] * (w["w1"] - a1) + s1
    w2 = a2 + (w["w2"] - a2) * alpha[None, :] + s2
    if config.use_dgd:
        erase = _erase_steps(tok.eta, tok.k, config)[0]  # [e]
        w2 = w2 - jnp.outer(w["w2"] @ tok.k[0], erase * tok.k[0])
    return {"w1": w1, "w2": w2}, {"w1": s1, "w2": s2}


class _Decays(NamedTuple):
    """Decay coefficients of one chunk of c tokens, from log α and the momentum β.

    With γ[t', i] = Π_{j=i+1}^{t'} α_j and Φ[t', m] = Σ_{i=m}^{t'} β^{i−m} γ[t', i] (t' = 0..c,
    i, m = 1..c; zero above the diagonal). Per-head α (e = 1) has no channel axis in the
    matrices — a trailing axis of size 1 makes XLA:CPU's fusions of their gradients many times
    slower — and gives columns [c, 1]; per-channel α (e = d) adds the channel axis.
    """

    start: jax.Array  # [c, e] γ[t−1, 0]: decay from the chunk start to token t's write
    gamma: jax.Array  # [c, c(, e)] γ[t−1, i]
    gamma_end: jax.Array  # [c, e] γ[c, i]
    phi: jax.Array  # [c, c(, e)] Φ[t−1, m]
    phi_start: jax.Array  # [c, e] Φ[t−1, 1]
    phi_end: jax.Array  # [c, e] Φ[c, m]
    end: jax.Array  # [1, e] γ[c, 0]
    phi_end0: jax.Array  # [1, e] Φ[c, 1]
    beta_tail: jax.Array  # [c, 1] β^{c−m}


def _chunk_decays(log_alpha: jax.Array, beta: float) -> _Decays:
    """:class:`_Decays` of one chunk; log_alpha [c, e] (e = 1: per head).

    Per head every coefficient comes from masks, sums and 2-D products of [c, c] and [c, 1]
    arrays, so that a Pallas kernel computes them from the c log α of its chunk: with L_t =
    Σ_{j≤t} log α_j (token t = 1..c), γ[t−1, i] = exp(L_{t−1} − L_i) for i < t, γ[c, i] =
    exp(L_c − L_i), and Φ = γ P with P[i, m] = β^{i−m} (m ≤ i).
    """
    c, per_head = log_alpha.shape[0], log_alpha.shape[-1] == 1
    dtype = log_alpha.dtype
    if not per_head:
        return _channel_decays(log_alpha, beta)
    rows = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    token = lax.broadcasted_iota(jnp.int32, (c, 1), 0)
    through = jnp.sum(jnp.where(cols <= rows, jnp.transpose(log_alpha), 0.0), 1, keepdims=True)
    before = through - log_alpha  # [c, 1] L_{t−1}
    total = jnp.sum(log_alpha, axis=0, keepdims=True)  # [1, 1] L_c
    gamma = jnp.exp(jnp.where(cols < rows, before - jnp.transpose(through), -jnp.inf))  # [c, c]
    gamma_end = jnp.exp(total - through)  # [c, 1]
    if beta:
        log_beta = math.log(beta)
        steps = (rows - cols).astype(dtype)
        powers = jnp.where(cols <= rows, jnp.exp(steps * log_beta), 0.0)  # [c(i), c(m)]
        phi = jnp.dot(gamma, powers, preferred_element_type=dtype)
        phi_end = jnp.transpose(jnp.sum(gamma_end * powers, axis=0, keepdims=True))
        beta_tail = jnp.exp((c - 1 - token).astype(dtype) * log_beta)
    else:  # the powers are the identity
        phi, phi_end = gamma, gamma_end
        beta_tail = (token == c - 1).astype(dtype)
    return _Decays(
        start=jnp.exp(before),
        gamma=gamma,
        gamma_end=gamma_end,
        phi=phi,
        phi_start=jnp.sum(jnp.where(cols == 0, phi, 0.0), axis=1, keepdims=True),
        phi_end=phi_end,
        end=jnp.exp(total),
        phi_end0=jnp.sum(jnp.where(token == 0, phi_end, 0.0), axis=0, keepdims=True),
        beta_tail=beta_tail,
    )


def _channel_decays(log_alpha: jax.Array, beta: float) -> _Decays:
    """:class:`_Decays` of one chunk with per-channel α: log_alpha [c, e] (XLA only)."""
    c, dtype = log_alpha.shape[0], log_alpha.dtype
    # lam[t'] = Σ_{j≤t'} log α_j for t' = 0..c; gamma[t', i] for i = 1..c (zero if i > t').
    lam = jnp.concatenate([jnp.zeros_like(log_alpha[:1]), jnp.cumsum(log_alpha, axis=0)])
    causal = jnp.asarray(np.arange(1, c + 1)[None, :] <= np.arange(c + 1)[:, None])  # [c+1, c]
    diff = jnp.where(causal[..., None], lam[:, None, :] - lam[None, 1:, :], -jnp.inf)
    gamma = jnp.exp(diff)  # [c+1, c, e]
    steps = np.arange(c)
    if beta:
        powers = np.where(
            steps[:, None] >= steps[None, :],
            float(beta) ** np.maximum(steps[:, None] - steps[None, :], 0),
            0.0,
        )  # [c(i), c(m)] β^{i−m} for m ≤ i
        phi = jnp.einsum("tie,im->tme", gamma, jnp.asarray(powers, dtype))  # [c+1, c, e]
    else:  # the powers are the identity
        phi = gamma
    return _Decays(
        start=jnp.exp(lam[:-1]),
        gamma=gamma[:-1],
        gamma_end=gamma[c],
        phi=phi[:-1],
        phi_start=phi[:-1, 0],
        phi_end=phi[c],
        end=jnp.exp(lam[c])[None],
        phi_end0=phi[c, 0][None],
        beta_tail=jnp.asarray(float(beta) ** (c - 1 - steps), dtype)[:, None],
    )


def _xla_solve(lower: jax.Array, rhs: jax.Array) -> jax.Array:
    """(I + L)⁻¹ rhs by blocked substitution (:func:`unit_lower_inverse`)."""
    return unit_lower_inverse(lower) @ rhs


def _bilinear(x: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
    """Σ_c x[m, c] y[t, c] weight[t, m, c] -> [t, m]; weight's last axis is 1 or d."""
    if weight.shape[-1] == 1:
        return (y @ x.T) * weight[..., 0]
    return jnp.einsum("mc,tc,tmc->tm", x, y, weight)


def _write_chunk(
    mem: _Memory,
    tok: _Tokens,
    config: SelfModifyingConfig,
    reads: jax.Array | None = None,
    anchor: tuple[jax.Array, jax.Array] | None = None,
    solve: Callable[[jax.Array, jax.Array], jax.Array] = _xla_solve,
) -> tuple[_Memory, jax.Array | None]:
    """Closed form of c tokens of Eq. 88 with momentum, gradients at the chunk-start weights.

    With γ[t', i] = Π_{j=i+1}^{t'} α_j and Φ[t', m] = Σ_{i=m}^{t'} β^{i−m} γ[t', i]:
      S_c  = β^c S_0 − Σ_m β^{c−m} u_m,   W₁_c = γ[c,0] W₁_0 + β Φ[c,1] S₁_0 − Σ_m Φ[c,m] u₁_m,
      W₂_c = W₂_0 γ[c,0] + β S₂_0 Φ[c,1] − Σ_m u₂_m Φ[c,m] − Σ_i r_i (η_i k_i γ[c,i])ᵀ,
    where u_m = η_m ∇L_m and r_t = W₂_{t−1} k_t solves the unit lower-triangular system
      r_t + Σ_{i<t} ⟨η_i k_i γ[t−1,i], k_t⟩ r_i = W₂_0 γ[t−1,0] k_t + β S₂_0 Φ[t−1,1] k_t
                                                  − Σ_m ⟨η_m ρ_m Φ[t−1,m], k_t⟩ δ_m.

    The gradient factors are those of :func:`_gradient_factors` (Eqs. 86–87, the recurrent
    reference's), with fewer products: e = (k − v) + W₁(σ(W₂k) − σ(W₂v)) takes one product with
    W₁. With per-head η and α (e = 1) every coefficient is a scalar per token and the decay
    matrices have no channel axis (:class:`_Decays`), so K Kᵀ serves both the solve and its
    right-hand side, W₂k is reused in the right-hand side, and the DGD erase of W₂ joins the
    gradient step in one product. With an ``anchor`` W₀ the decays act on the deviation: W₁_0
    and W₂_0 above become W₁_0 − W₀ and W₂_0 − W₀, and W₀ is added back. Every operation is a
    2-D product, mask or elementwise op, so the same function runs inside a Pallas kernel body
    (:func:`_kernel_step`).

    Args:
      mem: the memory's weights and momentum at the chunk start.
      tok: the chunk's tokens, fields [c, ...].
      config: the layer's options.
      reads: rows y [r, d] to read through the memory at the chunk start, or None.
      anchor: the weights (W₁ [d, n], W₂ [n, d]) that α decays towards; None: zero.
      solve: ``solve(L, rhs)`` = (I + L)⁻¹ rhs for strictly lower L [c, c]; a Pallas kernel body
        passes ``unit_lower_solve``.

    Returns:
      ``(mem, M(y))``: the memory after the chunk and M(y) [r, d] read before the writes (None
      without ``reads``).
    """
    c = tok.k.shape[0]
    beta = config.momentum
    sigma = architectures.ACTIVATIONS[config.activation]
    k, v, eta = tok.k, tok.v, tok.eta  # [c, d], [c, d], [c, e]
    erase_eta = _erase_steps(eta, k, config)  # [c, e]
    per_head = eta.shape[-1] == 1
    w1, s1, w2, s2 = mem
    # The decayed parts of the weights: the deviations from the anchor (the weights without one).
    dev1, dev2 = (w1, w2) if anchor is None else (w1 - anchor[0], w2 - anchor[1])

    # Pre-activations W₂k, W₂v (and W₂y of the reads): one product each (stacking the rows into
    # one product makes the backward pass pay for the concatenation's transpose on the CPU).
    pre = lambda x: jnp.einsum("rd,nd->rn", x, w2)  # [r, n]
    z_k, z_v = pre(k), pre(v)
    a_k, slope_k = jax.jvp(sigma, (z_k,), (jnp.ones_like(z_k),))  # [c, n]
    a_v, slope_v = jax.jvp(sigma, (z_v,), (jnp.ones_like(z_v),))
    post = lambda h: jnp.einsum("rn,dn->rd", h, w1)  # W₁h [r, d]
    e = (k - v) + post(a_k - a_v)  # [c, d] residual M(k) − v̂
    read = None if reads is None else reads + post(sigma(pre(reads)))
    back = e @ w1  # [c, n] W₁ᵀ e
    if config.stop_gradient_vhat:
        a, terms, slopes = a_k, ((back * slope_k, k),), ((slope_k, k),)
    else:
        a, terms = a_k - a_v, ((back * slope_k, k), (-back * slope_v, v))
        slopes = ((slope_k, k), (slope_v, v))
    eta1, eta2 = _layer_steps(eta, a, w1, slopes, config)  # gradient steps of W₁, W₂: [c, e]

    d = _chunk_decays(tok.log_alpha, beta)
    beta_c = float(beta) ** c
    # Per-token coefficients of the weight and momentum updates, η included: [c, e] each.
    coef_w1, coef_s1 = d.phi_end * eta1, d.beta_tail * eta1
    coef_w, coef_s = d.phi_end * eta2, d.beta_tail * eta2

    if per_head:  # every coefficient is a column [c, 1] or a [1, 1]: products broadcast
        scale_tokens = scale_rows = scale_cols = lambda s, x: s * x
    else:
        # Per-channel scalings are einsums: their transposes are then contractions, not the
        # multiply + reduce fusions XLA:CPU runs far slower (matrix_memory).
        scale_tokens = lambda s, x: jnp.einsum("cd,cd->cd", s, x)
        scale_rows = lambda s, m: jnp.einsum("d,dn->dn", s[0], m)
        scale_cols = lambda s, m: jnp.einsum("d,nd->nd", s[0], m)

    # Output-side weight W₁ (rows are channels; α and η scale rows): Σ_m coef_m e_m a_mᵀ.
    if config.dgd_step == "token_normalized":
        # The residuals at the running W₁ solve the unit lower-triangular system
        #   e_t + Σ_{m<t} Φ[t−1,m] η₁_m ⟨a_m, a_t⟩ e_m = e⁰_t + (γ[t−1,0] − 1) W₁_0 a_t
        #                                                 + β Φ[t−1,1] S₁_0 a_t
        # (e⁰ the chunk-start residual): one system per head, or per channel when e = d.
        aa = jnp.einsum("tn,mn->tm", a, a)  # [c, c]
        if per_head:
            strict = aa * d.phi * jnp.transpose(eta1)  # [c, c]: column m scaled by η₁_m
        else:
            strict = aa[..., None] * d.phi * eta1[None]  # [c, c, e]
        rhs = e + (d.start - 1.0) * (a @ dev1.T) + beta * d.phi_start * (a @ s1.T)
        if per_head:
            e = solve(strict, rhs)  # [c, d]
        else:
            e = jax.vmap(solve, in_axes=(2, 1), out_axes=1)(strict, rhs)
    outer1 = lambda coef_: jnp.einsum("cd,cn->dn", scale_tokens(coef_, e), a)
    w1 = scale_rows(d.end, dev1) + beta * scale_rows(d.phi_end0, s1) - outer1(coef_w1)
    if anchor is not None:
        w1 = w1 + anchor[0]
    s1 = beta_c * s1 - outer1(coef_s1)

    # Input-side weight W₂ (columns are key channels; α and η scale columns).
    if config.use_dgd:
        if per_head:
            kk = k @ k.T  # [c(t), c(i)] ⟨k_i, k_t⟩
            q_mat = kk * jnp.transpose(erase_eta) * d.gamma  # strictly lower
            s2_k = jnp.einsum("cd,nd->cn", k, s2)
            if anchor is None:
                rhs = scale_tokens(d.start, z_k)
            else:
                z_0 = k @ anchor[1].T  # [c, n] W₀k
                rhs = z_0 + scale_tokens(d.start, z_k - z_0)
            rhs = rhs + beta * scale_tokens(d.phi_start, s2_k)
            weight = d.phi * jnp.transpose(eta2)  # [c(t), c(m)]
            for delta, rho in terms:
                rhs = rhs - ((kk if rho is k else k @ rho.T) * weight) @ delta
        else:
            erase = erase_eta * k  # [c, d] erase keys η_i k_i
            q_mat = _bilinear(erase, k, d.gamma)
            rhs = (d.start * k) @ dev2.T + beta * (d.phi_start * k) @ s2.T
            if anchor is not None:
                rhs = rhs + k @ anchor[1].T
            for delta, rho in terms:
                rhs = rhs - _bilinear(eta2 * rho, k, d.phi) @ delta
        r = solve(q_mat, rhs)  # [c, n]
    w2_new = scale_cols(d.end, dev2) + beta * scale_cols(d.phi_end0, s2)
    if anchor is not None:
        w2_new = w2_new + anchor[1]
    s2 = beta_c * s2
    for i, (delta, rho) in enumerate(terms):
        if per_head:
            left_w = scale_tokens(coef_w, delta)  # [c, n]
            if i == 0 and config.use_dgd:
                left_w = left_w + scale_tokens(d.gamma_end * erase_eta, r)  # erase shares keys
            w2_new = w2_new - jnp.einsum("cn,cd->nd", left_w, rho)
            s2 = s2 - jnp.einsum("cn,cd->nd", scale_tokens(coef_s, delta), rho)
        else:
            w2_new = w2_new - jnp.einsum("cn,cd->nd", delta, scale_tokens(coef_w, rho))
            s2 = s2 - jnp.einsum("cn,cd->nd", delta, scale_tokens(coef_s, rho))
    if config.use_dgd and not per_head:
        w2_new = w2_new - r.T @ (erase_eta * k * d.gamma_end)
    return _Memory(w1, s1, w2_new, s2), read


# ----------------------------------------------------------------------------------------------
# Scans over one sequence and one head.
# ----------------------------------------------------------------------------------------------


def _straight_through(old, new):
    """old + stop_gradient(new − old): the value of ``new``, the gradient path of ``old``."""
    return jax.tree.map(lambda o, n: o + lax.stop_gradient(n - o), old, new)


def _scan_chunks(body, carry, xs, chunk: int, remat: bool):
    """Runs ``body`` over full chunks with ``lax.scan`` and once more over the shorter tail."""
    fn = jax.checkpoint(body) if remat else body
    t = jax.tree.leaves(xs)[0].shape[0]
    full = (t // chunk) * chunk
    outs = []
    if full:
        blocks = jax.tree.map(lambda a: a[:full].reshape(t // chunk, chunk, *a.shape[1:]), xs)
        carry, ys = lax.scan(fn, carry, blocks)
        outs.append(jax.tree.map(lambda a: a.reshape(full, *a.shape[2:]), ys))
    if full < t:
        carry, ys = fn(carry, jax.tree.map(lambda a: a[full:], xs))
        outs.append(ys)
    ys = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=0), *outs)
    return carry, ys


def _inner_losses(start: _Memory, end: _Memory, tok: _Tokens, sigma: Callable, config):
    """Per-token inner losses ½‖M(k_t) − v̂_t‖² of one chunk at its start and end states: ([c], [c]).

    Leaves of ``start`` and ``end`` are [d, n] or stacked [g, d, n] (then averaged over g). The
    target v̂ = M(v) is the chunk-start one when ``stop_gradient_vhat`` (the constant the write
    aimed at), else it is read at the same state as M(k).
    """

    def read(m: _Memory, x: jax.Array) -> jax.Array:  # x [c, d] -> M(x) [..., c, d]
        hidden = sigma(jnp.einsum("cd,...nd->...cn", x, m.w2))
        return x + jnp.einsum("...cn,...dn->...cd", hidden, m.w1)

    def loss(m: _Memory, target: jax.Array) -> jax.Array:
        err = read(m, tok.k) - target
        return 0.5 * jnp.sum(err * err, axis=-1).reshape(-1, tok.k.shape[0]).mean(0)  # [c]

    target = read(start, tok.v)
    after_target = target if config.stop_gradient_vhat else read(end, tok.v)
    return loss(start, target), loss(end, after_target)


def _with_losses(body: Callable, tokens_of: Callable, sigma: Callable, config) -> Callable:
    """A chunk body that also outputs the chunk's inner losses (:func:`_inner_losses`)."""

    def wrapped(mem, xs):
        new, out = body(mem, xs)
        return new, (out, _inner_losses(mem, new, tokens_of(xs, out), sigma, config))

    return wrapped


def _memory_write(
    mem: _Memory,
    tok: _Tokens,
    config: SelfModifyingConfig,
    anchor: tuple[jax.Array, jax.Array] | None,
    solve: Callable[[jax.Array, jax.Array], jax.Array] = _xla_solve,
) -> tuple[_Memory, jax.Array]:
    """One chunk of the output memory: its writes and the read of its queries at the chunk start,
    ``(mem, o [c, d])``; unchanged without ``writes``, straight-through with
    ``stop_gradient_writes``."""
    new, o = _write_chunk(mem, tok, config, reads=tok.q, anchor=anchor, solve=solve)
    if not config.writes:
        return mem, o  # the unused write is dead code for XLA
    if config.stop_gradient_writes:
        new = _straight_through(mem, new)
    return new, o


def _chunked_one(
    x,
    q_in,
    weights,
    momentum,
    static,
    *,
    config: SelfModifyingConfig,
    stats: bool = False,
):
    """Chunk-parallel memory on one sequence and head: x, q_in [t, d] -> (o [t, d], W, S).

    The generator memories are stacked on a leading axis g inside the scan, so that their reads
    M_□(x) are two products for all of them. With ``stats`` a fourth output holds per-token
    instruments: the output memory's and the generators' (mean over g) inner losses at the start
    and end of each token's chunk, {"memory": ([t], [t]), "generators": ([t], [t])}, and the
    step sizes and retentions, "eta" [t, e] and "alpha" [t, e]. The kernel path runs the same
    chunks with the generators one after the other (:func:`_generator_step`).
    """
    gen_names = _adaptive_generators(config)
    sigma = architectures.ACTIVATIONS[config.activation]
    anchors = static.get("anchor")  # {name: {"w1", "w2"}} or None (decay towards zero)

    def anchor_of(names):  # (W₁ [g, d, n], W₂ [g, n, d]) of the stacked memories, or None
        if anchors is None:
            return None
        return tuple(jnp.stack([anchors[n][leaf] for n in names]) for leaf in ("w1", "w2"))

    gen_anchor = anchor_of(gen_names)
    write = jax.vmap(
        lambda mem, tok, anchor: _write_chunk(mem, tok, config, anchor=anchor)[0],
        (0, None, None if gen_anchor is None else 0),
    )

    def generator_body(gen, xs):  # gen: _Memory with leaves [g, ...]
        x_c, inputs, q_c = xs  # [c, d], [c, g, d] (P_□ x) or None, [c, d]
        if inputs is None:
            z = jnp.einsum("cd,gnd->gcn", x_c, gen.w2)
            base = x_c
        else:
            z = jnp.einsum("cgd,gnd->gcn", inputs, gen.w2)
            base = jnp.swapaxes(inputs, 0, 1)
        y = base + jnp.einsum("gcn,gdn->gcd", sigma(z), gen.w1)  # M_□(x) [g, c, d]
        tok = _generate(dict(zip(gen_names, y)), static, x_c, q_c, config)
        if not config.writes:
            return gen, tok
        new = write(gen, tok, gen_anchor)
        if config.stop_gradient_writes:
            new = _straight_through(gen, new)
        return new, tok

    def stacked(names):  # _Memory with leaves [len(names), ...]
        pick = lambda tree, leaf: jnp.stack([tree[n][leaf] for n in names])
        return _Memory(*(pick(tree, leaf) for leaf in ("w1", "w2") for tree in (weights, momentum)))

    if stats:
        generator_body = _with_losses(generator_body, lambda xs, tok: tok, sigma, config)
    inputs = _generator_inputs(x, static, gen_names)  # [t, g, d] or None
    gen, tokens = _scan_chunks(
        generator_body, stacked(gen_names), (x, inputs, q_in), config.chunk_size, config.remat
    )
    if stats:
        tokens, gen_losses = tokens

    new_w = {n: {"w1": gen.w1[i], "w2": gen.w2[i]} for i, n in enumerate(gen_names)}
    new_s = {n: {"w1": gen.s1[i], "w2": gen.s2[i]} for i, n in enumerate(gen_names)}

    mem_anchor = None if anchors is None else (anchors["memory"]["w1"], anchors["memory"]["w2"])
    memory_body = lambda mem, tok: _memory_write(mem, tok, config, mem_anchor)
    if stats:
        memory_body = _with_losses(memory_body, lambda tok, o: tok, sigma, config)
    initial = jax.tree.map(lambda a: a[0], stacked(["memory"]))
    mem, o = _scan_chunks(memory_body, initial, tokens, config.memory_chunk_size, config.remat)
    if stats:
        o, mem_losses = o
    new_w["memory"] = {"w1": mem.w1, "w2": mem.w2}
    new_s["memory"] = {"w1": mem.s1, "w2": mem.s2}
    if stats:
        record = {
            "memory": mem_losses,
            "generators": gen_losses,
            "eta": tokens.eta,
            "alpha": jnp.exp(tokens.log_alpha),
        }
        return o, new_w, new_s, record
    return o, new_w, new_s


def _recurrent_one(x, q_in, weights, momentum, static, *, config: SelfModifyingConfig):
    """Token-by-token reference on one sequence and head (chunk size 1 for every memory)."""
    names = (*_adaptive_generators(config), "memory")
    sigma = architectures.ACTIVATIONS[config.activation]

    def body(carry, xs):
        ws, ss = carry
        x_t, q_t = xs[0][None], xs[1][None]
        inputs = _generator_inputs(x_t, static, names[:-1])  # [1, g, d] or None
        outputs = {
            n: _mlp(ws[n], x_t if inputs is None else inputs[:, i], sigma)
            for i, n in enumerate(names[:-1])
        }
        tok = _generate(outputs, static, x_t, q_t, config)
        o = _mlp(ws["memory"], tok.q, sigma)[0]
        if not config.writes:
            return (ws, ss), o
        new_w, new_s = {}, {}
        anchors = static.get("anchor", {})
        for n in names:
            new_w[n], new_s[n] = _write_token(ws[n], ss[n], tok, config, anchors.get(n))
        if config.stop_gradient_writes:
            new_w, new_s = _straight_through(ws, new_w), _straight_through(ss, new_s)
        return (new_w, new_s), o

    (new_w, new_s), o = lax.scan(body, (weights, momentum), (x, q_in))
    return o, new_w, new_s


# ----------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------


def _check_and_prepare(x, q, params, config, initial_state):
    """Validates inputs; returns (dtype, static params, weights, momentum), states [b, h, ...]."""
    if not isinstance(config, SelfModifyingConfig):
        raise ValueError(f"config must be a SelfModifyingConfig, got {type(config).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must have shape [b, t, h, d], got x.shape={x.shape}")
    if q.shape != x.shape:
        raise ValueError(f"q must have the shape of x {x.shape}, got q.shape={q.shape}")
    b, _, h, d = x.shape
    names = (*_adaptive_generators(config), "memory")
    required = [*names, "eta_bias", "alpha_bias"]
    required += [n for n, a in (("k", config.adaptive_k), ("v", config.adaptive_v)) if not a]
    missing = [n for n in required if n not in params]
    if missing:
        raise ValueError(f"params lack {missing} for this config; got keys {sorted(params)}")
    hidden = params["memory"]["w2"].shape[1]
    for n in names:
        shapes = {leaf: params[n][leaf].shape for leaf in ("w1", "w2")}
        if shapes != {"w1": (h, d, hidden), "w2": (h, hidden, d)}:
            raise ValueError(
                f"params[{n!r}] has shapes {shapes}, expected w1 {(h, d, hidden)} and "
                f"w2 {(h, hidden, d)} for x.shape={x.shape}"
            )
    bias_shape = (h, d) if config.eta_alpha_per_channel else (h,)
    for n in ("eta_bias", "alpha_bias"):
        if params[n].shape != bias_shape:
            raise ValueError(f"params[{n!r}].shape={params[n].shape}, expected {bias_shape}")
    for n in ("k", "v"):
        if n not in names and params[n]["w"].shape != (h, d, d):
            raise ValueError(
                f"params[{n!r}]['w'].shape={params[n]['w'].shape}, expected {(h, d, d)}"
            )
    projected = _projected_generators(config)
    maps = params.get("inputs", {})
    got = {n: tuple(a.shape) for n, a in maps.items()}
    if got != {n: (h, d, d) for n in projected}:
        raise ValueError(
            f"params['inputs'] has shapes {got}, expected {(h, d, d)} for each of "
            f"{list(projected)} (project_inputs={config.project_inputs})"
        )
    dtype = jnp.promote_types(jnp.promote_types(x.dtype, params["memory"]["w2"].dtype), jnp.float32)
    static = {n: params[n] for n in ("k", "v") if n not in names}
    if projected:
        static["inputs"] = maps
    static = jax.tree.map(lambda a: a.astype(dtype), static)
    static["eta_bias"] = params["eta_bias"].astype(dtype).reshape(h, -1)
    static["alpha_bias"] = params["alpha_bias"].astype(dtype).reshape(h, -1)
    if config.retention_target == "initial":
        static["anchor"] = {n: jax.tree.map(lambda a: a.astype(dtype), params[n]) for n in names}
    if initial_state is None:
        weights = {
            n: jax.tree.map(lambda a: jnp.broadcast_to(a.astype(dtype), (b, *a.shape)), params[n])
            for n in names
        }
        momentum = jax.tree.map(jnp.zeros_like, weights)
    else:
        if not isinstance(initial_state, SelfModifyingState):
            raise ValueError(
                f"initial_state must be a SelfModifyingState, got {type(initial_state).__name__}"
            )
        expected = {n: {"w1": (b, h, d, hidden), "w2": (b, h, hidden, d)} for n in names}
        for field in ("weights", "momentum"):
            tree = getattr(initial_state, field)
            got = jax.tree.map(lambda a: tuple(a.shape), tree) if isinstance(tree, dict) else tree
            if got != expected:
                raise ValueError(
                    f"initial_state.{field} has shapes {got}, expected {expected} for "
                    f"x.shape={x.shape} and this config"
                )
        weights = jax.tree.map(lambda a: a.astype(dtype), initial_state.weights)
        momentum = jax.tree.map(lambda a: a.astype(dtype), initial_state.momentum)
    return dtype, static, weights, momentum


def _kernel_step(tok: _Tokens, state, *, config: SelfModifyingConfig, solve=_xla_solve):
    """The output memory's chunk as a scan step (:func:`_memory_kernel`; a Pallas kernel body
    with ``solve=unit_lower_solve``): the decays from the chunk's log α, the write and the read."""
    mem, anchor = state
    mem, o = _memory_write(mem, tok, config, anchor, solve=solve)
    return o, (mem, anchor)


def _generator_step(xs, state, *, config: SelfModifyingConfig, names, solve=_xla_solve):
    """One chunk of the generator memories ``names``, one memory after the other (no stacked
    axis, so the same function is a Pallas kernel body): their reads M_□(x) at the chunk start,
    the tokens they generate (:func:`_generate`) and their writes.

    Args:
      xs: the chunk's terms {"x": [c, d], "q": [c, d], "inputs": {□: P_□ x [c, d]},
        "fixed": {□: a static k or v [c, d]}, "eta_bias", "alpha_bias": [c, e]}.
      state: ({□: _Memory}, {□: (W₁, W₂) anchor} or None).
      config: the layer's options.
      names: the adaptive generators.
      solve: the unit lower-triangular solve (``unit_lower_solve`` in a kernel body).

    Returns:
      ``(tokens, state)``: :class:`_Tokens` [c, ...] and the memories after the chunk.
    """
    gens, anchors = state
    sigma = architectures.ACTIVATIONS[config.activation]
    reads = {
        n: _mlp({"w1": gens[n].w1, "w2": gens[n].w2}, xs["inputs"].get(n, xs["x"]), sigma)
        for n in names
    }
    biases = {"eta_bias": xs["eta_bias"], "alpha_bias": xs["alpha_bias"]}
    tok = _generate({**reads, **xs["fixed"]}, biases, xs["x"], xs["q"], config)
    if not config.writes:
        return tok, state
    new = {}
    for n in names:
        anchor = None if anchors is None else anchors[n]
        new[n] = _write_chunk(gens[n], tok, config, anchor=anchor, solve=solve)[0]
        if config.stop_gradient_writes:
            new[n] = _straight_through(gens[n], new[n])
    return tok, (new, anchors)


def _scan_on_kernel(step, terms, state, *, chunk: int, name: str, backend, may_fall_back=False):
    """``step`` over ``terms`` (leaves [bh, t, ...]) from ``state`` (leaves [bh, ...]) in chunks:
    the full chunks as one ``nestlearn.kernels.per_sequence`` scan (the step with
    ``solve=unit_lower_solve``), a shorter tail chunk in XLA. With ``may_fall_back`` a scan the
    backend cannot run (``Unavailable``: shapes Triton cannot tile, a state too large for one
    program) runs in XLA with a warning instead of raising.

    Returns:
      ``(outputs, state)``: the step's outputs with leaves [bh, t, ...] and the final state.
    """
    bh, t = jax.tree.leaves(terms)[0].shape[:2]
    full = (t // chunk) * chunk
    outs = []
    if full:
        head = jax.tree.map(
            lambda a: a[:, :full].reshape(bh, t // chunk, chunk, *a.shape[2:]), terms
        )
        scan = functools.partial(
            per_sequence.scan,
            functools.partial(step, solve=unit_lower_solve),
            head,
            state,
            name=name,
        )
        try:
            o, state = scan(**backend.kwargs())
        except Unavailable as why:
            if not may_fall_back:
                raise
            warnings.warn(f"{name} runs in XLA: {why}", stacklevel=3)
            o, state = scan(implementation="xla")
        outs.append(jax.tree.map(lambda a: a.reshape(bh, full, *a.shape[3:]), o))
    if full < t:
        o, state = jax.vmap(step)(jax.tree.map(lambda a: a[:, full:], terms), state)
        outs.append(o)
    return jax.tree.map(lambda *a: jnp.concatenate(a, axis=1), *outs), state


def _per_sequence_memories(weights, momentum, anchors, names, b: int):
    """The memories ``names`` with their batch and head axes merged: ({□: _Memory [bh, ...]},
    {□: (W₁, W₂) [bh, ...]} or None); ``anchors`` {□: {"w1", "w2"}} have leaves [h, ...]."""
    flat = lambda a: a.reshape(-1, *a.shape[2:])
    leaves = lambda n: (
        flat(tree[n][leaf]) for leaf in ("w1", "w2") for tree in (weights, momentum)
    )
    memories = {n: _Memory(*leaves(n)) for n in names}
    if anchors is None:
        return memories, None
    wide = lambda a: flat(jnp.broadcast_to(a, (b, *a.shape)))
    return memories, {n: (wide(anchors[n]["w1"]), wide(anchors[n]["w2"])) for n in names}


def _per_head_state(memories, b: int, h: int):
    """{□: _Memory [bh, ...]} -> (weights, momentum) {□: {"w1", "w2"}} with leaves [b, h, ...]."""
    unflat = lambda a: a.reshape(b, h, *a.shape[1:])
    weights = {n: {"w1": unflat(m.w1), "w2": unflat(m.w2)} for n, m in memories.items()}
    momentum = {n: {"w1": unflat(m.s1), "w2": unflat(m.s2)} for n, m in memories.items()}
    return weights, momentum


def _generators_kernel(x, q, weights, momentum, static, config, backend):
    """The generator memories over all sequences and heads on the kernels
    (:func:`_scan_on_kernel` of :func:`_generator_step`, chunks of ``chunk_size``); generators
    that do not fit the backend run in XLA with a warning.

    Args:
      x, q: [b, t, h, d] (x already ℓ2-normalised when ``normalize_x``).
      weights, momentum: {□: {"w1": [b, h, d, n], "w2": [b, h, n, d]}} (the output memory's
        entries are ignored).
      static: the static parameters of :func:`_check_and_prepare`, leaves [h, ...].
      config: the layer's options.
      backend: ``nestlearn.kernels.kernel_impl.Backend``.

    Returns:
      ``(tokens, new_w, new_s)``: :class:`_Tokens` with leaves [b, h, t, ...] and the generators'
      weights and momentum after the last token.
    """
    b, t, h, _ = x.shape
    names = _adaptive_generators(config)
    seq = lambda a: jnp.swapaxes(a, 1, 2).reshape(b * h, t, -1)  # [b, t, h, e] -> [bh, t, e]
    by_head = lambda a, w: jnp.einsum("bthd,hed->bthe", a, w)  # a per-head linear map
    xs = {
        "x": seq(x),
        "q": seq(q),
        "inputs": {n: seq(by_head(x, m)) for n, m in static.get("inputs", {}).items()},
        "fixed": {n: seq(by_head(x, static[n]["w"])) for n in ("k", "v") if n not in names},
    }
    for n in ("eta_bias", "alpha_bias"):  # [h, e] -> [bh, t, e]
        xs[n] = seq(jnp.broadcast_to(static[n], (b, t, *static[n].shape)))
    state = _per_sequence_memories(weights, momentum, static.get("anchor"), names, b)
    tokens, (memories, _) = _scan_on_kernel(
        functools.partial(_generator_step, config=config, names=names),
        xs,
        state,
        chunk=config.chunk_size,
        name="self_modifying_generators",
        backend=backend,
        may_fall_back=True,
    )
    tokens = jax.tree.map(lambda a: a.reshape(b, h, t, *a.shape[2:]), tokens)
    return (tokens, *_per_head_state(memories, b, h))


def _memory_kernel(tokens: _Tokens, weights, momentum, anchors, config, backend):
    """The output memory over all sequences and heads on the kernels (:func:`_scan_on_kernel` of
    :func:`_kernel_step`, chunks of ``memory_chunk_size``).

    Args:
      tokens: :class:`_Tokens` with leaves [b, h, t, ...].
      weights, momentum: {"memory": {"w1": [b, h, d, n], "w2": [b, h, n, d]}, ...}.
      anchors: {"memory": {"w1": [h, d, n], "w2": [h, n, d]}, ...} that α decays towards, or
        None.
      config: the layer's options.
      backend: ``nestlearn.kernels.kernel_impl.Backend``.

    Returns:
      ``(o [b, t, h, d], weights, momentum)`` of the output memory.
    """
    b, h, t, d = tokens.k.shape
    memories, anchor = _per_sequence_memories(weights, momentum, anchors, ("memory",), b)
    o, (memories, _) = _scan_on_kernel(
        functools.partial(_kernel_step, config=config),
        jax.tree.map(lambda a: a.reshape(b * h, *a.shape[2:]), tokens),
        (memories["memory"], None if anchor is None else anchor["memory"]),
        chunk=config.memory_chunk_size,
        name="self_modifying_memory",
        backend=backend,
    )
    weights, momentum = _per_head_state({"memory": memories}, b, h)
    return jnp.swapaxes(o.reshape(b, h, t, d), 1, 2), weights["memory"], momentum["memory"]


def kernel_support(config: SelfModifyingConfig) -> str | None:
    """Why no Pallas kernel runs this configuration's output memory, or None when one does.

    The kernel covers per-head η and α (the default; per-channel decays are 3-D blocks).
    """
    if config.eta_alpha_per_channel:
        return "eta_alpha_per_channel=True (the kernel covers per-head η and α)"
    return None


def _run(one, x, q, params, config, initial_state, stats: bool = False, backend=None):
    dtype, static, weights, momentum = _check_and_prepare(x, q, params, config, initial_state)
    kwargs = {"config": config, "stats": True} if stats else {"config": config}
    fn = jax.vmap(
        jax.vmap(
            lambda *a: one(*a, **kwargs),
            in_axes=(1, 1, 0, 0, 0),
            out_axes=(1, 0, 0, 0) if stats else (1, 0, 0),
        ),
        in_axes=(0, 0, 0, 0, None),
    )
    x_in = x.astype(dtype)
    if config.normalize_x:
        x_in = _l2_normalize(x_in)
    if backend is None:
        o, new_w, new_s, *record = fn(x_in, q.astype(dtype), weights, momentum, static)
    else:  # the generators' tokens [b, h, t, ...], then the output memory, on the kernels
        tokens, new_w, new_s = _generators_kernel(
            x_in, q.astype(dtype), weights, momentum, static, config, backend
        )
        o, new_w["memory"], new_s["memory"] = _memory_kernel(
            tokens, weights, momentum, static.get("anchor"), config, backend
        )
    state = SelfModifyingState(new_w, new_s)
    if not stats:
        return o.astype(x.dtype), state
    record = record[0]  # leaves [b, h, t, ...]
    generators = [n for n in weights if n != "memory"]
    summary = {
        "memory": instruments.summarize(
            *record["memory"],
            eta=record["eta"],
            alpha=record["alpha"],
            start=weights["memory"],
            end=new_w["memory"],
        ),
        "generators": instruments.summarize(
            *record["generators"],
            eta=None,
            alpha=None,
            start={n: weights[n] for n in generators},
            end={n: new_w[n] for n in generators},
        ),
    }
    return o.astype(x.dtype), state, summary


def self_modifying_memory(
    x: jax.Array,
    q: jax.Array,
    *,
    params: Params,
    config: SelfModifyingConfig,
    initial_state: SelfModifyingState | None = None,
    stats: bool = False,
    kernel_impl: str = "xla",
) -> (
    tuple[jax.Array, SelfModifyingState]
    | tuple[jax.Array, SelfModifyingState, dict[str, instruments.MemoryStats]]
):
    """Self-modifying Titans, chunk-parallel (Eqs. 83–93, arXiv 2512.24695; causal index §8.2).

    Args:
      x: [b, t, h, d] per-head inputs (after the block's projection and convolution).
      q: [b, t, h, d] static queries; ignored when ``config.adaptive_q``.
      params: from ``self_modifying_init`` (leaves with a leading head axis).
      config: the layer's options.
      initial_state: state to continue from; None starts every sequence from ``params``.
      stats: also return the instruments of the memories (`nestlearn.memory.instruments`); off,
        the computation is exactly the one without them.

    Returns:
      o: [b, t, h, d], o_t = M_memory(q_t) read at the start of the output memory's chunk.
      state: the memories after the last token. Feeding it back as ``initial_state`` continues the
        stream; pieces whose lengths are multiples of both chunk sizes reproduce one call.
      stats (only with ``stats``): {"memory": MemoryStats of the output memory M_memory,
        "generators": MemoryStats of the generator memories together (inner losses averaged over
        them, norms over all their weights; η and α None: they are the output memory's)}. Inner
        losses ½‖M(k_t) − v̂_t‖² at the start and end of each token's chunk of that memory, v̂ =
        M(v_t) the chunk-start target (re-read at the end when not ``stop_gradient_vhat``); η is
        the generated step (η′ with ``dgd_step="normalized"``, before any per-layer
        normalisation); norms over the weights W₁, W₂ (momentum not included).
      kernel_impl: "xla" (default) or "pallas": the generators' and the output memory's chunk
        scans on the Pallas kernels of ``nestlearn.kernels.per_sequence`` (forward and backward
        kernels; the chunk steps :func:`_generator_step` and :func:`_kernel_step`, built on the
        XLA path's :func:`_write_chunk`, in their bodies; where the generators' shapes or state
        do not fit one Triton program they run in XLA, with a warning), or "auto" (the kernels on
        GPU/TPU when they cover the configuration, :func:`kernel_support`). See
        ``nestlearn.kernels.kernel_impl``. With ``stats`` the XLA path runs.

    Raises:
      ValueError: bad inputs; ``kernel_impl="pallas"`` where no kernel can run.
    """
    backend = None
    if not stats:
        backend = kernel_switch.resolve(
            kernel_impl,
            what="self_modifying_memory",
            unsupported=kernel_support(config),
            chunk_size=config.memory_chunk_size,
        )
    return _run(_chunked_one, x, q, params, config, initial_state, stats, backend)


def self_modifying_memory_recurrent(
    x: jax.Array,
    q: jax.Array,
    *,
    params: Params,
    config: SelfModifyingConfig,
    initial_state: SelfModifyingState | None = None,
) -> tuple[jax.Array, SelfModifyingState]:
    """Token-by-token reference of ``self_modifying_memory`` (Eqs. 83–88 with chunk size 1).

    Every memory updates after every token, so this equals ``self_modifying_memory`` with
    ``chunk_size = memory_chunk_size = 1``; the chunk sizes in ``config`` are ignored. Same
    arguments and returns as ``self_modifying_memory``. Slow: a ``lax.scan`` over tokens.
    """
    return _run(_recurrent_one, x, q, params, config, initial_state)
