"""Device layout of training: data parallelism as jit over a Mesh (default) or pmap, and processes.

The only module that decides where arrays live. A `Strategy` runs the one train step
(`step.make_train_step`) data-parallel; `JitStrategy` and `PmapStrategy` are the two, chosen
once from the config's `parallel` section (`from_config`, which is also that section's
`ParallelConfig`), and the loop uses either through the same methods:

  ps = compile_train_step(loss_fn, tx, mode='jit', mesh=make_mesh(data=-1, fsdp=1),
                          state_example=state)
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
(replica r gets rows r, r + n, ...) and the step averages over the `AXIS` of the replicas; each
replica draws its own noise, so pmap over n devices equals one device with `grad_accum_steps=n`.

Many processes: call `initialize_distributed` first, feed each process `process_slice` of every
global batch; `make_mesh` orders devices by process, so those rows land on its own devices.
"""

import abc
import dataclasses
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sslm_jax.config import Checker, Section
from sslm_jax.train import step as step_lib

AXIS = 'data'             # the data-parallel axis (pmap's replicas, the mesh's first)
MESH_AXES = (AXIS, 'fsdp')
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


class Strategy(abc.ABC):
  """The train step run data-parallel on a device layout: compile, place, step, unplace.

  Made by `from_config` or `compile_train_step`; `compile` must run before `step`. The layout
  (mesh, batch split) is checked when the strategy is made, before any work.
  """
  mode: ClassVar[str]
  axis_name: ClassVar[str | None]  # the named axis the pure step averages over

  def __init__(self, mesh: Mesh, grad_accum_steps: int = 1):
    self.mesh, self.grad_accum_steps = mesh, _positive('grad_accum_steps', grad_accum_steps)
    self.num_devices = self.mesh.devices.size
    self._step = None
    # XLA's CPU collectives can deadlock when steps with all-reduces are queued back to back on
    # simulated devices (jax-facts.md: a per-step block_until_ready removed it in 18 of 18 runs).
    self._must_wait = self.mesh.devices.flat[0].platform == 'cpu' and self.num_devices > 1

  def compile(self, loss_fn, tx, *, state_example=None) -> 'Strategy':
    """Compiles the step of `loss_fn` and `tx` for this layout; returns the strategy."""
    train_step = step_lib.make_train_step(loss_fn, tx, grad_accum_steps=self.grad_accum_steps,
                                          axis_name=self.axis_name)
    self._step = self._compile(train_step, state_example)
    return self

  @abc.abstractmethod
  def _compile(self, train_step, state_example): ...

  @abc.abstractmethod
  def place_state(self, state):
    """The state laid out for `step`."""

  @abc.abstractmethod
  def unplace_state(self, state):
    """A state for single-device code and the checkpointer."""

  @abc.abstractmethod
  def place_batch(self, host_batch: dict) -> dict:
    """This process's rows (numpy, leading axis = examples) as the step's device arrays."""

  @abc.abstractmethod
  def restore_target(self, init_state):
    """What a checkpoint restores into (`from_restored` then makes it the step's state)."""

  def from_restored(self, state):
    """The step's state from what `restore_target` restored (or the target itself)."""
    return state

  def _metrics(self, metrics: dict) -> dict:
    return metrics

  def step(self, state, batch) -> tuple[object, dict]:
    """One update (state donated); metrics are scalars, the same on every device and process."""
    state, metrics = self._step(state, batch)
    return self.wait((state, self._metrics(metrics)))

  def wait(self, x):
    """Blocks on `x` where needed (CPU with many devices, see __init__); returns `x`."""
    if self._must_wait:
      jax.block_until_ready(x)
    return x


class JitStrategy(Strategy):
  """jit over a (data, fsdp) mesh with explicit shardings (see the module docstring)."""
  mode = 'jit'
  axis_name = None  # the mesh decides the all-reduce

  def __init__(self, mesh: Mesh | None = None, grad_accum_steps: int = 1):
    super().__init__(make_mesh() if mesh is None else mesh, grad_accum_steps)
    self.batch_sharding = NamedSharding(self.mesh, P(MESH_AXES))  # rows over every device
    _check_process_rows(self.batch_sharding, self.num_devices)

  def _compile(self, train_step, state_example):
    if state_example is None:
      raise ParallelError("mode='jit' needs state_example (a state or its ShapeDtypeStructs) "
                          'to lay out parameters and optimizer state')
    fsdp = self.mesh.shape[MESH_AXES[1]]
    self.state_sharding = jax.tree.map(
        lambda x: NamedSharding(self.mesh, _fsdp_spec(np.shape(x), fsdp)), state_example)
    replicated = NamedSharding(self.mesh, P())
    return jax.jit(train_step, in_shardings=(self.state_sharding, self.batch_sharding),
                   out_shardings=(self.state_sharding, replicated), donate_argnums=0)

  def place_state(self, state):
    return jax.tree.map(_put, state, self.state_sharding)

  def unplace_state(self, state):
    return state

  def place_batch(self, host_batch: dict) -> dict:
    rows = _leading_rows(host_batch)
    check_batch(rows * jax.process_count(), self.mesh, self.grad_accum_steps)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        self.batch_sharding, np.asarray(x), (rows * jax.process_count(),) + np.shape(x)[1:]),
        host_batch)

  def restore_target(self, init_state):
    return self.place_state(init_state)  # each process reads its own shards


class PmapStrategy(Strategy):
  """pmap over this process's devices: state replicated, rows dealt round-robin."""
  mode = 'pmap'
  axis_name = AXIS

  def __init__(self, mesh: Mesh | None = None, grad_accum_steps: int = 1):
    if mesh is not None and mesh.shape[MESH_AXES[1]] != 1:
      raise ParallelError(f"mode='pmap' replicates the state; got a mesh with fsdp="
                          f"{mesh.shape[MESH_AXES[1]]}; allowed: fsdp=1, or mode='jit'")
    devices = jax.local_devices() if mesh is None else list(mesh.devices.flat)
    if any(d.process_index != jax.process_index() for d in devices):
      raise ParallelError("mode='pmap' runs on this process's devices; allowed: a mesh of "
                          "local devices, or mode='jit' across processes")
    super().__init__(Mesh(np.asarray(devices, dtype=object), (AXIS,)), grad_accum_steps)
    self._stacked = NamedSharding(self.mesh, P(AXIS))

  def _compile(self, train_step, state_example):
    del state_example  # the state is replicated whatever its shapes
    return jax.pmap(train_step, axis_name=AXIS, devices=list(self.mesh.devices.flat),
                    donate_argnums=0)

  def place_state(self, state):
    n = self.num_devices
    return jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x, (n,) + np.shape(x)), self._stacked), state)

  def unplace_state(self, state):
    return jax.tree.map(_first_replica, state)  # replica 0

  def place_batch(self, host_batch: dict) -> dict:
    rows = _leading_rows(host_batch)
    n, k = self.num_devices, self.grad_accum_steps
    if rows % (n * k):
      raise ParallelError(
          f'pmap: a batch of {rows} rows cannot be split over {n} local devices x '
          f'grad_accum_steps={k}; allowed: a multiple of {n * k} rows per process')
    # Round-robin: (rows, ...) -> (n, rows // n, ...) with replica r holding rows r, r + n, ...
    return jax.tree.map(lambda x: jax.device_put(
        np.swapaxes(np.reshape(x, (rows // n, n) + np.shape(x)[1:]), 0, 1), self._stacked),
        host_batch)

  def restore_target(self, init_state):
    return init_state

  def from_restored(self, state):
    return self.place_state(state)

  def _metrics(self, metrics: dict) -> dict:
    return jax.tree.map(_first_replica, metrics)


STRATEGIES: dict[str, type[Strategy]] = {'jit': JitStrategy, 'pmap': PmapStrategy}
MODES = tuple(STRATEGIES)


def strategy(mode: str = 'jit', *, mesh: Mesh | None = None,
             grad_accum_steps: int = 1) -> Strategy:
  """The strategy of `mode` on `mesh` (jit: default every device on 'data'; pmap: default the
  local devices)."""
  if mode not in STRATEGIES:
    raise ParallelError(f'mode={mode!r}; allowed: {", ".join(map(repr, MODES))}')
  return STRATEGIES[mode](mesh, grad_accum_steps)


def compile_train_step(loss_fn, tx, *, mode: str = 'jit', mesh: Mesh | None = None,
                       grad_accum_steps: int = 1, state_example=None) -> Strategy:
  """The train step of `loss_fn` and `tx` (`step.make_train_step`), run data-parallel.

  Args:
    loss_fn, tx: the loss and optimizer of the step.
    mode: 'jit' (default; a jit over `mesh` with explicit shardings) or 'pmap'.
    mesh: from `make_mesh`; jit defaults to every device on 'data', pmap to the local devices.
    grad_accum_steps: micro-batches a step.
    state_example: a train state (or ShapeDtypeStructs) for jit's state layout.
  """
  return strategy(mode, mesh=mesh, grad_accum_steps=grad_accum_steps).compile(
      loss_fn, tx, state_example=state_example)


def from_config(parallel_config, train_config) -> Strategy:
  """The strategy of a run's `parallel` section, its layout checked against `train`'s batch."""
  p, t = parallel_config, train_config
  mesh = None if p.mode == 'pmap' else make_mesh(p.mesh_data, p.mesh_fsdp)
  check_batch(t.batch_size, mesh if mesh is not None else jax.local_device_count(),
              t.grad_accum_steps)
  return strategy(p.mode, mesh=mesh, grad_accum_steps=t.grad_accum_steps)


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


@dataclasses.dataclass(frozen=True)
class ParallelConfig(Section):
  """The `parallel` section: the strategy and its layout, and the processes of a job."""
  mode: str = 'jit'               # jit over a device mesh, or pmap (maintenance mode in JAX)
  mesh_data: int = -1             # -1 = every device not used by fsdp
  mesh_fsdp: int = 1              # > 1 shards parameters and optimizer state
  coordinator_address: str = ''   # many hosts: host:port of process 0
  num_processes: int = 1
  process_id: int = 0

  def check(self, c: Checker) -> None:
    c.choice('mode', MODES)
    c.check(c.valid('mesh_data') and (self.mesh_data == -1 or self.mesh_data >= 1), 'mesh_data',
            '-1 (all devices left) or an integer >= 1')
    if c.integer('mesh_fsdp'):
      c.check(self.mode == 'jit' or self.mesh_fsdp == 1, 'mesh_fsdp',
              "1 with parallel.mode='pmap' (pmap replicates parameters); use mode 'jit' to "
              "shard them")
    c.check(isinstance(self.coordinator_address, str), 'coordinator_address',
            "'host:port' of process 0, or '' for one process")
    if c.integer('num_processes') & c.integer('process_id', minimum=0):
      c.check(self.process_id < self.num_processes, 'process_id',
              f'0 .. parallel.num_processes - 1 = {self.num_processes - 1}')
      c.check(self.num_processes == 1 or bool(self.coordinator_address), 'coordinator_address',
              "'host:port' of process 0 when parallel.num_processes > 1")


__all__ = ['AXIS', 'MESH_AXES', 'JitStrategy', 'ParallelConfig', 'ParallelError',
           'PmapStrategy', 'Strategy', 'check_batch', 'compile_train_step', 'from_config',
           'initialize_distributed', 'is_primary', 'make_mesh', 'process_slice', 'strategy']
