"""Running an associative memory over a sequence: recurrent and chunk-parallel scans.

One machinery serves every memory: architecture (``architectures``) × attentional bias
(``objectives``) × inner rule with its retention (``rules``, ``retention``) × chunk size.

The sequence is cut into chunks of ``chunk_size`` tokens. Inside a chunk, the per-token gradients
u_i = ∇L̃(M_{t'}; k_i, v_i) of the bias are all taken at the chunk-start weights M_{t'}, and the
rule combines them with the per-token decays and momentum in closed form (Titans Eqs. 16–18;
Eq. 90 and Eqs. 92–93 of arXiv 2512.24695); ``lax.scan`` carries the state from chunk to chunk,
optionally under ``jax.checkpoint``. ``chunk_size=1`` is the token-by-token recurrence, the
reference that every chunk size reduces to.

Factored gradients. The rule receives the u_i as a ``rules.TokenGradients``: a weighted sum
Σ_i coef_i u_i is the gradient of the weighted chunk loss Σ_i coef_i L̃(M_{t'}; k_i, v_i), one
``jax.vjp`` of the batched memory with the coefficients as cotangent. For an MLP every layer's u_i
is an outer product δ_i h_iᵀ, so the sum is the matmul (coef ⊙ δ)ᵀ H and the [c, *weight_shape]
stack of per-token gradients never exists, forward or backward. Rules whose coefficients are one
scalar per token (``gd``, ``momentum``, ``titans`` with a scalar gate; any architecture and
objective) take this path; the others (per-channel retention, the erase rules) ask for the u_i
themselves (``jax.vmap(jax.grad(...))``), and the Omega rule's window gets them materialized.

Reading convention (the causal reading of Eq. 90, docs/SEMANTICS.md §5.2 row 1): the outputs of
chunk c read the weights at the end of chunk c − 1, y_t = M_{t'}(q_t). With ``chunk_size=1`` this
is "read before write": y_t = M_{t−1}(q_t). ``read_after_write=True`` (``chunk_size=1`` only)
reads y_t = M_t(q_t) after the write of token t instead.

One state per sequence (``vmap`` over the batch) and head (``vmap`` over the head axis of the
weights). A length that is not a multiple of ``chunk_size`` is padded internally; padded tokens
get mask 0, i.e. zero step size and unit retention, so they leave the state unchanged.

Layout: b batch, t tokens, h heads, d_in key/query width, d_out value width, w window.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from nestlearn.core.validation import check_chunk_size, check_nonempty, check_unit_interval
from nestlearn.memory import rules
from nestlearn.memory.architectures import MemoryArch
from nestlearn.memory.objectives import Objective


class WindowContext(NamedTuple):
    """The last w − 1 tokens, carried across chunks for the Omega rule's window (Eq. 68)."""

    keys: jax.Array  # [b, h, w−1, d_in]
    values: jax.Array  # [b, h, w−1, d_out]
    mask: jax.Array  # [b, h, w−1], 1 where a token was seen (0 before the sequence start)


class MemoryState(NamedTuple):
    """State of a memory at the end of a scan; pass it back as ``initial_state`` to continue."""

    weights: Any  # pytree like params with leading [b, h, ...]: memory weights M_t
    rule: Any  # the inner rule's state with leading [b, h, ...] (e.g. rules.MomentumState)
    context: WindowContext | None  # window tokens when inputs hold "window_gate", else None


def _check_inputs(
    arch: MemoryArch, params: Any, inputs: Mapping[str, jax.Array]
) -> tuple[int, int, int, int, int]:
    """Validates shapes; returns (b, t, h, d_in, d_out)."""
    for name in ("q", "k", "v"):
        if name not in inputs:
            raise ValueError(f"inputs must hold 'q', 'k' and 'v', got keys {sorted(inputs)}")
        if jnp.ndim(inputs[name]) != 4:
            raise ValueError(f"inputs[{name!r}] has shape {jnp.shape(inputs[name])}, expected 4-D")
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    check_nonempty(k.shape, "bthd", name="inputs['k']")
    check_nonempty(v.shape, "bthd", name="inputs['v']")
    check_unit_interval(inputs.get("retention"), name="inputs['retention']")
    b, t, h, d_in = k.shape
    if q.shape != k.shape:
        raise ValueError(f"q has shape {q.shape} but k has shape {k.shape}; they must agree")
    if v.shape[:3] != (b, t, h):
        raise ValueError(f"v has shape {v.shape}, expected leading axes {(b, t, h)} like k")
    heads = {leaf.shape[0] for leaf in jax.tree.leaves(params)}
    if heads != {h}:
        raise ValueError(f"params have head axes {sorted(heads)}, but the inputs have h={h} heads")
    one_head = jax.tree.map(lambda p: p[0], params)
    try:
        out = jax.eval_shape(arch.apply, one_head, jax.ShapeDtypeStruct((d_in,), k.dtype))
    except ValueError as err:
        raise ValueError(f"k has width d_in={d_in}, which {arch.name} rejects: {err}") from err
    if v.shape[-1] != out.shape[-1]:
        raise ValueError(
            f"v has width {v.shape[-1]} but {arch.name} maps k of width {d_in} to width "
            f"{out.shape[-1]}; key and value widths disagree with the memory"
        )
    for name, value in inputs.items():
        if jnp.shape(value)[:3] != (b, t, h):
            raise ValueError(
                f"inputs[{name!r}] has shape {jnp.shape(value)}, expected leading axes {(b, t, h)}"
            )
    return b, t, h, d_in, out.shape[-1]


def default_state(
    rule: optax.GradientTransformationExtraArgs,
    params: Any,
    batch: int,
    *,
    window: int = 0,
    d_in: int | None = None,
    d_out: int | None = None,
) -> MemoryState:
    """The state a scan starts from when ``initial_state`` is None.

    Weights are the meta-learned initial weights ``params`` ([h, ...]) broadcast over the batch;
    the rule state is ``rule.init`` of them; with ``window`` w ≥ 1 the context holds w − 1 empty
    slots of widths ``d_in`` and ``d_out``.
    """
    expand = lambda x: jnp.broadcast_to(x, (batch, *x.shape))
    weights = jax.tree.map(expand, params)
    rule_state = jax.tree.map(expand, jax.vmap(rule.init)(params))
    context = None
    if window:
        h = jax.tree.leaves(params)[0].shape[0]
        dtype = jax.tree.leaves(params)[0].dtype
        context = WindowContext(
            keys=jnp.zeros((batch, h, window - 1, d_in), dtype),
            values=jnp.zeros((batch, h, window - 1, d_out), dtype),
            mask=jnp.zeros((batch, h, window - 1), dtype),
        )
    return MemoryState(weights, rule_state, context)


def check_state(initial_state: Any, default: MemoryState) -> None:
    """ValueError naming the first leaf of ``initial_state`` whose structure or shape differs from
    ``default`` (:func:`default_state`)."""
    want = jax.tree.structure(default)
    got = jax.tree.structure(initial_state)
    if want != got:
        raise ValueError(f"initial_state has structure {got}, expected {want}")
    flat = jax.tree_util.tree_flatten_with_path(initial_state)[0]
    for (path, leaf), expected in zip(flat, jax.tree.leaves(default)):
        if jnp.shape(leaf) != expected.shape:
            raise ValueError(
                f"initial_state{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}, "
                f"expected {expected.shape}"
            )


def _to_chunks(x: jax.Array, n: int, chunk_size: int) -> jax.Array:
    """[b, t, h, ...] -> [b, h, n, c, ...], zero-padded at the end."""
    b, t, h = x.shape[:3]
    x = jnp.pad(x, [(0, 0), (0, n * chunk_size - t)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((b, n, chunk_size, h, *x.shape[3:]))
    return jnp.moveaxis(x, (1, 3), (2, 1))


def scan(
    arch: MemoryArch,
    objective: Objective,
    rule: optax.GradientTransformationExtraArgs,
    params: Any,
    inputs: Mapping[str, jax.Array],
    *,
    chunk_size: int,
    initial_state: MemoryState | None = None,
    read_after_write: bool = False,
    stop_gradient_writes: bool = False,
    remat: bool = False,
) -> tuple[jax.Array, MemoryState]:
    """Runs a memory over a batch of sequences, chunk by chunk.

    Args:
      arch: the memory architecture.
      objective: the attentional bias L̃(M; k, v).
      rule: an inner rule from ``nestlearn.memory.rules``.
      params: meta-learned initial weights, leaves [h, ...], shared by all sequences.
      inputs: ``"q"``, ``"k"`` [b, t, h, d_in] and ``"v"`` [b, t, h, d_out], plus the rule's
        per-token hyperparameters [b, t, h, ...] under their extra-argument names (``step_size``,
        ``retention``, ``momentum_decay``, ``window_gate`` [b, t, h, w] ...). With
        ``"window_gate"`` the rule receives, for every token t, the gradients of the w tokens
        t − w + 1..t (``rules.omega``).
      chunk_size: tokens per chunk; gradients inside a chunk are taken at its start state.
      initial_state: state to continue from (a previous call's final state); None starts from
        ``params``.
      read_after_write: read y_t = M_t(q_t) after the write (needs ``chunk_size=1``).
      stop_gradient_writes: treat the writes as constants for the outer gradient
        (docs/SEMANTICS.md §5.2); the outer loss then reaches ``params`` and q only through the
        reads.
      remat: rematerialize each chunk in the backward pass (``jax.checkpoint``).

    Returns:
      ``(outputs [b, t, h, d_out], final MemoryState)``.
    """
    chunk_size = check_chunk_size(chunk_size)
    if read_after_write and chunk_size != 1:
        raise ValueError(f"read_after_write needs chunk_size=1, got chunk_size={chunk_size}")
    b, t, h, d_in, d_out = _check_inputs(arch, params, inputs)
    window = jnp.shape(inputs["window_gate"])[-1] if "window_gate" in inputs else 0
    default = default_state(rule, params, b, window=window, d_in=d_in, d_out=d_out)
    if initial_state is None:
        initial_state = default
    else:
        check_state(initial_state, default)

    n = -(-t // chunk_size)
    chunks = {name: _to_chunks(jnp.asarray(x), n, chunk_size) for name, x in inputs.items()}
    dtype = jax.tree.leaves(params)[0].dtype
    chunks["mask"] = _to_chunks(jnp.ones((b, t, h), dtype), n, chunk_size)

    def token_loss(weights, k, v):
        return objective.loss(arch.apply(weights, k), v)

    token_grads = jax.vmap(jax.grad(token_loss), in_axes=(None, 0, 0))

    def factored_grads(weights, k, v) -> rules.TokenGradients:
        def weighted(coef):  # coef: [m, c] -> leaves [m, ...]
            losses = lambda w: jax.vmap(objective.loss)(arch.apply(w, k), v)  # [c]
            _, pullback = jax.vjp(losses, weights)
            # One pullback per row (m ≤ 2), not a vmap over rows: the vmapped form's backward
            # sums over the row axis inside the matmul fusions, which XLA:CPU runs far slower.
            rows = [pullback(row)[0] for row in coef]
            return jax.tree.map(lambda *r: jnp.stack(r), *rows)

        return rules.TokenGradients(k.shape[0], weighted, lambda: token_grads(weights, k, v))

    def chunk_step(carry, xs):
        weights, rule_state, context = carry
        xs = dict(xs)
        q, k, v, mask = xs.pop("q"), xs.pop("k"), xs.pop("v"), xs["mask"]
        if context is None:
            grads = factored_grads(weights, k, v)
        else:
            keys = jnp.concatenate([context.keys, k])  # [w−1+c, d_in]
            values = jnp.concatenate([context.values, v])
            seen = jnp.concatenate([context.mask, mask])
            idx = jnp.arange(chunk_size)[:, None] + (window - 1) - jnp.arange(window)[None, :]
            # Token t's window holds tokens t, t − 1, ..., t − w + 1: leaves [c, w, ...].
            grads = jax.tree.map(lambda g: g[idx], token_grads(weights, keys, values))
            xs["window_gate"] = xs["window_gate"] * seen[idx]  # no gradient from unseen slots
            # Carry the last w − 1 real tokens (padding sits at the end of the last chunk).
            last = jnp.sum(mask).astype(jnp.int32) + jnp.arange(window - 1)
            context = WindowContext(keys[last], values[last], seen[last])
        updates, new_rule_state = rule.update(
            grads, rule_state, weights, key=k, input_weight=arch.input_weight, **xs
        )
        if stop_gradient_writes:
            updates, new_rule_state = lax.stop_gradient((updates, new_rule_state))
        new_weights = optax.apply_updates(weights, updates)
        y = arch.apply(new_weights if read_after_write else weights, q)  # [c, d_out]
        return (new_weights, new_rule_state, context), y

    if remat:
        chunk_step = jax.checkpoint(chunk_step)

    def one_sequence(weights, rule_state, context, xs):
        carry, ys = lax.scan(chunk_step, (weights, rule_state, context), xs)
        return carry, ys.reshape(n * chunk_size, d_out)

    run = jax.vmap(jax.vmap(one_sequence))  # over batch, then heads
    (weights, rule_state, context), ys = run(*initial_state, chunks)
    outputs = jnp.moveaxis(ys, 1, 2)[:, :t]  # [b, t, h, d_out]
    return outputs, MemoryState(weights, rule_state, context)
