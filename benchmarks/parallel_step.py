r"""Steps/s of the seed VAE's train step, data-parallel over 1, 2, 4, 8 devices: jit vs pmap.

The step is `sslm_jax.train.parallel.compile_train_step` on the library's step, at one global
batch for every device count (strong scaling). Each device count runs in its own process, since
the number of simulated CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N) is fixed
when JAX starts. In a process, after compilation and warm-up, jit and pmap take turns for
--repeats rounds of --steps steps, so load from other processes falls on both alike; every step is
timed on its own and synchronised. The batch is placed once (the host-to-device copy of 64 small
images is not what is measured).

Simulated devices share the machine's cores, so on a CPU this measures what splitting a step
does there (collectives, smaller per-device work, the per-step wait, device programs running side
by side, which can use the cores better than one device's program), not scaling; on real
accelerators the same command measures scaling.

  python benchmarks/parallel_step.py                            # 1,2,4,8 devices, batch 64
  python benchmarks/parallel_step.py --devices=1,2 --steps=3 --repeats=1 --model=tiny
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ('jit', 'pmap')
sys.path.insert(0, ROOT)  # the repository root holds the `benchmarks` package

from benchmarks._common import (load_warning, table_head,  # noqa: E402  (numpy only: no JAX
                                write_results)               # before XLA_FLAGS)

TINY = {'encoder_features': (8, 16, 16), 'encoder_out_features': 16, 'decoder_hidden': (16,),
        'decoder_base_features': 8, 'decoder_features': (8, 8), 'latent_dim': 4}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--devices', default='1,2,4,8', help='comma-separated simulated device counts')
  p.add_argument('--batch_size', type=int, default=64, help='global batch, every device count')
  p.add_argument('--steps', type=int, default=5, help='timed steps per mode per round')
  p.add_argument('--repeats', type=int, default=3, help='interleaved rounds')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps after compilation')
  p.add_argument('--model', choices=('seed', 'tiny'), default='seed')
  # 'auto' would run oneDNN's convolutions on one device and XLA's on several (the custom calls
  # have no sharding rule): the rows would compare kernels as well as layouts.
  p.add_argument('--conv_impl', choices=('xla', 'auto'), default='xla',
                 help="model.conv_impl; 'xla' (default) is the same convolutions at every count")
  p.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), 'results'))
  p.add_argument('--child', type=int, default=0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def measure(args) -> dict:
  """One device count (this process's), both modes: the row of the table."""
  import jax
  import jax.numpy as jnp
  sys.path.insert(0, ROOT)
  from sslm_jax.models import build_model
  from sslm_jax.objectives import bind_loss
  from sslm_jax.runs import run_config
  from sslm_jax.train import optim, parallel
  from sslm_jax.train.state import create_train_state

  config = run_config('vae', 'seed')
  config.model.conv_impl = args.conv_impl
  if args.model == 'tiny':
    for key, value in TINY.items():
      setattr(config.model, key, value)
  model = build_model(config.model)
  images = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, 32, 32, 1))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)),
                               jax.random.PRNGKey(0))['params']
  tx = optim.make_optimizer(config.optimizer, total_steps=1000)
  state = create_train_state(params, tx, jax.random.PRNGKey(1))
  loss_fn = bind_loss(model, config.objective)

  runners, row = {}, {'devices': jax.device_count(), 'batch_size': args.batch_size,
                      'per_device_batch': args.batch_size // jax.device_count()}
  for mode in MODES:
    ps = parallel.compile_train_step(loss_fn, tx, mode=mode, state_example=state)
    batch = ps.place_batch({'image': images.astype(np.float32)})
    placed = ps.place_state(state)
    start = time.perf_counter()
    placed, metrics = ps.step(placed, batch)
    jax.block_until_ready((placed, metrics))
    row[f'{mode}_first_step_s'] = time.perf_counter() - start  # mostly compilation
    runners[mode] = [ps, placed, batch]

  def one_step(mode) -> float:
    runner = runners[mode]
    start = time.perf_counter()
    runner[1], metrics = runner[0].step(runner[1], runner[2])
    jax.block_until_ready((runner[1], metrics))
    return time.perf_counter() - start

  for mode in MODES:
    for _ in range(args.warmup):
      one_step(mode)
  times = {mode: [] for mode in MODES}
  for _ in range(args.repeats):
    for mode in MODES:
      times[mode] += [one_step(mode) for _ in range(args.steps)]
  for mode in MODES:
    ms = np.asarray(times[mode]) * 1e3
    median = float(np.median(ms))
    row.update({f'{mode}_ms': median, f'{mode}_ms_p10': float(np.percentile(ms, 10)),
                f'{mode}_ms_p90': float(np.percentile(ms, 90)),
                f'{mode}_steps_per_s': 1e3 / median,
                f'{mode}_examples_per_s': args.batch_size * 1e3 / median})
  return row


def run_child(devices: int, argv: list[str]) -> dict:
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])}
  result = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f'--child={devices}'],
                          env=env, capture_output=True, text=True, timeout=900)
  if result.returncode:
    raise RuntimeError(f'{devices} devices failed:\n{result.stderr[-3000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def metadata(args, argv) -> dict:
  import flax
  import jax
  import optax
  return {
      'command': ' '.join(['python', os.path.relpath(os.path.abspath(__file__))] + argv),
      'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                  'cpu_count': os.cpu_count(), 'python': platform.python_version()},
      'versions': {'jax': jax.__version__, 'jaxlib': jax.lib.__version__,
                   'flax': flax.__version__, 'optax': optax.__version__,
                   'numpy': np.__version__},
      'settings': {'model': args.model, 'conv_impl': args.conv_impl,
                   'batch_size': args.batch_size, 'steps': args.steps,
                   'repeats': args.repeats, 'warmup': args.warmup,
                   'optimizer': 'adam 1e-3', 'objective': 'seed', 'data': 'uniform [-1, 1]',
                   'devices': 'simulated CPU devices (xla_force_host_platform_device_count)'},
  }


def markdown(rows: list[dict], meta: dict) -> str:
  s, m = meta['settings'], meta['machine']
  load = meta['load_average_1min']
  lines = [
      '# Seed VAE train step, data-parallel: jit over a mesh vs pmap',
      '',
      f'`{meta["command"]}` on {m["platform"]}, {m["cpu_count"]} CPUs, JAX '
      f'{meta["versions"]["jax"]}, Flax {meta["versions"]["flax"]}. {s["model"]} model, global '
      f'batch {s["batch_size"]} at every device count, Adam, seed objective, '
      f'model.conv_impl={s["conv_impl"]!r}. Median step time '
      f'(p10-p90) over {s["steps"] * s["repeats"]} steps per mode, jit and pmap interleaved. '
      f'The devices are simulated on the same {m["cpu_count"]} CPUs: this is what splitting the '
      f'step does on this machine (collectives, smaller per-device work, the per-step wait, '
      f'devices running side by side on the cores), not scaling over real devices. Load average '
      f'(1 min) {load["start"]:.1f} at the start, {load["end"]:.1f} at the end.',
      '',
      *table_head(['devices', 'per-device batch', 'jit ms', 'jit steps/s', 'jit ex/s',
                   'pmap ms', 'pmap steps/s', 'pmap ex/s', 'first step s (jit / pmap)']),
  ]
  for r in rows:
    cells = []
    for mode in MODES:
      cells += [f'{r[f"{mode}_ms"]:.1f} ({r[f"{mode}_ms_p10"]:.1f}-{r[f"{mode}_ms_p90"]:.1f})',
                f'{r[f"{mode}_steps_per_s"]:.2f}', f'{r[f"{mode}_examples_per_s"]:.0f}']
    lines.append(f'| {r["devices"]} | {r["per_device_batch"]} | ' + ' | '.join(cells) +
                 f' | {r["jit_first_step_s"]:.1f} / {r["pmap_first_step_s"]:.1f} |')
  lines += load_warning(load, m['cpu_count'],
                        'Absolute times are inflated and noisy then; compare jit with pmap '
                        'within a row, where the interleaving shares the load.')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> list[dict]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.child:
    print(json.dumps(measure(args)), flush=True)
    return []
  counts = [int(d) for d in args.devices.split(',')]
  for n in counts:
    if args.batch_size % n:
      raise SystemExit(f'--batch_size={args.batch_size} does not split over {n} devices; '
                       f'allowed: a multiple of every count in --devices={args.devices}')
  started, load_before = time.time(), os.getloadavg()
  rows = []
  for n in counts:
    rows.append(run_child(n, argv))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in rows[-1].items() if not k.endswith(('p10', 'p90'))}),
          flush=True)
  meta = metadata(args, argv)
  meta['load_average_1min'] = {'start': load_before[0], 'end': os.getloadavg()[0]}
  meta['wall_seconds'] = time.time() - started
  write_results(args.out_dir, 'parallel_step', {'meta': meta, 'rows': rows}, markdown(rows, meta))
  return rows


if __name__ == '__main__':
  main()
