"""Device meshes and shardings for several devices or hosts: JAX's own SPMD machinery.

Everything here is ``jax.sharding``: a ``Mesh`` over the devices with a data axis (and a model
axis for exploration's candidate groups), ``NamedSharding``s, and ``jax.device_put``. The
compiled programs are the single-device ones; jit follows the shardings of their inputs
(batch rows split over the data axis, parameters replicated), so a sharded step computes
what the single-device step computes, with XLA adding the cross-device reductions.

Several hosts: start one process per host with the same config and
``--config.mesh.multihost=True``; :func:`initialize` then calls
``jax.distributed.initialize()`` (coordinator, process count and id from the cluster
environment or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) before any
device is used, and the mesh spans every host's devices.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_initialized = False


def initialize(section: ml_collections.ConfigDict) -> None:
    """Joins the multi-host job when ``mesh.multihost`` (once per process)."""
    global _initialized
    if bool(section.multihost) and not _initialized:
        jax.distributed.initialize()
        _initialized = True


def make_mesh(
    section: ml_collections.ConfigDict | None = None,
    devices: int | None = None,
    model: int | None = None,
) -> Mesh:
    """A (data, model) mesh over the first ``mesh.devices`` devices (0: all of them), the model
    axis ``mesh.model_parallel`` wide. Arguments override the section."""
    count = int(section.devices) if devices is None and section is not None else (devices or 0)
    width = int(section.model_parallel) if model is None and section is not None else (model or 1)
    available = jax.devices()
    count = count or len(available)
    if count > len(available):
        raise ValueError(
            f"mesh.devices={count} but only {len(available)} devices are visible "
            f"({available[0].platform}); on CPU, XLA_FLAGS="
            "--xla_force_host_platform_device_count=N makes N"
        )
    if width < 1 or count % width:
        raise ValueError(f"mesh.model_parallel={width} must divide mesh.devices={count}")
    grid = np.array(available[:count]).reshape(count // width, width)
    return Mesh(grid, ("data", "model"))


def data_size(mesh: Mesh) -> int:
    """Devices along the data axis."""
    return int(mesh.shape["data"])


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: int = 0, ndim: int | None = None) -> NamedSharding:
    """Rows (dimension ``axis``) split over the data axis."""
    spec = [None] * (axis + 1 if ndim is None else ndim)
    spec[axis] = "data"
    return NamedSharding(mesh, P(*spec))


def place(x: Any, target: NamedSharding) -> jax.Array:
    """``x`` (the same global value in every process) laid out as ``target``. Each process
    fills only its own devices' shards, which is what makes this work across hosts."""
    # One path for one host and many: the tests on forced CPU devices run the multi-host code.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def shard_batch(mesh: Mesh, x: Any, axis: int = 0) -> jax.Array:
    """``x`` on the mesh with dimension ``axis`` split over the data axis."""
    shape = np.shape(x)
    if shape[axis] % data_size(mesh):
        raise ValueError(
            f"a batch of {shape[axis]} does not split over "
            f"{data_size(mesh)} data-parallel devices; use a multiple"
        )
    return place(x, batch_sharding(mesh, axis, len(shape)))


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Every leaf of ``tree`` on every device of the mesh."""
    return jax.tree.map(lambda leaf: place(leaf, replicated(mesh)), tree)


def shard_members(mesh: Mesh, tree: Any) -> Any:
    """Stacked candidates (leading axis) split over the model axis, where it divides."""
    width = int(mesh.shape["model"])

    def put(leaf):
        ok = np.ndim(leaf) >= 1 and np.shape(leaf)[0] % width == 0
        return place(leaf, NamedSharding(mesh, P("model") if ok else P()))

    return jax.tree.map(put, tree)
