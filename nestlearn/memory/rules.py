"""Inner update rules of associative memories, as optax transforms over a chunk of tokens.

Every rule is an ``optax.GradientTransformationExtraArgs`` whose ``update_fn`` advances a memory
over a chunk of c tokens (c = 1 for a token-by-token step):

- ``updates``: per-token gradients of the attentional bias, all taken at the chunk-start weights
  ``params`` — the chunk-wise parallel form of Titans Eq. 16–18 (exact token-by-token recurrence
  when c = 1). Either materialized, every leaf ``[c, *param_shape]`` (``[c, w, *param_shape]`` for
  ``omega``), or a ``TokenGradients`` that yields coefficient-weighted sums Σ_i coef_i u_i without
  ever forming the u_i (the factored form ``nestlearn.memory.scan`` hands over);
- ``params``: the chunk-start weights M_{t'};
- per-token, data-dependent hyperparameters as extra keyword arguments, each with leading axis c:
  ``step_size`` (η_t; Titans' θ_t), ``retention`` (the gate α_t read by the rule's ``Retention``),
  ``momentum_decay`` (Titans' η_t), ``key`` (k_t, [c, d_in], for the erase rules),
  ``window_gate`` (γ_{t,i}, [c, w], for ``omega``), ``mask`` (optional, [c], 0 at padded tokens,
  which then leave weights and state unchanged) and ``input_weight`` (the name of the memory's
  input-side weight, ``MemoryArch.input_weight``, needed by per-channel retention and the erase
  rules).

It returns ``updates = M_end − M_start`` (apply with ``optax.apply_updates``) and the rule state at
the end of the chunk. Decay and momentum are combined in closed form: products of the decays and
the momentum recurrence come from a recursive-doubling scan over the chunk's scalars
(``_affine_scan``); the erase rules compose the affine maps W ↦ W A_t + B_t with
``lax.associative_scan``.

With a scalar gate per token (``none``, ``scalar``, ``forget_gate``), ``gd`` and ``momentum`` /
``titans`` reach the gradients only through sums Σ_i coef_i u_i with one scalar coef_i per token
and leaf-independent coefficients: for a ``TokenGradients`` these are the gradient of the
coefficient-weighted chunk loss Σ_i coef_i L̃_i(M_{t'}), i.e. for an MLP one matmul (δ ⊙ coef)ᵀ H
per layer. Per-channel retention and the erase rules need the per-token gradients themselves
(``TokenGradients.per_token``).

Weights are dicts of arrays (as built by ``nestlearn.memory.architectures``); matrices use the
column convention of docs/SEMANTICS.md §5.1 (W ∈ R^{d_out×d_in}, the erase factor multiplies on
the right).
Shapes: c tokens in the chunk, d_in input width, w window length.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from nestlearn.memory import retention as retention_lib
from nestlearn.memory.retention import Retention

Params = dict[str, jax.Array]


class MomentumState(NamedTuple):
    """State of the momentum rules."""

    momentum: Any  # pytree like params (same shapes, dtypes): momentum S_t of Titans Eq. 10


class TokenGradients(NamedTuple):
    """The per-token gradients u_i = ∇L̃(M_{t'}; k_i, v_i) of a chunk, in factored form.

    Attributes:
      chunk: the number of tokens c.
      weighted: ``weighted(coef [m, c]) -> pytree like params with leaves [m, ...]`` holding
        Σ_i coef[j, i] u_i for every row j, computed without forming the u_i.
      per_token: ``per_token() -> pytree like params with leaves [c, ...]``, the u_i themselves.
    """

    chunk: int
    weighted: Callable[[jax.Array], Params]
    per_token: Callable[[], Params]


def token_gradients(updates: Params | TokenGradients) -> TokenGradients:
    """``updates`` as a ``TokenGradients`` (materialized leaves [c, ...] are wrapped)."""
    if isinstance(updates, TokenGradients):
        return updates
    c = jax.tree.leaves(updates)[0].shape[0]
    weighted = lambda coef: jax.tree.map(lambda u: jnp.tensordot(coef, u, axes=(1, 0)), updates)
    return TokenGradients(c, weighted, lambda: updates)


def _chunk(grads: Params | TokenGradients) -> int:
    if isinstance(grads, TokenGradients):
        return grads.chunk
    return jax.tree.leaves(grads)[0].shape[0]


def _mask(mask: jax.Array | None, c: int, dtype: Any) -> jax.Array:
    if mask is None:
        return jnp.ones((c,), dtype)
    if mask.shape != (c,):
        raise ValueError(f"mask has shape {mask.shape}, expected ({c},)")
    return mask.astype(dtype)


def _per_token(name: str, value: jax.Array | None, c: int, mask: jax.Array) -> jax.Array:
    """A per-token scalar [c] with padded tokens set to 0."""
    if value is None:
        raise ValueError(f"the rule needs the extra argument {name!r} of shape ({c},)")
    value = jnp.asarray(value)
    if value.shape != (c,):
        raise ValueError(f"{name} has shape {value.shape}, expected ({c},)")
    return jnp.where(mask.astype(bool), value, 0).astype(mask.dtype)


def _dtype(params: Params) -> Any:
    return jax.tree.leaves(params)[0].dtype


def _bcast(coef: jax.Array, ndim: int) -> jax.Array:
    """Reshapes [c] or [c, d_in] coefficients to broadcast against a [c, ..., d_in] leaf."""
    return coef.reshape(coef.shape[:1] + (1,) * (ndim - coef.ndim) + coef.shape[1:])


def _leaf_decays(
    params: Params, decay: jax.Array, retention: Retention, input_weight: str | None
) -> Params:
    """Per-leaf decay factors: the gate on every leaf, or per-channel on the input-side one."""
    if not retention.per_channel:
        return {name: decay for name in params}
    if input_weight not in params:
        raise ValueError(
            f"per-channel retention needs input_weight naming a weight, got {input_weight!r} "
            f"for weights {sorted(params)}"
        )
    d_in = params[input_weight].shape[-1]
    if decay.shape[1:] != (d_in,):
        raise ValueError(f"retention has shape {decay.shape}, expected ({decay.shape[0]}, {d_in})")
    ones = jnp.ones(decay.shape[:1], decay.dtype)
    return {name: decay if name == input_weight else ones for name in params}


def _times(step: jax.Array, coef: jax.Array) -> jax.Array:
    """η_t · coef_t for step [c] and coef [c] or [c, d_in]."""
    return step.reshape(step.shape + (1,) * (coef.ndim - 1)) * coef


def _weighted_sum(coef: jax.Array, u: jax.Array) -> jax.Array:
    """Σ_i coef_i ⊙ u_i for coef [c] or [c, d_in] and u [c, ..., d_in].

    Written as a contraction (not a broadcast-multiply-reduce) so XLA emits a dot and does not fuse
    the producer of u into a reduction that recomputes it per output element.
    """
    if coef.ndim == 1:
        return jnp.tensordot(coef, u, axes=(0, 0))
    return jnp.einsum("ci,c...i->...i", coef, u)


def _decayed_sum(w0: jax.Array, u: jax.Array, decay: jax.Array, step: jax.Array) -> jax.Array:
    """End of W_t = a_t W_{t−1} − η_t u_t over a chunk: (Π a) W_0 − Σ_i η_i (Π_{j>i} a_j) u_i."""
    suffix = _suffix_products(decay)  # [c+1, ...]
    return suffix[0] * w0 - _weighted_sum(_times(step, suffix[1:]), u)


def _retention_factor(retention: Retention, gate, mask) -> jax.Array:
    return retention.factor(None if gate is None else jnp.asarray(gate), mask)


def gd(retention: Retention | None = None) -> optax.GradientTransformationExtraArgs:
    """Gradient descent with optional retention: M_t = a_t M_{t−1} − η_t ∇L̃(M_{t'}; k_t, v_t).

    Titans Eq. 8 (with ``retention.none()``), the Hebbian/linear-attention write with the
    dot-product bias (Eqs. 14–18, 64, arXiv 2512.24695) and the Titans chunk form Eq. 16.

    Args:
      retention: the retention gate (default ``retention.none()``).

    Extra args: ``step_size`` [c]; ``retention`` [c] or [c, d_in] unless the gate is ``none``.
    """
    retention = retention or retention_lib.none()

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(
        updates, state, params=None, *, step_size=None, mask=None, input_weight=None, **extra
    ):
        c, dtype = _chunk(updates), _dtype(params)
        mask = _mask(mask, c, dtype)
        step = _per_token("step_size", step_size, c, mask)
        decay = _retention_factor(retention, extra.get("retention"), mask).astype(dtype)
        grads = token_gradients(updates)
        if retention.per_channel:
            u = grads.per_token()
            decays = _leaf_decays(params, decay, retention, input_weight)
            new = {n: _decayed_sum(params[n], u[n], decays[n], step) for n in params}
        else:
            row = _suffix_products(decay)  # [c+1]: Π_{j>i} a_j for i = 0..c
            sums = grads.weighted((step * row[1:])[None])  # leaves [1, ...]
            new = {n: row[0] * params[n] - sums[n][0] for n in params}
        return jax.tree.map(jnp.subtract, new, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _affine_scan(d: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """h_t = d_t h_{t−1} + x_t along the last axis (h before the first entry is 0).

    Recursive doubling (Hillis–Steele): ⌈log₂ n⌉ steps of shift-multiply-add, each one fused
    elementwise operation forward and backward. Inside a chunk loop this replaces a cumulative
    product or an associative scan, whose many small operations per chunk dominate the run time on
    CPU. Every product is formed factor by factor, so zero or negative d_t are exact.

    Returns:
      ``(h, prefix)``: h like x, and prefix[..., t] = Π_{j≤t} d_j.
    """
    n = x.shape[-1]
    shift = 1
    while shift < n:
        pad = [(0, 0)] * (x.ndim - 1) + [(shift, 0)]
        x = x + d * jnp.pad(x[..., :-shift], pad)
        d = d * jnp.pad(d[..., :-shift], pad, constant_values=1)
        shift *= 2
    return x, d


def _suffix_products(decay: jax.Array) -> jax.Array:
    """[Π_{j=i+1}^{c} a_j]_{i=0..c} ([c+1], token axis first) for decay a [c] or [c, d_in]."""
    flipped = jnp.moveaxis(jnp.flip(decay, 0), 0, -1)  # [..., c]: a_c, ..., a_1
    factors = jnp.concatenate([jnp.ones_like(flipped[..., :1]), flipped], -1)  # [..., c+1]
    _, prefix = _affine_scan(factors, jnp.zeros_like(factors))
    return jnp.flip(jnp.moveaxis(prefix, -1, 0), 0)


def _momentum_coefficients(decay, momentum_decay, step, mask):
    """Chunk form of S_t = b_t S_{t−1} − η_t u_t, W_t = a_t W_{t−1} + S_t (Titans Eqs. 13–14, 18).

    With B_i = Π_{j=i+1}^c b_j, A_i = Π_{j=i+1}^c a_j, B[t, i] = Π_{j=i+1}^t b_j, and padded tokens
    (mask 0, b = a = 1, η = 0) leaving W untouched,
      S_c = B_0 S_0 − Σ_i η_i B_i u_i,   W_c = A_0 W_0 + G_0 S_0 − Σ_i η_i G_i u_i,
    with G_i = Σ_{t≥max(i,1)} A_t m_t B[t, i], i.e. the reverse recurrence
    G_i = A_i m_i + b_{i+1} G_{i+1} (m_0 = 0, G_c = m_c). All three come from one ``_affine_scan``
    over the reversed chunk.

    Args:
      decay: a_t, [c] or [c, d_in].
      momentum_decay: b_t, [c] (1 at padded tokens).
      step: η_t, [c] (0 at padded tokens).
      mask: [c].

    Returns:
      ``(carry, coef_s, coef_w)``: carry = (B_0, G_0, A_0), each shaped like ``decay[0]``;
      coef_s = η_i B_i and coef_w = η_i G_i, shaped like ``decay``.
    """
    # Reversed order k = c − i over k = 0..c, channels first: [..., c+1].
    rev = lambda x: jnp.moveaxis(
        jnp.flip(jnp.broadcast_to(_bcast(x, decay.ndim), decay.shape), 0), 0, -1
    )
    ones = jnp.ones_like(rev(decay)[..., :1])
    b_rev = jnp.concatenate([ones, rev(momentum_decay)], -1)  # k ↦ b_{c−k+1}
    a_rev = jnp.concatenate([ones, rev(decay)], -1)
    _, a_suffix = _affine_scan(a_rev, jnp.zeros_like(a_rev))  # k ↦ A_{c−k}
    m_rev = jnp.concatenate([rev(mask), jnp.zeros_like(ones)], -1)  # k ↦ m_{c−k}, m_0 = 0
    g, b_suffix = _affine_scan(b_rev, a_suffix * m_rev)  # k ↦ G_{c−k}, B_{c−k}
    back = lambda x: jnp.flip(jnp.moveaxis(x, -1, 0), 0)  # [c+1, ...] in order i = 0..c
    b_suffix, g, a_suffix = back(b_suffix), back(g), back(a_suffix)
    carry = (b_suffix[0], g[0], a_suffix[0])
    return carry, _times(step, b_suffix[1:]), _times(step, g[1:])


def momentum(retention: Retention | None = None) -> optax.GradientTransformationExtraArgs:
    """GD with momentum and optional retention (Titans Eqs. 9–10; with a forget gate Eqs. 13–14).

    S_t = b_t S_{t−1} − η_t ∇L̃(M_{t'}; k_t, v_t),  M_t = a_t M_{t−1} + S_t, with b_t the momentum
    decay (Titans' η_t), η_t the step size (Titans' θ_t) and a_t the retention factor (Titans'
    1 − α_t with ``retention.forget_gate()``). Gradients at the chunk-start weights M_{t'} give the
    chunk-parallel form of Titans Eqs. 16–18.

    Args:
      retention: the retention gate (default ``retention.none()``: Titans Eqs. 9–10).

    Extra args: ``step_size`` [c], ``momentum_decay`` [c]; ``retention`` [c] or [c, d_in] unless
    the gate is ``none``.
    """
    retention = retention or retention_lib.none()

    def init_fn(params):
        return MomentumState(momentum=jax.tree.map(jnp.zeros_like, params))

    def update_fn(
        updates,
        state,
        params=None,
        *,
        step_size=None,
        momentum_decay=None,
        mask=None,
        input_weight=None,
        **extra,
    ):
        c, dtype = _chunk(updates), _dtype(params)
        mask = _mask(mask, c, dtype)
        step = _per_token("step_size", step_size, c, mask)
        b = _per_token("momentum_decay", momentum_decay, c, mask)
        b = jnp.where(mask.astype(bool), b, 1).astype(dtype)
        decay = _retention_factor(retention, extra.get("retention"), mask).astype(dtype)
        grads = token_gradients(updates)
        s0 = state.momentum
        if retention.per_channel:
            u = grads.per_token()
            new, s_end = {}, {}
            for n, a in _leaf_decays(params, decay, retention, input_weight).items():
                (p_s, p_ws, p_w), coef_s, coef_w = _momentum_coefficients(a, b, step, mask)
                s_end[n] = p_s * s0[n] - _weighted_sum(coef_s, u[n])
                new[n] = p_ws * s0[n] + p_w * params[n] - _weighted_sum(coef_w, u[n])
        else:
            (p_s, p_ws, p_w), coef_s, coef_w = _momentum_coefficients(decay, b, step, mask)
            sums = grads.weighted(jnp.stack([coef_s, coef_w]))  # leaves [2, ...]
            s_end = {n: p_s * s0[n] - sums[n][0] for n in params}
            new = {n: p_ws * s0[n] + p_w * params[n] - sums[n][1] for n in params}
        return jax.tree.map(jnp.subtract, new, params), MomentumState(momentum=s_end)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def titans() -> optax.GradientTransformationExtraArgs:
    """Titans' rule: momentum with a forget gate (Titans Eqs. 13–14).

    M_t = (1 − α_t) M_{t−1} + S_t, S_t = η_t S_{t−1} − θ_t ∇ℓ(M_{t'}; x_t). Extra args:
    ``step_size`` = θ [c], ``retention`` = α [c], ``momentum_decay`` = η [c].
    """
    return momentum(retention_lib.forget_gate())


def _compose(x, y):
    """(A_x, B_x) then (A_y, B_y) for the maps W ↦ W A + B: (A_x A_y, B_x A_y + B_y)."""
    a_x, b_x = x
    a_y, b_y = y
    return a_x @ a_y, b_x @ a_y + b_y


def _erase_rule(kind: str, retention: Retention) -> optax.GradientTransformationExtraArgs:
    """Rules whose input-side weight follows W_t = W_{t−1} A_t + B_t with a rank-1 erase.

    With l_t = a_t ⊙ k_t for ``"gated"`` and l_t = k_t otherwise,
      A_t = diag(a_t) − η_t l_t k_tᵀ,  B_t = c_t (W_{t'} k_t) k_tᵀ − η_t u_t,
    where u_t is the gradient at the chunk-start weights W_{t'} and c_t = η_t for ``"delta"`` and
    ``"gated"`` (the exact ℓ2 correction, so a matrix memory follows the printed recurrence at
    every chunk size) and 0 for ``"dgd"``. The other weights of a deep memory follow
    W_t = a'_t W_{t−1} − η_t u_t, with a'_t the scalar gate (1 for per-channel retention).
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(
        updates,
        state,
        params=None,
        *,
        step_size=None,
        key=None,
        mask=None,
        input_weight=None,
        **extra,
    ):
        c, dtype = _chunk(updates), _dtype(params)
        updates = token_gradients(updates).per_token()
        mask = _mask(mask, c, dtype)
        step = _per_token("step_size", step_size, c, mask)
        if input_weight not in params:
            raise ValueError(
                f"the erase rules need input_weight naming a weight, got {input_weight!r} for "
                f"weights {sorted(params)}"
            )
        w0 = params[input_weight]
        d_in = w0.shape[-1]
        if key is None or jnp.shape(key) != (c, d_in):
            shape = None if key is None else jnp.shape(key)
            raise ValueError(f"key has shape {shape}, expected ({c}, {d_in})")
        k = jnp.asarray(key, dtype)
        decay = _retention_factor(retention, extra.get("retention"), mask).astype(dtype)
        decays = _leaf_decays(params, decay, retention, input_weight)
        new = {
            n: _decayed_sum(params[n], updates[n], decays[n], step)
            for n in params
            if n != input_weight
        }
        a_in = decay if retention.per_channel else decay[:, None] * jnp.ones((c, d_in), dtype)
        left = a_in * k if kind == "gated" else k
        eye = jnp.eye(d_in, dtype=dtype)
        trans = a_in[:, :, None] * eye - step[:, None, None] * left[:, :, None] * k[:, None, :]
        correction = (
            0 if kind == "dgd" else step[:, None, None] * jnp.einsum("oi,ci,cj->coj", w0, k, k)
        )
        inputs = correction - step[:, None, None] * updates[input_weight]
        a_tot, b_tot = lax.associative_scan(_compose, (trans, inputs), axis=0)
        new[input_weight] = w0 @ a_tot[-1] + b_tot[-1]
        return jax.tree.map(jnp.subtract, new, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def delta(retention: Retention | None = None) -> optax.GradientTransformationExtraArgs:
    """Delta rule in its exact erase form (Eq. 65, arXiv 2512.24695, column convention).

    With the ℓ2 bias on a matrix memory: M_t = a_t M_{t−1} − η_t (M_{t−1} k_t − v_t) k_tᵀ, i.e.
    M_{t−1}(a_t I − η_t k_t k_tᵀ) + η_t v_t k_tᵀ for a_t = 1, exactly at every chunk size: the
    chunk-start gradient u_t is corrected by η_t (M_{t−1} − M_{t'}) k_t k_tᵀ. Deep memories get the
    erase factor on their input-side weight (docs/SEMANTICS.md §5.4).

    Args:
      retention: the retention gate (default ``retention.none()``).

    Extra args: ``step_size`` = η [c], ``key`` = k [c, d_in], ``input_weight``; ``retention``
    unless the gate is ``none``.
    """
    return _erase_rule("delta", retention or retention_lib.none())


def gated_delta(retention: Retention | None = None) -> optax.GradientTransformationExtraArgs:
    """Gated delta rule (GDN Eq. 10): M_t = M_{t−1} α_t(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ.

    With the ℓ2 bias on a matrix memory this is exact at every chunk size (see ``delta``).

    Args:
      retention: the gate α_t (default ``retention.scalar()``).

    Extra args: ``step_size`` = β [c], ``retention`` = α [c] (or [c, d_in]), ``key`` = k
    [c, d_in], ``input_weight``.
    """
    return _erase_rule("gated", retention or retention_lib.scalar())


def dgd(retention: Retention | None = None) -> optax.GradientTransformationExtraArgs:
    """DGD with weight decay (Eq. 88, arXiv 2512.24695).

    M_t = M_{t−1}(α_t I − η_t k_t k_tᵀ) − η_t ∇L̃(M_{t'}; k_t, v_t), with the gradient at the
    chunk-start weights (Eq. 93) and the decay applied token by token. On a deep memory the factor
    multiplies the input-side weight and α_t decays the others (docs/SEMANTICS.md §5.4).

    Args:
      retention: the gate α_t (default ``retention.scalar()``).

    Extra args: ``step_size`` = η [c], ``retention`` = α [c] (or [c, d_in]), ``key`` = k
    [c, d_in], ``input_weight``.
    """
    return _erase_rule("dgd", retention or retention_lib.scalar())


def omega(retention: Retention | None = None) -> optax.GradientTransformationExtraArgs:
    """Omega rule, GD form (Eq. 68, arXiv 2512.24695; docs/SEMANTICS.md §5.3).

    M_t = a_t M_{t−1} − Σ_{i=t−w+1}^{t} γ_{t,i} ∇L̃(M_{t'}; k_i, v_i): gradient descent on the
    gated loss over the last w tokens. ``updates`` leaves are [c, w, *param_shape], entry j holding
    the gradient of token t − j; ``window_gate`` [c, w] holds γ_{t,t−j} (the step sizes).

    Args:
      retention: the gate α_t (default ``retention.scalar()``).

    Extra args: ``window_gate`` [c, w]; ``retention`` unless the gate is ``none``.
    """
    retention = retention or retention_lib.scalar()
    inner = gd(retention)

    def init_fn(params):
        return inner.init(params)

    def update_fn(updates, state, params=None, *, window_gate=None, mask=None, **extra):
        if isinstance(updates, TokenGradients):
            raise ValueError(
                "omega needs the window gradients [c, w, ...] (scan hands them over when the "
                "inputs hold 'window_gate'), got a TokenGradients"
            )
        c, w = jax.tree.leaves(updates)[0].shape[:2]
        if window_gate is None or jnp.shape(window_gate) != (c, w):
            shape = None if window_gate is None else jnp.shape(window_gate)
            raise ValueError(f"window_gate has shape {shape}, expected ({c}, {w})")
        gate = jnp.asarray(window_gate, _dtype(params))
        summed = jax.tree.map(lambda u: jnp.einsum("cw,cw...->c...", gate, u), updates)
        ones = jnp.ones((c,), _dtype(params))
        return inner.update(summed, state, params, step_size=ones, mask=mask, **extra)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
