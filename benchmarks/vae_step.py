r"""Times one full train step of the seed VAE: JAX (sslm_jax's jitted step) against PyTorch.

A train step is forward, backward and the Adam update, at the seed's settings (Adam 1e-3, seed
objective), on the same weights (the JAX init, converted). Everything runs in one process and
interleaved: after warm-up and compilation, each repeat runs --steps steps of JAX, then of PyTorch
eager, then of torch.compile, so load from other processes on the machine falls on all of them
alike. Every step is timed on its own, synchronised (JAX: block_until_ready).

  python benchmarks/vae_step.py                          # batch 64 and 256, writes results/
                                                         # (vae_step_<backend>.* off a CPU)
  python benchmarks/vae_step.py --batch_sizes=64 --steps=3 --repeats=2 --no_compile

Memory columns: `*_rss_growth_mb` is the growth of the process's resident set over that
framework's setup, compilation and warm-up (process-wide, so it includes compiled code and
allocator caches, and depends on what ran before); `jax_step_buffers_mb` is XLA's own figure for
the compiled step (arguments + outputs + temporaries - donated aliases). FLOPs are XLA's count for
the compiled JAX step with XLA's own convolutions (about 11 GFLOP at batch 64 for the seed model's
useful work; XLA does not count the work inside custom calls), used for both JAX columns.

Two JAX columns: the library's default step (`conv_impl='auto'`: the oneDNN convolutions of
sslm_jax/kernels where they are built, on one CPU device) and the same step with XLA's own
convolutions (`conv_impl='xla'`), so what the kernels buy is measured in the same run.
"""

import argparse
import json
import os
import sys
import time

# `python benchmarks/vae_step.py` (the documented command) puts benchmarks/ on the path, not the
# repository root that holds the `benchmarks` package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import (command_line, failures, fmt, interleaved_times, load_warning,
                                machine, ms_cell, peak_rss_mb, summary, table_head, versions,
                                write_results)
from sslm_jax import host_memory

if __name__ == '__main__':
  # Before JAX or PyTorch start: rerun under tcmalloc where installed, as the `sslm-jax` command
  # does (sslm_jax/host_memory.py), so that both frameworks run under the allocator a user of
  # the library gets. SSLM_JAX_TCMALLOC=0 measures with the system's malloc instead.
  host_memory.exec_under_tcmalloc()
# JAX and PyTorch share an accelerator here: JAX must not take 75% of its memory up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.pytorch_reference.model import VAE as TorchVAE, seed_loss
from sslm_jax.runs import run_config
from sslm_jax.interop import flax_to_torch_state_dict
from sslm_jax.kernels import onednn_conv
from sslm_jax.models import build_model
from sslm_jax.objectives import bind_loss
from sslm_jax.train import optim
from sslm_jax.train.state import create_train_state
from sslm_jax.train.step import jit_train_step

WARMUP_STEPS = 2
TORCH_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch_sizes', default='64,256', help='comma-separated')
  p.add_argument('--steps', type=int, default=4, help='timed steps per framework per repeat')
  p.add_argument('--repeats', type=int, default=4, help='interleaved rounds')
  p.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), 'results'))
  p.add_argument('--no_compile', action='store_true', help='skip the torch.compile column')
  p.add_argument('--torch_threads', type=int, default=0,
                 help="torch.set_num_threads; 0 keeps torch's default (one per core)")
  return p.parse_args(argv)


class JaxRunner:
  """sslm_jax's own train step: bind_loss + make_optimizer + jit_train_step (state donated)."""

  def __init__(self, images: np.ndarray, params, conv_impl: str):
    config = run_config()
    config.model.conv_impl = conv_impl
    model = build_model(config.model)
    tx = optim.make_optimizer(config.optimizer, total_steps=1000)
    params = jax.tree.map(jnp.asarray, params)  # its own copy: the step donates its state
    self.state = create_train_state(params, tx, jax.random.PRNGKey(1))
    self.batch = {'image': jnp.asarray(images)}
    step = jit_train_step(bind_loss(model, config.objective), tx)
    start = time.perf_counter()
    self.step = compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost['flops']) if cost and 'flops' in cost else None
    mem = compiled.memory_analysis()
    self.buffers_mb = None if mem is None else (
        mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        - mem.alias_size_in_bytes) / 2**20

  def __call__(self):
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


class TorchRunner:
  """The PyTorch reference, eager or through torch.compile (forward + loss; Adam stays eager)."""

  def __init__(self, images: np.ndarray, params, compile_model: bool):
    self.model = TorchVAE()
    self.model.load_state_dict({k: torch.from_numpy(v)
                                for k, v in flax_to_torch_state_dict(params).items()})
    self.model.to(TORCH_DEVICE)
    self.x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).to(TORCH_DEVICE)
    self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def loss_fn(x):
      recon, mu, logvar = self.model(x)
      return seed_loss(recon, x, mu, logvar, kl_weight=1e-4)
    self.loss_fn = torch.compile(loss_fn, dynamic=False) if compile_model else loss_fn
    self.compile_s = None
    if compile_model:  # the first call compiles forward and backward
      start = time.perf_counter()
      self()
      self.compile_s = time.perf_counter() - start

  def __call__(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss_fn(self.x)
    loss.backward()
    self.opt.step()
    if TORCH_DEVICE == 'cuda':
      torch.cuda.synchronize()


def bench_batch(batch_size: int, args) -> dict:
  rng = np.random.default_rng(batch_size)
  images = rng.uniform(-1, 1, (batch_size, 32, 32, 1)).astype(np.float32)
  model = build_model(run_config().model)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(images[:1]),
                               jax.random.PRNGKey(0))['params']
  params_np = jax.tree.map(np.array, params)

  makers = {'jax': lambda: JaxRunner(images, params_np, 'auto'),
            'jax_xla_conv': lambda: JaxRunner(images, params_np, 'xla'),
            'torch_eager': lambda: TorchRunner(images, params_np, compile_model=False)}
  if not args.no_compile:
    makers['torch_compile'] = lambda: TorchRunner(images, params_np, compile_model=True)
  runners, times, rss_growth, errors = interleaved_times(
      makers, warmup=WARMUP_STEPS, steps=args.steps, repeats=args.repeats, label=f'batch {batch_size}')

  jax_runner = runners['jax']
  row = {'batch_size': batch_size}
  for name in ('jax', 'jax_xla_conv', 'torch_eager', 'torch_compile'):
    for key, value in summary(times.get(name), batch_size).items():
      row[f'{name}_{key}'] = value
    row[f'{name}_rss_growth_mb'] = rss_growth.get(name)
  jax_ms, eager_ms = row['jax_ms'], row['torch_eager_ms']
  compile_ms = row['torch_compile_ms']
  row['speedup_vs_torch_eager'] = eager_ms / jax_ms if eager_ms else None
  row['speedup_vs_torch_compile'] = compile_ms / jax_ms if compile_ms else None
  xla_conv_ms = row['jax_xla_conv_ms']
  row['jax_xla_conv_speedup_vs_torch_eager'] = eager_ms / xla_conv_ms if xla_conv_ms else None
  flops = getattr(runners.get('jax_xla_conv'), 'flops', None)  # custom calls count no FLOPs
  row['jax_step_gflop'] = flops / 1e9 if flops else None
  row['jax_gflop_per_s'] = flops / jax_ms / 1e6 if flops else None
  row['jax_step_buffers_mb'] = jax_runner.buffers_mb
  row['jax_compile_s'] = jax_runner.compile_s
  row['torch_compile_s'] = getattr(runners.get('torch_compile'), 'compile_s', None)
  row['errors'] = errors or None
  return row


def metadata(args) -> dict:
  return {
      'command': command_line('benchmarks.vae_step'),
      'machine': machine(),
      'versions': versions(),
      'jax_backend': jax.default_backend(), 'jax_devices': [str(d) for d in jax.devices()],
      'torch_device': TORCH_DEVICE, 'torch_threads': torch.get_num_threads(),
      'settings': {'steps': args.steps, 'repeats': args.repeats, 'warmup_steps': WARMUP_STEPS,
                   'conv_impl': onednn_conv.resolve('auto'),
                   'conv_impl_note': onednn_conv.unavailable_reason(),
                   'conv_transpose_impl': run_config().model.conv_transpose_impl,
                   'optimizer': 'adam 1e-3', 'objective': 'seed', 'data': 'uniform [-1, 1]'},
      'peak_rss_mb': peak_rss_mb(),
  }


def markdown(rows: list[dict], meta: dict) -> str:
  cell = ms_cell
  settings = meta['settings']
  lines = [
      '# Seed VAE train step: JAX vs PyTorch',
      '',
      f'`{meta["command"]}` on {meta["machine"]["platform"]}, {meta["machine"]["cpu_count"]} '
      f'CPUs, JAX {meta["versions"]["jax"]} ({meta["jax_backend"]}), PyTorch '
      f'{meta["versions"]["torch"]} ({meta["torch_device"]}, threads={meta["torch_threads"]}). '
      f'Median step time in ms (p10-p90) over {settings["steps"] * settings["repeats"]} '
      f'interleaved steps each; speedup = PyTorch median / JAX median. Load average (1 min) '
      f'{meta["load_average_1min"]["start"]:.1f} at the start, '
      f'{meta["load_average_1min"]["end"]:.1f} at the end. Host allocator (both frameworks): '
      f'{meta["machine"]["host_allocator"]}. JAX convolutions: {settings["conv_impl"]} '
      f'(`conv_impl=\'auto\'`); the "XLA convs" columns are the same step with '
      f'`conv_impl=\'xla\'`.',
      '',
      *table_head(['batch', 'JAX ms', 'JAX, XLA convs ms', 'torch eager ms', 'torch.compile ms',
                   'speedup vs eager', 'XLA convs vs eager', 'speedup vs compile', 'JAX ex/s',
                   'eager ex/s', 'GFLOP/step', 'JAX GFLOP/s',
                   'RSS growth MB (JAX / XLA convs / eager / compile)']),
  ]
  for r in rows:
    lines.append(
        f'| {r["batch_size"]} | {cell(r, "jax")} | {cell(r, "jax_xla_conv")} | '
        f'{cell(r, "torch_eager")} | {cell(r, "torch_compile")} | '
        f'{fmt(r["speedup_vs_torch_eager"], ".2f")} | '
        f'{fmt(r["jax_xla_conv_speedup_vs_torch_eager"], ".2f")} | '
        f'{fmt(r["speedup_vs_torch_compile"], ".2f")} | {fmt(r["jax_examples_per_s"], ".0f")} | '
        f'{fmt(r["torch_eager_examples_per_s"], ".0f")} | {fmt(r["jax_step_gflop"], ".2f")} | '
        f'{fmt(r["jax_gflop_per_s"], ".1f")} | {fmt(r["jax_rss_growth_mb"], ".0f")} / '
        f'{fmt(r["jax_xla_conv_rss_growth_mb"], ".0f")} / '
        f'{fmt(r["torch_eager_rss_growth_mb"], ".0f")} / '
        f'{fmt(r["torch_compile_rss_growth_mb"], ".0f")} |')
  lines += load_warning(meta['load_average_1min'], meta['machine']['cpu_count'],
                        'Multi-threaded PyTorch CPU kernels slow down badly then; compare with '
                        '--torch_threads=1.')
  lines += failures(rows, lambda r: f'batch {r["batch_size"]}')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  load_before = os.getloadavg()
  rows = []
  for batch_size in (int(b) for b in args.batch_sizes.split(',')):
    rows.append(bench_batch(batch_size, args))
    print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith(('p10', 'p90'))}),
          flush=True)
  meta = metadata(args)
  meta['load_average_1min'] = {'start': load_before[0], 'end': os.getloadavg()[0]}
  rows = [{**row, 'meta': meta} for row in rows]
  write_results(args.out_dir, 'vae_step', rows, markdown(rows, meta),
                backend=jax.default_backend())
  return rows


if __name__ == '__main__':
  main()
