"""The training loop: iterate, log, evaluate, draw, checkpoint, resume.

`train_and_evaluate(config, workdir)` is the whole job. Rerunning it on the same workdir resumes
from the newest intact checkpoint and, on the same machine, reproduces the parameters of an
uninterrupted run bit for bit: batches are a function of (seed, step), randomness is the base key
folded with the step, and nothing else carries state between steps. The data iterator's position
is saved beside the train state and checked against it on resume.

The device is never left waiting on the host: batches are read ahead and placed on the devices
by background threads (`sslm_jax.data.loader.StepIterator`); metrics stay on the device until a
log step (where the non-finite check runs, as before any save or evaluation), and the host runs
at most MAX_STEPS_AHEAD steps ahead of the device, so the progress bar and the logged steps/s
follow the device; checkpoints are written asynchronously by Orbax.
"""

import collections
import dataclasses
import json
import logging
import os
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from sslm_jax import config as config_lib
from sslm_jax.data import loader
from sslm_jax.data.loader import steps_per_epoch
from sslm_jax.tasks import build_task
from sslm_jax.train import checkpoint as ckpt_lib
from sslm_jax.train import optim, parallel, step as step_lib, writers
from sslm_jax.train.state import TrainState, create_train_state

log = logging.getLogger(__name__)

# Steps dispatched ahead of the newest finished one: enough to keep the device busy while the
# host dispatches the next, few enough that the host's clock follows the device's.
MAX_STEPS_AHEAD = 2


class WorkdirError(ValueError):
  """The workdir holds something this run must not write over."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


@dataclasses.dataclass
class Run:
  """What a job needs besides the config: built once by `setup`, shared by train/eval/sample."""
  config: object
  workdir: str
  task: object  # sslm_jax.tasks: data, model, loss, evaluation
  steps_per_epoch: int
  total_steps: int
  tx: object
  init_state: TrainState


# What a resumed run may change: schedule length, the learning rate (the usual answer to a
# divergence), reporting, and where the data lives.
RESUMABLE_CHANGES = ('optimizer.learning_rate', 'train.num_epochs', 'train.num_steps',
                     'train.log_every_steps', 'train.eval_every_steps',
                     'train.checkpoint_every_steps',
                     'train.keep_checkpoints', 'train.async_checkpoints', 'train.num_pictures',
                     'train.progress_bar', 'train.eval_batch_size', 'data.data_dir',
                     'data.manual_dir', 'data.token_dir', 'data.num_workers', 'data.prefetch',
                     # Where and how the same computation runs: a resumed job may get another
                     # coordinator, other process ids or devices (checkpoints are unplaced).
                     'parallel.mode', 'parallel.mesh_data', 'parallel.mesh_fsdp',
                     'parallel.coordinator_address', 'parallel.num_processes',
                     'parallel.process_id')
# A text VAE's evaluation only: importance samples of its bound, the baseline reported beside it.
RESUMABLE_CHANGES += ('text_vae.iw_samples', 'text_vae.eval_iw_samples',
                      'text_vae.baseline_workdir')
_LENGTH_KEYS = ('train.num_epochs', 'train.num_steps')


def saved_config(workdir: str):
  """The config.json of the run in `workdir`, or None when there is none yet."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return config_lib.from_json(f.read())
  except (ValueError, TypeError, AttributeError) as e:
    raise WorkdirError(f'{path} is not a readable run config ({type(e).__name__}: {e}); '
                       f'allowed: the config.json a run wrote, or another workdir') from e


def check_workdir(config, workdir: str) -> None:
  """Refuses to continue a run in `workdir` with settings that would change what it computes.

  Allowed: RESUMABLE_CHANGES, except that the schedule's length may change only with a constant
  learning rate (a decaying schedule is a function of the total number of steps).
  """
  saved = saved_config(workdir)
  if saved is None:
    return
  allowed = set(RESUMABLE_CHANGES)
  if config.optimizer.schedule != 'constant':
    allowed -= set(_LENGTH_KEYS)
  changed = {k: v for k, v in config_lib.differences(saved, config).items() if k not in allowed}
  if changed:
    lines = ', '.join(f'{k}: saved {a!r} vs asked {b!r}' for k, (a, b) in changed.items())
    kind = 'a different model' if any(k.startswith('model.') for k in changed) else \
        'a run with different settings'
    raise WorkdirError(f'workdir {workdir!r} holds {kind} ({lines}); allowed: the same config '
                       f'(changes allowed on resume: {", ".join(sorted(allowed))}), or a new '
                       f'workdir')


def record_config(config, workdir: str) -> None:
  """config.json of the run, written once the run is known to start (atomically)."""
  if jax.process_index() == 0:
    path = os.path.join(workdir, 'config.json')
    with open(path + '.tmp', 'w') as f:
      f.write(config_lib.to_json(config))
    os.replace(path + '.tmp', path)


def setup(config, workdir: str, *, training: bool = True) -> Run:
  """Builds the task, optimizer and initial state; validates everything first.

  `training=False` (eval, sample) reads no training data and trains no tokenizer.
  """
  config_lib.validate(config)
  task = build_task(config, workdir, training=training)
  per_epoch, total = 0, 0
  if training:
    per_epoch = steps_per_epoch(task.num_train_rows, config.train.batch_size)
    total = config.train.num_steps or config.train.num_epochs * per_epoch
  tx = optim.make_optimizer(config.optimizer, max(total, 1))
  # The initial parameters are a function of config.seed alone.
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = create_train_state(task.init_params(init_rng), tx, train_rng)
  return Run(config, workdir, task, per_epoch, total, tx, state)


def restore_params(workdir: str, step: int | None = None) -> tuple[Run, dict, int]:
  """(run, params, step) of a checkpoint of the finished or running job in `workdir` (the newest
  by default), for eval, sampling and fine-tuning; the run is set up without training data."""
  config = saved_config(workdir)
  if config is None:
    raise FileNotFoundError(f'{os.path.join(workdir, "config.json")} not found: the workdir '
                            f'must be the folder of a training run')
  run = setup(config, workdir, training=False)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    steps = checkpointer.steps()
    if not steps:
      raise ckpt_lib.CheckpointError(f'no checkpoint in {checkpointer.directory}')
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ckpt_lib.CheckpointError(f'step {step} is not a checkpoint; allowed: {steps}')
    try:
      state = checkpointer.restore(step, run.init_state)
    except Exception as e:  # noqa: BLE001
      raise ckpt_lib.CheckpointError(f'checkpoint {step} in {checkpointer.directory} is '
                                     f'unreadable: {type(e).__name__}: {e}') from e
  finally:
    checkpointer.close()
  return run, state.params, step


def device_mesh(config):
  """The mesh of config.parallel (None for pmap), checked against the batch size."""
  p, t = config.parallel, config.train
  mesh = None if p.mode == 'pmap' else parallel.make_mesh(p.mesh_data, p.mesh_fsdp)
  parallel.check_batch(t.batch_size, mesh if mesh is not None else jax.local_device_count(),
                       t.grad_accum_steps)
  return mesh


def compile_step(run: Run, mesh) -> parallel.ParallelStep:
  """The one train step, data-parallel as config.parallel says (jit over a mesh, or pmap).

  The task's device transform (e.g. uint8 images -> [-1, 1] floats) runs inside the step, so the
  host sends compact batches and every micro-batch and replica transforms its own rows.
  """
  c, task = run.config, run.task

  def loss_fn(params, batch, rng):
    return task.loss_fn(params, task.device_transform(batch), rng)

  pmap = c.parallel.mode == 'pmap'
  train_step = step_lib.make_train_step(loss_fn, run.tx,
                                        grad_accum_steps=c.train.grad_accum_steps,
                                        axis_name=parallel.AXIS if pmap else None)
  return parallel.compile_train_step(train_step, mode=c.parallel.mode, mesh=mesh,
                                     state_example=run.init_state)


def restore_data_position(checkpointer: ckpt_lib.Checkpointer, step: int,
                          feed: loader.StepIterator) -> None:
  """The feed at the position saved with checkpoint `step`, which must be `step` itself; at
  `step` too where none was saved (an older run's folder, another number of processes)."""
  if step and checkpointer.restore_data(step, feed):
    if feed.get_state()['step'] != step:
      raise ckpt_lib.CheckpointError(
          f'checkpoint {step} in {checkpointer.directory} holds a data position of step '
          f'{feed.get_state()["step"]}, not {step}; allowed: a checkpoint saved by the loop')
  else:
    feed.set_state({'step': step})


def restore_or_init(run: Run, checkpointer: ckpt_lib.Checkpointer,
                    pstep: parallel.ParallelStep) -> TrainState:
  """The newest intact checkpoint (or the initial state), laid out for `pstep`."""
  # jit: restore straight into the step's layout (each process reads its own shards).
  target = run.init_state if pstep.mode == 'pmap' else pstep.place_state(run.init_state)
  state, step = checkpointer.restore_latest(target)
  if state is None:
    return target if pstep.mode == 'jit' else pstep.place_state(run.init_state)
  log.info('resuming from checkpoint %d in %s', step, checkpointer.directory)
  return state if pstep.mode == 'jit' else pstep.place_state(state)


def eval_params(pstep: parallel.ParallelStep, state):
  """Parameters evaluation can use on every process: across processes, gathered in full."""
  params = pstep.unplace_state(state).params
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return params


def evaluate_and_draw(run: Run, params, step: int, writer: writers.MetricWriter,
                      splits: tuple[str, ...]) -> dict[str, float]:
  """Metrics of each split, written and returned as {split_metric: value}, and the pictures or
  samples of the run folder."""
  results = {}
  for split in splits:
    metrics = run.task.evaluate(params, split)
    writer.write(step, split, metrics)
    results.update({f'{split}_{k}': v for k, v in metrics.items()})
  if jax.process_index() == 0:
    run.task.draw(params, run.workdir)
  return results


def _check_finite(pending: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
  """Fetches the metrics of the steps since the last check; raises on a non-finite loss."""
  fetched = jax.device_get(pending)
  for step, metrics in fetched:
    if not np.isfinite(metrics['loss']):
      raise NonFiniteLossError(
          f'loss is {metrics["loss"]} at step {step}; training stopped and nothing was saved '
          f'after the last good checkpoint. Resume with a lower optimizer.learning_rate, or '
          f'start a new workdir with optimizer.grad_clip_norm > 0.')
  return fetched


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if the workdir has checkpoints), evaluates, writes summary.json."""
  started = time.time()
  config_lib.validate(config)
  p = config.parallel
  parallel.initialize_distributed(p.coordinator_address, p.num_processes, p.process_id)
  mesh = device_mesh(config)  # layout errors (batch vs devices) before any work
  check_workdir(config, workdir)
  run = setup(config, workdir)
  pstep = compile_step(run, mesh)
  os.makedirs(workdir, exist_ok=True)
  c = config.train
  every_epoch = run.steps_per_epoch
  eval_every = c.eval_every_steps or every_epoch
  ckpt_every = c.checkpoint_every_steps or every_epoch

  checkpointer = ckpt_lib.Checkpointer(workdir, keep=c.keep_checkpoints,
                                       async_save=c.async_checkpoints)
  state = restore_or_init(run, checkpointer, pstep)
  start_step = int(pstep.unplace_state(state).step)
  summary_path = os.path.join(workdir, 'summary.json')
  if start_step >= run.total_steps and os.path.exists(summary_path):
    checkpointer.close()
    log.info('the run in %s is complete (step %d); nothing to do', workdir, start_step)
    with open(summary_path) as f:
      return json.load(f)
  record_config(config, workdir)
  writer_enabled = jax.process_index() == 0
  if writer_enabled:
    writers.truncate_jsonl(os.path.join(workdir, 'metrics.jsonl'), start_step)
  writer = writers.MetricWriter(workdir, enabled=writer_enabled)

  # Each process reads only the rows of every global batch that it feeds.
  feed = loader.StepIterator(
      run.task.train_batch_fn(c.batch_size, config.seed, parallel.process_slice(c.batch_size)),
      start=start_step, stop=run.total_steps, place=pstep.place_batch,
      prefetch=config.data.prefetch, num_workers=config.data.num_workers)
  eval_splits = (config.data.eval_split,)
  final_splits = tuple(dict.fromkeys(eval_splits + ((config.data.test_split,)
                                                    if config.data.test_split else ())))
  bar = tqdm.tqdm(total=run.total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                  disable=not (c.progress_bar and writer_enabled))
  pending, eval_metrics = [], None
  in_flight = collections.deque()  # the metrics of steps that may not have finished
  window_start, window_steps = time.time(), 0
  try:
    restore_data_position(checkpointer, start_step, feed)
    if start_step < run.total_steps:
      feed.start_prefetch()  # the first batches are read while the step compiles
    for step in range(start_step, run.total_steps):
      state, metrics = pstep.step(state, next(feed))
      pending.append((step + 1, metrics))
      in_flight.append(metrics)
      if len(in_flight) > MAX_STEPS_AHEAD:  # waits for an older step; newer ones stay queued
        jax.block_until_ready(in_flight.popleft())
      window_steps += 1
      bar.update(1)
      done = step + 1
      is_last = done == run.total_steps
      if done % c.log_every_steps == 0 or is_last:
        fetched = _check_finite(pending)  # the steps since the last log
        pending = []
        rate = window_steps / max(time.time() - window_start, 1e-9)
        window_start, window_steps = time.time(), 0
        means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
        means['steps_per_second'] = rate
        means['epoch'] = done / every_epoch
        writer.write(done, 'train', means)
        bar.set_postfix(loss=f'{means["loss"]:.4f}', steps_per_s=f'{rate:.2f}')
      if done % ckpt_every == 0 or is_last:
        _check_finite(pending)  # never save a state that a non-finite loss has touched
        checkpointer.save(done, pstep.unplace_state(state), feed)
      if done % eval_every == 0 or is_last:
        _check_finite(pending)  # nor evaluate or draw one
        eval_started = time.time()
        eval_metrics = evaluate_and_draw(run, eval_params(pstep, state), done, writer,
                                         final_splits if is_last else eval_splits)
        bar.write(f'step {done}: ' + ', '.join(f'{k}={v:.5g}' for k, v in eval_metrics.items()))
        window_start += time.time() - eval_started  # steps/s counts training, not evaluation
    if eval_metrics is None:  # complete, but killed before its summary was written
      eval_metrics = evaluate_and_draw(run, eval_params(pstep, state), start_step, writer,
                                       final_splits)
  finally:
    feed.close()
    bar.close()
    checkpointer.close()
    writer.close()
  summary = dict(eval_metrics)
  final_step = int(pstep.unplace_state(state).step)
  summary.update(steps=final_step, epochs=final_step / every_epoch,
                 resumed_from_step=start_step, wall_seconds=time.time() - started,
                 **run.task.describe(), dataset=config.data.name, model=config.model.name,
                 objective=config.objective.name,
                 parameters=int(sum(x.size for x in jax.tree.leaves(run.init_state.params))),
                 devices=pstep.num_devices, processes=jax.process_count(),
                 parallel=config.parallel.mode)
  if writer_enabled:
    writers.write_json(summary_path, summary)
  return summary
