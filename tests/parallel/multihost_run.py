"""A real two-process (multi-host) run on one machine, and its single-process check.

Worker (one of two processes; each sees 4 host CPU devices, the mesh spans all 8):

    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=I \\
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
      python tests/parallel/multihost_run.py worker STEPS DIR MODEL [MODEL ...]

starts `jax.distributed` from the environment through `nestlearn.parallel.initialize`, trains
STEPS steps of each tiny MODEL on the mesh `WORKER_MESH` = (2, 2, 2) (data across the two
processes) with per-host data sharding — each process builds a global batch from the rows its
own devices hold only (`process_rows` + `jax.make_array_from_process_local_data`) — and saves an
orbax checkpoint of the train state to DIR/MODEL (every process writes its own shards). Prints
`MULTIHOST {...}` with its losses.

Check (one process, 8 host CPU devices):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
      python tests/parallel/multihost_run.py check STEPS DIR MODEL [MODEL ...]

trains STEPS + 1 steps of each MODEL in one process on `WORKER_MESH` (the reference), restores
the two-process checkpoint onto `RESTORE_MESH` = (1, 4, 2), and takes step STEPS + 1 from it.
Prints `MULTIHOST_CHECK {...}`: the reference losses, the restored state's difference to the
reference state after STEPS steps, and the restored run's loss at step STEPS + 1.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from spmd_run import BATCH, batches, fresh, max_diff, tiny_config

from nestlearn.parallel import (
    batch_sharding,
    initialize,
    make_mesh,
    process_rows,
    replicated,
)
from nestlearn.train import Checkpointer, base_config, build_train_step
from nestlearn.train.step import state_shardings
from nestlearn.train.trainer import checkpoint_trees

WORKER_MESH, RESTORE_MESH = (2, 2, 2), (1, 4, 2)


def _train(config, mesh, data, state=None, *, per_host=False):
    """Trains on `data` from `state` (default: fresh); returns (state, rest, levels, losses)."""
    graphdef, rest, levels, fresh_state = fresh(config)
    state = jax.device_put(
        fresh_state if state is None else state, state_shardings(fresh_state, mesh)
    )
    rest = jax.device_put(rest, replicated(mesh))
    step = build_train_step(
        levels, params=state.params, grad_clip=config.optim.grad_clip, graphdef=graphdef, mesh=mesh
    )
    sharding = batch_sharding(mesh)
    start, stop = process_rows(sharding, BATCH)
    losses = []
    for inputs, targets in data:
        if per_host:  # this process holds (and here reads) only rows [start, stop)
            inputs, targets = (
                jax.make_array_from_process_local_data(sharding, x[start:stop], x.shape)
                for x in (inputs, targets)
            )
        state, metrics = step(state, rest, inputs, targets)
        losses.append(float(metrics["loss"]))
    return state, rest, levels, losses


def worker(steps, directory, names):
    assert initialize(base_config("hope").mesh.distributed), "jax.distributed did not start"
    mesh = make_mesh(WORKER_MESH)
    for name in names:
        config = tiny_config(name, 1)
        data = batches(steps, config.model.vocab_size)
        state, rest, levels, losses = _train(config, mesh, data, per_host=True)
        ckpt = Checkpointer(
            os.path.join(directory, name),
            level_names=tuple(lv.name for lv in levels),
            max_to_keep=1,
        )
        ckpt.save(steps, trees=checkpoint_trees(state, rest), data={}, config={})
        ckpt.close()
        report = {
            "model": name,
            "process": jax.process_index(),
            "processes": jax.process_count(),
            "devices": jax.device_count(),
            "local_devices": jax.local_device_count(),
            "rows": list(process_rows(batch_sharding(mesh), BATCH)),
            "losses": losses,
        }
        print("MULTIHOST " + json.dumps(report), flush=True)


def check(steps, directory, names):
    out = {"devices": jax.device_count(), "processes": jax.process_count(), "models": []}
    for name in names:
        config = tiny_config(name, 1)
        data = batches(steps + 1, config.model.vocab_size)
        mesh = make_mesh(WORKER_MESH)
        ref_state, _, levels, ref_losses = _train(config, mesh, data[:steps])
        ref_params = jax.device_get(ref_state.params)
        ref_losses += _train(config, mesh, data[steps:], ref_state)[3]

        target_mesh = make_mesh(RESTORE_MESH)
        _, rest, _, target = fresh(config)
        target = jax.device_put(target, state_shardings(target, target_mesh))
        rest = jax.device_put(rest, replicated(target_mesh))
        ckpt = Checkpointer(
            os.path.join(directory, name),
            level_names=tuple(lv.name for lv in levels),
            max_to_keep=1,
        )
        restored = ckpt.restore(checkpoint_trees(target, rest))
        ckpt.close()
        trees = restored.trees
        restored_diff = max_diff(jax.device_get(trees["params"]), ref_params)
        on_target = all(
            x.sharding == t.sharding
            for x, t in zip(jax.tree.leaves(trees["params"]), jax.tree.leaves(target.params))
        )
        state = target._replace(
            params=trees["params"],
            opt_state=type(target.opt_state)({lv.name: trees[f"opt_{lv.name}"] for lv in levels}),
            step=trees["train"]["step"],
        )
        _, _, _, next_loss = _train(config, target_mesh, data[steps:], state)  # donates state
        out["models"].append(
            {
                "model": name,
                "reference_losses": ref_losses,
                "restored_step": int(restored.step),
                "restored_param_max_abs": restored_diff,
                "restored_on_target_sharding": on_target,
                "restored_next_loss": next_loss[0],
                "param_max": max(float(np.abs(x).max()) for x in jax.tree.leaves(ref_params)),
            }
        )
    print("MULTIHOST_CHECK " + json.dumps(out), flush=True)


if __name__ == "__main__":
    mode, steps, directory, *names = sys.argv[1:]
    {"worker": worker, "check": check}[mode](int(steps), directory, names)
