"""The device mesh of a run, from the `mesh` section of the experiment config.

Three named axes, outermost first:

| axis | what is split over it |
|---|---|
| `data` | the batch (pure data parallelism: every device on it holds whole weights) |
| `fsdp` | the batch *and* the width (`embed`) dimension of the weights and optimizer state |
| `tensor` | heads, feed-forward hidden units and vocabulary (Megatron-style tensor parallelism) |

The batch and every per-sequence memory state are split over `("data", "fsdp")` (`BATCH_AXES`).
A size of -1 takes the devices the other axes leave. The mesh may use fewer devices than exist
(the default `1 x 1 x 1` is one device: the single-device behaviour); it never uses more.

The axes are `AxisType.Auto` (classic GSPMD propagation; `jax.make_mesh` would default to
Explicit axes), so jit-compiled code needs no sharding annotations beyond its in/out shardings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

__all__ = ["BATCH_AXES", "MESH_AXES", "batch_divisor", "make_mesh", "mesh_shape"]

#: Names of the mesh axes, outermost (slowest interconnect) first.
MESH_AXES = ("data", "fsdp", "tensor")
#: Mesh axes the batch (and per-sequence memory state) is split over.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, int, int]:
    """Resolves the `(data, fsdp, tensor)` sizes of the config against the device count.

    Args:
      sizes: three ints >= 1, or -1 for at most one of them ("the devices left over").
      num_devices: devices available.

    Returns:
      The three sizes, whose product is at most `num_devices`.

    Raises:
      ValueError: naming the offending sizes: a wrong count, a size that is 0 or < -1, more than
        one -1, a -1 that the device count does not resolve, or more devices than exist.
    """
    sizes = tuple(sizes)
    if len(sizes) != len(MESH_AXES):
        raise ValueError(f"mesh sizes={sizes} must give one size per axis {MESH_AXES}")
    for name, size in zip(MESH_AXES, sizes):
        if not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"mesh.{name}={size!r} must be an int >= 1 or -1")
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes={sizes}: at most one axis may be -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % fixed:
            raise ValueError(
                f"mesh sizes={sizes}: {num_devices} devices are not a multiple of the fixed "
                f"axes' product {fixed}, so -1 cannot be resolved"
            )
        sizes = tuple(num_devices // fixed if s == -1 else s for s in sizes)
    if math.prod(sizes) > num_devices:
        raise ValueError(
            f"mesh sizes={sizes} need {math.prod(sizes)} devices, only {num_devices} exist"
        )
    return sizes  # type: ignore[return-value]


def make_mesh(mesh_config=None, *, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The `Mesh` with axes `MESH_AXES` described by the config's `mesh` section.

    Args:
      mesh_config: the `mesh` section (fields `data`, `fsdp`, `tensor`), a `(data, fsdp,
        tensor)` tuple, or None for one device.
      devices: the devices to use (default `jax.devices()`, every process's devices); the mesh
        takes the first `data * fsdp * tensor` of them.

    Raises:
      ValueError: the sizes do not fit the devices (see `mesh_shape`).
    """
    devices = list(jax.devices() if devices is None else devices)
    if mesh_config is None:
        sizes = (1, 1, 1)
    elif isinstance(mesh_config, tuple):
        sizes = mesh_config
    else:
        sizes = (mesh_config.data, mesh_config.fsdp, mesh_config.tensor)
    shape = mesh_shape(sizes, len(devices))
    used = devices[: math.prod(shape)]
    return jax.make_mesh(
        shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=used
    )


def batch_divisor(mesh: Mesh) -> int:
    """How many shards the batch is split into: the product of the `BATCH_AXES` sizes."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)
