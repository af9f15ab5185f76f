"""Runs a few sharded train steps on 8 host CPU devices and prints what the tests compare.

Run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu`:

    python tests/parallel/spmd_run.py MODEL STEPS LAYERS MESH [MESH ...] [--checkpoint DIR]

MESH is `data,fsdp,tensor`. For the one-device reference and then each mesh, the script trains
STEPS steps on fixed random batches and records the losses, the final params and the final
per-sequence memory state of a forward pass (its state output sharded over the data axes;
compared with the one-device one under `--memory-reference`). With `--checkpoint`, the train
state of the first mesh is saved and restored onto every other mesh. `--pallas` sets
`model.kernel_impl = "pallas"` (with `NESTLEARN_KERNEL_INTERPRET=1` in the environment: the
Triton kernel in the interpreter, chunk 16); each mesh then reports whether its train step holds
a `shard_map` (`kernel_shard_map`). Prints one JSON object: max abs/rel differences to the
reference, and the checks' booleans.
"""

from __future__ import annotations

import json
import sys
import tempfile

import jax
import numpy as np
from flax import nnx

from nestlearn import models
from nestlearn.parallel import (
    batch_sharding,
    batch_tree_shardings,
    make_mesh,
    param_shardings,
    replicated,
)
from nestlearn.train import Checkpointer, base_config, build_levels, build_train_step
from nestlearn.train.step import TrainState, split_model, state_shardings
from nestlearn.train.trainer import checkpoint_trees

BATCH, SEQ = 8, 16


def tiny_config(name: str, layers: int):
    c = base_config(name)
    c.model.vocab_size = 64
    c.model.d_model = 32
    c.model.num_layers = layers
    c.model.num_heads = 4
    c.model.max_len = 32
    c.model.chunk_size = 8
    if "cms" in c.model:
        c.model.cms.periods = (1, 2)
        c.model.cms.chunk_sizes = (8, 16)
    c.optim.lr = 1e-2
    c.optim.warmup_steps = 1
    c.train.num_steps = 8
    return c


def fresh(config):
    model = models.build(config.model, rngs=nnx.Rngs(0))
    graphdef, params, rest = split_model(model)
    levels = build_levels(config)
    state = TrainState.create(params, levels, seed=0)
    return graphdef, rest, levels, state


def batches(steps: int, vocab: int):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(steps, BATCH, SEQ + 1), dtype=np.int32)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def memory_state(graphdef, params, rest, inputs, mesh):
    """The per-sequence memory state after `inputs`, computed with batch-sharded outputs."""

    def forward(params, rest, inputs):
        return nnx.merge(graphdef, params, rest)(inputs)[1]

    abstract = jax.eval_shape(forward, params, rest, inputs)
    out = batch_tree_shardings(abstract, mesh, BATCH)
    fn = jax.jit(
        forward,
        in_shardings=(param_shardings(params, mesh), replicated(mesh), batch_sharding(mesh)),
        out_shardings=out,
    )
    state = fn(params, rest, inputs)
    sharded = [
        x.sharding.spec[:1] == (("data", "fsdp"),)
        for x in jax.tree.leaves(state)
        if x.ndim and x.shape[0] == BATCH
    ]
    return state, all(sharded) and bool(sharded)


def run(config, mesh, steps, *, memory=True):
    graphdef, rest, levels, state = fresh(config)
    state = jax.device_put(state, state_shardings(state, mesh))
    rest = jax.device_put(rest, replicated(mesh))
    step_fn = build_train_step(
        levels,
        params=state.params,
        grad_clip=config.optim.grad_clip,
        graphdef=graphdef,
        mesh=mesh,
    )
    losses, rms = [], []
    data = batches(steps, config.model.vocab_size)
    shard_map = None
    if config.model.kernel_impl == "pallas":
        hlo = step_fn.lower(state, rest, *data[0]).as_text()
        shard_map = "SPMDFullToShardShape" in hlo or "manual_computation" in hlo
    for inputs, targets in data:
        state, metrics = step_fn(state, rest, inputs, targets)
        losses.append(float(metrics["loss"]))
        rms.append({k: float(v) for k, v in metrics.items() if k.startswith("memory_rms")})
    if not memory:
        return dict(state=state, rest=rest, losses=losses, memory_rms=rms, shard_map=shard_map)
    memory, memory_sharded = memory_state(graphdef, state.params, rest, data[0][0], mesh)
    model = nnx.merge(graphdef, state.params, rest)
    initial = model.init_state(BATCH)
    changed = any(
        not np.allclose(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(memory), jax.tree.leaves(initial))
        if np.shape(a) == np.shape(b) and np.size(a)
    )
    return dict(
        state=state,
        rest=rest,
        losses=losses,
        memory_rms=rms,
        memory=memory,
        memory_changed=changed,
        memory_sharded=memory_sharded,
        shard_map=shard_map,
        params_sharded=any(
            any(axis is not None for axis in x.sharding.spec) for x in jax.tree.leaves(state.params)
        ),
    )


def max_diff(a, b) -> float:
    """The largest absolute difference between the leaves of two trees of the same structure."""
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out = max(out, float(np.abs(x - y).max(initial=0)))
    return out


def checkpoint_across(config, saved, meshes, directory):
    """Saves `saved` (trained on the first mesh) and restores it onto each mesh of `meshes`."""
    names = tuple(saved["state"].opt_state.levels)
    ckpt = Checkpointer(directory, level_names=names, max_to_keep=2)
    ckpt.save(3, trees=checkpoint_trees(saved["state"], saved["rest"]), data={}, config={})
    ckpt.close()
    results = []
    for mesh in meshes:
        _, rest, _, target = fresh(config)
        target = jax.device_put(target, state_shardings(target, mesh))
        rest = jax.device_put(rest, replicated(mesh))
        ckpt = Checkpointer(directory, level_names=names, max_to_keep=2)
        got = ckpt.restore(checkpoint_trees(target, rest))
        ckpt.close()
        want = checkpoint_trees(saved["state"], saved["rest"])
        exact = all(
            np.array_equal(np.asarray(x), np.asarray(y))
            for x, y in zip(jax.tree.leaves(got.trees), jax.tree.leaves(want))
        )
        placed = all(
            x.sharding == t.sharding
            for x, t in zip(
                jax.tree.leaves(got.trees), jax.tree.leaves(checkpoint_trees(target, rest))
            )
            if isinstance(x, jax.Array) and x.size
        )
        results.append({"mesh": dict(mesh.shape), "exact": exact, "on_target_sharding": placed})
    return results


def main(argv):
    model, steps, layers, *rest = argv
    ckpt_dir = None
    memory_reference = "--memory-reference" in rest
    pallas = "--pallas" in rest
    rest = [a for a in rest if a not in ("--memory-reference", "--pallas")]
    if "--checkpoint" in rest:
        i = rest.index("--checkpoint")
        ckpt_dir = rest[i + 1]
        rest = rest[:i] + rest[i + 2 :]
    shapes = [tuple(int(s) for s in m.split(",")) for m in rest]
    config = tiny_config(model, int(layers))
    if pallas:  # the Triton kernel (interpreted under NESTLEARN_KERNEL_INTERPRET=1), chunk >= 16
        config.model.kernel_impl = "pallas"
        config.model.chunk_size = 16
    reference = run(config, make_mesh((1, 1, 1)), int(steps), memory=memory_reference)
    report = {"devices": jax.device_count(), "reference_losses": reference["losses"], "meshes": []}
    runs = []
    for shape in shapes:
        mesh = make_mesh(shape)
        got = run(config, mesh, int(steps))
        runs.append((mesh, got))
        loss_abs = max_diff(got["losses"], reference["losses"])
        param_abs = max_diff(got["state"].params, reference["state"].params)
        mem_abs = max_diff(got["memory"], reference["memory"]) if memory_reference else None
        mem_scale = max_diff(got["memory"], jax.tree.map(np.zeros_like, got["memory"]))
        report["meshes"].append(
            {
                "mesh": list(shape),
                "losses": got["losses"],
                "loss_max_abs": loss_abs,
                "param_max_abs": param_abs,
                "memory_max_abs": mem_abs,
                "memory_max": mem_scale,
                "memory_changed": got["memory_changed"],
                "memory_sharded": got["memory_sharded"],
                "params_sharded": got["params_sharded"],
                "memory_rms_last": got["memory_rms"][-1],
                "kernel_shard_map": got["shard_map"],
            }
        )
    if ckpt_dir is not None:
        with tempfile.TemporaryDirectory(dir=ckpt_dir) as d:
            report["checkpoint"] = checkpoint_across(
                config, runs[0][1], [m for m, _ in runs[1:]] + [make_mesh((1, 1, 1))], d
            )
    print("SPMD_RESULT " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1:])
