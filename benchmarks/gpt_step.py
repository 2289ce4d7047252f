r"""Times one full GPT pretraining step: JAX (sslm_jax's jitted step) against PyTorch.

A train step is forward, causal-LM loss, backward, global-norm gradient clipping and the AdamW
update, with the settings of configs/gpt_fortunes.py (AdamW b2 0.99, weight decay 0.1, clipping
at 1.0, warmup-cosine learning rate, dropout 0.1), on the same weights (the JAX init, converted)
and the same token batch. JAX runs the library's own path: `bind_loss` of the `causal_lm`
objective (`lm_loss`, which also computes accuracy and perplexity), `make_optimizer` and
`jit_train_step` (state donated). PyTorch runs benchmarks/pytorch_reference/gpt.py
(`F.scaled_dot_product_attention`, its fused attention) with `F.cross_entropy`, the same
accuracy, `clip_grad_norm_` and `torch.optim.AdamW` at the same learning rates: eager with
torch's default threads (one per core), eager on one thread (first row only by default: on a
loaded machine multi-threaded PyTorch CPU kernels slow down badly, and one thread is then the
faster PyTorch), and with forward + loss through `torch.compile` (first row only by default;
compiling takes a minute or more on 2 cores; the optimizer stays eager). Each framework draws
its own dropout masks. The default rows: the config's size (batch 32 x 128 tokens), the same
without dropout (what dropout costs each side), and batch 8 x 256 tokens.

Everything runs in one process and interleaved: after compilation and warm-up, each repeat runs
--steps steps of JAX, then of each PyTorch variant, so load from other processes falls on all of
them alike. Every step is timed on its own, synchronised.

  python benchmarks/gpt_step.py         # 4.9 CPU-minutes: under 5 minutes on 2 idle cores
  python benchmarks/gpt_step.py --rows=32x128 --steps=2 --repeats=2 --no_compile

A row is `BATCHxSEQ` with optional `:field=value` overrides of the config's model section, e.g.
`32x128:dropout_rate=0` or `16x128:embed_dim=384:num_heads=6:mlp_dim=1536`.

Model FLOPs (the `mfu` columns): per token, 6 N + 12 L T d for forward + backward, where N
counts every parameter that multiplies an activation: the blocks' (weights, biases and
LayerNorms), the final LayerNorm, and the tied output projection V d once; the token and
position embedding lookups are not counted. 12 L T d is attention's q k^T and weights @ v over
the full T x T square (the causal half is not subtracted, as in the PaLM paper's MFU). `mfu` is
model FLOP/s over the peak float32 FLOP/s of this machine, measured in the same run as the best
median of a 2048^3 float32 matmul in JAX (PyTorch's is recorded too). XLA's own FLOP count of
the compiled step is given beside it.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

# `python benchmarks/gpt_step.py` (the documented command) puts benchmarks/ on the path, not the
# repository root that holds the `benchmarks` package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks._common import (command_line, interleaved_times, machine, peak_rss_mb, summary,
                                timed, versions, write_results)
from sslm_jax import host_memory

if __name__ == '__main__':
  host_memory.exec_under_tcmalloc()  # as in vae_step.py: both frameworks under tcmalloc

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.pytorch_reference.gpt import GPT as TorchGPT, causal_lm_loss
from sslm_jax.interop import flax_gpt_params_to_torch
from sslm_jax.models import build_model
from sslm_jax.objectives import bind_loss
from sslm_jax.objectives.lm import Vocab
from sslm_jax.train import optim
from sslm_jax.train.state import create_train_state
from sslm_jax.train.step import jit_train_step

WARMUP_STEPS = 2
TOTAL_STEPS = 10_000  # the schedules' length (the timed steps fall in the warmup; same work)
TORCH_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
CONFIG_PATH = os.path.join(ROOT, 'configs', 'gpt_fortunes.py')
RUNNERS = ('jax', 'torch_eager', 'torch_eager_1thread', 'torch_compile')
DEFAULT_ROWS = '32x128,32x128:dropout_rate=0,8x256'
PEAK_MATMUL_N = 2048


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rows', default=DEFAULT_ROWS,
                 help='comma-separated BATCHxSEQ[:field=value...] (model field overrides)')
  p.add_argument('--steps', type=int, default=3, help='timed steps per framework per repeat')
  p.add_argument('--repeats', type=int, default=3, help='interleaved rounds')
  p.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), 'results'))
  p.add_argument('--no_compile', action='store_true', help='skip the torch.compile column')
  p.add_argument('--compile_rows', default='0',
                 help="indices of the rows that get a torch.compile column ('all' for every "
                      "row); compiling takes about a minute a row on 2 cores")
  p.add_argument('--single_thread_rows', default='0',
                 help="indices of the rows that also time PyTorch eager on one thread ('all', "
                      "or '' for none): on a loaded machine its multi-threaded kernels slow "
                      "down badly, and one thread can be the faster PyTorch")
  p.add_argument('--torch_threads', type=int, default=0,
                 help="torch.set_num_threads; 0 keeps torch's default (one per core)")
  return p.parse_args(argv)


def load_config():
  spec = importlib.util.spec_from_file_location('gpt_fortunes', CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def row_config(spec: str):
  """The gpt_fortunes config with a row's batch size, sequence length and model overrides."""
  config = load_config()
  shape, *overrides = spec.split(':')
  batch, seq = (int(v) for v in shape.split('x'))
  config.train.batch_size, config.text.seq_len = batch, seq
  config.model.max_len = max(config.model.max_len, seq)
  for item in overrides:
    key, value = item.split('=')
    old = config.model[key]
    if isinstance(old, bool):
      value = value.lower() in ('1', 'true')
    elif isinstance(old, (int, float)):
      value = type(old)(float(value))
    config.model[key] = value
  return config


def model_flops_per_token(params, config) -> tuple[float, int]:
  """(6 N + 12 L T d, N): see the module docstring for what N counts."""
  m = config.model
  n = sum(int(np.prod(x.shape)) for k, v in params.items() if k.startswith('blocks_')
          for x in jax.tree.leaves(v))
  n += sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params['final_norm']))
  n += config.text.vocab_size * m.embed_dim  # the tied output projection
  return 6 * n + 12 * m.num_layers * config.text.seq_len * m.embed_dim, n


def peak_gflops() -> dict:
  """Median GFLOP/s of 7 n^3 float32 matmuls in JAX (the MFU denominator) and in PyTorch."""
  n = PEAK_MATMUL_N
  flop = 2 * n ** 3
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  jax_times = timed(lambda: jax.block_until_ready(matmul(a, a)), 7)
  ta = torch.randn(n, n)
  torch.matmul(ta, ta)
  torch_times = timed(lambda: torch.matmul(ta, ta), 7)
  return {'jax': flop / np.median(jax_times) / 1e9, 'torch': flop / np.median(torch_times) / 1e9}


class JaxRunner:
  """sslm_jax's own train step: bind_loss(causal_lm) + make_optimizer + jit_train_step."""

  def __init__(self, config, tokens: np.ndarray, params):
    model = build_model(config.model, vocab_size=config.text.vocab_size)
    vocab = Vocab(size=config.text.vocab_size, pad_id=0, bos_id=1, eos_id=2, mask_id=3,
                  first_normal_id=4)  # causal_lm uses none of the ids
    tx = optim.make_optimizer(config.optimizer, total_steps=TOTAL_STEPS)
    self.state = create_train_state(params, tx, jax.random.PRNGKey(1))
    self.batch = {'tokens': jnp.asarray(tokens)}
    step = jit_train_step(bind_loss(model, config.objective, vocab=vocab), tx)
    start = time.perf_counter()
    self.step = compiled = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost['flops']) if cost and 'flops' in cost else None

  def __call__(self):
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


class TorchRunner:
  """The PyTorch reference GPT, eager or through torch.compile (forward + loss); `threads` > 0
  runs its steps on that many threads."""

  def __init__(self, config, tokens: np.ndarray, params, compile_model: bool,
               threads: int = 0):
    m, o = config.model, config.optimizer
    self.threads = threads
    self.model = TorchGPT(config.text.vocab_size, m.num_layers, m.num_heads, m.embed_dim,
                          m.mlp_dim, m.max_len, m.dropout_rate, m.attention_dropout_rate,
                          m.positions, m.tie_embeddings)
    self.model.load_state_dict({k: torch.from_numpy(v)
                                for k, v in flax_gpt_params_to_torch(params).items()})
    self.model.to(TORCH_DEVICE).train()
    t = torch.from_numpy(tokens.astype(np.int64)).to(TORCH_DEVICE)
    self.inputs, self.targets = t[:, :-1], t[:, 1:]
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                                 weight_decay=o.weight_decay)
    # The JAX step's learning rates, step by step (optax counts from 0 as torch's step does).
    schedule = optim.learning_rate_schedule(o, TOTAL_STEPS)
    self.lrs = np.asarray(jax.vmap(schedule)(jnp.arange(TOTAL_STEPS)))
    self.clip = o.grad_clip_norm
    self.step_index = 0

    def loss_fn(inputs, targets):
      logits = self.model(inputs)
      with torch.no_grad():  # the JAX objective's accuracy metric: the same work
        accuracy = (logits.argmax(-1) == targets).float().mean()
      return causal_lm_loss(logits, targets), accuracy
    self.loss_fn = torch.compile(loss_fn, dynamic=False) if compile_model else loss_fn
    self.compile_s = None
    if compile_model:  # the first call compiles forward and backward
      start = time.perf_counter()
      self()
      self.compile_s = time.perf_counter() - start

  def __call__(self):
    if not self.threads:
      return self._step()
    default = torch.get_num_threads()
    torch.set_num_threads(self.threads)
    try:
      return self._step()
    finally:
      torch.set_num_threads(default)

  def _step(self):
    for group in self.opt.param_groups:
      group['lr'] = float(self.lrs[self.step_index % TOTAL_STEPS])
    self.step_index += 1
    self.opt.zero_grad(set_to_none=True)
    loss, accuracy = self.loss_fn(self.inputs, self.targets)
    loss.backward()
    if self.clip > 0:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    if TORCH_DEVICE == 'cuda':
      torch.cuda.synchronize()


def bench_row(index: int, spec: str, args) -> dict:
  config = row_config(spec)
  batch, seq = config.train.batch_size, config.text.seq_len
  rng = np.random.default_rng(index)
  tokens = rng.integers(0, config.text.vocab_size, (batch, seq + 1)).astype(np.int32)
  model = build_model(config.model, vocab_size=config.text.vocab_size)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(tokens[:1, :-1]))['params']
  params_np = jax.tree.map(np.array, params)  # copies: the JAX step donates its buffers
  flops_per_token, n_params = model_flops_per_token(params_np, config)

  def chosen(rows: str) -> bool:
    return rows == 'all' or str(index) in rows.split(',')

  makers = {'jax': lambda: JaxRunner(config, tokens, params),
            'torch_eager': lambda: TorchRunner(config, tokens, params_np, compile_model=False)}
  if chosen(args.single_thread_rows):
    makers['torch_eager_1thread'] = lambda: TorchRunner(config, tokens, params_np,
                                                        compile_model=False, threads=1)
  if not args.no_compile and chosen(args.compile_rows):
    makers['torch_compile'] = lambda: TorchRunner(config, tokens, params_np, compile_model=True)
  runners, times, rss_growth, errors = interleaved_times(
      makers, warmup=WARMUP_STEPS, steps=args.steps, repeats=args.repeats, label=f'row {spec}')

  m = config.model
  tokens_per_step = batch * seq
  row = {'row': spec, 'batch_size': batch, 'seq_len': seq, 'tokens_per_step': tokens_per_step,
         'vocab_size': config.text.vocab_size, 'num_layers': m.num_layers,
         'num_heads': m.num_heads, 'embed_dim': m.embed_dim, 'mlp_dim': m.mlp_dim,
         'dropout_rate': m.dropout_rate, 'attention_dropout_rate': m.attention_dropout_rate,
         'model_flop_params': n_params, 'model_gflop_per_step':
             flops_per_token * tokens_per_step / 1e9}
  for name in RUNNERS:
    for key, value in summary(times.get(name), tokens_per_step, unit='tokens').items():
      row[f'{name}_{key}'] = value
    row[f'{name}_rss_growth_mb'] = rss_growth.get(name)
  jax_rate, eager_rate = row['jax_tokens_per_s'], row['torch_eager_tokens_per_s']
  row['speedup_vs_torch_eager'] = jax_rate / eager_rate if jax_rate and eager_rate else None
  for name in ('torch_eager_1thread', 'torch_compile'):
    rate = row[f'{name}_tokens_per_s']
    row[f'speedup_vs_{name}'] = jax_rate / rate if jax_rate and rate else None
  jax_runner = runners.get('jax')
  xla_flops = getattr(jax_runner, 'flops', None)
  row['jax_xla_gflop_per_step'] = xla_flops / 1e9 if xla_flops else None
  row['jax_compile_s'] = getattr(jax_runner, 'compile_s', None)
  row['torch_compile_s'] = getattr(runners.get('torch_compile'), 'compile_s', None)
  row['errors'] = errors or None
  return row


def metadata(args, peak: dict) -> dict:
  config = load_config()
  o = config.optimizer
  return {
      'command': command_line('benchmarks.gpt_step'),
      'machine': machine(),
      'versions': versions(),
      'jax_backend': jax.default_backend(), 'jax_devices': [str(d) for d in jax.devices()],
      'torch_device': TORCH_DEVICE, 'torch_threads': torch.get_num_threads(),
      'peak_matmul_gflop_per_s': peak,
      'settings': {'steps': args.steps, 'repeats': args.repeats, 'warmup_steps': WARMUP_STEPS,
                   'config': os.path.relpath(CONFIG_PATH, ROOT),
                   'optimizer': f'{o.name} lr {o.learning_rate} ({o.schedule}, warmup '
                                f'{o.warmup_steps} of {TOTAL_STEPS}) b2 {o.b2} weight_decay '
                                f'{o.weight_decay} grad_clip_norm {o.grad_clip_norm}',
                   'objective': 'causal_lm', 'data': 'uniform random token ids',
                   'peak': f'median of 7 {PEAK_MATMUL_N}^3 float32 matmuls, best of the '
                           f'start and end of the run'},
      'peak_rss_mb': peak_rss_mb(),
  }


def markdown(rows: list[dict], meta: dict) -> str:
  def fmt(value, spec='.1f'):
    return '-' if value is None else format(value, spec)

  def cell(row, name):
    if row[f'{name}_ms'] is None:
      return '-'
    return (f'{fmt(row[f"{name}_ms"])} ({fmt(row[f"{name}_ms_p10"])}-'
            f'{fmt(row[f"{name}_ms_p90"])})')

  settings, peak = meta['settings'], meta['peak_matmul_gflop_per_s']
  lines = [
      '# GPT train step: JAX vs PyTorch',
      '',
      f'`{meta["command"]}` on {meta["machine"]["platform"]}, {meta["machine"]["cpu_count"]} '
      f'CPUs, JAX {meta["versions"]["jax"]} ({meta["jax_backend"]}), PyTorch '
      f'{meta["versions"]["torch"]} ({meta["torch_device"]}, threads={meta["torch_threads"]}). '
      f'Model and optimizer of `{settings["config"]}` ({settings["optimizer"]}). Median step '
      f'time in ms (p10-p90) over {settings["steps"] * settings["repeats"]} interleaved steps '
      f'each; speedup = JAX tokens/s / PyTorch tokens/s; MFU = model FLOP/s (6N + 12LTd per '
      f'token) / peak, the peak being a {PEAK_MATMUL_N}^3 float32 matmul in JAX: '
      f'{peak["jax"]:.0f} GFLOP/s (PyTorch: {peak["torch"]:.0f}). Load average (1 min) '
      f'{meta["load_average_1min"]["start"]:.1f} at the start, '
      f'{meta["load_average_1min"]["end"]:.1f} at the end. Host allocator (both frameworks): '
      f'{meta["machine"]["host_allocator"]}.',
      '',
      '| batch x seq | d / L / mlp | dropout | JAX ms | torch eager ms | eager 1-thread ms | '
      'torch.compile ms | JAX tok/s | eager tok/s | eager 1-thread tok/s | compile tok/s | '
      'speedup vs eager | vs eager 1-thread | vs compile | MFU JAX / eager / 1-thread / compile '
      '| model GFLOP/step (XLA) |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    lines.append(
        f'| {r["batch_size"]} x {r["seq_len"]} | {r["embed_dim"]} / {r["num_layers"]} / '
        f'{r["mlp_dim"]} | {r["dropout_rate"]:g} | '
        + ' | '.join(cell(r, name) for name in RUNNERS) + ' | '
        + ' | '.join(fmt(r[f'{name}_tokens_per_s'], '.0f') for name in RUNNERS) + ' | '
        + ' | '.join(fmt(r[f'speedup_vs_{name}'], '.2f')
                     for name in ('torch_eager', 'torch_eager_1thread', 'torch_compile'))
        + ' | ' + ' / '.join(fmt(r[k], '.2f') for k in ('mfu', 'torch_eager_mfu',
                                                         'torch_eager_1thread_mfu',
                                                         'torch_compile_mfu'))
        + f' | {fmt(r["model_gflop_per_step"])} ({fmt(r["jax_xla_gflop_per_step"])}) |')
  load = meta['load_average_1min']
  if max(load['start'], load['end']) > meta['machine']['cpu_count']:
    lines += ['', f'Warning: the machine was oversubscribed (load average above its '
              f'{meta["machine"]["cpu_count"]} CPUs). Multi-threaded PyTorch CPU kernels slow '
              f'down badly then: compare with the 1-thread column, and rerun on a quiet machine.']
  errors = [f'- row {r["row"]}: {k}: {v}' for r in rows for k, v in (r['errors'] or {}).items()]
  if errors:
    lines += ['', 'Failures (reported as `-`):', *errors]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  load_before = os.getloadavg()
  start_peak = peak_gflops()
  rows = []
  for index, spec in enumerate(args.rows.split(',')):
    rows.append(bench_row(index, spec, args))
    print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith(('p10', 'p90'))}),
          flush=True)
  # The peak under the run's own conditions: the better of its start and end.
  end_peak = peak_gflops()
  peak = {k: max(start_peak[k], end_peak[k]) for k in start_peak}
  for row in rows:
    gflop_per_token = row['model_gflop_per_step'] / row['tokens_per_step']
    for name in RUNNERS:
      rate = row[f'{name}_tokens_per_s']
      row[f'{name}_mfu'] = rate * gflop_per_token / peak['jax'] if rate else None
    row['mfu'] = row.pop('jax_mfu')
  meta = metadata(args, peak)
  meta['load_average_1min'] = {'start': load_before[0], 'end': os.getloadavg()[0]}
  rows = [{**row, 'meta': meta} for row in rows]
  write_results(args.out_dir, 'gpt_step', rows, markdown(rows, meta))
  return rows


if __name__ == '__main__':
  main()
