"""Delta Momentum: momentum with an ℓ2 inner objective (Eqs. 48–49, arXiv 2512.24695).

Layout: every leaf is read as a matrix [r, c] = [prod(leading dims), last dim]; a 1-D leaf is a
row vector [1, d] and a scalar is [1, 1]. The Gram matrix gᵀg therefore acts on the *last* axis.
In the paper's column convention (W ∈ R^{d_out×d_in}, y = W x) the last axis is d_in, so the
erase acts on the key (input) space as Eq. 49 intends. A Flax kernel is stored [d_in, d_out]
(y = x K); for it the same formula erases along d_out.
"""

from typing import Literal, NamedTuple

import jax
import optax

from nestlearn.optim.momentum_memory import _check_unit_interval


class DeltaMomentumState(NamedTuple):
    """State of `scale_by_delta_momentum`."""

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


def _gram_product(m, g, form):
    """m gᵀ g (arxiv) or gᵀ g m (neurips) in the matrix view, never forming the larger Gram."""
    mm, gm = _as_matrix(m), _as_matrix(g)
    r, c = mm.shape
    if form == "neurips":
        out = gm.T @ (gm @ mm)  # [c, r] @ ([r, c] @ [c, c]); r == c
    elif r <= c:
        out = (mm @ gm.T) @ gm  # [r, r] @ [r, c]
    else:
        out = mm @ (gm.T @ gm)  # [r, c] @ [c, c]
    return out.reshape(m.shape)


def scale_by_delta_momentum(
    alpha: float = 0.9,
    *,
    form: Literal["arxiv", "neurips"] = "arxiv",
    erase_rate: float = 1.0,
    preconditioner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Delta Momentum direction (Eq. 49, arXiv 2512.24695; NeurIPS Eq. 22).

    The momentum memory is trained by the ℓ2 objective ½‖m gᵀ − P‖² (Eq. 48) instead of a dot
    product, which adds a gradient-dependent decay:

      arxiv   (Eq. 49):         m ← m (α I − ζ gᵀ g) + P g
      neurips (NeurIPS Eq. 22): m ← (α I − ζ gᵀ g) m + P g   (square leaves only)

    with ζ = `erase_rate` (1 as printed). The product m gᵀ g is evaluated as (m gᵀ) g when the
    matrix view has no more rows than columns and as m (gᵀ g) otherwise, so the larger of the
    two Gram matrices is never formed. Mapping from the printed form
    m' ← m'(α − ∇Lᵀ∇L) − η P ∇L, W ← W + m': m' = −η m (the Gram term is quadratic in ∇L and
    does not change sign), so W ← W − η m.

    The recursion is stable while ζ σ_max(g)² ≤ 1 + α; clip the gradient (e.g.
    `optax.clip_by_global_norm`) or lower `erase_rate` when gradients are large.

    Args:
      alpha: retention of the memory, in [0, 1].
      form: "arxiv" (right multiplication, any shape) or "neurips" (left multiplication,
        square matrix views only; a ValueError names any other leaf shape).
      erase_rate: ζ, the step size of the ℓ2 term; 1 as printed.
      preconditioner: a transform computing P·g; the identity when None.
    """
    _check_unit_interval("alpha", alpha)
    if form not in ("arxiv", "neurips"):
        raise ValueError(f"form must be 'arxiv' or 'neurips', got form={form!r}")
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
            momentum=optax.tree.zeros_like(params),
            preconditioner=precondition.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        check_shapes(updates)
        written, p_state = precondition.update(updates, state.preconditioner, params, **extra_args)

        def step(g, pg, m):
            erased = alpha * m - erase_rate * _gram_product(m, g, form)
            return (erased + pg).astype(m.dtype)

        momentum = jax.tree.map(step, updates, written, state.momentum)
        return momentum, DeltaMomentumState(momentum=momentum, preconditioner=p_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def delta_momentum(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.9,
    *,
    form: Literal["arxiv", "neurips"] = "arxiv",
    erase_rate: float = 1.0,
    preconditioner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """W ← W − lr · m with the Delta Momentum memory (Eq. 49, arXiv 2512.24695).

    Args:
      learning_rate: a float or an optax schedule.
      alpha: retention of the memory, in [0, 1].
      form: "arxiv" or "neurips"; see `scale_by_delta_momentum`.
      erase_rate: ζ, the step size of the ℓ2 term; 1 as printed.
      preconditioner: a transform computing P·g; the identity when None.
    """
    return optax.chain(
        scale_by_delta_momentum(
            alpha, form=form, erase_rate=erase_rate, preconditioner=preconditioner
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
