"""Momentum over a polynomial feature map of the gradient (Eq. 51, arXiv 2512.24695)."""

from collections.abc import Sequence
from typing import NamedTuple

import jax
import optax

from nestlearn.optim.momentum_memory import _check_learning_rate, _check_unit_interval


class FeatureMomentumState(NamedTuple):
    """State of `scale_by_feature_momentum`."""

    momentum: optax.Updates  # m: like params (same shapes and dtypes)
    preconditioner: optax.OptState  # the state of the transform that computes P φ(g)


def polynomial_features(g: jax.Array, coefficients: Sequence[float]) -> jax.Array:
    """φ(g) = Σ_k c_k g^k element-wise, evaluated by Horner's rule (c_0 is the constant)."""
    out = 0.0 * g + coefficients[-1]
    for c in reversed(coefficients[:-1]):
        out = out * g + c
    return out.astype(g.dtype)


def scale_by_feature_momentum(
    alpha: float = 0.9,
    coefficients: Sequence[float] = (0.0, 1.0),
    preconditioner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Momentum that stores a higher-order feature of the gradient (Eq. 51, arXiv 2512.24695).

    m ← α m + P φ(g), with φ(g) = Σ_k c_k g^k element-wise; P (pluggable, identity by default)
    acts on φ(g). The default coefficients (0, 1) give plain momentum; odd polynomials keep
    φ(−g) = −φ(g).

    Mapping from the printed form m' ← α m' − η P φ(∇L), W ← W + m': m' = −η m, so
    W ← W − η m. φ is applied to +∇L in both conventions, so even terms keep their sign.

    Args:
      alpha: retention of the memory, in [0, 1].
      coefficients: (c_0, c_1, …), at least one.
      preconditioner: a transform computing P·φ(g); the identity when None.
    """
    _check_unit_interval("alpha", alpha)
    coefficients = tuple(coefficients)
    if not coefficients:
        raise ValueError(f"coefficients must hold at least one value, got {coefficients=}")
    precondition = optax.with_extra_args_support(
        optax.identity() if preconditioner is None else preconditioner
    )

    def init_fn(params):
        return FeatureMomentumState(
            momentum=optax.tree.zeros_like(params), preconditioner=precondition.init(params)
        )

    def update_fn(updates, state, params=None, **extra_args):
        features = jax.tree.map(lambda g: polynomial_features(g, coefficients), updates)
        written, p_state = precondition.update(features, state.preconditioner, params, **extra_args)
        momentum = jax.tree.map(
            lambda pf, m: (pf + alpha * m).astype(m.dtype), written, state.momentum
        )
        return momentum, FeatureMomentumState(momentum=momentum, preconditioner=p_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def feature_momentum(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.9,
    coefficients: Sequence[float] = (0.0, 1.0),
    preconditioner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """W ← W − lr · m with m ← α m + P φ(g) (Eq. 51, arXiv 2512.24695).

    Args:
      learning_rate: a float or an optax schedule.
      alpha: retention of the memory, in [0, 1].
      coefficients: (c_0, c_1, …) of the element-wise polynomial φ.
      preconditioner: a transform computing P·φ(g); the identity when None.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_feature_momentum(alpha, coefficients, preconditioner),
        optax.scale_by_learning_rate(learning_rate),
    )
