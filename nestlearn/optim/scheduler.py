"""The level scheduler: a tuple of `Level`s as one optax transform and one jitted train step.

Each level owns a disjoint group of parameter leaves, updates them with its own optax rule, and
does so once every `period` steps. Level ℓ with period C follows Eq. 71, arXiv 2512.24695, on
the training-step clock:

    θ_{i+1} = θ_i − rule( Σ_{s=i−C+1}^{i} g_s )   if i ≡ 0 (mod C),      θ_{i+1} = θ_i otherwise,

with steps i counted from 1 and the half-open chunk of the C gradients since the last update,
so each gradient counts exactly once (docs/optimizers.md, M3). With `accumulate="mean"`
the sum is divided by C. Between its updates a level emits zero updates and its rule's state
(momentum, Adam moments, step count) does not advance: the rule sees one gradient per chunk.

The decision to apply is a `lax.cond` on an int32 counter kept in the state, so the whole update
traces once and compiles once; the rule only runs on the steps where its level applies.
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from nestlearn.core.level import Level, assign_levels, check_levels

__all__ = [
    "LevelState",
    "NestedState",
    "TrainStep",
    "UpdateInfo",
    "guarded_update",
    "level_stats",
    "make_train_step",
    "nested",
]


class LevelState(NamedTuple):
    """State of one level inside `nested`."""

    count: jax.Array  # shape=(), int32: steps accumulated since the last update, in [0, period)
    applied: jax.Array  # shape=(), int32: updates this level has applied so far
    acc: Any  # gradient sum since the last update over the level's leaves (float32 or wider;
    #           optax.MaskedNode on other levels' leaves); None when period == 1
    rule_state: Any  # the level rule's state over the level's leaves; advances only on updates


class NestedState(NamedTuple):
    """State of the transform returned by `nested`."""

    levels: dict[str, LevelState]  # one LevelState per level, keyed by level name


def _is_masked(node: Any) -> bool:
    return isinstance(node, optax.MaskedNode)


def _restrict(leaves: list[Any], owners: list[str], name: str, treedef: Any) -> Any:
    """The tree with the leaves of level `name` kept and every other leaf an `optax.MaskedNode`."""
    kept = [leaf if owner == name else optax.MaskedNode() for leaf, owner in zip(leaves, owners)]
    return jax.tree.unflatten(treedef, kept)


def _acc_dtype(dtype: Any) -> Any:
    return jnp.promote_types(dtype, jnp.float32)


def _level_update(
    level: Level,
    rule: optax.GradientTransformationExtraArgs,
    grads: Any,
    state: LevelState,
    params: Any,
    extra_args: dict[str, Any],
) -> tuple[Any, LevelState]:
    """One step of one level on its own (masked) gradient tree."""
    applied = optax.safe_increment(state.applied)
    if level.period == 1:
        updates, rule_state = rule.update(grads, state.rule_state, params, **extra_args)
        return updates, LevelState(state.count, applied, None, rule_state)

    acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), state.acc, grads)
    emit = state.count == level.period - 1
    divisor = level.period if level.accumulate == "mean" else 1

    def apply(acc, rule_state):
        chunk = jax.tree.map(lambda a, g: (a / divisor).astype(g.dtype), acc, grads)
        updates, new_rule_state = rule.update(chunk, rule_state, params, **extra_args)
        new_rule_state = jax.tree.map(
            lambda new, old: jnp.asarray(new, old.dtype), new_rule_state, rule_state
        )
        return updates, new_rule_state, optax.tree.zeros_like(acc)

    def hold(acc, rule_state):
        shapes = jax.eval_shape(apply, acc, rule_state)[0]
        return optax.tree.zeros_like(shapes), rule_state, acc

    updates, rule_state, acc = jax.lax.cond(emit, apply, hold, acc, state.rule_state)
    count = jnp.where(emit, 0, state.count + 1).astype(jnp.int32)
    applied = jnp.where(emit, applied, state.applied)
    return updates, LevelState(count, applied, acc, rule_state)


def nested(levels: Sequence[Level]) -> optax.GradientTransformationExtraArgs:
    """One optax transform that runs every level at its own period (Eq. 71, arXiv 2512.24695).

    The parameters are partitioned by level (`nestlearn.core.assign_levels`); each level's rule
    sees a tree of the parameters' structure in which the other levels' leaves are
    `optax.MaskedNode`s (as inside `optax.masked`). A level with period k accumulates its
    gradients and, on steps k, 2k, … (counting from 1), applies its rule to their sum (or mean);
    on the other steps it emits zeros and its rule state stays as it was. Extra keyword
    arguments given to `update` are forwarded to every level's rule (plain
    `optax.GradientTransformation` rules ignore them).

    Example:
      >>> import optax
      >>> from nestlearn.core import Level
      >>> tx = nested((
      ...     Level("fast", r"bias$", optax.sgd(1e-2)),
      ...     Level("slow", None, optax.adam(1e-3), period=4),
      ... ))

    Args:
      levels: the levels; every parameter leaf must belong to exactly one of them.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is a `NestedState`.

    Raises:
      ValueError: on a bad spec (`check_levels`) here, and on `init`/`update` when a parameter
        leaf is claimed by no level or by two, or a level claims no leaf (the error names them).
    """
    levels = check_levels(levels)
    rules = {level.name: optax.with_extra_args_support(level.rule) for level in levels}

    def init_fn(params):
        owners = assign_levels(levels, params)
        leaves, treedef = jax.tree.flatten(params)
        states = {}
        for level in levels:
            own = _restrict(leaves, owners, level.name, treedef)
            acc = None
            if level.period > 1:
                acc = jax.tree.map(lambda p: jnp.zeros(p.shape, _acc_dtype(p.dtype)), own)
            states[level.name] = LevelState(
                count=jnp.zeros([], jnp.int32),
                applied=jnp.zeros([], jnp.int32),
                acc=acc,
                rule_state=rules[level.name].init(own),
            )
        return NestedState(states)

    def update_fn(updates, state, params=None, **extra_args):
        owners = assign_levels(levels, updates if params is None else params)
        leaves, treedef = jax.tree.flatten(updates)
        param_leaves = None if params is None else jax.tree.leaves(params)
        per_level = {}
        new_states = {}
        for level in levels:
            own_params = None
            if param_leaves is not None:
                own_params = _restrict(param_leaves, owners, level.name, treedef)
            level_updates, new_states[level.name] = _level_update(
                level,
                rules[level.name],
                _restrict(leaves, owners, level.name, treedef),
                state.levels[level.name],
                own_params,
                extra_args,
            )
            per_level[level.name] = jax.tree.leaves(level_updates, is_leaf=_is_masked)
        merged = [per_level[owner][i] for i, owner in enumerate(owners)]
        return jax.tree.unflatten(treedef, merged), NestedState(new_states)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def level_stats(state: NestedState) -> dict[str, jax.Array]:
    """How many updates each level has applied, for logging.

    Args:
      state: the state of a `nested` transform.

    Returns:
      `{level name: int32 scalar}`; after step s (counting from 1) a level with period k has
      applied s // k updates.
    """
    return {name: level_state.applied for name, level_state in state.levels.items()}


class UpdateInfo(NamedTuple):
    """What `guarded_update` did."""

    finite: jax.Array  # shape=(), bool: loss and every gradient finite (else nothing changed)
    level_finite: jax.Array  # shape=(num_levels,), bool: each level's gradients finite
    grad_norm: jax.Array  # shape=(), float32: global gradient norm before clipping
    update_norms: jax.Array  # shape=(num_levels,), float32: ‖Δθ‖ per level, 0 if held/skipped


def _level_norms(updates: Any, owners: list[str], names: list[str]) -> jax.Array:
    """[num_levels] float32: ‖updates‖ over the leaves of each level, in the order of `names`."""
    squares = {name: jnp.zeros((), jnp.float32) for name in names}
    for u, owner in zip(jax.tree.leaves(updates), owners):
        squares[owner] = squares[owner] + jnp.sum(jnp.square(u.astype(jnp.float32)))
    return jnp.sqrt(jnp.stack([squares[name] for name in names]))


def guarded_update(
    levels: Sequence[Level],
    tx: optax.GradientTransformation,
    grads: Any,
    opt_state: Any,
    params: Any,
    *,
    loss: jax.Array,
    grad_clip: float = 0.0,
) -> tuple[Any, Any, UpdateInfo]:
    """One update of the levels' transform `tx` (`nested(levels)`), clipped and guarded.

    The gradients are clipped to global norm `grad_clip` (0: off); when `loss` or any gradient
    is non-finite, params and optimizer state are returned unchanged (one `lax.cond` branch
    runs, no host round trip). The update of every train step of the library: `make_train_step`
    and `nestlearn.train.build_train_step`.

    Returns:
      (params, opt_state, UpdateInfo), the levels in the order of `levels`.
    """
    owners = assign_levels(levels, params)
    names = [level.name for level in levels]
    leaf_finite = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
    level_finite = jnp.stack(
        [jnp.all(jnp.stack([f for f, o in zip(leaf_finite, owners) if o == n])) for n in names]
    )
    finite = jnp.isfinite(loss) & jnp.all(level_finite)
    grad_norm = optax.tree.norm(grads)
    if grad_clip > 0:
        scale = jnp.minimum(1.0, grad_clip / jnp.maximum(grad_norm, 1e-12))
        grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)

    def apply():
        updates, new_state = tx.update(grads, opt_state, params)
        norms = _level_norms(updates, owners, names)
        return optax.apply_updates(params, updates), new_state, norms

    def hold():
        return params, opt_state, jnp.zeros((len(names),), jnp.float32)

    params, opt_state, norms = jax.lax.cond(finite, apply, hold)
    return params, opt_state, UpdateInfo(finite, level_finite, grad_norm, norms)


class TrainStep(NamedTuple):
    """A jitted train step over a nested stack, and the initializer of its optimizer state."""

    init: Callable[[Any], NestedState]  # params -> optimizer state
    step: Callable[..., tuple]  # (params, opt_state, batch, *extra) -> (params, opt_state,
    #                             loss[, aux])


def make_train_step(
    loss_fn: Callable[..., Any],
    levels: Sequence[Level],
    *,
    has_aux: bool = False,
    donate: bool = True,
    grad_clip: float = 0.0,
) -> TrainStep:
    """Builds a jitted train step from a loss and a tuple of levels.

    Example:
      >>> train = make_train_step(loss_fn, levels)
      >>> opt_state = train.init(params)
      >>> for batch in batches:
      ...     params, opt_state, loss = train.step(params, opt_state, batch)

    Args:
      loss_fn: `loss_fn(params, batch, *extra) -> loss` (a scalar), or `-> (loss, aux)` when
        `has_aux`; differentiated with respect to `params`.
      levels: the levels of the stack, turned into one transform by `nested`.
      has_aux: whether `loss_fn` returns `(loss, aux)`; the step then returns `aux` last.
      donate: whether the step donates `params` and `opt_state` (the arguments passed in must
        not be used after the call).
      grad_clip: global-norm clipping of the gradients before the levels; 0 (default) is off.

    Returns:
      `TrainStep(init, step)`: `init(params)` makes the optimizer state and
      `step(params, opt_state, batch, *extra)` returns `(params, opt_state, loss)`, or
      `(params, opt_state, loss, aux)` with `has_aux`. `*extra` is passed on to `loss_fn`. A step
      whose loss or gradients are non-finite leaves params and optimizer state unchanged
      (`guarded_update`).
    """
    levels = check_levels(levels)
    tx = nested(levels)
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

    def step(params, opt_state, batch, *extra):
        out, grads = value_and_grad(params, batch, *extra)
        loss = out[0] if has_aux else out
        params, opt_state, _ = guarded_update(
            levels, tx, grads, opt_state, params, loss=loss, grad_clip=grad_clip
        )
        if has_aux:
            return params, opt_state, loss, out[1]
        return params, opt_state, out

    return TrainStep(init=tx.init, step=jax.jit(step, donate_argnums=(0, 1) if donate else ()))
