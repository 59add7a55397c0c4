"""Device mesh and shardings.

The mesh has two axes, `data` and `fsdp`. The batch is split over both; parameters and
optimizer state are replicated here (one device, or pure data parallelism). FSDP rules
for parameters plug in through `state_sharding`.
"""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def create_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all); -1 takes the remaining devices.

    Built as a plain `Mesh` (Auto axis types) so `jit` in/out shardings drive the
    partitioning; `jax.make_mesh` now defaults to Explicit axes, which we don't use.
    """
    devices = np.asarray(jax.devices() if devices is None else devices)
    data, fsdp = int(config.get("data", -1)), int(config.get("fsdp", 1))
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data, mesh.fsdp may be -1")
    if data == -1:
        data = devices.size // fsdp
    if fsdp == -1:
        fsdp = devices.size // data
    if data * fsdp != devices.size:
        raise ValueError(
            f"mesh: mesh.data={data} x mesh.fsdp={fsdp} does not match {devices.size} devices"
        )
    return Mesh(devices.reshape(data, fsdp), MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every mesh axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(mesh: Mesh, abstract_state):
    """Sharding for every leaf of the train state (replicated in the data-parallel case)."""
    return jax.tree.map(lambda _: replicated_sharding(mesh), abstract_state)


def global_batch(batch: dict, sharding: NamedSharding) -> dict:
    """Numpy batch of this process → global jax arrays laid out on the mesh.

    Non-numeric leaves (e.g. byte-string prompts) stay on the host.
    """
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
