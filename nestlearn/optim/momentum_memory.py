"""Momentum as a value-less associative memory (Eq. 13, arXiv 2512.24695; NeurIPS Eqs. 17–18).

Sign convention of every transform in `nestlearn.optim`: a `scale_by_*` transform returns a
*direction* that accumulates **+gradients** (the arXiv §3 convention W ← W − lr·m), and the alias
chains `optax.scale_by_learning_rate(learning_rate)`, which supplies the minus sign. The NeurIPS
convention (W ← W + m, m ← α m − η ∇L) maps onto it by m_NeurIPS = −η · m_here.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class MomentumMemoryState(NamedTuple):
    """State of `scale_by_momentum_memory`."""

    momentum: optax.Updates  # m: like params (same shapes and dtypes)


def _check_unit_interval(name, value):
    """A ValueError naming `name` when a concrete `value` lies outside [0, 1]."""
    if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {name}={value}")


def _check_nonnegative(name, value):
    """A ValueError naming `name` when a concrete `value` is negative."""
    if isinstance(value, (int, float)) and value < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value}")


def _check_learning_rate(learning_rate):
    """A negative constant rate is a ValueError; schedules and traced values are not checked."""
    _check_nonnegative("learning_rate", learning_rate)


def _check_steps(name, value):
    """A ValueError naming `name` unless `value` is an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {name}={value!r}")


def scale_by_momentum_memory(beta: float = 0.9) -> optax.GradientTransformationExtraArgs:
    """Momentum read as one gradient step on its inner objective (Eq. 13, arXiv 2512.24695).

    The memory m has no values: it is trained online by the dot-product objective with an ℓ2
    retention term, L̃(m) = −⟨m, g⟩ + (1 − β)/2 ‖m‖², where g = ∇_W L(W_t; x_{t+1}). One gradient
    step of unit size gives m ← m − ∇L̃(m) = β m + g, which is returned as the direction.

    Mapping from the printed NeurIPS form m' ← β m' − η ∇L, W ← W + m' (NeurIPS Eqs. 17–18):
    m' = −η m, so W ← W − η m, which is what `momentum_memory` applies.

    Args:
      beta: retention of the memory (momentum decay), in [0, 1].

    Returns:
      A transform whose update is m_{t+1} = β m_t + g_t.
    """
    _check_unit_interval("beta", beta)

    def init_fn(params):
        return MomentumMemoryState(momentum=jax.tree.map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        momentum = jax.tree.map(
            lambda g, m: (g + beta * m).astype(m.dtype), updates, state.momentum
        )
        return momentum, MomentumMemoryState(momentum=momentum)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def momentum_memory(
    learning_rate: optax.ScalarOrSchedule, beta: float = 0.9
) -> optax.GradientTransformationExtraArgs:
    """Gradient descent with a momentum memory: W ← W − lr · (β m + g).

    Its trajectory equals `optax.sgd(learning_rate, momentum=beta)`.

    Args:
      learning_rate: a float or an optax schedule.
      beta: retention of the memory (momentum decay), in [0, 1].
    """
    _check_learning_rate(learning_rate)
    return optax.chain(scale_by_momentum_memory(beta), optax.scale_by_learning_rate(learning_rate))
