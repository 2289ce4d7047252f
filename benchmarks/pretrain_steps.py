r"""Times the train steps of several pretraining configs in one process, interleaved: the step
ratio that gives two objectives the same pretraining wall time.

`configs/pipeline_fortunes_electra.py` gives ELECTRA round(MLM steps x STEP_RATIO) steps, where
STEP_RATIO is ELECTRA's step rate over the masked LM's. Read from two pretraining runs made one
after the other, the ratio moved between 0.88 and 0.95 on the same VM, whose speed drifts over an
hour; here both steps run in turns in one process, so a drift falls on every row alike.

Each `--row` is `NAME=CONFIG [--config.key=value ...]`, read as `sslm-jax` reads its flags: a
pipeline config (configs/pipeline_*.py; its `pretrain` run is timed) or a run config. Each row is
set up as training sets it up (`runs.setup` in a temporary folder: data, tokenizer, initial
state; the loop's `compile_step` on the config's parallel layout), and the first --batches
batches of its own training feed are placed on the devices beforehand, so only the step is
timed, not input. After --warmup steps each, --repeats rounds run --steps steps of every row in
turn; each step is timed alone, until its loss is on the host (the training loop keeps two
steps in flight instead, which hides the dispatch; here every row pays it alike).

Columns: median ms a step (p10-p90), steps/s, `ratio` = the row's steps/s over the first row's,
and `equal-time steps` = round(the first row's configured steps x ratio), the steps that take the
row as long as the first row's whole pretraining.

  python benchmarks/pretrain_steps.py        # the default rows: ~6 minutes on 2 idle cores
  python benchmarks/pretrain_steps.py --row "mlm=configs/bert_fortunes.py" \
      --row "electra=configs/electra_fortunes.py --config.objective.mask_rate=0.25" --repeats=3

Results: results/pretrain_steps.{json,md} (results/pretrain_steps_<backend>.* off a CPU).
"""

import argparse
import os
import shlex
import sys
import tempfile

# `python benchmarks/pretrain_steps.py` puts benchmarks/ on the path, not the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks._common import (command_line, fmt, load_warning, machine, summary, table_head,
                                timed, write_results)
from sslm_jax import host_memory

if __name__ == '__main__':
  host_memory.exec_under_tcmalloc()  # the allocator `sslm-jax train` runs under

import jax  # noqa: E402

from sslm_jax import cli, runs  # noqa: E402
from sslm_jax.config import ConfigError  # noqa: E402
from sslm_jax.train import loop, parallel  # noqa: E402

# The pair that configs/pipeline_fortunes_electra.py's STEP_RATIO is about: the masked LM with
# the embeddings' LayerNorm (its encoder is then ELECTRA's discriminator exactly) and ELECTRA.
DEFAULT_ROWS = (
    'mlm=configs/pipeline_fortunes_bert.py --config.pretrain.model.embed_norm=True',
    'electra=configs/pipeline_fortunes_electra.py',
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--row', action='append', dest='rows', metavar='NAME=CONFIG [FLAGS]',
                 help='a row (repeatable; the first is the reference); default: '
                      + '; '.join(DEFAULT_ROWS))
  p.add_argument('--steps', type=int, default=20, help='timed steps a row per round')
  p.add_argument('--repeats', type=int, default=8, help='interleaved rounds')
  p.add_argument('--warmup', type=int, default=5,
                 help='untimed steps a row, the first of which compiles it')
  p.add_argument('--batches', type=int, default=8,
                 help='batches of each row\'s feed placed beforehand and cycled')
  p.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), 'results'))
  args = p.parse_args(argv)
  args.rows = args.rows or list(DEFAULT_ROWS)
  for flag in ('steps', 'repeats', 'warmup', 'batches'):  # warmup: the first step compiles
    if getattr(args, flag) < 1:
      p.error(f'--{flag} must be at least 1; got {getattr(args, flag)}')
  return args


def row_config(spec: str):
  """(name, pretraining run config) of a row `NAME=CONFIG [--config.key=value ...]`; a bad row
  raises ConfigError naming it."""
  name, sep, command = spec.partition('=')
  argv = shlex.split(command)
  if not sep or not name.strip() or not argv or argv[0].startswith('-'):
    raise ConfigError(f'row {spec!r}: allowed: NAME=CONFIG [--config.key=value ...], e.g. '
                      f'{DEFAULT_ROWS[1]!r}')
  argv = ['--config', argv[0], *argv[1:]]
  try:  # a pipeline config times its pretraining run; any other is a run config
    config, _ = cli._load_config(argv, command='pipeline')
    return name.strip(), config.pretrain
  except ConfigError as e:
    if 'is not a pipeline config' not in str(e):
      raise ConfigError(f'row {name}: {e}') from e
  try:
    config, _ = cli._load_config(argv + ['--workdir', '-'])
  except ConfigError as e:
    raise ConfigError(f'row {name}: {e}') from e
  return name.strip(), config


class StepRunner:
  """The train step `sslm-jax train` would run for a config (its task, optimizer and parallel
  layout), called without arguments on the run's own first `num_batches` training batches,
  placed beforehand and cycled. `state` is the newest train state."""

  def __init__(self, config, workdir: str, num_batches: int):
    strategy = parallel.from_config(config.parallel, config.train)
    self.run = runs.setup(config, workdir)
    self.strategy = loop.compile_step(self.run, strategy)
    self.state = strategy.from_restored(strategy.restore_target(self.run.init_state))
    size = config.train.batch_size
    batch_of = self.run.task.train_batch_fn(size, config.seed, parallel.process_slice(size))
    self.batches = [strategy.place_batch(batch_of(s)) for s in range(num_batches)]
    self.calls = 0

  def __call__(self) -> None:
    batch = self.batches[self.calls % len(self.batches)]
    self.state, metrics = self.strategy.step(self.state, batch)
    jax.device_get(metrics['loss'])  # complete: its metrics reached the host
    self.calls += 1


def measure(args) -> list[dict]:
  named = [row_config(spec) for spec in args.rows]  # every row is checked before any work
  names = [name for name, _ in named]
  if len(set(names)) != len(names):
    raise ConfigError(f'row names must differ; got {names}')
  steppers, rows = {}, []
  with tempfile.TemporaryDirectory(prefix='pretrain_steps_') as tmp:
    for (name, config), spec in zip(named, args.rows):
      runner = StepRunner(config, os.path.join(tmp, name), args.batches)
      timed(runner, args.warmup)
      steppers[name] = runner
      rows.append({'row': name, 'spec': spec, 'model': config.model.name,
                   'objective': config.objective.name, 'batch_size': config.train.batch_size,
                   'configured_steps': runner.run.total_steps})
    times = {name: [] for name in steppers}
    for _ in range(args.repeats):
      for name, step in steppers.items():
        times[name] += timed(step, args.steps)
  for row in rows:
    row.update(summary(times[row['row']], 1, unit='steps'))
    row['ms_per_step'] = row.pop('ms')
  reference = rows[0]
  for row in rows:
    row['ratio'] = row['steps_per_s'] / reference['steps_per_s']
    row['equal_time_steps'] = round(reference['configured_steps'] * row['ratio'])
  return rows


def markdown(rows: list[dict], meta: dict) -> str:
  s = meta['settings']
  lines = [
      '# Pretraining steps, interleaved: the equal-time step ratio', '',
      f'`{meta["command"]}` on {meta["machine"]["platform"]}, {meta["machine"]["cpu_count"]} '
      f'CPUs, JAX {meta["jax"]} ({meta["backend"]}: {meta["device_kind"]}). Each row\'s own '
      f'train step on {s["batches"]} of its training batches placed beforehand; '
      f'{s["repeats"]} interleaved rounds of {s["steps"]} steps a row after {s["warmup"]} '
      f'warm-up steps; each step timed to its metrics on the host. Ratio: steps/s over the first '
      f'row\'s; equal-time steps: the first row\'s configured steps x ratio. Load average '
      f'(1 min) {meta["load_average_1min"]["start"]:.1f} at the start, '
      f'{meta["load_average_1min"]["end"]:.1f} at the end. Host allocator: '
      f'{meta["machine"]["host_allocator"]}.', '',
      *table_head(['row', 'config', 'model / objective', 'batch', 'ms/step (p10-p90)',
                   'steps/s', 'ratio', 'configured steps', 'equal-time steps']),
  ]
  for r in rows:
    lines.append(
        f'| {r["row"]} | `{r["spec"].partition("=")[2]}` | {r["model"]} / {r["objective"]} | '
        f'{r["batch_size"]} | {fmt(r["ms_per_step"])} ({fmt(r["ms_p10"])}-{fmt(r["ms_p90"])}) '
        f'| {fmt(r["steps_per_s"], ".3f")} | {fmt(r["ratio"], ".3f")} | '
        f'{r["configured_steps"]} | {r["equal_time_steps"]} |')
  lines += load_warning(meta['load_average_1min'], meta['machine']['cpu_count'],
                        'Another job shared the CPUs: rerun alone.')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  load_before = os.getloadavg()
  rows = measure(args)
  meta = {'command': command_line('benchmarks.pretrain_steps'), 'machine': machine(),
          'jax': jax.__version__, 'backend': jax.default_backend(),
          'device_kind': jax.devices()[0].device_kind,
          'settings': {k: getattr(args, k) for k in ('steps', 'repeats', 'warmup', 'batches')},
          'load_average_1min': {'start': load_before[0], 'end': os.getloadavg()[0]}}
  write_results(args.out_dir, 'pretrain_steps', {'rows': rows, 'meta': meta},
                markdown(rows, meta), backend=jax.default_backend())
  return rows


if __name__ == '__main__':
  try:
    main()
  except ConfigError as e:
    sys.exit(f'error: {e}')
