"""Pallas kernels on a mesh: `jax.shard_map` at the kernel's boundary.

GSPMD cannot partition a `pallas_call` (it is an opaque custom call: XLA would gather every
input onto each device and run the whole kernel there). The memory kernels of
`nestlearn.kernels` are independent per sequence and per head, so `sharded_kernel` runs each
device's kernel on its own block: the batch split over `BATCH_AXES` (`("data", "fsdp")`), the
heads over `"tensor"`, the per-sequence memory state split the same way, and per-head
parameters (`mlp_memory`'s meta-learned initial weights) split over the heads only. Nothing is
communicated in the forward pass; in the backward pass the gradient of an input replicated over
an axis (the per-head parameters over the batch axes) is summed over that axis by `shard_map`.

The mesh is the argument, or else the *context mesh* (`jax.sharding.get_abstract_mesh()`),
which `mesh_context` sets while a step function is traced. A model therefore calls
`sharded_kernel(op)(...)` unconditionally: with no context mesh, or a one-device one, it is
`op(...)`.

Argument layouts (`KernelLayout`): `SEQUENCE` arrays are [b, t, h, ...], `STATE` arrays (every
leaf of a memory-state pytree) [b, h, ...], `PER_HEAD` arrays [h, ...]. A batch that the batch
shards do not divide, or a head count that the tensor axis does not divide, stays whole on
that axis: every device along it computes all of it (redundant, still exact), as
`nestlearn.parallel.partition_spec` leaves such dimensions replicated.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
from jax.sharding import AbstractMesh, Mesh, PartitionSpec

from nestlearn.kernels import gated_delta, mlp_memory
from nestlearn.parallel.mesh import BATCH_AXES

__all__ = [
    "GATED_DELTA_LAYOUT",
    "KERNEL_LAYOUTS",
    "MLP_MEMORY_LAYOUT",
    "PER_HEAD",
    "SEQUENCE",
    "STATE",
    "KernelLayout",
    "mesh_context",
    "sharded_kernel",
]

#: [b, t, h, ...]: per-token inputs and outputs.
SEQUENCE = "sequence"
#: [b, h, ...]: per-sequence memory state (every leaf of the pytree).
STATE = "state"
#: [h, ...]: per-head parameters shared by all sequences.
PER_HEAD = "per_head"

_BATCH_DIM = {SEQUENCE: 0, STATE: 0, PER_HEAD: None}
_HEAD_DIM = {SEQUENCE: 2, STATE: 1, PER_HEAD: 0}


class KernelLayout(NamedTuple):
    """Where the batch and head dimensions of a kernel's arrays are."""

    inputs: Mapping[str, str]  # argument name -> SEQUENCE | STATE | PER_HEAD (arrays or pytrees)
    outputs: tuple[str, ...]  # one role per element of the op's output tuple


#: `nestlearn.kernels.gated_delta`: (o [b,t,h,d_v], S [b,h,d_v,d_k] or GatedDeltaState(S, Z)).
GATED_DELTA_LAYOUT = KernelLayout(
    inputs={
        "q": SEQUENCE,
        "k": SEQUENCE,
        "v": SEQUENCE,
        "alpha": SEQUENCE,
        "beta": SEQUENCE,
        "momentum": SEQUENCE,
        "initial_state": STATE,
    },
    outputs=(SEQUENCE, STATE),
)
#: `nestlearn.kernels.mlp_memory`: (o [b,t,h,d_out], MLPMemoryState of [b,h,...] leaves).
MLP_MEMORY_LAYOUT = KernelLayout(
    inputs={
        "q": SEQUENCE,
        "k": SEQUENCE,
        "v": SEQUENCE,
        "theta": SEQUENCE,
        "alpha": SEQUENCE,
        "eta": SEQUENCE,
        "params": PER_HEAD,
        "initial_state": STATE,
    },
    outputs=(SEQUENCE, STATE),
)
#: The layouts `sharded_kernel` knows without a `layout=` argument.
KERNEL_LAYOUTS: Mapping[Callable, KernelLayout] = {
    gated_delta: GATED_DELTA_LAYOUT,
    mlp_memory: MLP_MEMORY_LAYOUT,
}


def mesh_context(fn: Callable, mesh: Mesh | None) -> Callable:
    """`fn`, traced with `mesh` as the context mesh (`jax.sharding.use_abstract_mesh`).

    For step functions compiled with `jax.jit(..., in_shardings=...)` on `mesh`: the
    `sharded_kernel` calls inside the model then `shard_map` over `mesh`. With `mesh` None,
    `fn` itself.
    """
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def traced_on_mesh(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args, **kwargs)

    return traced_on_mesh


def _spec(role: str, batch: Any, heads: str | None) -> PartitionSpec:
    """The spec of an array (or, as a pytree prefix, of every leaf of a state) in `role`."""
    spec = [None] * (_HEAD_DIM[role] + 1)
    if _BATCH_DIM[role] is not None:
        spec[_BATCH_DIM[role]] = batch
    spec[_HEAD_DIM[role]] = heads
    return PartitionSpec(*spec)


def _check_dims(name: str, role: str, tree: Any, b: int, h: int) -> None:
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        want = {_HEAD_DIM[role]: h}
        if _BATCH_DIM[role] is not None:
            want[_BATCH_DIM[role]] = b
        if len(shape) <= max(want) or any(shape[d] != n for d, n in want.items()):
            raise ValueError(
                f"sharded_kernel: argument {name!r} ({role}) has a leaf of shape {shape}; "
                f"expected batch {b} at dim {_BATCH_DIM[role]} and heads {h} at dim "
                f"{_HEAD_DIM[role]} (from q.shape=[b, t, h, ...])"
            )


def sharded_kernel(
    op: Callable,
    mesh: Mesh | AbstractMesh | None = None,
    *,
    layout: KernelLayout | None = None,
    batch_axes: Sequence[str] = BATCH_AXES,
    head_axis: str | None = "tensor",
) -> Callable:
    """`op` (a `nestlearn.kernels` op, same signature) run under `jax.shard_map` on `mesh`.

    Args:
      op: the kernel op, e.g. `nestlearn.kernels.gated_delta`; its first positional argument is
        q [b, t, h, ...].
      mesh: the mesh; None means the context mesh at call time (see `mesh_context`). With no
        context mesh, or a mesh of one device, the returned function calls `op` directly.
      layout: the roles of `op`'s array arguments and outputs; None looks `op` up in
        `KERNEL_LAYOUTS`.
      batch_axes: mesh axes the batch (and the per-sequence state) is split over.
      head_axis: mesh axis the heads are split over, or None.

    Returns:
      A function with `op`'s signature and results; arguments that `layout` does not name
      (chunk size, implementation, interpret, ...) are passed through unchanged.

    Raises:
      ValueError: `op` has no known layout, a named mesh axis is not in the mesh, or (at call
        time) an argument's batch or head dimension disagrees with q's.
    """
    if layout is None:
        if op not in KERNEL_LAYOUTS:
            raise ValueError(
                f"sharded_kernel: op={getattr(op, '__name__', op)!r} has no entry in "
                f"KERNEL_LAYOUTS; pass layout=KernelLayout(...)"
            )
        layout = KERNEL_LAYOUTS[op]
    batch_axes = tuple(batch_axes)
    signature = inspect.signature(op)

    @functools.wraps(op)
    def call(*args, **kwargs):
        m = jax.sharding.get_abstract_mesh() if mesh is None else mesh
        if m.empty or m.size == 1:
            return op(*args, **kwargs)
        missing = [a for a in (*batch_axes, head_axis) if a is not None and a not in m.shape]
        if missing:
            raise ValueError(
                f"sharded_kernel: mesh axes {missing} (batch_axes={batch_axes}, "
                f"head_axis={head_axis!r}) are not in the mesh {dict(m.shape)}"
            )
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = dict(bound.arguments)
        q = values[next(iter(signature.parameters))]
        b, h = q.shape[0], q.shape[2]
        shards = math.prod(m.shape[a] for a in batch_axes)
        batch = batch_axes if batch_axes and b % shards == 0 else None
        heads = head_axis if head_axis is not None and h % m.shape[head_axis] == 0 else None
        names = [n for n in layout.inputs if values.get(n) is not None]
        for n in names:
            _check_dims(n, layout.inputs[n], values[n], b, h)
        in_specs = tuple(_spec(layout.inputs[n], batch, heads) for n in names)
        out_specs = tuple(_spec(role, batch, heads) for role in layout.outputs)

        def local(*arrays):
            local_values = dict(values, **dict(zip(names, arrays)))
            local_bound = inspect.BoundArguments(signature, local_values)
            return op(*local_bound.args, **local_bound.kwargs)

        # check_vma=False: the kernels' internals (the Pallas interpreter's grid loop, scans with
        # constant initial carries) are not typed for varying manual axes; shard_map then sums
        # the cotangent of an input over the mesh axes its spec does not name, as it should.
        mapped = jax.shard_map(
            local, mesh=m, in_specs=in_specs, out_specs=out_specs, check_vma=False
        )
        return mapped(*(values[n] for n in names))

    return call
