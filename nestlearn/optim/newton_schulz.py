"""Newton–Schulz and momentum with a nonlinear output (Eqs. 44, 52, arXiv 2512.24695).

`newton_schulz` iterates X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X after a Frobenius normalization.
Two coefficient sets are built in:

- "cubic" (1.5, −0.5, 0): Eq. 44, O ← O − ζ(O − g + 2 O(OᵀO − I)) with O_0 = g, is one gradient
  step on ‖OᵀO − I‖² plus a proximity term to g. With ζ = 1/4 and the proximity term dropped it
  is the classical cubic 1.5 O − 0.5 O OᵀO; at the first step O_0 = g makes the proximity term
  vanish, so the first cubic step *is* Eq. 44.
- "quintic" (3.4445, −4.7750, 2.0315): Muon's coefficients (as in `optax.contrib.muon`), which
  trade exact convergence for a steeper slope at zero.

Leaves with ndim ≥ 2 are read as matrices [prod(leading dims), last dim]; fan-in is the leading
product and fan-out the last dim, as for `optax.contrib.muon` on 2-D leaves. Leaves with ndim < 2
have no matrix to orthogonalize and pass through σ = identity.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nestlearn.optim.momentum_memory import (
    _check_learning_rate,
    _check_steps,
    _check_unit_interval,
)

CUBIC = (1.5, -0.5, 0.0)
QUINTIC = (3.4445, -4.7750, 2.0315)
_PRESETS = {"cubic": CUBIC, "quintic": QUINTIC}


def _resolve_coefficients(coefficients):
    if isinstance(coefficients, str):
        if coefficients not in _PRESETS:
            raise ValueError(
                f"coefficients must be one of {sorted(_PRESETS)} or a triple (a, b, c), "
                f"got coefficients={coefficients!r}"
            )
        return _PRESETS[coefficients]
    coefficients = tuple(coefficients)
    if len(coefficients) != 3:
        raise ValueError(f"coefficients must be a triple (a, b, c), got {coefficients=}")
    return coefficients


def newton_schulz(
    x: jax.Array,
    steps: int = 5,
    coefficients: str | tuple[float, float, float] = "quintic",
    *,
    eps: float = 1e-8,
) -> jax.Array:
    """Approximately orthogonalizes x by a Newton–Schulz iteration (Eq. 44, arXiv 2512.24695).

    Args:
      x: an array with ndim ≥ 2, read as the matrix [prod(leading dims), last dim].
      steps: number of iterations, an int ≥ 1 (static).
      coefficients: "quintic" (Muon), "cubic" (Eq. 44) or a triple (a, b, c) for
        X ← a X + b (X Xᵀ) X + c (X Xᵀ)² X.
      eps: added to the Frobenius norm before the initial normalization.

    Returns:
      An array of x's shape and dtype whose matrix view has singular values near 1.
    """
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs an array with ndim >= 2, got shape {x.shape}")
    _check_steps("steps", steps)
    a, b, c = _resolve_coefficients(coefficients)
    mat = x.reshape(-1, x.shape[-1])  # [r, c]
    transposed = mat.shape[0] > mat.shape[1]
    if transposed:
        mat = mat.T  # iterate on the side with the smaller Gram matrix
    mat = mat / (jnp.linalg.norm(mat) + eps)
    for _ in range(steps):
        gram = mat @ mat.T
        mat = a * mat + (b * gram + c * gram @ gram) @ mat
    if transposed:
        mat = mat.T
    return mat.reshape(x.shape).astype(x.dtype)


def orthogonalize_leaf(x, steps, coefficients, eps=1e-8):
    """σ of Eq. 52 on one leaf: Newton–Schulz on matrix leaves, identity on ndim < 2."""
    return newton_schulz(x, steps, coefficients, eps=eps) if x.ndim >= 2 else x


class NewtonSchulzMomentumState(NamedTuple):
    """State of `scale_by_newton_schulz_momentum`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken
    momentum: optax.Updates  # m: like params (same shapes and dtypes)


def scale_by_newton_schulz_momentum(
    beta: float = 0.95,
    ns_steps: int = 5,
    coefficients: str | tuple[float, float, float] = "quintic",
    *,
    nesterov: bool = True,
    eps: float = 1e-8,
    shape_scaling: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """Momentum read through σ = Newton–Schulz (Eq. 52, arXiv 2512.24695; NeurIPS Eq. 24).

    The memory is linear, m ← β m + (1 − β) g (an EMA: the same direction as β m + g up to the
    factor 1/(1 − β), which the normalization inside Newton–Schulz removes), and the update is
    σ(m̂) with m̂ the bias-corrected (optionally Nesterov) read. With `shape_scaling` the matrix
    update is multiplied by sqrt(max(1, fan_out / fan_in)). These are the conventions of
    `optax.contrib.muon`, which this transform reproduces on 2-D leaves; Muon *is* Eq. 52 with a
    linear memory.

    Mapping from the printed form W ← W + σ(m'(u)), m' ← β m' − η u: σ is odd
    (σ(−m) = −σ(m)), so W ← W − η σ(m) in this module's convention.

    Args:
      beta: decay of the linear memory, in [0, 1].
      ns_steps: Newton–Schulz iterations, an int ≥ 1.
      coefficients: "quintic", "cubic" or a triple; see `newton_schulz`.
      nesterov: read β m̂_{t+1} + (1 − β) ĝ_t (bias-corrected) instead of m̂_t.
      eps: Frobenius-norm guard of the normalization.
      shape_scaling: multiply matrix updates by sqrt(max(1, fan_out / fan_in)).
    """
    _check_unit_interval("beta", beta)
    _check_steps("ns_steps", ns_steps)
    coefficients = _resolve_coefficients(coefficients)

    def init_fn(params):
        return NewtonSchulzMomentumState(
            count=jnp.zeros([], jnp.int32), momentum=optax.tree.zeros_like(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        momentum = optax.tree.update_moment(updates, state.momentum, beta, 1)
        count = optax.safe_increment(state.count)
        if nesterov:
            read = jax.tree.map(
                lambda m, g: beta * m + (1 - beta) * g,
                optax.tree.bias_correction(momentum, beta, optax.safe_increment(count)),
                optax.tree.bias_correction(updates, beta, count),
            )
        else:
            read = optax.tree.bias_correction(momentum, beta, count)

        def sigma(r, g):
            out = orthogonalize_leaf(r, ns_steps, coefficients, eps)
            if shape_scaling and r.ndim >= 2:
                fan_in, fan_out = r.size // r.shape[-1], r.shape[-1]
                out = out * max(1.0, fan_out / fan_in) ** 0.5
            return out.astype(g.dtype)

        direction = jax.tree.map(sigma, read, updates)
        momentum = jax.tree.map(lambda m, p: m.astype(p.dtype), momentum, state.momentum)
        return direction, NewtonSchulzMomentumState(count=count, momentum=momentum)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def newton_schulz_momentum(
    learning_rate: optax.ScalarOrSchedule,
    beta: float = 0.95,
    ns_steps: int = 5,
    coefficients: str | tuple[float, float, float] = "quintic",
    *,
    nesterov: bool = True,
    eps: float = 1e-8,
    shape_scaling: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """W ← W − lr · σ(m) with σ = Newton–Schulz (Eq. 52, arXiv 2512.24695).

    Args:
      learning_rate: η ≥ 0, a float or an optax schedule.
      beta: decay of the linear memory, in [0, 1].
      ns_steps: Newton–Schulz iterations, an int ≥ 1.
      coefficients: "quintic", "cubic" or a triple; see `newton_schulz`.
      nesterov: Nesterov read, as in Muon.
      eps: Frobenius-norm guard of the normalization.
      shape_scaling: multiply matrix updates by sqrt(max(1, fan_out / fan_in)).
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_newton_schulz_momentum(
            beta,
            ns_steps,
            coefficients,
            nesterov=nesterov,
            eps=eps,
            shape_scaling=shape_scaling,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
