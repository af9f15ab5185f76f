"""M3, Multi-scale Momentum Muon (Algorithm 1, §7.2, arXiv 2512.24695; docs/optimizers.md).

Two momentum levels (CMS applied to the optimizer; Eq. 75 read as Algorithm 1): a fast momentum
M¹ updated every step and a slow momentum M² refreshed every `slow_period` steps from the
gradients summed since its previous refresh (a half-open range: each gradient counted once).
Both are orthogonalized by Newton–Schulz on matrix leaves and normalised by the root of a
second-moment accumulator V. Algorithm 1 as printed (`form="printed", ema=False`):

  every step t:       M¹ ← M¹ + β₁ g,  V ← V + β₂ g²,  O¹ = NS(M¹)
  when t−1 ≡ 0 mod f: M² ← M² + β₃ Σ_{steps since the last refresh} g,  O² = NS(M²)   (t > 1)
  direction:          (O¹ + α O²) / (√V + ε)

The default form (`"combined"`) adds the slow level's chunk mean to the fast momentum and
orthogonalizes their Adam-normalised sum once, NS((M¹ + α M²/f) / (√V + ε)), with EMA moments;
`scale_by_m3` says why. The slow refresh happens *before* the step that starts a new chunk, so
chunk k uses the slow momentum built from chunks < k; chunk 0 has O² = 0. All scheduling runs on
the traced counter (`jnp.where`, `lax.cond`).
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nestlearn.optim.momentum_memory import (
    _check_learning_rate,
    _check_nonnegative,
    _check_steps,
    _check_unit_interval,
)
from nestlearn.optim.newton_schulz import _resolve_coefficients, orthogonalize_leaf

#: The forms of the M3 direction (`scale_by_m3`).
FORMS = ("combined", "preconditioned", "printed")


class M3State(NamedTuple):
    """State of `scale_by_m3`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken
    fast: optax.Updates  # M¹: like params
    slow: optax.Updates  # M²: like params
    slow_direction: optax.Updates  # O² (NS(M²), or M̂²/f when combined), cached: like params
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
    form: Literal["combined", "preconditioned", "printed"] = "combined",
    ema: bool = True,
    coefficients: str | tuple[float, float, float] = "quintic",
) -> optax.GradientTransformationExtraArgs:
    """M3 direction (Algorithm 1, arXiv 2512.24695); see the module docstring.

    Mapping to the printed update θ_t = θ_{t−1} − η (O¹ + α O²)/(√V + ε): this transform returns
    the direction and `scale_by_learning_rate` applies −η. The three forms (docs/optimizers.md):

      printed (Algorithm 1):     (NS(M¹) + α NS(M²)) / (√V + ε)
      preconditioned:            NS(M¹ / (√V + ε)) + α NS(M² / (√V + ε))
      combined (default):        NS((M¹ + α M²/f) / (√V + ε))

    The printed form divides an orthogonalized matrix, whose entries are spread evenly, by a
    per-coordinate √V that is 0 or tiny where the gradients have been (in a ReLU MLP, pairs of
    units never active together on a batch): those coordinates move by η·|O|/(√V + ε) ≫ η.
    The preconditioned form orthogonalizes the Adam-normalised momentum, so every matrix
    update has spectral norm ≈ 1 and a vector update is Adam's; but orthogonalizing the slow
    momentum on its own gives it spectral norm α however small it is, so a slow level whose
    chunk sums have averaged out (near a minimum) still pushes along a stale direction. The
    combined form orthogonalizes once: the slow level's chunk mean M²/f enters in proportion
    to its size beside M¹, and the update keeps spectral norm ≈ 1.

    With `ema=False` the β's scale new gradients and old states are not decayed, as printed;
    with `ema=True` (default) M¹, V and M² are exponential moving averages with decays β₁, β₂,
    β₃ and Adam-style bias correction (M² by the number of refreshes).

    Args:
      beta1: coefficient of the fast momentum, in [0, 1].
      beta2: coefficient of the second moment, in [0, 1].
      beta3: coefficient of the slow momentum, in [0, 1].
      alpha: weight of the slow level in the update, ≥ 0.
      eps: added to √V.
      ns_steps: Newton–Schulz iterations, an int ≥ 1.
      slow_period: f, steps between slow refreshes, an int ≥ 1.
      form: "combined" (default), "preconditioned" or "printed" (Algorithm 1).
      ema: exponential moving averages (default) instead of the printed accumulations.
      coefficients: Newton–Schulz coefficients; see `newton_schulz`.
    """
    for name, value in (("beta1", beta1), ("beta2", beta2), ("beta3", beta3)):
        _check_unit_interval(name, value)
    _check_nonnegative("alpha", alpha)
    _check_nonnegative("eps", eps)
    _check_steps("ns_steps", ns_steps)
    _check_steps("slow_period", slow_period)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got form={form!r}")
    coefficients = _resolve_coefficients(coefficients)

    def accumulate(state, new, beta):
        if ema:
            return beta * state + (1 - beta) * new
        return state + beta * new

    def debias(x, beta, n):
        if not ema:
            return x
        n = jnp.maximum(n, 1).astype(jnp.promote_types(x.dtype, jnp.float32))
        return (x / (1 - beta**n)).astype(x.dtype)

    def directions(momentum, beta, n, second, count):
        """O = NS(M̂ / (√V̂ + ε)) (preconditioned) or NS(M̂) (printed), leaf by leaf."""

        def leaf(m, v):
            m = debias(m, beta, n)
            if form == "combined":  # the slow chunk mean, combined with M¹ before NS
                return (m / slow_period).astype(v.dtype)
            if form == "preconditioned":
                m = m / (jnp.sqrt(debias(v, beta2, count)) + eps)
            return orthogonalize_leaf(m, ns_steps, coefficients).astype(v.dtype)

        return jax.tree.map(leaf, momentum, second)

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

        count = optax.safe_increment(state.count)
        fast = cast(
            jax.tree.map(lambda m, g: accumulate(m, g, beta1), state.fast, updates), updates
        )
        second = cast(
            jax.tree.map(lambda v, g: accumulate(v, g * g, beta2), state.second_moment, updates),
            updates,
        )
        slow = jax.tree.map(
            lambda m, s: jnp.where(refresh, accumulate(m, s, beta3), m), state.slow, state.pending
        )
        slow = cast(slow, state.slow)
        slow_direction = jax.lax.cond(
            refresh,
            lambda: cast(directions(slow, beta3, refreshes, second, count), state.slow_direction),
            lambda: state.slow_direction,
        )
        pending = jax.tree.map(
            lambda s, g: jnp.where(refresh, g, s + g).astype(s.dtype), state.pending, updates
        )
        if form == "combined":

            def combine(m1, m2, v, g):
                m = debias(m1, beta1, count) + alpha * m2
                m = m / (jnp.sqrt(debias(v, beta2, count)) + eps)
                return orthogonalize_leaf(m, ns_steps, coefficients).astype(g.dtype)

            direction = jax.tree.map(combine, fast, slow_direction, second, updates)
        else:
            fast_direction = directions(fast, beta1, count, second, count)

            def combine(o1, o2, v, g):
                out = o1 + alpha * o2
                if form == "printed":
                    out = out / (jnp.sqrt(debias(v, beta2, count)) + eps)
                return out.astype(g.dtype)

            direction = jax.tree.map(combine, fast_direction, slow_direction, second, updates)
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
    form: Literal["combined", "preconditioned", "printed"] = "combined",
    ema: bool = True,
    coefficients: str | tuple[float, float, float] = "quintic",
) -> optax.GradientTransformationExtraArgs:
    """M3 (Algorithm 1, arXiv 2512.24695): θ ← θ − lr · direction of `scale_by_m3`.

    `form="printed", ema=False` is Algorithm 1 as printed. The default (combined, EMA) takes
    Muon-sized steps: start from Muon's learning rate, not Adam's.

    Args: as `scale_by_m3`, plus `learning_rate` (η ≥ 0, a float or an optax schedule).
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_m3(
            beta1,
            beta2,
            beta3,
            alpha,
            eps,
            ns_steps,
            slow_period,
            form=form,
            ema=ema,
            coefficients=coefficients,
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
