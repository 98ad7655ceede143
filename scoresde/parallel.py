"""Data parallelism: one `jax.jit` over a device mesh with the batch split along a "data" axis.

Parameters and optimizer state are replicated; each batch is sharded along its batch axis, so XLA inserts the
gradient all-reduce itself (no pmap). On several hosts, call `initialize_distributed` first; every host then
loads its own slice of each global batch and `shard_batch` assembles the global array.

Example:
    >>> mesh = data_mesh()
    >>> batches = shard_batch(local_batches, mesh, batch_axis=1)   # [steps, B, ...] split over devices
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Joins a multi-host run (cluster settings auto-detected, e.g. Cloud TPU, SLURM); before any JAX op."""
    jax.distributed.initialize()


def data_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh named "data" over `devices` (default: every device of every host)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Axis `batch_axis` is split evenly over the mesh's "data" axis; the other axes are whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> int:
    """The per-device batch size; ValueError naming both numbers unless the batch splits evenly."""
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(
            f"batch size {batch_size} is not a positive multiple of the device count {mesh.size}.")
    return batch_size // mesh.size


def shard_batch(local: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """The global batch as sharded arrays, from this host's slice of it (the whole batch on one host).

    `local` is an array or a pytree of arrays (a `data.Batch`), each split along `batch_axis`.
    """
    sharding = batch_sharding(mesh, batch_axis)
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)
