"""Device mesh and shardings: one ``('data', 'fsdp')`` mesh, ``NamedSharding`` + ``jax.jit``.

Batches are split over both axes; every parameter and optimizer-state leaf is split over
``fsdp`` along its largest axis that divides evenly (small leaves stay replicated), so no device
holds the whole model or optimizer state when ``fsdp > 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from iedp_jax.infra.errors import ConfigError

PyTree = Any

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


def make_mesh(shape: Sequence[int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp')`` mesh; one entry may be -1 to take the remaining devices.

    Built by ``jax.make_mesh``, which orders the devices by the physical topology (TPU torus,
    NVLink domains), so ``fsdp`` neighbours are near each other; the axes are ``Auto`` (sharding
    by ``NamedSharding`` + ``jit``, not explicit-sharding types)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = list(shape)
    if len(shape) != 2:
        raise ConfigError(f"mesh.shape must have two entries (data, fsdp), got {shape}.")
    if shape.count(-1) > 1:
        raise ConfigError(f"mesh.shape may contain at most one -1, got {shape}.")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if len(devices) % known:
            raise ConfigError(f"mesh.shape {shape} does not divide the {len(devices)} devices.")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ConfigError(f"mesh.shape {shape} needs {int(np.prod(shape))} devices but "
                         f"{len(devices)} are available: use -1 for one axis.")
    return jax.make_mesh(tuple(shape), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def leaf_spec(shape: Sequence[int], fsdp: int, min_size: int = 2**12) -> P:
    """Shards the largest evenly divisible axis over ``fsdp``; small or indivisible leaves replicate."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = FSDP
            return P(*spec)
    return P()


def tree_shardings(mesh: Mesh, tree: PyTree) -> PyTree:
    """``NamedSharding`` for every leaf of ``tree`` (arrays or ``ShapeDtypeStruct``s)."""
    fsdp = mesh.shape[FSDP]
    return jax.tree.map(lambda x: NamedSharding(mesh, leaf_spec(np.shape(x), fsdp)), tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(mesh: Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Global arrays from this process's rows of the batch (multi-host ready)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def batch_per_step(requested: int, mesh: Mesh, flag: str) -> int:
    """The batch size for ``flag`` (0 = one example per device), checked to split over the mesh."""
    devices = mesh.devices.size
    batch = int(requested) or devices
    if batch < 0 or batch % devices:
        raise ConfigError(f"{flag}={requested} must be a multiple of the {devices} devices (0 = one per device).")
    return batch


def process_rows(global_batch_size: int) -> slice:
    """The rows of a global batch that this process loads."""
    n, i = jax.process_count(), jax.process_index()
    if global_batch_size % n:
        raise ConfigError(f"batch size {global_batch_size} must divide by the {n} processes.")
    per = global_batch_size // n
    return slice(i * per, (i + 1) * per)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order (no transfer of other rows)."""
    parts: dict[int, np.ndarray] = {}
    for shard in x.addressable_shards:
        start = shard.index[0].start or 0
        if start not in parts:
            parts[start] = np.asarray(shard.data)
    return np.concatenate([parts[k] for k in sorted(parts)])


def with_shardings(tree: PyTree, shardings: PyTree) -> PyTree:
    """``ShapeDtypeStruct``s of ``tree``'s leaves (arrays or structs) carrying ``shardings``."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def put(tree: PyTree, shardings: PyTree) -> PyTree:
    """Places host arrays on the mesh leaf by leaf (each process passes the full value)."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)
