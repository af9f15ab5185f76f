"""The training run's instruments: per-memory statistics and per-level update statistics.

Memory instruments (`nestlearn.memory.instruments`, one set per layer, not summarised over
layers) come from a jitted *instrumented step*, a forward pass of its own with the same params
and batch as a train step and no update: the train loop runs it on logging steps only (and on a
non-finite step), so the train step's computation is the one without instruments. Keys:

    memory/layer_<i>/<field>             the layer's in-context memory (Hope: M_memory)
    memory/layer_<i>/generators/<field>  Hope's generator memories M_k, M_v, (M_q,) M_η, M_α
                                         together (no η/α fields: they are the memory's)

with <field> one of `MemoryStats._fields`: inner_loss_before, inner_loss_after, eta_mean,
eta_p05, eta_p95, alpha_mean, alpha_p05, alpha_p95, state_norm, update_norm.

Level instruments (the scheduler's levels, `nestlearn.optim.scheduler`): the train step reports
each level's update count and the norm of the update it applied in that step; `LevelMonitor`
keeps, on the host, the norm of each level's last applied update. Keys:

    level/<name>/updates      updates the level has applied so far
    level/<name>/update_norm  ‖Δθ‖ of its last applied update (absent until it has applied one
                              in this process: after a resume, until its next update)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from nestlearn.models.instruments import capture_memory_stats
from nestlearn.parallel import batch_sharding, mesh_context, param_shardings, replicated

__all__ = [
    "STEP_UPDATE_NORM",
    "LevelMonitor",
    "build_instrument_step",
    "describe",
    "memory_metrics",
]

#: Train-step metric `level/<name>/<STEP_UPDATE_NORM>`: the norm of this step's update of the
#: level (0 when it held); `LevelMonitor` turns it into `level/<name>/update_norm`.
STEP_UPDATE_NORM = "step_update_norm"


def memory_metrics(layers: Mapping[int, Mapping[str, Any]]) -> dict[str, jax.Array]:
    """Flat metric names of `capture_memory_stats`'s {layer: {memory name: MemoryStats}}."""
    metrics = {}
    for layer, memories in sorted(layers.items()):
        for name, stats in memories.items():
            prefix = f"memory/layer_{layer}/" + ("" if name == "memory" else f"{name}/")
            for field, value in stats._asdict().items():
                if value is not None:
                    metrics[prefix + field] = value
    return metrics


def build_instrument_step(
    graphdef: nnx.GraphDef, *, params: nnx.State | None = None, mesh: Mesh | None = None
) -> Callable:
    """The jitted `instrument_step(params, rest, inputs) -> {metric name: scalar}`.

    One forward pass of the model on fresh sequences with the memory instruments recorded
    (`memory_metrics` names); nothing is updated. With `mesh` (which needs `params`, arrays or
    shapes) params are sharded by the partitioning rules, the batch over the data axes, and the
    metrics replicated.

    Raises:
      ValueError: `mesh` without `params`.
    """

    def step(params, rest, inputs):
        model = nnx.merge(graphdef, params, rest)
        return memory_metrics(capture_memory_stats(model, inputs)[1])

    if mesh is None:
        return jax.jit(step)
    if params is None:
        raise ValueError("build_instrument_step: mesh= needs params= (for the parameter shardings)")
    rep = replicated(mesh)
    return jax.jit(
        mesh_context(step, mesh),
        in_shardings=(param_shardings(params, mesh), rep, batch_sharding(mesh)),
        out_shardings=rep,
    )


class LevelMonitor:
    """Host-side record of each level's last applied update.

    Args:
      updates: {level name: updates applied so far} at the start (`level_stats` of the state).
    """

    def __init__(self, updates: Mapping[str, Any]):
        self._updates = {name: int(n) for name, n in updates.items()}
        self._norms: dict[str, float] = {}

    def update(self, metrics: Mapping[str, Any]) -> None:
        """Reads one train step's `level/<name>/updates` and `level/<name>/step_update_norm`."""
        for name, before in self._updates.items():
            after = int(metrics[f"level/{name}/updates"])
            if after > before:
                self._norms[name] = float(metrics[f"level/{name}/{STEP_UPDATE_NORM}"])
            self._updates[name] = after

    def metrics(self) -> dict[str, float | int]:
        """`level/<name>/updates` and, once known, `level/<name>/update_norm`."""
        out: dict[str, float | int] = {}
        for name, count in self._updates.items():
            out[f"level/{name}/updates"] = count
            if name in self._norms:
                out[f"level/{name}/update_norm"] = self._norms[name]
        return out


def describe(metrics: Mapping[str, Any], *, largest: int = 3) -> str:
    """A one-line summary of memory instruments for a warning: non-finite ones, largest states.

    Args:
      metrics: instrument values (`memory_metrics` names, host numbers).
      largest: how many of the largest state norms to name.
    """
    values = {k: float(np.asarray(v)) for k, v in metrics.items() if k.startswith("memory/")}
    if not values:
        return "no memory instruments"
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    norms = sorted(
        ((v, k) for k, v in values.items() if k.endswith("/state_norm") and math.isfinite(v)),
        reverse=True,
    )[:largest]
    parts = []
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        parts.append(f"non-finite: {shown}")
    if norms:
        parts.append("largest state norms: " + ", ".join(f"{k}={v:.4g}" for v, k in norms))
    return "; ".join(parts)
