"""Preconditioned momentum: a momentum memory with values P g (Eqs. 46–47, arXiv 2512.24695)."""

from typing import NamedTuple

import jax
import optax

from nestlearn.optim.momentum_memory import _check_learning_rate, _check_unit_interval


class PreconditionedMomentumState(NamedTuple):
    """State of `scale_by_preconditioned_momentum`."""

    momentum: optax.Updates  # m: like params (same shapes and dtypes)
    preconditioner: optax.OptState  # the state of the transform that computes P g


def scale_by_preconditioned_momentum(
    alpha: float = 0.9,
    preconditioner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Momentum whose write is a preconditioned gradient (Eqs. 46–47, arXiv 2512.24695).

    The memory maps the gradient (key) to the value P_i, which gives the update
    m ← α m + P g, returned as the direction. P is pluggable: any optax transform whose output
    is P·g, e.g. `optax.scale_by_rms()`; its state lives inside this transform's state.

    Mapping from the printed form m' ← α m' − η P ∇L, W ← W + m' (Eq. 47): m' = −η m, so
    W ← W − η m.

    Args:
      alpha: retention of the memory (momentum decay), in [0, 1].
      preconditioner: a transform computing P·g; the identity when None.

    Returns:
      A transform whose update is m_{t+1} = α m_t + P_t g_t.
    """
    _check_unit_interval("alpha", alpha)
    precondition = optax.with_extra_args_support(
        optax.identity() if preconditioner is None else preconditioner
    )

    def init_fn(params):
        return PreconditionedMomentumState(
            momentum=optax.tree.zeros_like(params),
            preconditioner=precondition.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        written, p_state = precondition.update(updates, state.preconditioner, params, **extra_args)
        momentum = jax.tree.map(
            lambda pg, m: (pg + alpha * m).astype(m.dtype), written, state.momentum
        )
        return momentum, PreconditionedMomentumState(momentum=momentum, preconditioner=p_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def preconditioned_momentum(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.9,
    preconditioner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """W ← W − lr · m with m ← α m + P g (Eqs. 46–47, arXiv 2512.24695).

    Args:
      learning_rate: a float or an optax schedule.
      alpha: retention of the memory (momentum decay), in [0, 1].
      preconditioner: a transform computing P·g; the identity when None.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_preconditioned_momentum(alpha, preconditioner),
        optax.scale_by_learning_rate(learning_rate),
    )
