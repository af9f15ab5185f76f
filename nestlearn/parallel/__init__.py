"""nestlearn.parallel: scale-out on JAX's SPMD engine (`jax.sharding` + `jit`, `jax.distributed`).

A mesh with axes `data`, `fsdp`, `tensor` from the config's `mesh` section (`make_mesh`);
logical partitioning rules for every parameter of every registered model (`PARAM_RULES`,
`MESH_RULES`, `param_shardings`, `tree_shardings`); the batch and per-sequence memory state split
over the data axes (`batch_sharding`, `batch_tree_shardings`); multi-host initialisation and
global batches (`initialize`, `global_batch`); Pallas kernels run under `jax.shard_map` at their
boundary (`sharded_kernel`, with the context mesh set by `mesh_context`). See docs/scaling.md.
"""

from nestlearn.parallel.distributed import global_batch, initialize, process_rows
from nestlearn.parallel.mesh import BATCH_AXES, MESH_AXES, batch_divisor, make_mesh, mesh_shape
from nestlearn.parallel.partitioning import (
    MESH_RULES,
    PARAM_RULES,
    batch_sharding,
    batch_tree_shardings,
    compute_shardings,
    logical_axes,
    param_shardings,
    partition_spec,
    replicated,
    tree_shardings,
)
from nestlearn.parallel.sharded_kernel import (
    GATED_DELTA_LAYOUT,
    KERNEL_LAYOUTS,
    MLP_MEMORY_LAYOUT,
    KernelLayout,
    mesh_context,
    sharded_kernel,
)

__all__ = [
    "BATCH_AXES",
    "GATED_DELTA_LAYOUT",
    "KERNEL_LAYOUTS",
    "MESH_AXES",
    "MESH_RULES",
    "MLP_MEMORY_LAYOUT",
    "PARAM_RULES",
    "KernelLayout",
    "batch_divisor",
    "batch_sharding",
    "batch_tree_shardings",
    "compute_shardings",
    "global_batch",
    "initialize",
    "logical_axes",
    "make_mesh",
    "mesh_context",
    "mesh_shape",
    "param_shardings",
    "partition_spec",
    "process_rows",
    "replicated",
    "sharded_kernel",
    "tree_shardings",
]
