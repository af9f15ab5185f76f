"""M3, Multi-scale Momentum Muon (Algorithm 1, §7.2, arXiv 2512.24695).

Two momentum levels (CMS applied to the optimizer, Eq. 75 read as Algorithm 1, PAPER §9
item 11): a fast momentum M¹ updated every step and a slow momentum M² refreshed every
`slow_period` steps from the gradients summed since its previous refresh (half-open range, each
gradient counted once, PAPER §9 item 12). Both are orthogonalized by Newton–Schulz on matrix
leaves and divided by the root of a second-moment accumulator V:

  every step t:       M¹ ← M¹ + β₁ g,  V ← V + β₂ g²,  O¹ = NS(M¹)
  when t−1 ≡ 0 mod f: M² ← M² + β₃ Σ_{steps since the last refresh} g,  O² = NS(M²)   (t > 1)
  direction:          (O¹ + α O²) / (√V + ε)

The slow refresh happens *before* the step that starts a new chunk, so chunk k uses the slow
momentum built from chunks < k; chunk 0 has O² = 0. All scheduling runs on the traced counter
(`jnp.where`, `lax.cond`).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nestlearn.optim.momentum_memory import _check_unit_interval
from nestlearn.optim.newton_schulz import _resolve_coefficients, orthogonalize_leaf


class M3State(NamedTuple):
    """State of `scale_by_m3`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken
    fast: optax.Updates  # M¹: like params
    slow: optax.Updates  # M²: like params
    slow_direction: optax.Updates  # O² = NS(M²), cached between refreshes: like params
    second_moment: optax.Updates  # V: like params
    pending: optax.Updates  # gradients summed since the last slow refresh: like params


def scale_by_m3(
    beta1: float = 0.9,
    beta2: float = 0.999,
    beta3: float = 0.9,
    alpha: float = 0.5,
    eps: float = 1e-8,
    ns_steps: int = 5,
    slow_period: int = 16,
    *,
    ema: bool = False,
    coefficients: str | tuple[float, float, float] = "quintic",
) -> optax.GradientTransformationExtraArgs:
    """M3 direction (Algorithm 1, arXiv 2512.24695); see the module docstring.

    Mapping to the printed update θ_t = θ_{t−1} − η (O¹ + α O²)/(√V + ε): this transform returns
    (O¹ + α O²)/(√V + ε) and `scale_by_learning_rate` applies −η. As printed the β's scale new
    gradients and old states are not decayed (`ema=False`). With `ema=True`, M¹, V and M² are
    exponential moving averages with decays β₁, β₂, β₃ and Adam-style bias correction (M² by
    the number of refreshes), DESIGN §4.

    Args:
      beta1: coefficient of the fast momentum.
      beta2: coefficient of the second moment.
      beta3: coefficient of the slow momentum.
      alpha: weight of the slow level in the update.
      eps: added to √V.
      ns_steps: Newton–Schulz iterations.
      slow_period: f, steps between slow refreshes (a positive int).
      ema: exponential moving averages instead of the printed accumulations.
      coefficients: Newton–Schulz coefficients; see `newton_schulz`.
    """
    for name, value in (("beta1", beta1), ("beta2", beta2), ("beta3", beta3)):
        _check_unit_interval(name, value)
    if not isinstance(slow_period, int) or slow_period < 1:
        raise ValueError(f"slow_period must be a positive int, got {slow_period=}")
    coefficients = _resolve_coefficients(coefficients)

    def orthogonalize(tree):
        return jax.tree.map(lambda x: orthogonalize_leaf(x, ns_steps, coefficients), tree)

    def accumulate(state, new, beta):
        if ema:
            return beta * state + (1 - beta) * new
        return state + beta * new

    def debias(x, beta, n):
        if not ema:
            return x
        n = jnp.maximum(n, 1).astype(jnp.promote_types(x.dtype, jnp.float32))
        return (x / (1 - beta**n)).astype(x.dtype)

    def init_fn(params):
        # A fresh tree per field: one shared buffer cannot be donated twice by a jitted step.
        def zeros():
            return optax.tree.zeros_like(params)

        return M3State(
            count=jnp.zeros([], jnp.int32),
            fast=zeros(),
            slow=zeros(),
            slow_direction=zeros(),
            second_moment=zeros(),
            pending=zeros(),
        )

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        refresh = (state.count > 0) & (state.count % slow_period == 0)
        refreshes = state.count // slow_period  # number of refreshes including this one

        def cast(tree, like):
            return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)

        slow = jax.tree.map(
            lambda m, s: jnp.where(refresh, accumulate(m, s, beta3), m), state.slow, state.pending
        )
        slow = cast(slow, state.slow)
        slow_direction = jax.lax.cond(
            refresh,
            lambda: cast(
                orthogonalize(jax.tree.map(lambda m: debias(m, beta3, refreshes), slow)),
                state.slow_direction,
            ),
            lambda: state.slow_direction,
        )
        pending = jax.tree.map(
            lambda s, g: jnp.where(refresh, g, s + g).astype(s.dtype), state.pending, updates
        )
        count = optax.safe_increment(state.count)
        fast = cast(
            jax.tree.map(lambda m, g: accumulate(m, g, beta1), state.fast, updates), updates
        )
        second = cast(
            jax.tree.map(lambda v, g: accumulate(v, g * g, beta2), state.second_moment, updates),
            updates,
        )
        fast_direction = orthogonalize(jax.tree.map(lambda m: debias(m, beta1, count), fast))
        direction = jax.tree.map(
            lambda o1, o2, v, g: (
                (o1 + alpha * o2) / (jnp.sqrt(debias(v, beta2, count)) + eps)
            ).astype(g.dtype),
            fast_direction,
            slow_direction,
            second,
            updates,
        )
        return direction, M3State(
            count=count,
            fast=fast,
            slow=slow,
            slow_direction=slow_direction,
            second_moment=second,
            pending=pending,
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def m3(
    learning_rate: optax.ScalarOrSchedule,
    beta1: float = 0.9,
    beta2: float = 0.999,
    beta3: float = 0.9,
    alpha: float = 0.5,
    eps: float = 1e-8,
    ns_steps: int = 5,
    slow_period: int = 16,
    *,
    ema: bool = False,
    coefficients: str | tuple[float, float, float] = "quintic",
) -> optax.GradientTransformationExtraArgs:
    """M3 (Algorithm 1, arXiv 2512.24695): θ ← θ − lr (O¹ + α O²)/(√V + ε).

    Args: as `scale_by_m3`, plus `learning_rate` (a float or an optax schedule).
    """
    return optax.chain(
        scale_by_m3(
            beta1,
            beta2,
            beta3,
            alpha,
            eps,
            ns_steps,
            slow_period,
            ema=ema,
            coefficients=coefficients,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
