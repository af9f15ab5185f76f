"""The train state, the jitted train step and the eval step of a language model.

The model is split once into its graph, its slow weights (`nnx.Param`) and the rest of its state
(fast `MemoryState` variables and anything else); the steps are pure functions of these pieces.
The loss is next-token cross-entropy (`lm_loss`), each window starting from the model's initial
memory state, or any `loss(model, *batch) -> (loss, metrics)` (e.g. the answer loss of
`nestlearn.eval.answer_training`): the trainer, the LM studies and the answer tasks (S-NIAH,
recall) train through this one step.

One train step: loss and gradients; global-norm clipping; the nested levels' update
(`nestlearn.optim.scheduler.nested`); and a guard: when the loss or any gradient is non-finite,
params and optimizer state are kept as they were (`lax.cond`, no host round trip), the step is
counted as skipped, and which levels had non-finite gradients is reported.

Sharding (`mesh=`, see `nestlearn.parallel`): the steps are compiled with in/out shardings —
params and optimizer state by the logical partitioning rules, the batch split over the data axes
(so each sequence's in-context memory state lives, and is updated, where its sequence is), the
metrics replicated — and the train state is donated. GSPMD inserts the gradient all-reduce; the
result equals the single-device step up to the order of floating-point reductions. The steps are
traced with the mesh as the context mesh (`nestlearn.parallel.mesh_context`), so Pallas kernels
that the model calls through `nestlearn.parallel.sharded_kernel` run under `jax.shard_map`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from nestlearn.core import Level, assign_levels, tree_paths
from nestlearn.optim.scheduler import guarded_update, level_stats, nested
from nestlearn.parallel import (
    batch_sharding,
    compute_shardings,
    mesh_context,
    param_shardings,
    replicated,
    tree_shardings,
)
from nestlearn.train.instruments import STEP_UPDATE_NORM

__all__ = [
    "TrainState",
    "build_eval_step",
    "build_train_step",
    "cross_entropy",
    "lm_loss",
    "split_model",
    "state_shardings",
]


class TrainState(NamedTuple):
    """Everything a train step reads and writes; all of it goes into the checkpoint."""

    params: Any  # nnx.State of the model's nnx.Param leaves (slow weights, meta-learned inits)
    opt_state: Any  # NestedState of the levels (one LevelState per level)
    step: jax.Array  # shape=(), int32: optimizer steps taken (skipped ones included)
    consecutive_nonfinite: jax.Array  # shape=(), int32: skipped steps in a row up to `step`
    skipped: jax.Array  # shape=(), int32: skipped steps in total
    rng: jax.Array  # shape=(2,), uint32: raw key data of the run's base PRNG key

    @classmethod
    def create(cls, params: Any, levels: Sequence[Level], *, seed: int) -> TrainState:
        """The state before the first step: each level's rule initialised, counters at zero.

        Each counter is its own array: a train step donates the state, and one buffer cannot be
        donated twice.
        """
        counters = [jnp.zeros((), jnp.int32) for _ in range(3)]
        return cls(params, nested(levels).init(params), *counters, jax.random.PRNGKey(seed))


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """A `NamedSharding` per leaf of `state` (arrays or `jax.ShapeDtypeStruct`s) on `mesh`.

    Params follow `nestlearn.parallel.PARAM_RULES`; optimizer-state leaves follow the parameter
    they mirror; counters and the PRNG key are replicated.
    """
    return tree_shardings(state, state.params, mesh)


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`(graphdef, params, rest)`: the model's `nnx.Param` leaves and everything else."""
    return nnx.split(model, nnx.Param, ...)


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy in nats; logits [b, t, v], targets [b, t] int32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return losses.mean()


def _memory_stats(state: Any) -> dict[str, jax.Array]:
    """Root mean square of the final in-context memory of each layer (KV caches left out)."""
    from nestlearn.models import KVCache

    layers = getattr(state, "layers", None) or ()
    stats = {}
    for i, layer in enumerate(layers):
        leaves = [
            x
            for x in jax.tree.leaves(
                jax.tree.map(
                    lambda n: None if isinstance(n, KVCache) else n,
                    layer,
                    is_leaf=lambda n: isinstance(n, KVCache),
                )
            )
            if jnp.issubdtype(x.dtype, jnp.floating) and x.size
        ]
        if leaves:
            total = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
            stats[f"memory_rms/layer_{i}"] = jnp.sqrt(total / sum(x.size for x in leaves))
    return stats


def lm_loss(model: nnx.Module, inputs: jax.Array, targets: jax.Array):
    """(mean next-token cross-entropy, `memory_rms/layer_<i>` of the final memory state) of a
    fresh window; inputs, targets [b, t] int32. The default loss of `build_train_step`."""
    logits, memory = model(inputs)
    return cross_entropy(logits, targets), _memory_stats(memory)


def _batch_args(loss: Callable) -> int:
    """How many batch arrays `loss(model, *batch)` takes."""
    params = list(inspect.signature(loss).parameters.values())[1:]
    return sum(p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD for p in params)


def _short(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def _check_tree(got: Any, want: Any, got_name: str, want_name: str) -> None:
    """ValueError naming both trees' structures (and their differing paths or shapes) when `got`
    does not have the structure and leaf shapes of `want`; runs at trace time."""
    got_def, want_def = jax.tree.structure(got), jax.tree.structure(want)
    if got_def == want_def:
        bad = [
            f"{path}: {jnp.shape(a)} vs {jnp.shape(b)}"
            for path, a, b in zip(tree_paths(got), jax.tree.leaves(got), jax.tree.leaves(want))
            if jnp.shape(a) != jnp.shape(b)
        ]
        if not bad:
            return
        detail = f"leaf shapes differ ({got_name} vs {want_name}): {bad[:5]}"
    else:
        got_paths, want_paths = tree_paths(got), tree_paths(want)
        detail = (
            f"{got_name}-only paths {sorted(set(got_paths) - set(want_paths))[:5]}, "
            f"{want_name}-only paths {sorted(set(want_paths) - set(got_paths))[:5]}"
        )
    raise ValueError(
        f"train_step: {got_name} does not match {want_name}; {detail}. {got_name} has "
        f"structure {_short(str(got_def))}; {want_name} has {_short(str(want_def))}"
    )


def _gather_fsdp(params: nnx.State | None, mesh: Mesh | None) -> Callable:
    """Params → params constrained to their compute sharding (gathered over `fsdp`).

    The identity without a mesh. On a mesh the constraint keeps the activations split over the
    batch axes and makes the gradients reduce-scatter onto the storage sharding
    (`nestlearn.parallel.compute_shardings`).
    """
    if mesh is None:
        return lambda p: p
    shardings = compute_shardings(params, mesh)
    return lambda p: jax.lax.with_sharding_constraint(p, shardings)


def build_train_step(
    levels: tuple[Level, ...],
    *,
    params: nnx.State,
    grad_clip: float,
    graphdef: nnx.GraphDef,
    mesh: Mesh | None = None,
    loss: Callable[..., tuple[jax.Array, dict]] = lm_loss,
) -> Callable:
    """The jitted `train_step(state, rest, *batch) -> (state, metrics)`.

    `state` (a `TrainState` whose `opt_state` is `nested(levels).init(params)`) is donated;
    `rest` is the model's non-`nnx.Param` state; `batch` the arrays `loss(model, *batch)` takes
    after the model (`lm_loss`: inputs, targets). With `mesh`, the step is compiled with the
    shardings of `state_shardings` for the state (in and out), every batch array split over
    `nestlearn.parallel.BATCH_AXES`, and `rest` and the metrics replicated.
    `metrics` holds `loss`, `grad_norm`, `finite` (bool), `level_finite` ([num_levels] bool, in
    the order of `levels`), `level/<name>/updates` (updates each level has applied),
    `level/<name>/step_update_norm` (‖Δθ‖ of the level's update in this step, 0 when it held or
    the step was skipped; `nestlearn.train.instruments.LevelMonitor`) and the loss's own
    metrics (`lm_loss`: `memory_rms/layer_<i>` for layers with in-context memory).

    A `state` whose params or optimizer state do not have the structure and shapes of `params`
    and `nested(levels).init(params)` is refused while tracing (ValueError naming both
    structures and the differing paths).
    """
    tx = nested(levels)
    assign_levels(levels, params)  # a bad partition fails here, not at the first step
    names = [level.name for level in levels]
    gather = _gather_fsdp(params, mesh)
    grad_fn = jax.value_and_grad(
        lambda p, rest, *batch: loss(nnx.merge(graphdef, gather(p), rest), *batch), has_aux=True
    )
    opt_shapes = jax.eval_shape(tx.init, params)
    built_for = params  # the params the levels were built for

    def train_step(state: TrainState, rest: nnx.State, *batch: jax.Array):
        # Shapes and structures are static: checked once, while tracing.
        _check_tree(state.params, built_for, "state.params (the gradients)", "the levels' params")
        _check_tree(state.opt_state, opt_shapes, "state.opt_state", "the levels' optimizer state")
        (value, aux), grads = grad_fn(state.params, rest, *batch)
        params, opt_state, info = guarded_update(
            levels, tx, grads, state.opt_state, state.params, loss=value, grad_clip=grad_clip
        )
        finite = info.finite
        new_state = TrainState(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            consecutive_nonfinite=jnp.where(finite, 0, state.consecutive_nonfinite + 1),
            skipped=state.skipped + jnp.where(finite, 0, 1),
            rng=state.rng,
        )
        metrics = {
            "loss": value,
            "grad_norm": info.grad_norm,
            "finite": finite,
            "level_finite": info.level_finite,
            **aux,
        }
        for name, applied in level_stats(new_state.opt_state).items():
            metrics[f"level/{name}/updates"] = applied
        for name, norm in zip(names, info.update_norms):
            metrics[f"level/{name}/{STEP_UPDATE_NORM}"] = norm
        return new_state, metrics

    if mesh is None:
        return jax.jit(train_step, donate_argnums=(0,))
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    shapes = TrainState(
        params=params,
        opt_state=opt_shapes,
        step=scalar,
        consecutive_nonfinite=scalar,
        skipped=scalar,
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    state_sh, batch_sh, rep = state_shardings(shapes, mesh), batch_sharding(mesh), replicated(mesh)
    return jax.jit(
        mesh_context(train_step, mesh),
        in_shardings=(state_sh, rep, *[batch_sh] * _batch_args(loss)),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )


def build_eval_step(
    graphdef: nnx.GraphDef, *, params: nnx.State | None = None, mesh: Mesh | None = None
) -> Callable:
    """The jitted `eval_step(params, rest, inputs, targets) -> mean loss (nats per token)`.

    With `mesh` (which needs `params`, arrays or shapes), params are sharded by the partitioning
    rules and the batch over `nestlearn.parallel.BATCH_AXES`.

    Raises:
      ValueError: `mesh` without `params`.
    """
    if mesh is not None and params is None:
        raise ValueError("build_eval_step: mesh= needs params= (for the parameter shardings)")
    gather = _gather_fsdp(params, mesh)
    step = lambda params, rest, inputs, targets: lm_loss(
        nnx.merge(graphdef, gather(params), rest), inputs, targets
    )[0]
    if mesh is None:
        return jax.jit(step)
    batch_sh, rep = batch_sharding(mesh), replicated(mesh)
    return jax.jit(
        mesh_context(step, mesh),
        in_shardings=(param_shardings(params, mesh), rep, batch_sh, batch_sh),
        out_shardings=rep,
    )
