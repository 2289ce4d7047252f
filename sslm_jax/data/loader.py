"""Batches through Grain: which rows form a step's batch, who reads them, and read-ahead.

Every pipeline (`data.pipeline`) serves training the same way: the batch of train step `s` is a
pure function of (seed, s), so a run resumed at step `s` sees exactly the batches of an
uninterrupted one, whatever the number of processes, threads or worker processes.

- `train_indices`: the rows of step `s`'s global batch. An epoch is `len // batch_size` full
  batches (the remainder is dropped, a different one each epoch) of a permutation that is a
  function of (seed, epoch): numpy's `default_rng([seed, epoch]).permutation` for in-memory
  splits (`'permutation'`, what every run did before streaming), or Grain's `index_shuffle`
  (`'index_shuffle'`, a bijection computed per index in O(1) memory) for streamed ones.
- `StepBatches`: a picklable `step -> batch` of one process's rows (`rows`, a slice of the
  global batch: `parallel.process_slice`), read with one batched call of a `RowSource`, so
  each of N processes reads only its own rows and their union is the one-process batch.
- `StepIterator`: a `grain.MapDataset` over steps (the element is a whole batch, so Grain's
  per-record overhead is paid once a batch), read ahead by a thread pool or worker processes
  and placed on the devices ahead of the step by a background thread. Its checkpoint state is
  the next step (Grain's elastic style), saved beside the train state by Grain's Orbax handler.
- `eval_batches`: every row once, in order, through Grain, the last batch padded and masked.

A `RowSource` is anything with `len()` and `read(indices) -> {name: array}` (rows in the order
asked): `MemoryRows` here, `sslm_jax.data.shards.TokenShards` (array_record token rows),
`sslm_jax.data.images.TfdsImages` (tfds records).
"""

import dataclasses
import functools
import math
from typing import Iterator, Mapping, Protocol, runtime_checkable

import grain
import numpy as np

from sslm_jax.data.tfds_utils import DataError

PIPELINES = ('memory', 'grain')  # data.pipeline: splits held in host memory, or streamed
ORDERS = ('permutation', 'index_shuffle')
DEVICE_PREFETCH = 2  # batches placed on the devices ahead of the step


@runtime_checkable
class RowSource(Protocol):
  def __len__(self) -> int: ...

  def read(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class MemoryRows:
  """A RowSource over a dict of arrays held in host memory (one leading length)."""

  def __init__(self, arrays: Mapping[str, np.ndarray] | np.ndarray):
    arrays = {'tokens': arrays} if isinstance(arrays, np.ndarray) else dict(arrays)
    lengths = {k: len(v) for k, v in arrays.items()}
    if not arrays or len(set(lengths.values())) != 1:
      raise DataError(f'row arrays must share their first dimension; got lengths {lengths}')
    self.arrays = arrays

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def read(self, indices) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.arrays.items()}


def as_source(rows) -> RowSource:
  """`rows` itself when it reads rows, else MemoryRows of it (a dict of arrays or an array)."""
  return rows if isinstance(rows, RowSource) else MemoryRows(rows)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches an epoch; the remainder is dropped (a different one each epoch)."""
  if batch_size > num_examples:
    raise DataError(f'train.batch_size={batch_size} exceeds the {num_examples} training '
                    f'examples; allowed: 1..{num_examples}')
  return num_examples // batch_size


def _epoch_seed(seed: int, epoch: int) -> int:
  # A 32-bit seed for index_shuffle from (seed, epoch): no two pairs are related by an offset.
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def train_indices(step: int, *, num_examples: int, batch_size: int, seed: int,
                  order: str = 'permutation') -> np.ndarray:
  """Indices of the examples in the global batch of train step `step` (0-based)."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, position = divmod(step, per_epoch)
  positions = range(position * batch_size, (position + 1) * batch_size)
  if order == 'permutation':
    return np.random.default_rng([seed, epoch]).permutation(num_examples)[positions.start:
                                                                            positions.stop]
  if order == 'index_shuffle':
    epoch_seed = _epoch_seed(seed, epoch)
    return np.fromiter((grain.experimental.index_shuffle(p, max_index=num_examples - 1,
                                                         seed=epoch_seed, rounds=4)
                        for p in positions), np.int64, batch_size)
  raise DataError(f'order={order!r}; allowed: {ORDERS}')


@dataclasses.dataclass(frozen=True)
class StepBatches:
  """`step -> {name: rows}`: this process's rows of the step's global batch, read at once.

  `rows` is the part of the global batch this process feeds (`parallel.process_slice`);
  `step_key`, when set, adds a column holding the step (the text VAE's KL schedule needs it).
  """
  source: RowSource
  batch_size: int
  seed: int
  order: str = 'permutation'
  rows: slice = dataclasses.field(default_factory=lambda: slice(None))
  step_key: str = ''

  def __post_init__(self):
    if self.order not in ORDERS:
      raise DataError(f'order={self.order!r}; allowed: {ORDERS}')
    steps_per_epoch(len(self.source), self.batch_size)  # a batch must fit in an epoch

  def indices(self, step: int) -> np.ndarray:
    return train_indices(step, num_examples=len(self.source), batch_size=self.batch_size,
                         seed=self.seed, order=self.order)[self.rows]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    batch = self.source.read(self.indices(step))
    if self.step_key:
      batch[self.step_key] = np.full(len(next(iter(batch.values()))), step, np.int32)
    return batch


def _ensure_absl_flags_parsed() -> None:
  # Grain's worker processes read absl flags; a library (not an absl app) must mark them
  # parsed, with their defaults, or Grain raises UnparsedFlagAccessError.
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class StepIterator(grain.DatasetIterator):
  """Batches of steps `start`, `start + 1`, ... `stop - 1`, read and placed ahead of use.

  `prefetch` batches are read ahead by as many threads (or by `num_workers` worker processes,
  each reading whole batches); `place` (e.g. `parallel.Strategy.place_batch`), when given, runs in a
  background thread that keeps DEVICE_PREFETCH placed batches ready. The state is
  {'step': next step}: what the train state's step says, whatever the layout of processes,
  threads and workers, so a run may resume with other ones.
  """

  def __init__(self, batches: StepBatches, *, start: int, stop: int, place=None,
               prefetch: int = 4, num_workers: int = 0):
    super().__init__()
    self._batches, self._stop, self._place = batches, stop, place
    self._prefetch, self._num_workers = prefetch, num_workers
    self._step = start
    self._pipeline = None

  def _build(self):
    ds = grain.MapDataset.range(self._step, self._stop).map(self._batches)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self._prefetch,
                                              prefetch_buffer_size=self._prefetch))
    if self._num_workers:
      _ensure_absl_flags_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._num_workers))
    if self._place is not None:
      it = grain.experimental.ThreadPrefetchIterDataset(
          it.map(self._place), prefetch_buffer_size=DEVICE_PREFETCH)
    return iter(it)

  def __next__(self):
    if self._pipeline is None:
      self._pipeline = self._build()
    batch = next(self._pipeline)
    self._step += 1
    return batch

  def start_prefetch(self) -> None:
    """Starts reading (and placing) ahead now, e.g. while the step compiles."""
    if self._pipeline is None:
      self._pipeline = self._build()
    self._pipeline.start_prefetch()

  def get_state(self) -> dict:
    return {'step': self._step}

  def set_state(self, state: dict) -> None:
    self.close()
    self._step = int(state['step'])

  def close(self) -> None:
    if self._pipeline is not None:
      self._pipeline.close()
      self._pipeline = None


def _padded_batch(index: int, *, source: RowSource, batch_size: int, mask_key: str,
                  fill: Mapping[str, float]) -> dict[str, np.ndarray]:
  n = len(source)
  start, stop = index * batch_size, min((index + 1) * batch_size, n)
  batch = source.read(np.arange(start, stop))
  if mask_key in batch:
    raise DataError(f'rows already hold {mask_key!r}; allowed: any other names')
  batch[mask_key] = np.ones(stop - start, np.float32)
  pad = batch_size - (stop - start)
  if pad:
    batch = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], fill.get(k, 0), v.dtype)])
             for k, v in batch.items()}
  return batch


def eval_batches(rows, batch_size: int, *, mask_key: str = 'row_mask',
                 fill: Mapping[str, float] | None = None,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Every row of `rows` (a RowSource, or arrays) once, in order, read ahead through Grain.

  The last batch is padded with `fill` values (0 by default) and `mask_key` (float32) is 1.0
  exactly on real rows, so one compiled shape serves the whole split.
  """
  source = as_source(rows)
  num_batches = math.ceil(len(source) / batch_size)
  read = functools.partial(_padded_batch, source=source, batch_size=batch_size,
                           mask_key=mask_key, fill=dict(fill or {}))
  it = iter(grain.MapDataset.range(num_batches).map(read).to_iter_dataset(
      grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)))
  try:
    yield from it
  finally:
    it.close()
