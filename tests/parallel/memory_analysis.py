"""Compiled memory of the sharded train step vs the per-device model of docs/scaling.md §3.

Run with `XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu`:

    python tests/parallel/memory_analysis.py MODEL MESH [MESH ...]

For a small config, prints one JSON line per mesh: XLA's `memory_analysis()` of the compiled
train step (argument, output, alias and temporary bytes per device) beside the model's terms —
weights and optimizer state per device from the shard shapes that `PARAM_RULES` gives, the
batch, and the per-sequence memory state S.
"""

from __future__ import annotations

import json
import math
import sys

import jax
import numpy as np
from flax import nnx
from spmd_run import fresh, tiny_config

from nestlearn.parallel import batch_divisor, make_mesh
from nestlearn.train import build_train_step
from nestlearn.train.step import state_shardings

BATCH, SEQ, WIDTH = 16, 128, 64


def per_device_bytes(tree, shardings) -> int:
    return sum(
        math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings), strict=True)
    )


def main(model: str, meshes: list[tuple[int, int, int]]) -> None:
    config = tiny_config(model, 2)
    config.model.d_model, config.model.max_len, config.model.remat = WIDTH, SEQ, True
    graphdef, rest, levels, state = fresh(config)
    memory = jax.eval_shape(lambda p: nnx.merge(graphdef, p, rest).init_state(1), state.params)
    per_sequence = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(memory))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    tokens = jax.ShapeDtypeStruct((BATCH, SEQ), np.int32)
    for shape in meshes:
        mesh = make_mesh(shape)
        shardings = state_shardings(state, mesh)
        step = build_train_step(
            levels, params=state.params, grad_clip=1.0, graphdef=graphdef, mesh=mesh
        )
        analysis = step.lower(abstract, rest, tokens, tokens).compile().memory_analysis()
        local = BATCH // batch_divisor(mesh)
        print(
            "MEMORY "
            + json.dumps(
                {
                    "model": model,
                    "mesh": list(shape),
                    "xla_argument": analysis.argument_size_in_bytes,
                    "xla_output": analysis.output_size_in_bytes,
                    "xla_alias": analysis.alias_size_in_bytes,
                    "xla_temp": analysis.temp_size_in_bytes,
                    "weights": per_device_bytes(state.params, shardings.params),
                    "optimizer": per_device_bytes(state.opt_state, shardings.opt_state),
                    "counters": 3 * 4 + 2 * 4,  # step, two skip counters, the PRNG key
                    "batch": 2 * local * SEQ * 4,
                    "memory_state_per_sequence": per_sequence,
                    "sequences_per_device": local,
                }
            )
        )


if __name__ == "__main__":
    main(sys.argv[1], [tuple(int(s) for s in m.split(",")) for m in sys.argv[2:]])
