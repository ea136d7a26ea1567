"""Devices and processes: ``jax.distributed`` from the environment, a 1-D device mesh, sharded batches.

Data parallel with ``jax.sharding``: a :class:`~jax.sharding.Mesh` over the devices with one axis, ``data``;
parameters and optimiser state are replicated (``P()``), each batch is sharded on its first axis
(``P("data")``). The step is written for the *global* batch (global logits, global mean), and XLA inserts the
gathers and the gradient all-reduce, so 1 device and N devices compute the same losses on the same global batch.

Multi-host: each process calls :func:`init_distributed`, which runs ``jax.distributed.initialize`` when
``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are set
(or given); each host then feeds its own ``global_batch / process_count`` samples, assembled into one global
array with ``jax.make_array_from_process_local_data``.
"""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..config import ConfigError

__all__ = ["DATA_AXIS", "ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "init_distributed", "make_mesh",
           "Shardings"]

DATA_AXIS = "data"
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_initialised = False


def init_distributed(coordinator: "str | None" = None, num_processes: "int | None" = None,
                     process_id: "int | None" = None) -> tuple[int, int]:
    """``jax.distributed.initialize`` from the arguments or the environment (once); (process index, count)."""
    global _initialised
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if coordinator and not _initialised:
        try:
            n = int(num_processes if num_processes is not None else os.environ[ENV_NUM_PROCESSES])
            pid = int(process_id if process_id is not None else os.environ[ENV_PROCESS_ID])
        except (KeyError, ValueError):
            raise ConfigError(f"{ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} must be "
                              "integers too (the number of processes and this one's index from 0)") from None
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n, process_id=pid)
        _initialised = True
    return jax.process_index(), jax.process_count()


def make_mesh(local_devices: "int | None" = None) -> Mesh:
    """A mesh over all processes' devices (``local_devices`` of each host when given) on the ``data`` axis."""
    if local_devices is None:
        devices = jax.devices()
    else:
        have = jax.local_device_count()
        if not 1 <= local_devices <= have:
            raise ConfigError(f"devices={local_devices}, but this host has {have} JAX device(s)")
        if jax.process_count() > 1 and local_devices != have:
            raise ConfigError("with several processes every host uses all of its devices; leave devices unset")
        devices = jax.local_devices()[:local_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


class Shardings:
    """The replicated and batch shardings of a mesh, and host batches made global arrays."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self.replicated = NamedSharding(mesh, P())
        self.batch = NamedSharding(mesh, P(DATA_AXIS))
        self.size = mesh.devices.size

    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.size:
            raise ConfigError(f"global batch size ({global_batch}) must be divisible by the number of devices "
                              f"({self.size})")

    def put_batch(self, *arrays: np.ndarray):
        """This host's share of a global batch -> global arrays sharded on the data axis."""
        if jax.process_count() == 1:
            return tuple(jax.device_put(a, self.batch) for a in arrays)
        return tuple(jax.make_array_from_process_local_data(self.batch, a) for a in arrays)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)
