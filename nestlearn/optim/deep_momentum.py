"""Deep Momentum Gradient Descent, DMGD (Eq. 50, arXiv 2512.24695; NeurIPS Eq. 23).

The momentum is a small MLP memory m_φ trained online by its own inner objective:

  φ_{i+1} = α φ_i − ζ ∇_φ L⁽²⁾(φ_i; keys, values),    W_{i+1} = W_i − lr · s_i · m_{φ_{i+1}}(k_i)

To scale to real models the memory is **coordinate-wise with shared weights**: it reads a short
feature vector per parameter coordinate and writes one number per coordinate, so its cost is
linear in the parameter count and its size does not depend on it. One φ per leaf (each weight
matrix, bias, … learns its own map): leaves differ in gradient statistics, and the cost of a
separate φ is a few dozen floats per leaf.

Per-coordinate features (u_i of Eq. 50) are k_i = [g_i, μ_i] / s_i with μ_i = β μ_{i−1} + g_i a
linear momentum level that feeds the memory and s_i = rms(μ_i) + ε a per-leaf scale (so one φ
sees O(1) inputs whatever the leaf's gradient scale; the output is multiplied back by s_i).
The memory is m_φ(k) = a·k + w₂ · tanh(W₁ k + b₁), initialised at a = (0, 1 − β), w₂ = 0:
before any inner step DMGD is exactly EMA momentum, lr · (1 − β) Σ β^j g.

Inner objectives (key k_{i−1}, the features before g_i arrived; value v = g_i / s_i):

- "l2" (default): L⁽²⁾ = ½ mean_c (m_φ(k_{i−1,c}) − v_c)², the memory regresses each new
  gradient on the per-coordinate history, so its read-out is a learned prediction of the next
  gradient — a learned, denoised momentum. It is the default because it is bounded below: the
  optimum exists for any α, so the MLP weights stay finite.
- "dot": L⁽²⁾ = −mean_c m_φ(k_{i−1,c}) v_c, the printed dot-product objective (Eq. 50 prints
  ⟨m(u_i), 1⟩; here the product is taken with the value v, as in the momentum objective
  ⟨m, ∇L⟩ of Eq. 13). Its gradient is the hypergradient of the loss through the last update,
  ∂L(W_i)/∂φ ∝ −⟨∂m_φ(k_{i−1})/∂φ, g_i⟩. It is linear in the memory's output, unbounded below,
  and only the retention α < 1 keeps φ finite.

The inner step is skipped at the first update (there is no previous key yet).
"""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nestlearn.optim.momentum_memory import (
    _check_learning_rate,
    _check_nonnegative,
    _check_unit_interval,
)

_NUM_FEATURES = 2  # [g, μ]


class MemoryMLP(NamedTuple):
    """Parameters φ of the coordinate-wise memory m_φ(k) = a·k + w2 · tanh(W1 k + b1)."""

    linear: jax.Array  # a: [f]; float32 (float64 for float64 leaves)
    w1: jax.Array  # W1: [f, hidden]; same dtype
    b1: jax.Array  # b1: [hidden]; same dtype
    w2: jax.Array  # w2: [hidden]; same dtype


class DeepMomentumState(NamedTuple):
    """State of `scale_by_deep_momentum`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken
    momentum: optax.Updates  # μ, the linear level feeding the memory: like params
    prev_gradient: optax.Updates  # g_{i−1}: like params
    memory: optax.Params  # one MemoryMLP per leaf


def memory_read(phi: MemoryMLP, keys: jax.Array) -> jax.Array:
    """m_φ(k) for a batch of coordinates: keys [n, f] -> [n]."""
    hidden = jnp.tanh(keys @ phi.w1 + phi.b1)  # [n, hidden]
    return keys @ phi.linear + hidden @ phi.w2


def _compute_dtype(dtype):
    """The memory computes in at least float32 (bf16 leaves), float64 for float64 leaves."""
    return jnp.promote_types(dtype, jnp.float32)


def _features(g, m, scale):
    """Leaves [...] -> per-coordinate keys [n, f] in the compute dtype."""
    keys = jnp.stack([g.reshape(-1), m.reshape(-1)], axis=-1)
    return keys.astype(_compute_dtype(g.dtype)) / scale


def _rms_scale(m, eps):
    return jnp.sqrt(jnp.mean(jnp.square(m.astype(_compute_dtype(m.dtype))))) + eps


def scale_by_deep_momentum(
    alpha: float = 0.999,
    beta: float = 0.9,
    inner_lr: float = 0.01,
    *,
    hidden: int = 8,
    objective: Literal["l2", "dot"] = "l2",
    eps: float = 1e-8,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """DMGD direction (Eq. 50, arXiv 2512.24695); see the module docstring.

    Mapping from the printed form W ← W + m_{i+1}(u_i), φ ← α φ − η ∇L⁽²⁾: the memory here
    outputs the +gradient direction (m_NeurIPS = −lr · s · m_φ), and `scale_by_learning_rate`
    applies −lr.

    Args:
      alpha: retention of the memory's weights φ, in [0, 1].
      beta: decay of the linear momentum feature μ, in [0, 1].
      inner_lr: ζ, the step size of the memory's inner gradient step; 0 freezes φ at its
        initialisation (EMA momentum).
      hidden: width of the memory's hidden layer.
      objective: "l2" (default) or "dot"; see the module docstring.
      eps: guard of the per-leaf scale s.
      seed: seeds the initialisation of W1 (one fold per leaf).
    """
    _check_unit_interval("alpha", alpha)
    _check_unit_interval("beta", beta)
    _check_nonnegative("inner_lr", inner_lr)
    if objective not in ("l2", "dot"):
        raise ValueError(f"objective must be 'l2' or 'dot', got objective={objective!r}")
    if not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"hidden must be a positive int, got {hidden=}")

    def inner_loss(phi, keys, values):
        read = memory_read(phi, keys)
        if objective == "l2":
            return 0.5 * jnp.mean(jnp.square(read - values))
        return -jnp.mean(read * values)

    def init_memory(index, dtype):
        key = jax.random.fold_in(jax.random.key(seed), index)
        dtype = _compute_dtype(dtype)
        return MemoryMLP(
            linear=jnp.stack([jnp.zeros([], dtype), jnp.asarray(1.0 - beta, dtype)]),
            w1=jax.random.normal(key, (_NUM_FEATURES, hidden), dtype) / jnp.sqrt(_NUM_FEATURES),
            b1=jnp.zeros((hidden,), dtype),
            w2=jnp.zeros((hidden,), dtype),
        )

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        memory = jax.tree.unflatten(
            treedef, [init_memory(i, leaf.dtype) for i, leaf in enumerate(leaves)]
        )
        return DeepMomentumState(
            count=jnp.zeros([], jnp.int32),
            momentum=optax.tree.zeros_like(params),
            prev_gradient=optax.tree.zeros_like(params),
            memory=memory,
        )

    def leaf_update(g, m_prev, g_prev, phi, first):
        m = (beta * m_prev + g).astype(m_prev.dtype)
        scale = _rms_scale(m, eps)
        keys_prev = _features(g_prev, m_prev, scale)  # [n, f]
        values = g.reshape(-1).astype(scale.dtype) / scale  # [n]
        grad_phi = jax.grad(inner_loss)(phi, keys_prev, values)
        phi_new = jax.tree.map(
            lambda p, d: (alpha * p - inner_lr * d).astype(p.dtype), phi, grad_phi
        )
        phi_new = jax.tree.map(lambda new, old: jnp.where(first, old, new), phi_new, phi)
        direction = scale * memory_read(phi_new, _features(g, m, scale))
        return direction.reshape(g.shape).astype(g.dtype), m, phi_new

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        first = state.count == 0
        flat_g, treedef = jax.tree.flatten(updates)
        flat_m = treedef.flatten_up_to(state.momentum)
        flat_prev = treedef.flatten_up_to(state.prev_gradient)
        flat_phi = treedef.flatten_up_to(state.memory)
        results = [
            leaf_update(g, m, gp, phi, first)
            for g, m, gp, phi in zip(flat_g, flat_m, flat_prev, flat_phi)
        ]
        direction = treedef.unflatten([r[0] for r in results])
        new_state = DeepMomentumState(
            count=optax.safe_increment(state.count),
            momentum=treedef.unflatten([r[1] for r in results]),
            prev_gradient=jax.tree.map(
                lambda g, p: g.astype(p.dtype), updates, state.prev_gradient
            ),
            memory=treedef.unflatten([r[2] for r in results]),
        )
        return direction, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def deep_momentum(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 0.999,
    beta: float = 0.9,
    inner_lr: float = 0.01,
    *,
    hidden: int = 8,
    objective: Literal["l2", "dot"] = "l2",
    eps: float = 1e-8,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """DMGD (Eq. 50, arXiv 2512.24695): W ← W − lr · s · m_φ(k) with an online-trained MLP memory.

    Args: as `scale_by_deep_momentum`, plus `learning_rate` (a float or an optax schedule).
    The read-out has the scale of one gradient (an EMA), so use a learning rate about
    1/(1 − β) times that of `optax.sgd(..., momentum=β)`.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        scale_by_deep_momentum(
            alpha, beta, inner_lr, hidden=hidden, objective=objective, eps=eps, seed=seed
        ),
        optax.scale_by_learning_rate(learning_rate),
    )
