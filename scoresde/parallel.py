"""Data parallelism: one `jax.jit` over a device mesh with the batch split along a "data" axis.

Parameters and optimizer state are replicated; each batch is sharded along its batch axis, so XLA inserts the
gradient all-reduce itself (no pmap). On several processes (hosts, or several processes on one machine), call
`initialize_distributed` first, in every process, before any JAX computation: it joins JAX's multi-controller
runtime (`jax.distributed`), after which `jax.devices()` lists the devices of every process. Every process
then loads its own slice of each global batch and `shard_batch` assembles the global array; files other than
checkpoints are written by the primary process alone (`is_primary`), checkpoints by all (orbax).

Example:
    >>> mesh = data_mesh()
    >>> batches = shard_batch(local_batches, mesh, batch_axis=1)   # [steps, B, ...] split over devices
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import sys
import threading
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def check_coordinator_address(address: str) -> str:
    """`address` if it has the form HOST:PORT (PORT in 1 .. 65535); ValueError naming it otherwise."""
    host, _, port = address.rpartition(":")
    if not (host and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"coordinator_address {address!r} must be HOST:PORT with PORT in 1 .. 65535, e.g. "
                         f"10.0.0.1:1234 (process 0's host, where the coordinator listens).")
    return address


def check_process_settings(num_processes: int, process_id: int) -> None:
    """ValueError unless num_processes >= 1 and process_id lies in [0, num_processes)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1; got {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id {process_id} must lie in [0, {num_processes}) for num_processes="
                         f"{num_processes}.")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout_s: int = 300,
                           on_timeout: Callable[[str], None] | None = None) -> None:
    """Joins a multi-process run; call in every process before any JAX computation.

    With no arguments the cluster's settings are detected (Cloud TPU, SLURM, Open MPI; see
    `jax.distributed.initialize`); otherwise all three are given, the same coordinator_address and
    num_processes in every process and a distinct process_id in each (0 hosts the coordinator). CPU
    collectives between processes use gloo.

    jaxlib ends a process whose peers do not all join in time with a fatal error and a C++ stack trace,
    which Python cannot catch; so if joining takes `timeout_s` seconds, a watchdog thread calls
    `on_timeout(message)` first (default: the message on stderr and exit status 2), which must end the
    process.

    Raises:
      ValueError: on settings of the wrong form, before anything starts.
    """
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
             "process_id": process_id}
    if any(value is not None for value in given.values()):
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise ValueError(f"a multi-process run needs coordinator_address, num_processes and process_id "
                             f"together; {', '.join(missing)} missing.")
        check_coordinator_address(coordinator_address)
        check_process_settings(num_processes, process_id)
    if timeout_s < 1:
        raise ValueError(f"the initialization timeout must be >= 1 second; got {timeout_s}.")
    where = (f"coordinator {coordinator_address}, process {process_id} of {num_processes}"
             if coordinator_address else "settings detected from the cluster")
    message = (f"the processes of the run ({where}) did not all join within {timeout_s} s: a process is "
               f"missing, was given other settings, or cannot reach the coordinator.")
    joined = threading.Event()
    threading.Thread(target=_watch, args=(joined, timeout_s, message, on_timeout or _exit_2),
                     daemon=True).start()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:  # jaxlib's own deadline is left later than the watchdog's
        jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                   initialization_timeout=timeout_s + _JAXLIB_MARGIN_S)
    finally:
        joined.set()


_JAXLIB_MARGIN_S = 30


def _watch(joined: threading.Event, timeout_s: float, message: str, on_timeout: Callable[[str], None]):
    if not joined.wait(timeout_s):
        on_timeout(message)


def _exit_2(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(2)


def check_same_settings(settings: str) -> None:
    """ValueError unless every process passes the same `settings` (e.g. its command line without the
    process id): processes given different runs would otherwise wait on each other forever."""
    if jax.process_count() == 1:
        return
    digest = np.frombuffer(hashlib.sha256(settings.encode()).digest(), np.uint32)
    digests = multihost_utils.process_allgather(digest)
    differ = [i for i, d in enumerate(np.asarray(digests)) if not np.array_equal(d, digests[0])]
    if differ:
        raise ValueError(f"process{'es' * (len(differ) > 1)} {', '.join(map(str, differ))} of "
                         f"{jax.process_count()} were started with other settings than process 0; start "
                         f"every process with the same flags but --process_id.")


def is_primary() -> bool:
    """Whether this process writes the run's files other than checkpoints (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (nothing on one process), e.g. after the primary wrote files."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def processes_note(mesh: Mesh) -> str:
    """' (2 processes x 2 devices)' for a mesh over several processes, '' for one; for messages."""
    processes = len({d.process_index for d in mesh.devices.flat})
    return f" ({processes} processes x {mesh.size // processes} devices)" if processes > 1 else ""


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
            f"batch size {batch_size} is not a positive multiple of the device count {mesh.size}"
            f"{processes_note(mesh)}.")
    return batch_size // mesh.size


def shard_batch(local: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """The global batch as sharded arrays, from this host's slice of it (the whole batch on one host).

    `local` is an array or a pytree of arrays (a `data.Batch`), each split along `batch_axis`.
    """
    sharding = batch_sharding(mesh, batch_axis)
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def any_process(flag: bool) -> bool:
    """Whether `flag` is true in any process (itself on one process): loops stop together, or one process
    would wait forever on a computation the others left."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def map_groups(group_fn: Callable[[Any, Any], Any], mesh: Mesh) -> Callable[[Any, Any], Any]:
    """(shared, groups) -> outputs: `group_fn(shared, group)` run on one group per device of `mesh`.

    Args:
      group_fn: (shared, one group's arrays) -> one group's outputs (a pytree of arrays), jittable.
      mesh: the devices, of every process (`data_mesh`).

    Returns:
      A function of `shared` (parameters, keys: replicated arrays or host arrays, the same in every process)
      and `groups` (a pytree of host arrays [G, ...], G >= 1, the same in every process) that returns the
      outputs of every group, [G, ...], as host arrays in every process. It dispatches mesh.size groups at a
      time, each process its own devices' groups (the last dispatch filled up with copies of the first
      group, whose outputs are dropped), and gathers the outputs of every process.

    Every device runs the one-device program compiled for it (in parallel threads, once per device and
    shape of the arguments), not a program partitioned over the mesh: XLA optimizes a partitioned program
    differently (it keeps a division by a constant that the one-device program turns into a
    multiplication), so its groups would differ from a one-device run's in the last bits, and a solve
    amplifies those (README, "Many devices and many hosts"). This way a group's outputs are bitwise the same
    on any number of devices and processes, and a statistic taken over a group never crosses devices.
    """
    here = [(position, device) for position, device in enumerate(mesh.devices.flat)
            if device.process_index == jax.process_index()]
    order = _process_order(here)
    executables: dict = {}

    def call(shared, groups):
        count = len(jax.tree_util.tree_leaves(groups)[0])
        padded = -(-count // mesh.size) * mesh.size
        groups = jax.tree_util.tree_map(
            lambda a: np.concatenate([a, np.repeat(a[:1], padded - count, axis=0)]), groups)
        on_device = {device: jax.tree_util.tree_map(lambda a: _copy_on(a, device), shared)
                     for _, device in here}
        outs = []
        for first in range(0, padded, mesh.size):
            inputs = [(device, on_device[device],
                       jax.device_put(jax.tree_util.tree_map(lambda a: a[first + position], groups), device))
                      for position, device in here]
            key = str(jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), inputs[0][1:]))
            if key not in executables:
                executables[key] = _compile_each(group_fn, inputs)
            local = [executables[key][device](*args) for device, *args in inputs]  # asynchronous: at once
            outs.append(_gather_processes(jax.tree_util.tree_map(lambda *a: np.stack(a), *local), order))
        return jax.tree_util.tree_map(lambda *parts: np.concatenate(parts)[:count], *outs)

    return call


def _copy_on(a: Any, device: jax.Device) -> Any:
    """This process's copy of a replicated array on `device`, or a host array put there."""
    if isinstance(a, jax.Array):
        for shard in a.addressable_shards:
            if shard.device == device:
                return shard.data
    return jax.device_put(a, device)


def _compile_each(group_fn: Callable, inputs: list) -> dict:
    """{device: `group_fn` compiled for that device's arguments}, compiled in parallel threads."""
    def compile_one(device, *args):
        return device, jax.jit(group_fn).lower(*args).compile()

    with concurrent.futures.ThreadPoolExecutor(len(inputs)) as pool:
        return dict(pool.map(lambda item: compile_one(*item), inputs))


def _process_order(here: list) -> np.ndarray | None:
    """Where the rows gathered from every process (process by process, each its devices) go in the mesh's
    device order; None on one process."""
    if jax.process_count() == 1:
        return None
    positions = multihost_utils.process_allgather(np.asarray([position for position, _ in here]))
    return np.argsort(np.asarray(positions).reshape(-1))


def _gather_processes(local: Any, order: np.ndarray | None) -> Any:
    """Host arrays [this process's devices, ...] of every process, in the mesh's device order:
    [mesh.size, ...]."""
    if order is None:
        return local
    return jax.tree_util.tree_map(
        lambda a: np.asarray(multihost_utils.process_allgather(a)).reshape((-1,) + a.shape[1:])[order], local)
