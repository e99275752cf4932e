"""Multi-host runs on plain `jax.distributed`: one process per host (TPU VM worker, GPU node),
every process running the same command.

Each process does the host-side work for its own rows only (reading, rendering and tokenizing
prompts, parsing rewards) and hands its block of the global batch to JAX with
`jax.make_array_from_process_local_data`; device results come back as the process's own rows
with `to_local`. Only process 0 writes logs, metrics and exported files; Orbax coordinates
checkpoints across processes itself.

With one process every helper here is the identity, so single-host code paths are unchanged.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

# Environment variables read by `initialize` when no explicit arguments are given (for clusters
# JAX cannot detect by itself; TPU VMs, SLURM and Open MPI are detected by JAX).
ENV_COORDINATOR = "GRM_JAX_COORDINATOR"        # host:port of process 0
ENV_NUM_PROCESSES = "GRM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GRM_JAX_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, log=print) -> None:
    """Joins this process to the run: explicit arguments, else the GRM_JAX_* environment
    variables, else JAX's own cluster detection (TPU VM metadata, SLURM, Open MPI)."""
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("a multi-host run needs the coordinator address, the number of processes and "
                         f"this process's id together (or none of them, for auto-detection); got "
                         f"coordinator={coordinator!r}, num_processes={num_processes}, process_id={process_id}")
    jax.distributed.initialize(coordinator, num_processes, process_id)
    if is_main():
        log(f"jax.distributed: {jax.process_count()} processes, {jax.device_count()} devices "
            f"({jax.local_device_count()} per process)")


def is_main() -> bool:
    """True on process 0 (the one that writes logs, metrics and exported files)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier called `name` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def allgather(x) -> np.ndarray:
    """[process_count, ...]: every process's value of the host array `x`, in process order."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def global_max(x: int) -> int:
    return int(allgather(np.int64(x)).max())


def gather_shard_values(own: dict[int, list[int]], num_shards: int) -> dict[int, list[int]]:
    """Every shard's list of non-negative ints (example lengths, say), from each process's lists
    of the shards it owns: two small all-gathers, done once rather than once per step."""
    counts = np.zeros(num_shards, np.int64)
    for s, values in own.items():
        counts[s] = len(values)
    counts = allgather(counts).max(axis=0)
    table = np.full((num_shards, max(1, int(counts.max()))), -1, np.int64)
    for s, values in own.items():
        table[s, :len(values)] = values
    table = allgather(table).max(axis=0)
    return {s: table[s, :counts[s]].tolist() for s in range(num_shards)}


def same_on_all(value: str) -> str:
    """Process 0's `value` (a short string), on every process."""
    if jax.process_count() == 1:
        return value
    raw = np.frombuffer(value.encode().ljust(256, b"\0")[:256], np.uint8)
    got = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    return bytes(got.astype(np.uint8)).rstrip(b"\0").decode()


def to_global(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global array whose rows are every process's `local` rows, process 0's first."""
    if jax.process_count() == 1:
        return jax.device_put(local, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def to_local(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array (the whole array with one process)."""
    if jax.process_count() == 1 or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    rows: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = (shard.index[0].start or 0) if shard.index else 0
        rows.setdefault(start, np.asarray(shard.data))
    starts = sorted(rows)
    out = np.concatenate([rows[s] for s in starts], axis=0)
    expected = x.shape[0] // jax.process_count()
    if out.shape[0] != expected:
        raise ValueError(f"array of shape {x.shape} is not split by rows across processes "
                         f"({out.shape[0]} local rows, expected {expected})")
    return out


def local_batch_multiple(mesh: Mesh | None) -> int:
    """The number of batch shards on this process's devices: local batches are multiples of it."""
    if mesh is None:
        return 1
    return max(1, mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count())


def owned_shards(num_shards: int) -> Sequence[int]:
    """The data shards this process reads: a contiguous block of `num_shards`."""
    P, p = jax.process_count(), jax.process_index()
    if num_shards % P:
        raise ValueError(f"data_shards={num_shards} must be a multiple of the process count {P}")
    per = num_shards // P
    return range(p * per, (p + 1) * per)
