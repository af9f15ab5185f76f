"""Logical partitioning: parameter path → logical axes → mesh axes → `NamedSharding`.

Every parameter of every registered model is named by its `/`-joined path
(`nestlearn.core.tree`, e.g. `blocks/3/mlp/w_in/kernel`). `PARAM_RULES` maps a path (the first
regex that `re.search`es it wins) to one *logical* axis name per array dimension; `MESH_RULES`
maps each logical axis to a mesh axis (`nestlearn.parallel.mesh.MESH_AXES`) or to None
(replicated). Two tables, so a user changes the parallelism (e.g. no tensor parallelism for
heads) by editing the small second one, not the patterns.

Logical axes:

| logical | dimension | mesh axis |
|---|---|---|
| `embed` | the residual width d_model | `fsdp` |
| `vocab` | the vocabulary | `tensor` |
| `mlp` | feed-forward / CMS hidden units | `tensor` |
| `heads` | attention or memory heads (fused `h·head_dim` outputs included) | `tensor` |
| `memory_heads` | the leading head axis of per-head initial memories ([h, ...]) | `tensor` |
| `fused` | fused q/k/v(/gate) projection outputs (sliced apart in the model) | replicated |
| `conv`, `gates`, `memory`, `norm`, `persist` | small dimensions | replicated |

A dimension that the mesh axis does not divide is left replicated (so a 2-head memory still runs
on a 4-way `tensor` axis); sharding never changes results, only where they are computed.

Parameters are *stored* sharded by these rules (`param_shardings`) and *used* gathered over
the `fsdp` axis (`compute_shardings`, FSDP / ZeRO-3): the train and eval steps constrain the
parameters to the compute sharding before the model runs, so activations stay split over the
batch axes and the gradient of a gathered parameter is reduce-scattered back onto its storage
sharding. Without that constraint the compiler may instead carry the `fsdp` split of `embed`
into the activations' width and reshard them wholesale in the backward pass.

Optimizer state (Adam moments and the like) follows the parameter whose path ends its own path
and whose shape it has (`tree_shardings`); everything else (counters, scalars) is replicated.
Per-sequence memory state and the batch are split over `BATCH_AXES` along their leading axis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nestlearn.core import flatten_with_paths
from nestlearn.parallel.mesh import BATCH_AXES, batch_divisor

__all__ = [
    "MESH_RULES",
    "PARAM_RULES",
    "batch_sharding",
    "batch_tree_shardings",
    "compute_shardings",
    "logical_axes",
    "param_shardings",
    "partition_spec",
    "replicated",
    "tree_shardings",
]

_BLOCK = r"^blocks/\d+/"
#: (regex over the parameter path, logical axes of its dimensions); the first match wins.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    # Embedding and untied head.
    (r"^embed/embedding$", ("vocab", "embed")),
    (r"^head/kernel$", ("embed", "vocab")),
    # Norm scales (RMSNorm), anywhere.
    (r"(^|/)scale$", ("norm",)),
    # Feed-forward MLPs: Transformer++ MLP, the blocks' FFN, CMS levels (SwiGLU or two-layer).
    (r"/(w_in|w_gate)/kernel$", ("embed", "mlp")),
    (r"/(w_in|w_gate)/bias$", ("mlp",)),
    (r"/w_out/kernel$", ("mlp", "embed")),
    (r"/w_out/bias$", ("embed",)),
    # Softmax attention (Transformer++, Hope-Attention, Titans MAC/MAG/MAL).
    (_BLOCK + r"attn/(wq|wk|wv)/kernel$", ("embed", "heads")),
    (_BLOCK + r"attn/wo/kernel$", ("heads", "embed")),
    (_BLOCK + r"attn/persistent_(k|v)$", ("persist", "heads", None)),
    # Memory mixers (DeltaNet, Gated DeltaNet, Titans LMM, self-modifying Titans) and the
    # memory branches of Titans MAC/MAG/MAL.
    (r"/(proj|write_qkv)/kernel$", ("embed", "fused")),
    (r"/(gates|write_gates)/kernel$", ("embed", "gates")),
    (r"/(gates|write_gates)/bias$", ("gates",)),
    (r"/conv/kernel$", ("conv", "fused")),
    (r"/out_gate/w_gate/kernel$", ("embed", "heads")),
    (r"/(out_proj|memory_out|read_out)/kernel$", ("heads", "embed")),
    (r"/read_q/kernel$", ("embed", "heads")),
    # Meta-learned initial memories, one per head: [h, d_in, d_out] matrices, [h] biases.
    (r"/memory_params/.*_bias$", ("memory_heads",)),
    (r"/memory_params/", ("memory_heads", "memory", "memory")),
)

#: Logical axis → mesh axis (None: replicated).
MESH_RULES: Mapping[str, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "memory_heads": "tensor",
    "fused": None,
    "conv": None,
    "gates": None,
    "memory": None,
    "norm": None,
    "persist": None,
}


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """The logical axes of the parameter at `path` with `ndim` dimensions.

    Raises:
      ValueError: no rule matches `path`, or the first matching rule names a different number of
        dimensions than `ndim`.
    """
    for pattern, axes in PARAM_RULES:
        if re.search(pattern, path):
            if len(axes) != ndim:
                raise ValueError(
                    f"parameter {path!r} has {ndim} dimensions, but its partitioning rule "
                    f"{pattern!r} names {len(axes)}: {axes}"
                )
            return axes
    raise ValueError(f"no partitioning rule in PARAM_RULES matches parameter {path!r}")


def partition_spec(
    path: str,
    shape: tuple[int, ...],
    mesh: Mesh,
    mesh_rules: Mapping[str, str | None] = MESH_RULES,
) -> PartitionSpec:
    """The `PartitionSpec` of a parameter: its logical axes mapped through `mesh_rules`.

    A mesh axis that does not divide its dimension, or that an earlier dimension already uses,
    is dropped (the dimension stays replicated).
    """
    spec, used = [], set()
    for axis, size in zip(logical_axes(path, len(shape)), shape):
        mesh_axis = mesh_rules.get(axis) if axis is not None else None
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
            continue
        used.add(mesh_axis)
        spec.append(mesh_axis if mesh.shape[mesh_axis] > 1 else None)
    return PartitionSpec(*spec)


def replicated(mesh: Mesh) -> NamedSharding:
    """A sharding that keeps a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A tree like `params` (e.g. an `nnx.State` of `nnx.Param`) with a `NamedSharding` per leaf."""
    pairs, treedef = flatten_with_paths(params)
    return jax.tree.unflatten(
        treedef,
        [NamedSharding(mesh, partition_spec(p, tuple(x.shape), mesh)) for p, x in pairs],
    )


#: `MESH_RULES` for computing: parameters gathered over `fsdp`, other splits kept.
COMPUTE_MESH_RULES: Mapping[str, str | None] = {
    axis: None if mesh_axis == "fsdp" else mesh_axis for axis, mesh_axis in MESH_RULES.items()
}


def compute_shardings(params: Any, mesh: Mesh) -> Any:
    """Like `param_shardings`, with every parameter gathered over the `fsdp` axis.

    The sharding a parameter has while the model runs (FSDP): stored split over `fsdp`
    (`param_shardings`), used whole on each `fsdp` shard, still split over `tensor`.
    """
    pairs, treedef = flatten_with_paths(params)
    return jax.tree.unflatten(
        treedef,
        [
            NamedSharding(mesh, partition_spec(p, tuple(x.shape), mesh, COMPUTE_MESH_RULES))
            for p, x in pairs
        ],
    )


def tree_shardings(tree: Any, params: Any, mesh: Mesh) -> Any:
    """A `NamedSharding` per leaf of `tree`, following the parameters in `params`.

    A leaf whose path ends with a parameter's path (`opt_state/.../mu/blocks/0/mlp/w_in/kernel`
    ends with `blocks/0/mlp/w_in/kernel`) and has its shape gets that parameter's sharding; every
    other leaf (step counters, scalars, factored statistics) is replicated.
    """
    specs = {
        p: (tuple(x.shape), partition_spec(p, tuple(x.shape), mesh))
        for p, x in flatten_with_paths(params)[0]
    }
    pairs, treedef = flatten_with_paths(tree)
    out = []
    for path, leaf in pairs:
        parts = path.split("/")
        spec = PartitionSpec()
        for i in range(len(parts)):
            hit = specs.get("/".join(parts[i:]))
            if hit is not None and hit[0] == tuple(getattr(leaf, "shape", ())):
                spec = hit[1]
                break
        out.append(NamedSharding(mesh, spec))
    return jax.tree.unflatten(treedef, out)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over `BATCH_AXES`, the other `ndim - 1` axes replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_tree_shardings(tree: Any, mesh: Mesh, batch_size: int) -> Any:
    """Shardings for per-sequence state (memory states, KV caches, online-CMS buffers).

    Leaves whose leading axis has `batch_size` entries are split over `BATCH_AXES` along it (one
    memory state per sequence, docs/SEMANTICS.md §5.2); the others (shared counters) are replicated.
    """
    if batch_size % batch_divisor(mesh):
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the batch shards "
            f"{dict((a, mesh.shape[a]) for a in BATCH_AXES)}"
        )

    def one(leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        if shape and shape[0] == batch_size:
            return batch_sharding(mesh, len(shape))
        return replicated(mesh)

    return jax.tree.map(one, tree)
