"""Delta Gradient Descent, DGD, for linear maps given their inputs (Eqs. 56–57, arXiv 2512.24695).

DGD replaces gradient descent's dot-product inner objective with ℓ2 regression onto
u = −∇_y L (Eq. 56):

  W_{t+1} = argmin_W ½‖W x − u‖² + 1/(2η)‖W − W_t‖²
          = W_t (I − η′ x xᵀ) − η′ ∇_y L ⊗ x,          η′ = η / (1 + η‖x‖²)   (Eq. 57)

with the general-norm Sherman–Morrison step size (η/(1+η) for unit-norm x; docs/optimizers.md).

**Batches.** Expanding Eq. 56, ½‖W x − u‖² = ⟨W, G⟩ + ½ xᵀWᵀW x + const with G = ∇_y L ⊗ x the
parameter gradient. For a batch x_1..x_n the linear term is the parameter gradient G that
autodiff already returns (whatever the loss reduction), and the erase term is averaged over the
batch, C = (1/n) Σ_b x_b x_bᵀ, so η′ does not depend on the batch size:

  W_{t+1} = argmin_W ⟨W, G⟩ + ½ tr(W C Wᵀ) + 1/(2η)‖W − W_t‖² = (W_t − η G)(I + η C)⁻¹.

For n = 1 this is Eq. 57 exactly. As a direction for `scale_by_learning_rate`:
W_t − W_{t+1} = η (G + W_t C)(I + η C)⁻¹. The inverse is applied by a d_in×d_in solve, or by
Woodbury with an n×n solve when n < d_in.

**Layout.** `layout="in_out"` (default) is Flax's kernel [d_in, d_out] with y = x K; the
formulas apply to W = Kᵀ. `layout="out_in"` is the paper's W ∈ R^{d_out×d_in} with y = W x.

**Inputs.** `update(..., params=params, layer_inputs=inputs)`: `inputs` is a pytree with the
structure of params holding, for each 2-D weight, its input x as [d_in] or [..., d_in] (leading
axes are flattened into the batch), and None for every other leaf; leaves with None take a
plain gradient step.
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nestlearn.optim.momentum_memory import _check_learning_rate


class DGDState(NamedTuple):
    """State of `scale_by_dgd`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken (evaluates a learning-rate schedule)


def _dgd_direction(weight, grad, x, eta, layout):
    """(G + W C)(I + η C)⁻¹ in the paper's layout; weight/grad in `layout`, x [..., d_in]."""
    shape = weight.shape
    if layout == "in_out":
        weight, grad = weight.T, grad.T
    d_in = weight.shape[1]
    if x.shape[-1] != d_in:
        raise ValueError(
            f"layer_inputs for a weight of shape {shape} ({layout=}) need last dim {d_in}, "
            f"got inputs of shape {x.shape}"
        )
    dtype = jnp.promote_types(grad.dtype, jnp.float32)  # bf16 leaves solve in float32
    x = x.reshape(-1, d_in).astype(dtype)  # [n, d_in]
    n = x.shape[0]
    eta = jnp.asarray(eta, dtype)
    residual = grad.astype(dtype) + (weight.astype(dtype) @ x.T) @ x / n  # G + W C: [d_out, d_in]
    if n < d_in:
        # (I + (η/n) XᵀX)⁻¹ = I − (η/n) Xᵀ (I_n + (η/n) X Xᵀ)⁻¹ X
        small = jnp.eye(n, dtype=dtype) + (eta / n) * (x @ x.T)  # [n, n]
        correction = jnp.linalg.solve(small, x) * (eta / n)  # [n, d_in]
        direction = residual - (residual @ x.T) @ correction
    else:
        big = jnp.eye(d_in, dtype=dtype) + (eta / n) * (x.T @ x)  # [d_in, d_in]
        direction = jnp.linalg.solve(big, residual.T).T  # symmetric system
    if layout == "in_out":
        direction = direction.T
    return direction.astype(grad.dtype)


def scale_by_dgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    layout: Literal["in_out", "out_in"] = "in_out",
) -> optax.GradientTransformationExtraArgs:
    """DGD direction (G + W C)(I + η C)⁻¹ (Eq. 57, arXiv 2512.24695); see the module docstring.

    η enters the direction itself (the erase and the normalization η′), so this transform takes
    the learning rate (a float or a schedule evaluated at its own step count) and `dgd` chains
    `scale_by_learning_rate` with the same value. Mapping from the printed form
    W ← W(I − η′ x xᵀ) − η′ ∇_yL ⊗ x: W_{t+1} = W_t − η · direction.

    Args:
      learning_rate: η, a float or an optax schedule.
      layout: "in_out" (Flax kernels [d_in, d_out]) or "out_in" (paper, [d_out, d_in]).
    """
    _check_learning_rate(learning_rate)
    if layout not in ("in_out", "out_in"):
        raise ValueError(f"layout must be 'in_out' or 'out_in', got layout={layout!r}")

    def init_fn(params):
        del params
        return DGDState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None, *, layer_inputs=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "dgd needs params: call update(grads, state, params, layer_inputs=...)"
            )
        if layer_inputs is None:
            raise ValueError(
                "dgd needs layer_inputs: a pytree like params with x for each 2-D weight "
                "and None elsewhere"
            )
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def leaf(x, g, w):
            if x is None:
                return g
            if w.ndim != 2:
                raise ValueError(
                    f"layer_inputs given for a leaf of shape {w.shape}; DGD needs 2-D weights"
                )
            return _dgd_direction(w, g, x, eta, layout)

        direction = jax.tree.map(leaf, layer_inputs, updates, params, is_leaf=lambda x: x is None)
        return direction, DGDState(count=optax.safe_increment(state.count))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    layout: Literal["in_out", "out_in"] = "in_out",
) -> optax.GradientTransformationExtraArgs:
    """Delta Gradient Descent (Eqs. 56–57, arXiv 2512.24695): W ← (W − η G)(I + η C)⁻¹.

    Args:
      learning_rate: η, a float or an optax schedule.
      layout: "in_out" (Flax kernels [d_in, d_out]) or "out_in" (paper, [d_out, d_in]).
    """
    return optax.chain(
        scale_by_dgd(learning_rate, layout=layout), optax.scale_by_learning_rate(learning_rate)
    )
