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

What the loop runs comes from `sslm_jax.runs` (the config's checks, the task, the run folder);
how the step runs on the devices from `parallel.from_config` (jit or pmap: the loop does not
know which).
"""

import collections
import json
import logging
import os
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from sslm_jax import runs
from sslm_jax.data import loader
from sslm_jax.train import checkpoint as ckpt_lib
from sslm_jax.train import parallel, writers
from sslm_jax.train.state import TrainState

log = logging.getLogger(__name__)

# Steps dispatched ahead of the newest finished one: enough to keep the device busy while the
# host dispatches the next, few enough that the host's clock follows the device's.
MAX_STEPS_AHEAD = 2


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or Inf loss; the last good checkpoint is kept."""


def compile_step(run: runs.Run, strategy: parallel.Strategy) -> parallel.Strategy:
  """The one train step of the run's task, compiled by `strategy`.

  The task's device transform (e.g. uint8 images -> [-1, 1] floats) runs inside the step, so the
  host sends compact batches and every micro-batch and replica transforms its own rows.
  """
  task = run.task

  def loss_fn(params, batch, rng):
    return task.loss_fn(params, task.device_transform(batch), rng)

  return strategy.compile(loss_fn, run.tx, state_example=run.init_state)


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


def restore_or_init(run: runs.Run, checkpointer: ckpt_lib.Checkpointer,
                    strategy: parallel.Strategy) -> TrainState:
  """The newest intact checkpoint (or the initial state), laid out for `strategy`."""
  target = strategy.restore_target(run.init_state)
  state, step = checkpointer.restore_latest(target)
  if state is not None:
    log.info('resuming from checkpoint %d in %s', step, checkpointer.directory)
  return strategy.from_restored(target if state is None else state)


def eval_params(strategy: parallel.Strategy, state):
  """Parameters evaluation can use on every process: across processes, gathered in full."""
  params = strategy.unplace_state(state).params
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return params


def evaluate_and_draw(run: runs.Run, params, step: int, writer: writers.MetricWriter,
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


class _Metrics:
  """The metrics of dispatched steps: kept on the device until a log step, and the host held at
  most MAX_STEPS_AHEAD steps ahead of the device; steps/s over the training time of a window."""

  def __init__(self, steps_per_epoch: int):
    # (step, metrics) since the last log, fetched ones kept fetched; the newest dispatched steps
    self.pending, self.in_flight = [], collections.deque()
    self.steps_per_epoch = steps_per_epoch
    self.window_start = time.time()

  def add(self, done: int, metrics: dict) -> None:
    self.pending.append((done, metrics))
    self.in_flight.append(metrics)
    if len(self.in_flight) > MAX_STEPS_AHEAD:  # waits for an older step; newer ones stay queued
      jax.block_until_ready(self.in_flight.popleft())

  def check(self) -> list[tuple[int, dict]]:
    """The steps since the last log, fetched (once); raises on a non-finite loss."""
    self.pending = _check_finite(self.pending)
    return self.pending

  def log(self, done: int) -> dict[str, float]:
    """The means of the steps since the last log, with steps/s and the epoch."""
    fetched, self.pending = self.check(), []
    rate = len(fetched) / max(time.time() - self.window_start, 1e-9)
    self.window_start = time.time()
    means = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
    return {**means, 'steps_per_second': rate, 'epoch': done / self.steps_per_epoch}

  def pause(self, seconds: float) -> None:
    self.window_start += seconds  # steps/s counts training, not evaluation


def _train(run: runs.Run, strategy, state, feed, checkpointer, writer, bar, start_step: int):
  """Steps start_step .. run.total_steps; returns (state, metrics of the last evaluation)."""
  c, d = run.config.train, run.config.data
  every = {'eval': c.eval_every_steps or run.steps_per_epoch,
           'checkpoint': c.checkpoint_every_steps or run.steps_per_epoch}
  eval_splits = (d.eval_split,)
  final_splits = tuple(dict.fromkeys(eval_splits + ((d.test_split,) if d.test_split else ())))
  metrics, eval_metrics = _Metrics(run.steps_per_epoch), None
  for step in range(start_step, run.total_steps):
    state, step_metrics = strategy.step(state, next(feed))
    done = step + 1
    metrics.add(done, step_metrics)
    bar.update(1)
    is_last = done == run.total_steps
    if done % c.log_every_steps == 0 or is_last:
      means = metrics.log(done)
      writer.write(done, 'train', means)
      bar.set_postfix(loss=f'{means["loss"]:.4f}', steps_per_s=f'{means["steps_per_second"]:.2f}')
    if done % every['checkpoint'] == 0 or is_last:
      metrics.check()  # never save a state that a non-finite loss has touched
      checkpointer.save(done, strategy.unplace_state(state), feed)
    if done % every['eval'] == 0 or is_last:
      metrics.check()  # nor evaluate or draw one
      eval_started = time.time()
      eval_metrics = evaluate_and_draw(run, eval_params(strategy, state), done, writer,
                                       final_splits if is_last else eval_splits)
      bar.write(f'step {done}: ' + ', '.join(f'{k}={v:.5g}' for k, v in eval_metrics.items()))
      metrics.pause(time.time() - eval_started)
  if eval_metrics is None:  # complete, but killed before its summary was written
    eval_metrics = evaluate_and_draw(run, eval_params(strategy, state), start_step, writer,
                                     final_splits)
  return state, eval_metrics


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming if the workdir has checkpoints), evaluates, writes summary.json."""
  started = time.time()
  runs.validate(config)
  p = config.parallel
  parallel.initialize_distributed(p.coordinator_address, p.num_processes, p.process_id)
  strategy = parallel.from_config(p, config.train)  # layout errors before any work
  runs.check_workdir(config, workdir)
  run = runs.setup(config, workdir)
  compile_step(run, strategy)
  os.makedirs(workdir, exist_ok=True)
  c = config.train
  checkpointer = ckpt_lib.Checkpointer(workdir, keep=c.keep_checkpoints,
                                       async_save=c.async_checkpoints)
  state = restore_or_init(run, checkpointer, strategy)
  start_step = int(strategy.unplace_state(state).step)
  summary_path = os.path.join(workdir, 'summary.json')
  if start_step >= run.total_steps and os.path.exists(summary_path):
    checkpointer.close()
    log.info('the run in %s is complete (step %d); nothing to do', workdir, start_step)
    with open(summary_path) as f:
      return json.load(f)
  runs.record_config(config, workdir)
  writer_enabled = jax.process_index() == 0
  if writer_enabled:
    writers.truncate_jsonl(os.path.join(workdir, 'metrics.jsonl'), start_step)
  writer = writers.MetricWriter(workdir, enabled=writer_enabled)
  # Each process reads only the rows of every global batch that it feeds.
  feed = loader.StepIterator(
      run.task.train_batch_fn(c.batch_size, config.seed, parallel.process_slice(c.batch_size)),
      start=start_step, stop=run.total_steps, place=strategy.place_batch,
      prefetch=config.data.prefetch, num_workers=config.data.num_workers)
  bar = tqdm.tqdm(total=run.total_steps, initial=start_step, unit='step', dynamic_ncols=True,
                  disable=not (c.progress_bar and writer_enabled))
  try:
    restore_data_position(checkpointer, start_step, feed)
    if start_step < run.total_steps:
      feed.start_prefetch()  # the first batches are read while the step compiles
    state, eval_metrics = _train(run, strategy, state, feed, checkpointer, writer, bar,
                                 start_step)
  finally:
    feed.close()
    bar.close()
    checkpointer.close()
    writer.close()
  summary = _summary(run, strategy, state, eval_metrics, start_step, time.time() - started)
  if writer_enabled:
    writers.write_json(summary_path, summary)
  return summary


def _summary(run: runs.Run, strategy, state, eval_metrics: dict, start_step: int,
             seconds: float) -> dict:
  config = run.config
  final_step = int(strategy.unplace_state(state).step)
  return {**eval_metrics, 'steps': final_step, 'epochs': final_step / run.steps_per_epoch,
          'resumed_from_step': start_step, 'wall_seconds': seconds, **run.task.describe(),
          'dataset': config.data.name, 'model': config.model.name,
          'objective': config.objective.name,
          'parameters': int(sum(x.size for x in jax.tree.leaves(run.init_state.params))),
          'devices': strategy.num_devices, 'processes': jax.process_count(),
          'parallel': strategy.mode}
