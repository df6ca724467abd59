"""Data parallelism over every device, one host or many (``jax.sharding``).

The experiments are per-example (each image's attack, maps and metrics ignore the other images
of its batch), so they scale by splitting the batch: a one-axis ``Mesh`` named ``'data'`` over
all devices of all processes, example arrays split along their leading axis with
``NamedSharding(mesh, PartitionSpec('data'))`` and everything else (params, budgets) replicated.

Two ways to run a function on such a batch:

* ``jax.jit(fn)(replicate(params, mesh), shard_batch(x, mesh), ...)``: XLA partitions the
  program itself (GSPMD). Always correct, whatever ``fn`` does, but a reshape that mixes the
  batch axis with another (``[V, B] -> [V * B]``, common when vmapping over budgets) makes XLA
  gather the batch and repeat that part on every device.
* ``data_parallel(fn, mesh, batched=...)``: ``jax.shard_map``; each device runs ``fn`` on its
  own examples, no communication at all. Only for per-example functions whose randomness is
  per-example (a batch of keys, or keys derived from example indices): a single key would be
  reused by every device.

Batches whose size is not a multiple of the device count are padded with ``pad_batch``
(repeating the last example, so padded rows stay valid inputs) and the padded rows are
discarded after the computation (``[:n]`` on the leading axis).

Multi-host: call ``maybe_initialize_distributed`` first (before any other JAX call), give every
process the same global host batch (``shard_batch`` then places only the rows each process's
devices own) or its own rows (``process_local=True``), and gather results with ``to_host``.
"""

from typing import Any, Callable, Optional, Sequence

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec
import numpy as np

DATA_AXIS = 'data'
"""The name of the mesh axis that splits the batch."""


def maybe_initialize_distributed(enabled: bool, *, coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None) -> bool:
  """Joins a multi-process (multi-host) JAX run when ``enabled``.

  Must be called before any other JAX computation. With only ``enabled``, JAX detects the
  cluster itself (Cloud TPU slices, SLURM, Open MPI, ...); outside such an environment pass
  all three of ``coordinator_address``, ``num_processes`` and ``process_id``.

  Args:
    enabled: whether to initialise at all (a binary's ``--distributed`` flag).
    coordinator_address: ``host:port`` of process 0's coordinator service, or None.
    num_processes: number of processes (usually hosts), >= 1, or None.
    process_id: this process's rank in ``[0, num_processes)``, or None.

  Returns:
    Whether this call initialised ``jax.distributed`` (False when not enabled or when it
    already was).

  Raises:
    ValueError: cluster settings without ``enabled``, or inconsistent settings.
  """
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  if not enabled:
    named = sorted(k for k, v in given.items() if v is not None)
    if named:
      raise ValueError(f'{", ".join(named)} given but distributed initialisation is not '
                       'enabled (pass --distributed).')
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'num_processes must be >= 1, got {num_processes}.')
  if process_id is not None and (process_id < 0 or (num_processes is not None and
                                                    process_id >= num_processes)):
    raise ValueError(f'process_id must be in [0, num_processes={num_processes}), got '
                     f'{process_id}.')
  if jax.distributed.is_initialized():
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh named ``'data'`` over ``devices``.

  Args:
    devices: default ``jax.devices()``: every device of every process (after
      ``jax.distributed.initialize``), in JAX's order.

  Returns:
    ``Mesh`` of shape ``{'data': len(devices)}``.

  Raises:
    ValueError: an empty device list.
  """
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError('devices must name at least one device, got none.')
  return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def num_shards(mesh: Mesh) -> int:
  """How many ways ``mesh`` splits a batch."""
  return mesh.shape[DATA_AXIS]


def padded_size(batch: int, mesh: Mesh) -> int:
  """The smallest multiple of the device count that holds ``batch`` examples."""
  if batch < 1:
    raise ValueError(f'batch must be >= 1, got {batch}.')
  n = num_shards(mesh)
  return -(-batch // n) * n


def pad_batch(tree: Any, size: int) -> Any:
  """Pads every leaf's leading axis to ``size`` by repeating its last row.

  Repeating a real example (rather than zeros) keeps padded rows valid inputs (in bounds,
  labels in range, no NaN); discard them after the computation with ``[:n]``.

  Args:
    tree: pytree of arrays sharing a leading (batch) axis of size ``n <= size``.
    size: the padded batch size, e.g. ``padded_size(n, mesh)``.

  Returns:
    The pytree with leading axes of size ``size`` (numpy leaves stay numpy).

  Raises:
    ValueError: leaves with different or larger batch sizes.
  """
  leaves = jax.tree.leaves(tree)
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(f'tree leaves must share a leading batch axis, got sizes {sizes}.')
  (n,) = sizes
  if n > size:
    raise ValueError(f'size must be >= the batch size {n}, got {size}.')
  take = np.minimum(np.arange(size), n - 1)
  return jax.tree.map(lambda leaf: leaf[take], tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split over ``'data'``, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of ``mesh``."""
  return NamedSharding(mesh, PartitionSpec())


def _place(leaf, sharding: NamedSharding, global_shape):
  if jax.process_count() == 1:
    return jax.device_put(leaf, sharding)
  # Each process builds only the shards its own devices hold.
  return jax.make_array_from_process_local_data(sharding, np.asarray(leaf), global_shape)


def shard_batch(tree: Any, mesh: Mesh, *, process_local: bool = False) -> Any:
  """Places every leaf's leading (batch) axis over the mesh's ``'data'`` axis.

  Args:
    tree: pytree of arrays with a leading batch axis. By default the global batch, the same
      on every process (each process keeps only the rows of its devices). With
      ``process_local`` each process passes only its own consecutive rows: process ``p`` of
      ``P`` holds rows ``[p * n, (p + 1) * n)`` of the ``P * n`` global ones.
    mesh: from ``data_mesh``.
    process_local: see ``tree``.

  Returns:
    The pytree of global ``jax.Array``s sharded ``PartitionSpec('data')``.

  Raises:
    ValueError: a scalar leaf, or a global batch that is not a multiple of the device count
      (pad it with ``pad_batch`` first).
  """
  sharding = batch_sharding(mesh)
  n = num_shards(mesh)
  scale = jax.process_count() if process_local else 1

  def put(leaf):
    if np.ndim(leaf) == 0:
      raise ValueError('shard_batch: every leaf needs a leading batch axis, got a scalar.')
    shape = (np.shape(leaf)[0] * scale, *np.shape(leaf)[1:])
    if shape[0] % n:
      raise ValueError(f'shard_batch: the batch size {shape[0]} is not a multiple of the '
                       f'{n} devices; pad it with pad_batch(x, padded_size(batch, mesh)).')
    return _place(leaf, sharding, shape)

  return jax.tree.map(put, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """A full copy of every leaf on every device of ``mesh`` (same value on every process)."""
  sharding = replicated_sharding(mesh)
  return jax.tree.map(lambda leaf: _place(leaf, sharding, np.shape(leaf)), tree)


def to_host(tree: Any) -> Any:
  """Fetches (sharded, possibly multi-host) arrays as whole numpy arrays on every process."""
  leaves = jax.tree.leaves(tree)
  if all(not isinstance(x, jax.Array) or x.is_fully_addressable for x in leaves):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def broadcast_from_process0(tree: Any) -> Any:
  """Process 0's value of a pytree of numpy arrays on every process (identity with one)."""
  if jax.process_count() == 1:
    return tree
  return multihost_utils.broadcast_one_to_all(tree)


def barrier(name: str):
  """Waits until every process reaches ``barrier(name)`` (nothing with one process).

  Lets the other processes wait while process 0 does long single-process work (writing a
  report): a process that leaves early would time out in ``jax.distributed``'s shutdown
  barrier (5 minutes) and abort the run.
  """
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def data_parallel(fn: Callable[..., Any], mesh: Mesh, *, batched: Sequence[bool]
                  ) -> Callable[..., Any]:
  """Runs a per-example ``fn`` on each device's examples only (``jax.shard_map``).

  Each device calls ``fn`` on its ``B / num_devices`` examples; nothing crosses devices, so
  ``fn`` must treat examples independently and draw randomness per example (keys batched with
  the examples or derived from example indices; a single key argument would be reused by every
  device). Jit the result.

  Args:
    fn: ``fn(*args) -> pytree`` whose outputs all have the batch as leading axis.
    mesh: from ``data_mesh``.
    batched: one flag per positional argument of ``fn``: True for arguments whose leading
      axis is the batch (split over ``'data'``), False for replicated ones (params, budgets).

  Returns:
    ``f(*args)`` with ``fn``'s signature and outputs split ``PartitionSpec('data')``.
  """
  in_specs = tuple(PartitionSpec(DATA_AXIS) if b else PartitionSpec() for b in batched)
  # check_vma=False: loops whose carry starts replicated and becomes per-device (attacks,
  # SmoothGrad) would otherwise need explicit pvary annotations; fn has no collectives.
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=PartitionSpec(DATA_AXIS),
                       check_vma=False)
