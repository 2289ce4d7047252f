r"""Times one full GPT pretraining step: JAX (sslm_jax's jitted step) against PyTorch.

A train step is forward, causal-LM loss, backward, global-norm gradient clipping and the AdamW
update, with the optimizer of configs/gpt_fortunes.py (AdamW b2 0.99, weight decay 0.1, clipping
at 1.0, warmup-cosine learning rate), on the same weights (the JAX init, converted) and the same
token batch. JAX runs the library's own path: `bind_loss` of the `causal_lm` objective
(`lm_loss`, which also computes accuracy and perplexity), `make_optimizer` and `jit_train_step`
(state donated), attention as `model.attention_impl='auto'` chooses (cuDNN flash attention on a
GPU in bf16). PyTorch runs benchmarks/pytorch_reference/gpt.py (`F.scaled_dot_product_attention`,
its fused/flash attention) with `F.cross_entropy`, the same accuracy, `clip_grad_norm_` and
`torch.optim.AdamW` (fused on CUDA) at the same learning rates: eager with torch's default
threads, eager on one thread (CPU, first row only by default: on a loaded machine multi-threaded
PyTorch CPU kernels slow down badly), and with forward + loss through `torch.compile` (first row
only on CPU, where compiling takes a minute or more; every row on an accelerator). Each framework
draws its own dropout masks.

Each row has a compute dtype. float32: full float32 on a CPU; on a GPU both sides at their TF32
setting as JAX's default (PyTorch: `set_float32_matmul_precision('high')`). bfloat16: JAX's
model in bf16 with float32 parameters (the library's mixed precision), PyTorch in nanoGPT's
recipe, `torch.autocast(bfloat16)` around forward and loss with float32 parameters.

Rows (`--rows`, comma-separated): a preset name or `BATCHxSEQ`, then `:key=value` overrides of
the model section's fields, `vocab_size`, `batch_size`, `seq_len` or `logits_chunk_size`:
  fortunes      configs/gpt_fortunes.py: 32 x 128, vocab 4096, 4 layers, width 192, dropout 0.1
  gpt2_small    GPT-2 small, 124M: 32 x 1024, vocab 50,304, 12 layers, 12 heads, width 768
  gpt_350m      GPT-2 medium class, 354M: 16 x 1024, vocab 50,304, 24 layers, 16 heads, 1024
e.g. `gpt2_small:dtype=bfloat16`, `32x128:dropout_rate=0`, `gpt_350m:dtype=bfloat16:batch_size=8`.
`--rows=auto` (the default) is the CPU rows on a CPU (`fortunes` and two variants, float32) and
the accelerator rows elsewhere (`gpt2_small` and `gpt_350m` in bf16, `fortunes` in bf16 and
float32). The results are rewritten after each row, so a run stopped by a time limit keeps the
rows it finished.

  python benchmarks/gpt_step.py         # CPU: 4.9 CPU-minutes, under 5 minutes on 2 idle cores
  python benchmarks/gpt_step.py --rows=32x128 --steps=2 --repeats=2 --no_compile

Everything runs in one process and interleaved: after compilation and warm-up, each repeat runs
--steps steps of JAX, then of each PyTorch variant, so load from other processes falls on all of
them alike. Every step is timed on its own, synchronised. Results go to results/gpt_step.{json,md}
on a CPU and results/gpt_step_<backend>.{json,md} elsewhere (gpu, tpu), so neither overwrites the
other.

MFU = model FLOP/s over the device's dense peak for the row's dtype. Model FLOPs per token are
6 N + 12 L T d (`benchmarks._common.gpt_flops_per_token`: N = the blocks' parameters, the final
LayerNorm and the output projection V d; 12 L T d is attention over the full T x T square). The
peak (`peak_tflops`, with `peak_source`) is the datasheet's for known accelerators
(H100/H200, A100, L4, TPU v4/v5e/v5p/v6e: `benchmarks._common.PEAK_TFLOPS`; float32 on an NVIDIA
GPU is its TF32 peak), else the median of 7 large matmuls in that dtype measured in JAX in the
same run (2048^3 on a CPU, the better of the run's start and end; 8192^3 on an accelerator).
XLA's own FLOP count of the compiled step is given beside it.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time

# `python benchmarks/gpt_step.py` (the documented command) puts benchmarks/ on the path, not the
# repository root that holds the `benchmarks` package.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks._common import (command_line, failures, fmt, gpt_flops_per_token,
                                interleaved_times, load_warning, machine, ms_cell, peak_rss_mb,
                                peak_tflops, summary, table_head, versions, write_results)
from sslm_jax import host_memory

if __name__ == '__main__':
  host_memory.exec_under_tcmalloc()  # as in vae_step.py: both frameworks under tcmalloc
# JAX and PyTorch share an accelerator here: JAX must not take 75% of its memory up front.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.pytorch_reference.gpt import GPT as TorchGPT, causal_lm_loss
from sslm_jax.interop import flax_gpt_params_to_torch
from sslm_jax.models import backend_facts, build_model
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
_BIG = 'vocab_size=50304:dropout_rate=0.0:max_len=1024'
PRESETS = {
    'fortunes': '32x128',
    'gpt2_small': f'32x1024:{_BIG}:num_layers=12:num_heads=12:embed_dim=768:mlp_dim=3072',
    'gpt_350m': f'16x1024:{_BIG}:num_layers=24:num_heads=16:embed_dim=1024:mlp_dim=4096',
}
CPU_ROWS = 'fortunes,fortunes:dropout_rate=0,8x256'
ACCELERATOR_ROWS = ('gpt2_small:dtype=bfloat16,gpt_350m:dtype=bfloat16,fortunes:dtype=bfloat16,'
                    'fortunes:dtype=float32')
ROW_KEYS = ('vocab_size', 'batch_size', 'seq_len', 'logits_chunk_size')  # besides model fields


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rows', default='auto',
                 help="comma-separated PRESET|BATCHxSEQ[:key=value...] (see the module "
                      "docstring), or 'auto': the CPU rows on a CPU, the accelerator rows "
                      "elsewhere")
  p.add_argument('--steps', type=int, default=3, help='timed steps per framework per repeat')
  p.add_argument('--repeats', type=int, default=3, help='interleaved rounds')
  p.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), 'results'))
  p.add_argument('--no_compile', action='store_true', help='skip the torch.compile column')
  p.add_argument('--compile_rows', default='auto',
                 help="indices of the rows that get a torch.compile column ('all', or '' for "
                      "none); 'auto': the first row on a CPU (about a minute a row on 2 cores), "
                      "all elsewhere")
  p.add_argument('--single_thread_rows', default='auto',
                 help="indices of the rows that also time PyTorch eager on one thread ('all', "
                      "or '' for none); 'auto': the first row on a CPU, none elsewhere")
  p.add_argument('--torch_threads', type=int, default=0,
                 help="torch.set_num_threads; 0 keeps torch's default (one per core)")
  return p.parse_args(argv)


def load_config():
  spec = importlib.util.spec_from_file_location('gpt_fortunes', CONFIG_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def row_config(spec: str):
  """The gpt_fortunes config with a row's preset, shape and overrides (the docstring's syntax)."""
  config = load_config()
  name, *overrides = spec.split(':')
  if name in PRESETS:
    name, *preset = PRESETS[name].split(':')
    overrides = preset + overrides
  try:
    batch, seq = (int(v) for v in name.split('x'))
  except ValueError:
    raise SystemExit(f'row {spec!r}: {name!r} is neither a preset ({", ".join(PRESETS)}) nor '
                     'BATCHxSEQ') from None
  config.train.batch_size, config.text.seq_len = batch, seq
  for item in overrides:
    key, value = item.split('=')
    section = {'vocab_size': config.text, 'batch_size': config.train, 'seq_len': config.text,
               'logits_chunk_size': config.objective}.get(key, config.model)
    if key not in section:
      raise SystemExit(f'row {spec!r}: unknown key {key!r}; allowed: {", ".join(ROW_KEYS)} or '
                       f'a model field ({", ".join(sorted(config.model))})')
    old = section[key]
    if isinstance(old, bool):
      value = value.lower() in ('1', 'true')
    elif isinstance(old, (int, float)):
      value = type(old)(float(value))
    section[key] = value
  config.model.max_len = max(config.model.max_len, config.text.seq_len)
  return config


class JaxRunner:
  """sslm_jax's own train step: bind_loss(causal_lm) + make_optimizer + jit_train_step."""

  def __init__(self, config, tokens: np.ndarray, params):
    model = build_model(config.model, vocab_size=config.text.vocab_size)
    vocab = Vocab(size=config.text.vocab_size, pad_id=0, bos_id=1, eos_id=2, mask_id=3,
                  first_normal_id=4)  # causal_lm uses none of the ids
    tx = optim.make_optimizer(config.optimizer, total_steps=TOTAL_STEPS)
    self.state = create_train_state(jax.tree.map(jnp.asarray, params), tx,
                                    jax.random.PRNGKey(1))  # its own copy: the step donates it
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
  runs its steps on that many threads. bfloat16 rows run nanoGPT's recipe: float32 parameters,
  forward and loss under `torch.autocast(bfloat16)`, AdamW fused on CUDA."""

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
                                 weight_decay=o.weight_decay,
                                 **({'fused': True} if TORCH_DEVICE == 'cuda' else {}))
    # The JAX step's learning rates, step by step (optax counts from 0 as torch's step does).
    schedule = optim.learning_rate_schedule(o, TOTAL_STEPS)
    self.lrs = np.asarray(jax.vmap(schedule)(jnp.arange(TOTAL_STEPS)))
    self.clip = o.grad_clip_norm
    self.step_index = 0
    bf16 = m.dtype == 'bfloat16'

    def loss_fn(inputs, targets):
      autocast = (torch.autocast(TORCH_DEVICE, dtype=torch.bfloat16) if bf16
                  else contextlib.nullcontext())
      with autocast:
        logits = self.model(inputs)
        loss = causal_lm_loss(logits, targets)
      with torch.no_grad():  # the JAX objective's accuracy metric: the same work
        accuracy = (logits.argmax(-1) == targets).float().mean()
      return loss, accuracy
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


def chosen(rows: str, index: int) -> bool:
  return rows == 'all' or str(index) in rows.split(',')


def bench_row(index: int, spec: str, args) -> dict:
  config = row_config(spec)
  batch, seq = config.train.batch_size, config.text.seq_len
  rng = np.random.default_rng(index)
  tokens = rng.integers(0, config.text.vocab_size, (batch, seq + 1)).astype(np.int32)
  model = build_model(config.model, vocab_size=config.text.vocab_size)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.asarray(tokens[:1, :-1]))['params']
  params = jax.tree.map(np.array, params)  # host copies: each runner makes its own from them
  m = config.model
  flops_per_token, n_params = gpt_flops_per_token(
      params, vocab_size=config.text.vocab_size, embed_dim=m.embed_dim,
      num_layers=m.num_layers, seq_len=seq)

  makers = {'jax': lambda: JaxRunner(config, tokens, params),
            'torch_eager': lambda: TorchRunner(config, tokens, params, compile_model=False)}
  if chosen(args.single_thread_rows, index):
    makers['torch_eager_1thread'] = lambda: TorchRunner(config, tokens, params,
                                                        compile_model=False, threads=1)
  if not args.no_compile and chosen(args.compile_rows, index):
    makers['torch_compile'] = lambda: TorchRunner(config, tokens, params, compile_model=True)
  runners, times, rss_growth, errors = interleaved_times(
      makers, warmup=WARMUP_STEPS, steps=args.steps, repeats=args.repeats, label=f'row {spec}')

  tokens_per_step = batch * seq
  row = {'row': spec, 'dtype': m.dtype, 'batch_size': batch, 'seq_len': seq,
         'tokens_per_step': tokens_per_step, 'vocab_size': config.text.vocab_size,
         'num_layers': m.num_layers, 'num_heads': m.num_heads, 'embed_dim': m.embed_dim,
         'mlp_dim': m.mlp_dim, 'dropout_rate': m.dropout_rate,
         'attention_dropout_rate': m.attention_dropout_rate,
         'logits_chunk_size': config.objective.logits_chunk_size,
         **backend_facts(m), 'model_flop_params': n_params,
         'model_gflop_per_step': flops_per_token * tokens_per_step / 1e9}
  for name in RUNNERS:
    for key, value in summary(times.get(name), tokens_per_step, unit='tokens').items():
      row[f'{name}_{key}'] = value
    row[f'{name}_rss_growth_mb'] = rss_growth.get(name)
  jax_rate = row['jax_tokens_per_s']
  for name in RUNNERS[1:]:
    rate = row[f'{name}_tokens_per_s']
    row[f'speedup_vs_{name}'] = jax_rate / rate if jax_rate and rate else None
  jax_runner = runners.get('jax')
  xla_flops = getattr(jax_runner, 'flops', None)
  row['jax_xla_gflop_per_step'] = xla_flops / 1e9 if xla_flops else None
  row['jax_compile_s'] = getattr(jax_runner, 'compile_s', None)
  row['torch_compile_s'] = getattr(runners.get('torch_compile'), 'compile_s', None)
  row['errors'] = errors or None
  del runners
  if TORCH_DEVICE == 'cuda':
    torch.cuda.empty_cache()  # the next row's PyTorch and JAX share the device's memory
  return row


def add_mfu(row: dict, peaks: dict) -> None:
  """mfu_<runner> = model FLOP/s / the dense peak of the row's dtype (and where it is from)."""
  row['peak_tflops'], row['peak_source'] = peaks[row['dtype']]
  tflop_per_token = row['model_gflop_per_step'] / row['tokens_per_step'] / 1e3
  for name in RUNNERS:
    rate = row[f'{name}_tokens_per_s']
    row[f'mfu_{name}'] = rate * tflop_per_token / row['peak_tflops'] if rate else None


def run_peaks(dtypes, start: dict | None = None) -> dict:
  """{dtype: (TFLOP/s, source)}: the table's for a known device, else measured; given the
  `start` of the run, a measured peak is the better of that and now (the run's own conditions)."""
  peaks = {}
  for dtype in sorted(dtypes):
    tflops, source = peak_tflops(dtype)
    if start and source.startswith('measured'):
      tflops, source = max(tflops, start[dtype][0]), source + ', best of the run\'s start and end'
    peaks[dtype] = (tflops, source)
  return peaks


def metadata(args, rows: list[str]) -> dict:
  config = load_config()
  o = config.optimizer
  on_gpu = TORCH_DEVICE == 'cuda'
  return {
      'command': command_line('benchmarks.gpt_step'),
      'machine': machine(),
      'versions': versions(),
      'jax_backend': jax.default_backend(), 'jax_devices': [str(d) for d in jax.devices()],
      'device_kind': jax.devices()[0].device_kind,
      'torch_device': TORCH_DEVICE, 'torch_threads': torch.get_num_threads(),
      'torch_device_name': torch.cuda.get_device_name() if on_gpu else None,
      'settings': {'steps': args.steps, 'repeats': args.repeats, 'warmup_steps': WARMUP_STEPS,
                   'rows': rows, 'config': os.path.relpath(CONFIG_PATH, ROOT),
                   'optimizer': f'{o.name} lr {o.learning_rate} ({o.schedule}, warmup '
                                f'{o.warmup_steps} of {TOTAL_STEPS}) b2 {o.b2} weight_decay '
                                f'{o.weight_decay} grad_clip_norm {o.grad_clip_norm}',
                   'float32_matmuls': ('TF32 on both sides (JAX default precision; PyTorch '
                                       "set_float32_matmul_precision('high'))") if on_gpu
                                      else 'float32 on both sides',
                   'torch_bfloat16': 'torch.autocast(bfloat16), float32 parameters, '
                                     + ('fused AdamW' if on_gpu else 'AdamW (for-each)'),
                   'objective': 'causal_lm', 'data': 'uniform random token ids',
                   'flops': '6 N + 12 L T d per token (benchmarks._common.gpt_flops_per_token)'},
      'peak_rss_mb': peak_rss_mb(),
  }


def markdown(rows: list[dict], meta: dict) -> str:
  settings = meta['settings']
  peaks = sorted({(r['dtype'], r['peak_tflops'], r['peak_source']) for r in rows})
  lines = [
      '# GPT train step: JAX vs PyTorch',
      '',
      f'`{meta["command"]}` on {meta["machine"]["platform"]}, {meta["machine"]["cpu_count"]} '
      f'CPUs, JAX {meta["versions"]["jax"]} ({meta["jax_backend"]}: {meta["device_kind"]}), '
      f'PyTorch {meta["versions"]["torch"]} ({meta["torch_device"]}, '
      f'threads={meta["torch_threads"]}). Optimizer of `{settings["config"]}` '
      f'({settings["optimizer"]}). Median step time in ms (p10-p90) over '
      f'{settings["steps"] * settings["repeats"]} interleaved steps each; speedup = JAX tokens/s '
      f'/ PyTorch tokens/s; float32 rows: {settings["float32_matmuls"]}; bfloat16 rows: JAX '
      f'bf16 compute with float32 parameters, PyTorch {settings["torch_bfloat16"]}. MFU = model '
      f'FLOP/s ({settings["flops"]}) / peak; peaks: '
      + '; '.join(f'{dtype} {peak:.3g} TFLOP/s ({source})' for dtype, peak, source in peaks)
      + f'. Load average (1 min) {meta["load_average_1min"]["start"]:.1f} at the start, '
      f'{meta["load_average_1min"]["end"]:.1f} at the end. Host allocator (both frameworks): '
      f'{meta["machine"]["host_allocator"]}.',
      '',
      *table_head(['row', 'dtype', 'attention (JAX)', 'JAX ms', 'torch eager ms',
                   'eager 1-thread ms', 'torch.compile ms', 'JAX tok/s', 'eager tok/s',
                   'eager 1-thread tok/s', 'compile tok/s', 'speedup vs eager',
                   'vs eager 1-thread', 'vs compile', 'MFU JAX / eager / 1-thread / compile',
                   'model GFLOP/step (XLA)']),
  ]
  for r in rows:
    lines.append(
        f'| {r["row"]} ({r["batch_size"]} x {r["seq_len"]}, d {r["embed_dim"]}, L '
        f'{r["num_layers"]}, V {r["vocab_size"]}, dropout {r["dropout_rate"]:g}) | {r["dtype"]} '
        f'| {r["attention_impl"]} | '
        + ' | '.join(ms_cell(r, name) for name in RUNNERS) + ' | '
        + ' | '.join(fmt(r[f'{name}_tokens_per_s'], '.0f') for name in RUNNERS) + ' | '
        + ' | '.join(fmt(r[f'speedup_vs_{name}'], '.2f') for name in RUNNERS[1:])
        + ' | ' + ' / '.join(fmt(r[f'mfu_{name}'], '.2f') for name in RUNNERS)
        + f' | {fmt(r["model_gflop_per_step"])} ({fmt(r["jax_xla_gflop_per_step"])}) |')
  lines += load_warning(meta['load_average_1min'], meta['machine']['cpu_count'],
                        'Multi-threaded PyTorch CPU kernels slow down badly then: compare with '
                        'the 1-thread column, and rerun on a quiet machine.')
  lines += failures(rows, lambda r: f'row {r["row"]}')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  on_cpu = jax.default_backend() == 'cpu'
  if args.rows == 'auto':
    args.rows = CPU_ROWS if on_cpu else ACCELERATOR_ROWS
  for flag in ('compile_rows', 'single_thread_rows'):
    if getattr(args, flag) == 'auto':
      setattr(args, flag, '0' if on_cpu else ('all' if flag == 'compile_rows' else ''))
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  if TORCH_DEVICE == 'cuda':  # float32 rows: TF32, as JAX's default precision on a GPU
    torch.set_float32_matmul_precision('high')
  specs = args.rows.split(',')
  configs = [row_config(spec) for spec in specs]  # a bad row fails before any work
  dtypes = {c.model.dtype for c in configs}
  load_before = os.getloadavg()
  peaks = run_peaks(dtypes)
  rows = []

  def write(rows):
    for row in rows:
      add_mfu(row, peaks)
    meta = metadata(args, specs)
    meta['load_average_1min'] = {'start': load_before[0], 'end': os.getloadavg()[0]}
    rows = [{**row, 'meta': meta} for row in rows]
    write_results(args.out_dir, 'gpt_step', rows, markdown(rows, meta),
                  backend=jax.default_backend())
    return rows

  for index, spec in enumerate(specs):
    rows.append(bench_row(index, spec, args))
    print(json.dumps({k: v for k, v in rows[-1].items() if not k.endswith(('p10', 'p90'))}),
          flush=True)
    if index < len(specs) - 1:
      write(rows)  # the rows so far, should a time limit stop the run
  peaks = run_peaks(dtypes, peaks)
  return write(rows)


if __name__ == '__main__':
  main()
