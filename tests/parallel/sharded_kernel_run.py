"""Sharded kernels vs the unsharded op: forward and gradients, on 8 host CPU devices.

Run in a subprocess with `XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu`:

    python tests/parallel/sharded_kernel_run.py CASE [CASE ...]

CASE is one of `CASES`. For each, the op runs in Pallas interpret mode once plainly (one
device) and once as `sharded_kernel(op)` inside `jax.jit` with the inputs placed on the mesh
(batch over ("data", "fsdp"), heads over "tensor"); the loss is a fixed random projection of the
output and of the final state, and its gradient is taken with respect to every array input
(per-head parameters included). Prints one JSON line per case: max abs differences (and the
largest magnitudes) of the outputs and gradients, the shardings of the outputs, and the
collectives in the compiled sharded forward pass.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from nestlearn.kernels import GatedDeltaState, MLPMemoryState, gated_delta, mlp_memory

from nestlearn.parallel import make_mesh, mesh_context, sharded_kernel

#: name -> (op, implementation, mesh, b, h, momentum/state options, mesh from context)
CASES = {
    # batch 4 over data x fsdp, 2 heads over tensor; Titans momentum and an initial state.
    "gated_delta_momentum_2x2x2": ("gated_delta", "pallas_triton", (2, 2, 2), 4, 2, True, True),
    # 3 heads on a 2-way tensor axis and 2 sequences on 4 batch shards: both stay whole.
    "gated_delta_indivisible_2x2x2": (
        "gated_delta",
        "pallas_triton",
        (2, 2, 2),
        2,
        3,
        False,
        False,
    ),
    # per-head meta-learned weights: replicated over the batch axes, split over heads.
    "mlp_memory_2x2x2": ("mlp_memory", "pallas_triton", (2, 2, 2), 4, 2, False, True),
    "mlp_memory_state_8x1x1": ("mlp_memory", "pallas_triton", (8, 1, 1), 8, 2, True, False),
    # the Mosaic TPU kernel in the (slow) TPU interpreter: tiny shapes.
    "gated_delta_tpu_2x1x2": ("gated_delta", "pallas_tpu", (2, 1, 2), 2, 2, False, False),
}
T, D = 16, 8


def _inputs(op, b, h, with_state, key):
    ks = iter(jax.random.split(key, 16))
    normal = lambda shape: jax.random.normal(next(ks), shape, jnp.float32)
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
    q, k, v = unit(normal((b, T, h, D))), unit(normal((b, T, h, D))), normal((b, T, h, D))
    gate = lambda bias: jax.nn.sigmoid(normal((b, T, h)) + bias)
    if op == "gated_delta":
        arrays = dict(q=q, k=k, v=v, alpha=gate(3.0), beta=gate(0.0))
        if with_state:
            arrays["momentum"] = 0.5 * gate(0.0)
            arrays["initial_state"] = GatedDeltaState(
                0.1 * normal((b, h, D, D)), 0.1 * normal((b, h, D, D))
            )
        return arrays
    n = 2 * D
    arrays = dict(q=q, k=k, v=v, theta=0.1 * gate(0.0), alpha=0.1 * gate(0.0), eta=0.5 * gate(0.0))
    arrays["params"] = {"w1": normal((h, D, n)) / n**0.5, "w2": normal((h, n, D)) / D**0.5}
    if with_state:
        w = {"w1": normal((b, h, D, n)) / n**0.5, "w2": normal((b, h, n, D)) / D**0.5}
        arrays["initial_state"] = MLPMemoryState(w, jax.tree.map(lambda x: 0.1 * x, w))
    return arrays


def _placement(mesh, name, x):
    """The sharding the model's step would give each input: batch over the data axes."""
    if name == "params" or x.shape[0] % (mesh.shape["data"] * mesh.shape["fsdp"]):
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (x.ndim - 1))))


def max_abs(a, b):
    return max(
        float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def run_case(name):
    op_name, impl, shape, b, h, with_state, from_context = CASES[name]
    op = {"gated_delta": gated_delta, "mlp_memory": mlp_memory}[op_name]
    mesh = make_mesh(shape)
    arrays = _inputs(op_name, b, h, with_state, jax.random.PRNGKey(0))
    static = dict(chunk_size=16, implementation=impl, interpret=True)
    out_shapes = jax.eval_shape(lambda a: op(**a, **static), arrays)
    weights = jax.tree.map(
        lambda s: jax.random.normal(jax.random.PRNGKey(s.size), s.shape, s.dtype), out_shapes
    )

    def loss(fn, a):
        out = fn(**a, **static)
        return sum(jnp.sum(o * w) for o, w in zip(jax.tree.leaves(out), jax.tree.leaves(weights)))

    plain = jax.jit(lambda a: (op(**a, **static), jax.grad(lambda a: loss(op, a))(a)))
    want_out, want_grad = plain(arrays)

    wrapped = sharded_kernel(op) if from_context else sharded_kernel(op, mesh)
    forward = lambda a: wrapped(**a, **static)
    step = lambda a: (forward(a), jax.grad(lambda a: loss(wrapped, a))(a))
    if from_context:
        forward, step = mesh_context(forward, mesh), mesh_context(step, mesh)
    placed = {
        n: jax.tree.map(lambda x, n=n: jax.device_put(x, _placement(mesh, n, x)), x)
        for n, x in arrays.items()
    }
    got_out, got_grad = jax.jit(step)(placed)
    hlo = jax.jit(forward).lower(placed).compile().as_text()
    collectives = sorted(
        set(
            re.findall(
                r"\b(all-gather|all-reduce|all-to-all|collective-permute|"
                r"reduce-scatter)\b",
                hlo,
            )
        )
    )
    o = jax.tree.leaves(got_out)[0]
    report = {
        "case": name,
        "out_max_abs": max_abs(got_out, want_out),
        "out_max": max(float(jnp.abs(x).max()) for x in jax.tree.leaves(want_out)),
        "grad_max_abs": max_abs(got_grad, want_grad),
        "grad_max": max(float(jnp.abs(x).max()) for x in jax.tree.leaves(want_grad)),
        "grad_names": sorted(got_grad),
        "o_spec": str(o.sharding.spec) if isinstance(o.sharding, NamedSharding) else None,
        "o_shard_shape": list(o.addressable_shards[0].data.shape),
        "forward_collectives": collectives,
    }
    print("KERNEL_RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    for case in sys.argv[1:]:
        run_case(case)
