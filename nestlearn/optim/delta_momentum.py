"""Delta Momentum: momentum with an ℓ2 inner objective (Eqs. 48–49, arXiv 2512.24695).

Layout: every leaf is read as a matrix [r, c] = [prod(leading dims), last dim]; a 1-D leaf is a
row vector [1, d] and a scalar is [1, 1]. The Gram matrix gᵀg therefore acts on the *last* axis.
In the paper's column convention (W ∈ R^{d_out×d_in}, y = W x) the last axis is d_in, so the
erase acts on the key (input) space as Eq. 49 intends. A Flax kernel is stored [d_in, d_out]
(y = x K); for it the same formula erases along d_out.

Every form is a step on the ℓ2 inner objective of Eq. 48 with the retention α,

  ℓ_t(m) = ½ ‖m gᵀ‖² − ⟨m, P g⟩        (∇ℓ_t = m gᵀg − P g),

and the forms differ in how the step is taken (docs/optimizers.md derives each):

- "implicit" (default): the exact minimiser, as DGD's Eq. 56 takes it, over the printed
  momentum m' = −η m (the displacement of W) of ½‖m' gᵀ‖² + ⟨m', P g⟩ + 1/(2ζ)‖m' − α m'_t‖²
  with ζ = η_t. Solved by Sherman–Morrison/Woodbury as in Eq. 57:
  m ← (α m + P g)(I + ζ gᵀg)⁻¹. The erase's singular values lie in (0, α] and the write is
  shrunk by 1/(1 + ζσ²) along a gradient direction of singular value σ, so the recursion is
  stable at any gradient scale and step; for ζσ² ≪ 1 it is momentum.
- "arxiv" (Eq. 49 as printed): one explicit unit step with the retention applied to m,
  m ← m (αI − ζ gᵀg) + P g, ζ = 1; diverges once ζ σ_max(g)² > 1 + α.
- "neurips" (NeurIPS Eq. 22 as printed): (αI − ζ gᵀg) m + P g, square matrix views only.
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import optax

from nestlearn.optim.momentum_memory import (
    _check_learning_rate,
    _check_nonnegative,
    _check_unit_interval,
)

FORMS = ("implicit", "arxiv", "neurips")
Form = Literal["implicit", "arxiv", "neurips"]


class DeltaMomentumState(NamedTuple):
    """State of `scale_by_delta_momentum`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken (evaluates a learning-rate schedule)
    momentum: optax.Updates  # m: like params (same shapes and dtypes)
    preconditioner: optax.OptState  # the state of the transform that computes P g


def _as_matrix(x):
    """[..., c] -> [prod(leading), c]; 1-D -> [1, d]; scalar -> [1, 1]."""
    if x.ndim == 0:
        return x.reshape(1, 1)
    return x.reshape(-1, x.shape[-1])


def _matrix_shape(shape):
    if len(shape) == 0:
        return 1, 1
    c = shape[-1]
    r = 1
    for s in shape[:-1]:
        r *= s
    return r, c


def _explicit_step(m, g, write, alpha, zeta, form):
    """m (αI − ζ gᵀg) + write (or the left product), never forming the larger Gram matrix."""
    mm, gm = _as_matrix(m), _as_matrix(g)  # [r, c], [r, c]
    r, c = mm.shape
    if form == "neurips":
        gram_m = gm.T @ (gm @ mm)  # [c, r] @ ([r, c] @ [c, c]); r == c
    elif r <= c:
        gram_m = (mm @ gm.T) @ gm  # [r, r] @ [r, c]
    else:
        gram_m = mm @ (gm.T @ gm)  # [r, c] @ [c, c]
    return (alpha * mm - zeta * gram_m).reshape(m.shape) + write


def _implicit_step(m, g, write, alpha, zeta):
    """(α m + write)(I + ζ gᵀg)⁻¹ by a min(r, c)-sized Cholesky solve (Woodbury when r < c)."""
    dtype = jnp.promote_types(g.dtype, jnp.float32)  # bf16 leaves solve in float32
    rhs = _as_matrix(alpha * m.astype(dtype) + write.astype(dtype))  # [r, c]
    gm = _as_matrix(g.astype(dtype))  # [r, c]
    r, c = gm.shape
    if r < c:
        # (I + ζ gᵀg)⁻¹ = I − ζ gᵀ (I_r + ζ g gᵀ)⁻¹ g
        small = jnp.eye(r, dtype=dtype) + zeta * (gm @ gm.T)  # [r, r]
        out = rhs - zeta * jax.scipy.linalg.solve(small, gm @ rhs.T, assume_a="pos").T @ gm
    else:
        big = jnp.eye(c, dtype=dtype) + zeta * (gm.T @ gm)  # [c, c]
        out = jax.scipy.linalg.solve(big, rhs.T, assume_a="pos").T  # symmetric system
    return out.reshape(m.shape)


def scale_by_delta_momentum(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.9,
    *,
    form: Form = "implicit",
    erase_rate: float | None = None,
    preconditioner: optax.GradientTransformation | None = None,
    learning_rate_in: Literal["update", "momentum"] = "update",
) -> optax.GradientTransformationExtraArgs:
    """Delta Momentum direction (Eqs. 48–49, arXiv 2512.24695; docs/optimizers.md).

    With ζ the step size of the ℓ2 term and the write P g:

      implicit  (default):     m ← (α m + P g)(I + ζ gᵀg)⁻¹,   ζ = η_t
      arxiv     (Eq. 49):      m ← m (αI − ζ gᵀg) + P g,        ζ = 1
      neurips   (NeurIPS 22):  m ← (αI − ζ gᵀg) m + P g,        ζ = 1   (square leaves only)

    Mapping from the printed form m' ← m'(α − ∇Lᵀ∇L) − η P ∇L, W ← W + m': m' = −η m (the
    Gram term is quadratic in ∇L and does not change sign), so W ← W − η m.

    η enters the direction (through ζ = η_t, and through the write with
    `learning_rate_in="momentum"`), so this transform takes the learning rate, a float or a
    schedule evaluated at its own step count, as `scale_by_dgd` does.

    Args:
      learning_rate: η ≥ 0, a float or an optax schedule.
      alpha: retention of the memory, in [0, 1].
      form: "implicit", "arxiv" or "neurips"; see the module docstring.
      erase_rate: ζ ≥ 0; None gives η_t for "implicit" (the proximal weight 1/(2η) of
        Eq. 56) and 1 for the printed forms.
      preconditioner: a transform computing P·g; the identity when None.
      learning_rate_in: "update" (the write is P g and the caller applies −η_t) or
        "momentum" (Eq. 49: the write is η_t P g, and the direction is −m' of the printed
        form, to be applied with the rate 1).
    """
    _check_learning_rate(learning_rate)
    _check_unit_interval("alpha", alpha)
    if erase_rate is not None:
        _check_nonnegative("erase_rate", erase_rate)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got form={form!r}")
    if learning_rate_in not in ("update", "momentum"):
        raise ValueError(
            "learning_rate_in must be 'update' or 'momentum', "
            f"got learning_rate_in={learning_rate_in!r}"
        )
    precondition = optax.with_extra_args_support(
        optax.identity() if preconditioner is None else preconditioner
    )

    def check_shapes(tree):
        if form == "neurips":
            for leaf in jax.tree.leaves(tree):
                r, c = _matrix_shape(leaf.shape)
                if r != c:
                    raise ValueError(
                        "form='neurips' computes (αI − gᵀg) m (NeurIPS Eq. 22) and needs square "
                        f"matrices; got a leaf of shape {tuple(leaf.shape)} "
                        f"(matrix view [{r}, {c}])"
                    )

    def init_fn(params):
        check_shapes(params)
        return DeltaMomentumState(
            count=jnp.zeros([], jnp.int32),
            momentum=optax.tree.zeros_like(params),
            preconditioner=precondition.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        check_shapes(updates)
        written, p_state = precondition.update(updates, state.preconditioner, params, **extra_args)
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        if erase_rate is not None:
            zeta = erase_rate
        else:
            zeta = eta if form == "implicit" else 1.0
        if learning_rate_in == "momentum":
            written = jax.tree.map(lambda pg: eta * pg, written)

        def step(g, pg, m):
            if form == "implicit":
                new = _implicit_step(m, g, pg, alpha, zeta)
            else:
                new = _explicit_step(m, g, pg, alpha, zeta, form)
            return new.astype(m.dtype)

        momentum = jax.tree.map(step, updates, written, state.momentum)
        return momentum, DeltaMomentumState(
            count=optax.safe_increment(state.count), momentum=momentum, preconditioner=p_state
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def delta_momentum(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.9,
    *,
    form: Form = "implicit",
    erase_rate: float | None = None,
    preconditioner: optax.GradientTransformation | None = None,
    learning_rate_in: Literal["update", "momentum"] = "update",
) -> optax.GradientTransformationExtraArgs:
    """W ← W − η · m with the Delta Momentum memory (Eqs. 48–49, arXiv 2512.24695).

    With a constant rate the two placements of the rate give the same trajectory; with a
    schedule they differ (docs/optimizers.md, "Schedules"):

      "update" (optax convention, default):  m ← E_t(m, P g),        W ← W − η_t m
      "momentum" (Eq. 49):                   m' ← E_t(m', η_t P g),  W ← W − m'

    where E_t is the step of `form`. "momentum" keeps each gradient at the rate of the step
    that wrote it; "update" rescales the whole memory by the current rate.

    Args:
      learning_rate: η ≥ 0, a float or an optax schedule.
      alpha: retention of the memory, in [0, 1].
      form: "implicit" (default), "arxiv" (Eq. 49 as printed) or "neurips" (NeurIPS Eq. 22);
        see `scale_by_delta_momentum`.
      erase_rate: ζ ≥ 0; None: η_t for "implicit", 1 for the printed forms.
      preconditioner: a transform computing P·g; the identity when None.
      learning_rate_in: "update" (default) or "momentum", where η_t enters.
    """
    direction = scale_by_delta_momentum(
        learning_rate,
        alpha,
        form=form,
        erase_rate=erase_rate,
        preconditioner=preconditioner,
        learning_rate_in=learning_rate_in,
    )
    if learning_rate_in == "momentum":
        return optax.chain(direction, optax.scale(-1.0))
    return optax.chain(direction, optax.scale_by_learning_rate(learning_rate))
