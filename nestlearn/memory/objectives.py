"""Attentional biases: the inner objective L̃(M; k, v) an associative memory minimizes.

Every objective is a pure function of one token's prediction y = M(k) ([d_out]) and target v
([d_out]) returning a scalar (Def. 1, Eq. 6, arXiv 2512.24695). The memory weights enter only
through y, so ``jax.grad`` of ``objective.loss(arch.apply(w, k), v)`` with respect to w is the
"surprise" of Titans Eq. 8.

Scaling convention: the ℓ2 bias is ½‖M(k) − v‖², i.e. the factor 2 of Titans Eq. 12 is absorbed
into the step size (docs/SEMANTICS.md §5.3). With it, one GD step of size η on a matrix memory is
the printed delta rule M(I − η k kᵀ) + η v kᵀ (Eq. 65), and the ℓp and Huber biases reduce to it
at p = 2 (ε = 0) and δ = ∞.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Objective(NamedTuple):
    """An attentional bias.

    Attributes:
      name: short description, e.g. ``"huber(delta=1.0)"``.
      loss: ``loss(y, v) -> scalar`` with y = M(k) and v of shape [d_out].
    """

    name: str
    loss: Callable[[jax.Array, jax.Array], jax.Array]


def dot_product() -> Objective:
    """Dot-product (Hebbian) bias L̃ = −⟨M(k), v⟩ (Eqs. 14–18 and 64, arXiv 2512.24695)."""
    return Objective("dot_product", lambda y, v: -jnp.vdot(y, v))


def l2() -> Objective:
    """ℓ2 regression bias L̃ = ½‖M(k) − v‖² (Titans Eq. 12; Eq. 65, arXiv 2512.24695)."""
    return Objective("l2", lambda y, v: 0.5 * jnp.sum(jnp.square(y - v)))


def lp(p: float = 3.0, eps: float = 1e-6) -> Objective:
    """Smoothed ℓp bias L̃ = (1/p) Σ_i (r_i² + ε)^{p/2}, r = M(k) − v (Moneta; arXiv 2504.13173).

    |r| is replaced by the smooth surrogate √(r² + ε), so the gradient is
    (r² + ε)^{p/2 − 1} r ≈ Sign(r)|r|^{p−1}, the printed Moneta direction up to the factor p.

    Args:
      p: exponent, p ≥ 1.
      eps: smoothing ε > 0 (ε = 0 is allowed for p ≥ 2).
    """
    if not p >= 1:
        raise ValueError(f"p must be >= 1, got {p!r}")
    if eps < 0 or (eps == 0 and p < 2):
        raise ValueError(f"eps must be > 0 (or 0 with p >= 2), got eps={eps!r} with p={p!r}")

    def loss(y, v):
        return jnp.sum(jnp.power(jnp.square(y - v) + eps, p / 2)) / p

    return Objective(f"lp(p={p}, eps={eps})", loss)


def huber(delta: float = 1.0) -> Objective:
    """Huber bias on the residual norm (Yaad; arXiv 2504.13173).

    L̃ = ½‖r‖² if ‖r‖ ≤ δ, else δ(‖r‖ − δ/2), with r = M(k) − v: the ℓ2 gradient r for small
    residuals and the clipped direction δ r/‖r‖ (δ∇ℓ1 of the printed rule) for large ones.

    Args:
      delta: threshold δ > 0.
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")

    def loss(y, v):
        sq = jnp.sum(jnp.square(y - v))
        small = sq <= delta**2
        # The norm is taken of a value clamped away from 0 so its gradient stays finite in the
        # branch jnp.where discards.
        norm = jnp.sqrt(jnp.where(small, delta**2, sq))
        return jnp.where(small, 0.5 * sq, delta * (norm - 0.5 * delta))

    return Objective(f"huber(delta={delta})", loss)


_BY_NAME: dict[str, Callable[[], Objective]] = {
    "dot_product": dot_product,
    "l2": l2,
    "lp": lp,
    "huber": huber,
}


def get(objective: str | Objective) -> Objective:
    """Returns ``objective`` itself, or the default-configured objective of that name."""
    if isinstance(objective, Objective):
        return objective
    if objective not in _BY_NAME:
        names = sorted(_BY_NAME)
        raise ValueError(f"objective={objective!r} is not an Objective nor one of {names}")
    return _BY_NAME[objective]()
