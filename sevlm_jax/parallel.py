"""Data parallelism over every device of every process: the mesh, the shardings, global batches.

One mesh axis, 'data', spans the devices of all processes (config.parallel.num_devices of
them; 0 = all). A batch is split along it; parameters and optimiser state are replicated
(parallel.param_sharding='replicated') or, with 'fsdp', each large array is split along its
largest dimension divisible by the axis size. jit then inserts the collectives (gradient
all-reduce; all-gather and reduce-scatter for fsdp), so the train step itself is unchanged.

The mesh lists devices process by process, so each process owns a contiguous block of every
batch: the global batch is the processes' host batches concatenated in process order.

Several processes (hosts, or one process per GPU under SLURM) join through
jax.distributed.initialize, which maybe_initialize_distributed calls when the launch
environment or the config asks for it. It must run before anything touches a JAX device.
"""

import math
import os
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from sevlm_jax.errors import ConfigError

DATA_AXIS = "data"
PARAM_SHARDINGS = ("replicated", "fsdp")


# ----------------------------------------------------------------------------- processes

def _cluster_launch(environ: Mapping[str, str]) -> bool:
  """Did a cluster launcher start several processes of this program?"""
  if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in environ:
    return True  # srun (not the batch script itself, which also sees SLURM_NTASKS)
  if int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True  # mpirun
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True  # a multi-host TPU slice on GKE
  return bool(environ.get("JAX_COORDINATOR_ADDRESS"))


def distributed_args(cfg: ml_collections.ConfigDict, environ: Mapping[str, str]
                     ) -> dict[str, Any] | None:
  """Arguments for jax.distributed.initialize, or None when this is a single-process run.

  cfg.distributed: 'auto' initialises when coordinator fields are set or a cluster launcher
  (srun, mpirun, a GKE TPU job, JAX_COORDINATOR_ADDRESS) started several processes; 'on'
  always does (JAX then detects the rest, e.g. on Cloud TPU VMs); 'off' never does.
  Fields left unset (coordinator_address '', num_processes 0, process_id -1) are detected
  by JAX from the environment.
  """
  if cfg.distributed not in ("auto", "on", "off"):
    raise ConfigError(f"parallel.distributed={cfg.distributed!r}; choose 'auto', 'on' or 'off'")
  explicit = {}
  if cfg.coordinator_address:
    explicit["coordinator_address"] = cfg.coordinator_address
  if cfg.num_processes > 0:
    explicit["num_processes"] = int(cfg.num_processes)
  if cfg.process_id >= 0:
    explicit["process_id"] = int(cfg.process_id)
  if cfg.distributed == "off" or explicit.get("num_processes") == 1:
    return None
  if cfg.distributed == "on" or explicit or _cluster_launch(environ):
    return dict(explicit, initialization_timeout=int(cfg.initialization_timeout))
  return None


def maybe_initialize_distributed(cfg: ml_collections.ConfigDict) -> bool:
  """Joins the other processes of a multi-process launch; True when this run is distributed.

  Processes other than 0 then log warnings and errors only.
  """
  args = distributed_args(cfg, os.environ)
  if args is None:
    return False
  if not jax.distributed.is_initialized():
    jax.distributed.initialize(**args)
  logging.info("process %d of %d: %d local devices, %d in all", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  return True


def primary_first(fn: Callable[[], Any], name: str) -> Any:
  """fn() on process 0, then on the others: process 0 creates shared files, the others read them."""
  if jax.process_count() == 1:
    return fn()
  primary = jax.process_index() == 0
  try:
    if primary:
      return fn()
  finally:  # the others wait even when process 0 fails, then meet the same error themselves
    multihost_utils.sync_global_devices(f"primary_first:{name}")
  return fn()


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (a step one process could not read)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


# ----------------------------------------------------------------------------- the mesh

def mesh_devices(num_devices: int, devices: Sequence[Any], process_count: int) -> list[Any]:
  """The devices of the 'data' axis: num_devices of them (0 = all), as many from each process.

  Ordered by (process, device id), so each process holds one contiguous block of a batch.
  """
  available = len(devices)
  n = int(num_devices) or available
  if n > available:
    kinds = sorted({d.platform for d in devices})
    raise ConfigError(
        f"parallel.num_devices={n}, but only {available} {'/'.join(kinds)} device(s) are visible "
        f"across {process_count} process(es); set --config.parallel.num_devices=0 to use all of "
        "them, or launch on more devices")
  if n % process_count:
    raise ConfigError(f"parallel.num_devices={n} cannot be split evenly over {process_count} "
                      f"processes; use a multiple of {process_count} (or 0 for all devices)")
  per_process = n // process_count
  ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
  chosen = []
  for p in sorted({d.process_index for d in ordered}):
    chosen += [d for d in ordered if d.process_index == p][:per_process]
  if len(chosen) != n:
    raise ConfigError(f"parallel.num_devices={n} needs {per_process} devices in each of the "
                      f"{process_count} processes; some have fewer")
  return chosen


def make_mesh(cfg: ml_collections.ConfigDict) -> Mesh:
  """The 1-D 'data' mesh of config.parallel (validated: no compilation has happened yet)."""
  if cfg.param_sharding not in PARAM_SHARDINGS:
    raise ConfigError(f"parallel.param_sharding={cfg.param_sharding!r}; choose "
                      f"{' or '.join(PARAM_SHARDINGS)}")
  devices = mesh_devices(cfg.num_devices, jax.devices(), jax.process_count())
  return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def data_size(mesh: Mesh) -> int:
  return int(mesh.shape[DATA_AXIS])


def mesh_processes(mesh: Mesh) -> list[int]:
  return sorted({d.process_index for d in mesh.devices.flat})


def process_part(mesh: Mesh) -> tuple[int, int]:
  """(this process's block of a batch, number of blocks): its rank among the mesh's processes."""
  processes = mesh_processes(mesh)
  return processes.index(jax.process_index()), len(processes)


def check_batch_size(field: str, global_batch: int, mesh: Mesh) -> None:
  """A global batch must split evenly over the devices of the 'data' axis."""
  n = data_size(mesh)
  if global_batch % n:
    suggestion = max(n, round(global_batch / n) * n)
    raise ConfigError(
        f"{field}={global_batch} (the global batch, split over every device of every process) is "
        f"not divisible by the {n} devices of the '{DATA_AXIS}' mesh axis; use a multiple of {n}, "
        f"e.g. --config.{field}={suggestion}, or fewer devices with --config.parallel.num_devices")


def padded_batch_size(batch_size: int, mesh: Mesh) -> int:
  """An evaluation batch rounded up to a multiple of the device count (padding rows are masked)."""
  n = data_size(mesh)
  return -(-int(batch_size) // n) * n


# ----------------------------------------------------------------------------- shardings

def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the 'data' axis; the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def param_spec(shape: Sequence[int], axis_size: int, mode: str, min_size: int) -> P:
  """Replicated, or (fsdp) split along the largest dimension divisible by the axis size.

  Arrays under min_size elements (biases, layer norms, scalars) stay replicated: splitting them
  saves little memory and costs a collective each.
  """
  if mode == "replicated" or axis_size == 1 or math.prod(shape) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: (-shape[d], d)):
    if shape[dim] % axis_size == 0:
      spec = [None] * len(shape)
      spec[dim] = DATA_AXIS
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh, cfg: ml_collections.ConfigDict) -> Any:
  """A NamedSharding for every array of a params / train-state tree (concrete or abstract).

  Decided by shape alone, so the optimiser's moments get the sharding of their parameters.
  """
  size = data_size(mesh)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, param_spec(np.shape(x), size, cfg.param_sharding,
                                               cfg.fsdp_min_size)), tree)


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their target shardings (for Orbax restore and jit)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


# ----------------------------------------------------------------------------- moving data

def put(tree: Any, shardings: Any) -> Any:
  """Places a tree on the mesh; a host value (numpy, or an array of one process's own device)
  must be the same on every process, and each process copies in only the parts it holds."""
  multi = jax.process_count() > 1

  def one(x, sharding):
    if isinstance(x, jax.Array) and not (multi and x.is_fully_addressable):
      return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: one(x, shardings), tree)
  return jax.tree.map(one, tree, shardings)


def shard_host_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's block of a batch -> global arrays split over the 'data' axis."""
  sharding = batch_sharding(mesh)
  parts = len(mesh_processes(mesh))
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(v), (np.shape(v)[0] * parts,) + np.shape(v)[1:])
          for k, v in batch.items()}


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a global array, on every process."""
  if x.is_fully_addressable:
    return np.asarray(x)
  if x.is_fully_replicated:
    return np.asarray(x.addressable_data(0))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
