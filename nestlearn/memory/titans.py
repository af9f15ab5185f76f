"""Titans' neural long-term memory (arXiv 2501.00663, §3).

The configuration "deep memory × ℓ2 bias × momentum with a forget gate" of the generic machinery
in ``nestlearn.memory.scan``: per head, the memory M (an MLP by default) is written with

    S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; k_t, v_t),   M_t = (1 − α_t) M_{t−1} + S_t   (Eqs. 13–14)

with ℓ(M; k, v) = ½‖M(k) − v‖² (Eq. 12, factor 2 absorbed into θ) and the gradients of a chunk
taken at its start weights M_{t'} (chunk-parallel form, Eqs. 16–18). Token t reads
y_t = M_{t'}(q_t) (Eq. 15) from the weights at the end of the previous chunk.

Fast path. The rule combines the chunk's gradients only through two weighted sums
Σ_i coef_i ∇ℓ(M_{t'}; k_i, v_i) (one for S, one for M), so ``scan`` computes them as gradients of
coefficient-weighted chunk losses (``rules.TokenGradients``): for an MLP memory, one matmul
(coef ⊙ δ)ᵀ H per layer, never the [c, *weight_shape] per-token gradients. This holds for every
architecture and objective; the decay/momentum coefficients come from a recursive-doubling scan
over the chunk's scalars (``rules._momentum_coefficients``).

Specialised path. Where the op :func:`nestlearn.kernels.mlp_memory` covers the configuration —
a two-layer bias-free SiLU MLP (``architectures.mlp(2, n, "silu")``, or the residual
``architectures.residual_mlp(n, "silu")`` of Hope Eqs. 89/91), the ℓ2 objective and writes that
are backpropagated through (:func:`kernel_support` says why anything else is not) — the layer
runs that op instead of the generic scan: its Pallas kernel on GPU/TPU, or on CPU (and with
``kernel_impl="xla"``) its XLA chunk step (:func:`nestlearn.kernels.mlp_memory.mlp_memory_chunked`),
which writes the MLP's gradient sums with the backpropagated error shared by the two
coefficient rows (Σ_i c_i ∇_{W₁}ℓ_i = Rᵀ diag(c) A, Σ_i c_i ∇_{W₂}ℓ_i = ((R W₁) ⊙ σ'(H))ᵀ diag(c) K)
instead of one pullback per row: faster on the 2-core CPU (``experiments/memory_benchmark.py``
reports both, rows "chunk 64" and "chunk 64, generic scan"). Both compute exactly these
equations (equal to float64 rounding, tests/memory/test_titans.py). ``kernel_impl``
(``"auto" | "xla" | "pallas"``, :mod:`nestlearn.kernels.kernel_impl`) picks the backend;
``nestlearn.memory.scan.scan`` with ``rules.titans()`` is the generic path for any architecture.

Layout: b batch, t tokens, h heads, d width.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nestlearn.core.validation import check_unit_interval
from nestlearn.kernels import kernel_impl as kernel_switch
from nestlearn.kernels.mlp_memory import MLPMemoryState, mlp_memory, mlp_memory_chunked
from nestlearn.memory import architectures, objectives, rules
from nestlearn.memory.architectures import MemoryArch
from nestlearn.memory.objectives import Objective
from nestlearn.memory.scan import MemoryState, check_state, default_state, scan
from nestlearn.parallel.sharded_kernel import sharded_kernel


class TitansState(NamedTuple):
    """State of Titans' memory, per sequence and head."""

    weights: Any  # pytree like params with leading [b, h, ...]: memory weights M_t
    momentum: Any  # pytree like params with leading [b, h, ...]: momentum S_t (Eq. 10)


def kernel_support(
    arch: MemoryArch,
    params: Any,
    *,
    objective: str | Objective = "l2",
    stop_gradient_writes: bool = False,
) -> str | None:
    """Why :func:`nestlearn.kernels.mlp_memory` cannot run this memory, or None when it can.

    Covered: ``architectures.mlp(2, n, "silu")`` or ``architectures.residual_mlp(n, "silu")``
    (recognised by rebuilding the architecture from the hidden width of ``params`` and comparing
    names), ``objective`` ℓ2 (Titans Eq. 12), ``stop_gradient_writes=False``.
    """
    reasons = []
    name = objectives.get(objective).name
    if name != "l2":
        reasons.append(f"objective={name!r} (the op implements the l2 bias, Titans Eq. 12)")
    if stop_gradient_writes:
        reasons.append("stop_gradient_writes=True (the op always backpropagates through writes)")
    if _kernel_layout(arch, params) is None:
        reasons.append(
            f"arch={arch.name!r} (the op implements a 2-layer bias-free SiLU MLP, plain or "
            "residual; a linear memory (depth 1) reads the chunk-start weights and takes "
            "chunk-start gradients, Titans Eq. 16, which the exact token recurrence of "
            "nestlearn.kernels.gated_delta does not compute)"
        )
    return "; ".join(reasons) or None


def _kernel_layout(arch: MemoryArch, params: Any) -> bool | None:
    """``residual`` for the op when it covers ``arch`` (with these params), else None."""
    keys = set(params) if isinstance(params, dict) else set()
    if keys == {"w0", "w1"} and params["w0"].ndim == 3:
        if arch.name == architectures.mlp(2, params["w0"].shape[1], "silu").name:
            return False
    if keys == {"w1", "w2"} and params["w2"].ndim == 3:
        if arch.name == architectures.residual_mlp(params["w2"].shape[1], "silu").name:
            return True
    return None


def _to_kernel(tree: dict, residual: bool) -> dict:
    """Weights in the layout of ``arch`` → the op's {"w1": output side, "w2": input side}."""
    return dict(tree) if residual else {"w1": tree["w1"], "w2": tree["w0"]}


def _from_kernel(tree: dict, residual: bool) -> dict:
    """The op's weights → the layout of ``arch`` (inverse of :func:`_to_kernel`)."""
    return dict(tree) if residual else {"w0": tree["w2"], "w1": tree["w1"]}


def _read_only(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    arch: MemoryArch,
    params: Any,
    initial_state: TitansState | None,
) -> tuple[jax.Array, TitansState]:
    """``titans_memory`` with ``writes=False``: y_t = M_0(q_t), the state left as it was.

    Returns ``(o [b, t, h, d_out] in the input dtype, the initial state)``; a fresh state is
    ``params`` broadcast over the batch with zero momentum, in the compute dtype (the input dtype
    promoted with float32), like the state the writing paths return.
    """
    out_dtype = jnp.result_type(q, k, v)
    if initial_state is None:
        dtype = jnp.promote_types(out_dtype, jnp.float32)
        fresh = default_state(rules.titans(), params, q.shape[0])
        cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
        initial_state = TitansState(cast(fresh.weights), cast(fresh.rule.momentum))
    o = jax.vmap(lambda w, x: architectures.apply_heads(arch, w, x))(initial_state.weights, q)
    return o.astype(out_dtype), initial_state  # o [b, t, h, d_out]


def titans_memory(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    theta: jax.Array,
    alpha: jax.Array,
    eta: jax.Array,
    *,
    arch: MemoryArch,
    params: Any,
    chunk_size: int,
    initial_state: TitansState | None = None,
    objective: str | Objective = "l2",
    stop_gradient_writes: bool = False,
    remat: bool = True,
    kernel_impl: str = "auto",
    writes: bool = True,
) -> tuple[jax.Array, TitansState]:
    """Titans' memory layer: write with momentum and forgetting, read the chunk-start weights.

    Args:
      q: queries [b, t, h, d_in].
      k: keys [b, t, h, d_in].
      v: values [b, t, h, d_out].
      theta: step sizes θ_t [b, t, h].
      alpha: forget gates α_t ∈ [0, 1] [b, t, h] (retention 1 − α_t); a concrete α outside
        [0, 1] is refused.
      eta: momentum decays η_t [b, t, h].
      arch: memory architecture (``architectures.mlp(...)`` in Titans).
      params: meta-learned initial weights [h, ...] shared by all sequences.
      chunk_size: tokens per chunk (1: token-by-token recurrence).
      initial_state: state to continue a stream from; None starts from ``params`` and zero momentum.
      objective: the attentional bias, ``"l2"`` (Eq. 12) by default.
      stop_gradient_writes: do not backpropagate through the writes (docs/SEMANTICS.md §5.2).
      remat: rematerialize each chunk in the backward pass (default: on CPU the recomputed
        forward costs less than storing and copying the per-chunk activations; results are
        identical either way). Unused by the Pallas kernels, whose backward always recomputes
        each chunk from the saved chunk-start states.
      kernel_impl: ``"auto"`` (the Pallas op on GPU/TPU when it covers the configuration, else
        XLA; always XLA on CPU), ``"xla"``, or ``"pallas"`` (the op on this platform's Pallas
        backend; ValueError when :func:`kernel_support` gives a reason or the platform has
        none). On XLA a covered configuration runs the op's XLA chunk step, any other the
        generic scan (module docstring). See :mod:`nestlearn.kernels.kernel_impl`.
      writes: the in-context writes. False keeps the memory at its initial state (no write, no
        forgetting, no momentum: the state returned is ``initial_state`` itself, or the fresh
        state of ``params``) and every token reads it, y_t = M_0(q_t) (Eq. 15 with M_{t'} = M_0);
        k, v, θ, α and η are unused. The same on every ``kernel_impl``.

    Returns:
      ``(o [b, t, h, d_out], TitansState)``.

    Raises:
      ValueError: a bad ``initial_state``, ``objective`` or ``kernel_impl``,
        ``kernel_impl="pallas"`` where it cannot run, or a concrete α outside [0, 1].
    """
    if initial_state is not None:  # checked here, before the path is chosen: same error on both
        if not isinstance(initial_state, TitansState):
            raise ValueError(f"initial_state must be a TitansState, got {type(initial_state)}")
        check_state(
            MemoryState(initial_state.weights, rules.MomentumState(initial_state.momentum), None),
            default_state(rules.titans(), params, q.shape[0]),
        )
    unsupported = kernel_support(
        arch, params, objective=objective, stop_gradient_writes=stop_gradient_writes
    )
    backend = kernel_switch.resolve(
        kernel_impl,
        what=f"titans_memory(arch={arch.name!r})",
        unsupported=unsupported,
        chunk_size=chunk_size,
    )
    if not writes:
        return _read_only(q, k, v, arch=arch, params=params, initial_state=initial_state)
    check_unit_interval(alpha, name="alpha")
    if unsupported is None:  # the op's configuration: its kernel, or its XLA form
        residual = _kernel_layout(arch, params)
        kernel_state = None
        if initial_state is not None:
            kernel_state = MLPMemoryState(
                _to_kernel(initial_state.weights, residual),
                _to_kernel(initial_state.momentum, residual),
            )
        args = (q, k, v, theta, alpha, eta)
        kwargs = dict(
            params=_to_kernel(params, residual),
            chunk_size=chunk_size,
            initial_state=kernel_state,
            residual=residual,
        )
        if backend is None:
            o, final = mlp_memory_chunked(*args, **kwargs, remat=remat)
        else:
            o, final = sharded_kernel(mlp_memory)(*args, **kwargs, **backend.kwargs())
        weights = _from_kernel(final.weights, residual)
        return o, TitansState(weights, _from_kernel(final.momentum, residual))
    inputs = {
        "q": q,
        "k": k,
        "v": v,
        "step_size": theta,
        "retention": alpha,
        "momentum_decay": eta,
    }
    state = None
    if initial_state is not None:
        state = MemoryState(
            initial_state.weights, rules.MomentumState(initial_state.momentum), None
        )
    o, final = scan(
        arch,
        objectives.get(objective),
        rules.titans(),
        params,
        inputs,
        chunk_size=chunk_size,
        initial_state=state,
        stop_gradient_writes=stop_gradient_writes,
        remat=remat,
    )
    return o, TitansState(final.weights, final.rule.momentum)
