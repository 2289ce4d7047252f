"""Device layout of training: data parallelism as jit over a Mesh (default) or pmap, and processes.

The only module that decides where arrays live. The step itself is `step.make_train_step`:

  mesh = make_mesh(data=-1, fsdp=1)         # every device on 'data'
  ps = compile_train_step(make_train_step(loss_fn, tx), mesh=mesh, state_example=state)
  # pmap: compile_train_step(make_train_step(loss_fn, tx, axis_name=AXIS), mode='pmap')
  state = ps.place_state(state)
  for host_batch in batches:                # numpy; this process's rows (process_slice)
    state, metrics = ps.step(state, ps.place_batch(host_batch))
  checkpointer.save(n, ps.unplace_state(state))

jit (default): the batch is sharded on its leading axis over all mesh devices ('data' and
'fsdp'); parameters and optimizer state are replicated, or with fsdp > 1 each leaf is split
along 'fsdp' on its largest divisible axis (ZeRO-3 style). The compiler inserts the collectives,
and the step is the single-device program, so its randomness is the same for any device count.

pmap: in maintenance mode since JAX 0.8 (implemented over jit + shard_map), kept for parity with
older code. The state is replicated on the local devices, batch rows are dealt round-robin
(replica r gets rows r, r + n, ...) and the step must be made with `axis_name=AXIS`; each replica
draws its own noise, so pmap over n devices equals one device with `grad_accum_steps=n`.

Many processes: call `initialize_distributed` first, feed each process `process_slice` of every
global batch; `make_mesh` orders devices by process, so those rows land on its own devices.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'             # the data-parallel axis; pmap steps need make_train_step(axis_name=AXIS)
MESH_AXES = (AXIS, 'fsdp')
MODES = ('jit', 'pmap')
# Environment variables that ask initialize_distributed for many processes without arguments.
DISTRIBUTED_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID')


class ParallelError(ValueError):
  """A layout that cannot work: the message names the values and what is allowed."""


def _factor_pairs(n: int) -> str:
  return ', '.join(f'data={d} x fsdp={n // d}' for d in range(1, n + 1) if n % d == 0)


def _positive(name: str, value, allow_minus_one: bool = False) -> int:
  ok = isinstance(value, int) and not isinstance(value, bool) and (
      value >= 1 or (allow_minus_one and value == -1))
  if not ok:
    raise ParallelError(f'{name}={value!r}; allowed: an integer >= 1' +
                        (' or -1 (all remaining devices)' if allow_minus_one else ''))
  return value


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A (data, fsdp) Mesh over `devices` (default: all of them, ordered by process).

  `data=-1` takes every device that `fsdp` leaves. The devices of one process stay adjacent,
  so with fsdp dividing the local device count each process holds whole rows of 'data'.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  _positive('data', data, allow_minus_one=True)
  _positive('fsdp', fsdp)
  if data == -1:
    if n % fsdp:
      raise ParallelError(f'fsdp={fsdp} does not divide the {n} devices; allowed: '
                          f'{_factor_pairs(n)} (data=-1 takes the rest)')
    data = n // fsdp
  if data * fsdp != n:
    raise ParallelError(f'mesh data={data} x fsdp={fsdp} needs {data * fsdp} devices, but there '
                        f'are {n}; allowed: {_factor_pairs(n)}, or data=-1')
  return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), MESH_AXES)


def check_batch(global_batch_size: int, mesh_or_num_devices, grad_accum_steps: int = 1) -> int:
  """Rows each device gets per micro-batch; an error unless the batch splits evenly."""
  _positive('global_batch_size', global_batch_size)
  _positive('grad_accum_steps', grad_accum_steps)
  if isinstance(mesh_or_num_devices, Mesh):
    devices = mesh_or_num_devices.devices.size
  else:
    devices = _positive('number of devices', mesh_or_num_devices)
  parts = devices * grad_accum_steps
  if global_batch_size % parts:
    lower = global_batch_size // parts * parts
    raise ParallelError(
        f'global batch size {global_batch_size} does not split over {devices} data-parallel '
        f'devices x grad_accum_steps={grad_accum_steps}; allowed: a multiple of {parts} (e.g. '
        f'{lower or parts} or {lower + parts})')
  return global_batch_size // parts


def _fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
  """Split the largest axis that `fsdp` divides; replicate a leaf that has none."""
  divisible = [a for a, size in enumerate(shape) if size >= fsdp and size % fsdp == 0]
  if fsdp == 1 or not divisible:
    return P()
  axis = max(divisible, key=lambda a: shape[a])
  return P(*(MESH_AXES[1] if a == axis else None for a in range(len(shape))))


def _put(x, sharding):
  """`x` laid out as `sharding`, always a copy (never the caller's buffer).

  A copy because `device_put` to a replicated sharding reuses the source buffer for its device
  (even with may_alias=False, jax 0.10), and the donating step would then delete the caller's
  array.
  """
  if jax.process_count() == 1:
    return jax.device_put(jnp.array(x, copy=True), sharding)
  host = np.asarray(x)  # identical on every process (same seed), so each fills its own shards
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _first_replica(x):
  """Replica 0 of a pmap-laid-out array, as a plain array on its device."""
  shard = min(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return shard.data[0]


def _leading_rows(tree) -> int:
  rows = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(tree)}
  if len(rows) != 1 or None in rows:
    raise ParallelError(f'batch leaves have leading sizes {sorted(map(str, rows))}; allowed: '
                        f'arrays that all share one leading (batch) axis')
  return rows.pop()


def _check_process_rows(sharding: NamedSharding, n: int) -> None:
  """The rows this process's devices hold must be its `process_slice`, which loaders feed."""
  expected = process_slice(n)
  held = sorted({row for device, index in sharding.devices_indices_map((n,)).items()
                 if device.process_index == jax.process_index()
                 for row in range(*index[0].indices(n))})
  if held != list(range(expected.start, expected.stop)):
    raise ParallelError(f'this mesh puts rows {held} of a {n}-row batch on process '
                        f'{jax.process_index()}, which feeds rows {expected.start}..'
                        f'{expected.stop - 1} (process_slice); allowed: a mesh whose devices are '
                        f'ordered by process, as make_mesh builds')


class ParallelStep:
  """A train step compiled for a device layout; see `compile_train_step`."""

  def __init__(self, train_step, *, mode: str = 'jit', mesh: Mesh | None = None,
               state_example=None):
    if mode not in MODES:
      raise ParallelError(f'mode={mode!r}; allowed: {", ".join(map(repr, MODES))}')
    self.mode = mode
    self.grad_accum_steps = getattr(train_step, 'grad_accum_steps', 1)
    step_axis = getattr(train_step, 'axis_name', None)
    if mode == 'pmap':
      if step_axis != AXIS:
        raise ParallelError(f"mode='pmap' needs a step made with make_train_step(..., "
                            f'axis_name={AXIS!r}); this one has axis_name={step_axis!r}')
      if mesh is not None and mesh.shape[MESH_AXES[1]] != 1:
        raise ParallelError(f"mode='pmap' replicates the state; got a mesh with fsdp="
                            f"{mesh.shape[MESH_AXES[1]]}; allowed: fsdp=1, or mode='jit'")
      devices = jax.local_devices() if mesh is None else list(mesh.devices.flat)
      if any(d.process_index != jax.process_index() for d in devices):
        raise ParallelError("mode='pmap' runs on this process's devices; allowed: a mesh of "
                            "local devices, or mode='jit' across processes")
      self.mesh = Mesh(np.asarray(devices, dtype=object), (AXIS,))
      self._stacked = NamedSharding(self.mesh, P(AXIS))
      self._step = jax.pmap(train_step, axis_name=AXIS, devices=devices, donate_argnums=0)
    else:
      if step_axis is not None:
        raise ParallelError(f"mode='jit' needs a step made with axis_name=None (the mesh decides "
                            f'the all-reduce); this one has axis_name={step_axis!r}')
      if state_example is None:
        raise ParallelError("mode='jit' needs state_example (a state or its ShapeDtypeStructs) "
                            'to lay out parameters and optimizer state')
      self.mesh = make_mesh() if mesh is None else mesh
      fsdp = self.mesh.shape[MESH_AXES[1]]
      self.state_sharding = jax.tree.map(
          lambda x: NamedSharding(self.mesh, _fsdp_spec(np.shape(x), fsdp)), state_example)
      self.batch_sharding = NamedSharding(self.mesh, P(MESH_AXES))  # rows over every device
      replicated = NamedSharding(self.mesh, P())
      self._step = jax.jit(train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                           out_shardings=(self.state_sharding, replicated), donate_argnums=0)
      _check_process_rows(self.batch_sharding, self.mesh.devices.size)
    self.num_devices = self.mesh.devices.size
    # XLA's CPU collectives can deadlock when steps with all-reduces are queued back to back on
    # simulated devices (jax-facts.md: a per-step block_until_ready removed it in 18 of 18 runs).
    self._must_wait = self.mesh.devices.flat[0].platform == 'cpu' and self.num_devices > 1

  def place_state(self, state):
    """The state laid out for `step`: replicated per device (pmap), or by `state_sharding`."""
    if self.mode == 'pmap':
      n = self.num_devices
      return jax.tree.map(
          lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + np.shape(x)), self._stacked), state)
    return jax.tree.map(_put, state, self.state_sharding)

  def unplace_state(self, state):
    """A state for single-device code and the checkpointer: replica 0 (pmap), else `state`."""
    if self.mode == 'pmap':
      return jax.tree.map(_first_replica, state)
    return state

  def place_batch(self, host_batch: dict) -> dict:
    """This process's rows (numpy, leading axis = examples) as the step's device arrays."""
    rows = _leading_rows(host_batch)
    if self.mode == 'pmap':
      n, k = self.num_devices, self.grad_accum_steps
      if rows % (n * k):
        raise ParallelError(
            f'pmap: a batch of {rows} rows cannot be split over {n} local devices x '
            f'grad_accum_steps={k}; allowed: a multiple of {n * k} rows per process')
      # Round-robin: (rows, ...) -> (n, rows // n, ...) with replica r holding rows r, r + n, ...
      return jax.tree.map(lambda x: jax.device_put(
          np.swapaxes(np.reshape(x, (rows // n, n) + np.shape(x)[1:]), 0, 1), self._stacked),
          host_batch)
    check_batch(rows * jax.process_count(), self.mesh, self.grad_accum_steps)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self.batch_sharding, np.asarray(x), (rows * jax.process_count(),) + np.shape(x)[1:]),
        host_batch)

  def step(self, state, batch) -> tuple[object, dict]:
    """One update (state donated); metrics are scalars, the same on every device and process."""
    state, metrics = self._step(state, batch)
    if self.mode == 'pmap':
      metrics = jax.tree.map(_first_replica, metrics)
    return self.wait((state, metrics))

  def wait(self, x):
    """Blocks on `x` where needed (CPU with many devices, see __init__); returns `x`."""
    if self._must_wait:
      jax.block_until_ready(x)
    return x


def compile_train_step(train_step, *, mode: str = 'jit', mesh: Mesh | None = None,
                       state_example=None) -> ParallelStep:
  """`train_step` from `make_train_step`, run data-parallel.

  Args:
    train_step: the pure step; for pmap made with `axis_name=AXIS`, for jit without.
    mode: 'jit' (default; a jit over `mesh` with explicit shardings) or 'pmap'.
    mesh: from `make_mesh`; jit defaults to every device on 'data', pmap to the local devices.
    state_example: a train state (or ShapeDtypeStructs) for jit's state layout.
  """
  return ParallelStep(train_step, mode=mode, mesh=mesh, state_example=state_example)


def initialize_distributed(coordinator_address: str = '', num_processes: int = 1,
                           process_id: int = 0) -> bool:
  """Joins a multi-process job; returns whether one is running. Call before any other JAX work.

  Calls `jax.distributed.initialize` when `num_processes > 1` (with these arguments), or when the
  arguments are left at their defaults and JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
  JAX_PROCESS_ID are all set (read from there). Otherwise a single process; nothing is called.
  """
  _positive('num_processes', num_processes)
  if jax.distributed.is_initialized():
    return True
  if num_processes == 1 and all(os.environ.get(k) for k in DISTRIBUTED_ENV):
    try:
      coordinator_address = os.environ['JAX_COORDINATOR_ADDRESS']
      num_processes = int(os.environ['JAX_NUM_PROCESSES'])
      process_id = int(os.environ['JAX_PROCESS_ID'])
    except ValueError as e:
      raise ParallelError(f'JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers; got '
                          f'{os.environ["JAX_NUM_PROCESSES"]!r}, '
                          f'{os.environ["JAX_PROCESS_ID"]!r}') from e
  if num_processes == 1:
    return False
  if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
    raise ParallelError(f'process_id={process_id!r}; allowed: 0..{num_processes - 1}')
  host, _, port = coordinator_address.rpartition(':')
  if not host or not port.isdigit():
    raise ParallelError(f'coordinator_address={coordinator_address!r}; allowed: "host:port" of '
                        f'process 0, the same for every process')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


def process_slice(global_batch_size: int) -> slice:
  """The rows of a global batch that this process feeds (contiguous, in process order)."""
  _positive('global_batch_size', global_batch_size)
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ParallelError(f'global batch size {global_batch_size} does not split over {count} '
                        f'processes; allowed: a multiple of {count}')
  per = global_batch_size // count
  return slice(index * per, (index + 1) * per)


def is_primary() -> bool:
  """Whether this is process 0, the one that writes logs and summaries."""
  return jax.process_index() == 0


__all__ = ['AXIS', 'MESH_AXES', 'ParallelError', 'ParallelStep', 'check_batch',
           'compile_train_step', 'initialize_distributed', 'is_primary', 'make_mesh',
           'process_slice']
