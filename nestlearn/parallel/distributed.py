"""Multi-host runs: `jax.distributed` initialisation, and global batches built on every host.

`initialize(config.mesh.distributed)` starts JAX's distributed runtime before anything touches a
device, so that `jax.devices()` lists the devices of every process and one mesh spans them all.
The coordinator, process count and process id come from the config, else from the environment
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), else from JAX's own cluster
auto-detection (Cloud TPU pod slices, SLURM, Open MPI, Kubernetes JobSets).

Data: every process runs the same deterministic batch iterator (same seed, same checkpointed
position), so every process knows the global batch; `global_batch` turns it into one global
`jax.Array` of which each process transfers only the rows its own devices hold. Tokens are cheap
(a 512 x 4096 int32 batch is 8 MiB), and the iterator state stays identical on all processes, so
a checkpoint restores the data order without per-host bookkeeping.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Sharding

__all__ = ["global_batch", "initialize", "process_rows"]

log = logging.getLogger(__name__)

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(distributed_config) -> bool:
    """Starts `jax.distributed` when the config or the environment asks for it.

    Args:
      distributed_config: the `mesh.distributed` config section: `enabled` (bool),
        `coordinator_address` ("" = environment or auto-detection), `num_processes` (0 = same),
        `process_id` (-1 = same).

    Returns:
      True when the distributed runtime is running after the call (started now or before).

    Raises:
      ValueError: `num_processes` < 0 or `process_id` < -1.
    """
    c = distributed_config
    if c.num_processes < 0:
        raise ValueError(f"mesh.distributed.num_processes={c.num_processes} must be >= 0")
    if c.process_id < -1:
        raise ValueError(f"mesh.distributed.process_id={c.process_id} must be >= -1")
    wanted = c.enabled or bool(c.coordinator_address) or any(k in os.environ for k in _ENV)
    if jax.distributed.is_initialized():
        return True
    if not wanted:
        return False
    kwargs = {}
    address = c.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        kwargs["coordinator_address"] = address
    num = c.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", 0))
    if num:
        kwargs["num_processes"] = num
    pid = c.process_id if c.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", -1))
    if pid >= 0:
        kwargs["process_id"] = pid
    jax.distributed.initialize(**kwargs)
    log.info(
        "jax.distributed: process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def global_batch(array: np.ndarray, sharding: Sharding) -> jax.Array:
    """The global batch `array` (the same on every process) as a `jax.Array` with `sharding`.

    Each process copies to its devices only the slices they hold under `sharding`.
    """
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def process_rows(sharding: Sharding, batch_size: int) -> tuple[int, int]:
    """`(start, stop)`: the rows of a `[batch_size, ...]` batch this process's devices hold.

    For pipelines that read only their own part of each global batch. Assumes the batch axis
    is split into contiguous per-process ranges, as `make_mesh` lays out process-major devices.

    Raises:
      ValueError: this process's rows are not one contiguous range under `sharding`.
    """
    index_map = sharding.addressable_devices_indices_map((batch_size,))
    rows = sorted(
        {
            (s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
            for s in index_map.values()
        }
    )
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != stop - start:
        raise ValueError(
            f"the rows of process {jax.process_index()} are not contiguous: {rows} "
            f"of batch_size={batch_size}"
        )
    return start, stop
