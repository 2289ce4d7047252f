r"""The input pipeline: what the loader delivers beside what the train step consumes, and memory.

1. Loader rate: tokens/s that `data.pipeline='grain'` delivers from token shards (the library's
   `TokenShards` + `StepBatches` with the global `index_shuffle` order + `StepIterator`, as the
   training loop builds them, without the device placement), at the 2-core GPT step's shape
   (32 x 128, configs/gpt_fortunes.py) and at GPT-2's (64 x 1024); read-ahead threads only, and
   with 2 worker processes.
2. Memory: peak RSS (`ru_maxrss`, or a higher /proc reading) of a fresh process streaming the
   same number of steps from a generated corpus of `--budget_mb` of token rows (1x) and of 20
   times that (20x).
3. Images: images/s streamed from a tfds dataset of generated 28x28 IDX images
   (Fashion-MNIST's size), beside the VAE step's images/s from benchmarks/results/vae_step.json.
4. The step beside the loader: the 2-core GPT step (configs/gpt_fortunes.py at 32 x 128, the
   library's jitted step) timed with one batch already on the device, and fed by the loader (read
   ahead and placed by its background threads, as in `sslm-jax train`), alternating step by
   step; the slowdown is the ratio of the median step times. On a loaded machine that ratio is
   noise; the loader's CPU time a batch (measured in 1.) beside the step time bounds what it can
   take from the step whatever the load.

Each loader measurement runs in a fresh subprocess (`--child`); corpora are random token ids
written as token shards (`shards.write_shard_file`, the writer `sslm-jax data tokenize` uses).

  python benchmarks/input_pipeline.py             # about 4 minutes on 2 idle cores; 3 GB disk
  python benchmarks/input_pipeline.py --budget_mb=16 --step_samples=8   # a quick look
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sslm_jax import host_memory  # noqa: E402

if __name__ == '__main__':
  host_memory.exec_under_tcmalloc()  # as `sslm-jax train` runs (children inherit it)

import numpy as np  # noqa: E402

from benchmarks._common import (command_line, peak_rss_mb, rss_mb, table_head,  # noqa: E402
                                write_results)
from sslm_jax.data import shards  # noqa: E402
from sslm_jax.train.writers import write_atomic  # noqa: E402

GPT_SHAPE = (32, 128)     # configs/gpt_fortunes.py's step (benchmarks/gpt_step.py's first row)
LARGE_SHAPE = (64, 1024)  # GPT-2's rows
VOCAB = 4096


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--budget_mb', type=int, default=128, help='the 1x corpus (20x: 20 times it)')
  p.add_argument('--stream_steps', type=int, default=600, help='steps each loader run reads')
  p.add_argument('--step_samples', type=int, default=40,
                 help='GPT steps timed each way (alone, fed by the loader), alternating')
  p.add_argument('--out_dir', default=os.path.join(ROOT, 'benchmarks', 'results'))
  p.add_argument('--work_dir', default='', help='where corpora are generated (default: a tmp dir)')
  p.add_argument('--child', default='', help=argparse.SUPPRESS)
  p.add_argument('--child_args', default='{}', help=argparse.SUPPRESS)
  return p.parse_args(argv)


def make_token_dir(path: str, num_rows: int, seq_len: int, seed: int = 0) -> str:
  """A token folder of `num_rows` random rows (one split, 'train'), as `data tokenize` lays it."""
  if os.path.exists(os.path.join(path, shards.MANIFEST)):
    return path
  os.makedirs(os.path.join(path, 'train'), exist_ok=True)
  rng = np.random.default_rng(seed)
  per = shards.ROWS_PER_SHARD
  count = -(-num_rows // per)
  entries = []
  for j in range(count):
    rows = rng.integers(0, VOCAB, (min(per, num_rows - j * per), seq_len + 1), dtype=np.uint16)
    name = f'train/tokens-{j:05d}-of-{count:05d}.array_record'
    entries.append({'file': name, **shards.write_shard_file(os.path.join(path, name), rows)})
  manifest = {'format': shards.FORMAT, 'dataset': 'generated', 'seq_len': seq_len,
              'tokenizer': {'sha256': 'none', 'vocab_size': VOCAB}, 'dtype': 'uint16',
              'rows_per_shard': per,
              'splits': {'train': {'rows': num_rows, 'tokens': num_rows * seq_len,
                                   'shards': entries}}}
  write_atomic(os.path.join(path, shards.MANIFEST), json.dumps(manifest).encode())
  return path


def child(kind: str, args: dict) -> dict:
  """One measurement in this (fresh) process; its result as a dict."""
  from sslm_jax.data import loader
  if kind == 'stream':
    source = shards.TokenShards(args['token_dir'], 'train')
    items = args['batch'] * (source.seq_len + 1)
  else:
    from sslm_jax.data import images
    source = images.TfdsImages('idx_images/mnist', 'train', data_dir=args['data_dir'])
    items = args['batch']
  batches = loader.StepBatches(source, args['batch'], seed=0, order='index_shuffle')
  feed = loader.StepIterator(batches, start=0, stop=args['steps'], prefetch=4,
                             num_workers=args['workers'])
  next(feed)  # started: threads, worker processes, shard readers
  rss_start, rss_max, seconds = rss_mb(), 0.0, 0.0
  cpu_start = cpu_seconds()
  for i in range(args['steps'] - 1):
    start = time.perf_counter()
    next(feed)
    seconds += time.perf_counter() - start
    if i % 10 == 0:
      rss_max = max(rss_max, rss_mb())
  cpu = cpu_seconds() - cpu_start
  feed.close()
  # The peak is the larger of getrusage's high-water mark and every /proc reading: the kernel
  # folds per-thread page counts into the high-water mark late, which was seen to read 0.1 MB
  # below an earlier /proc reading.
  peak = max(peak_rss_mb(), rss_start, rss_max)
  return {'items_per_s': (args['steps'] - 1) * items / seconds,
          'cpu_ms_per_batch': cpu / (args['steps'] - 1) * 1e3,
          'peak_rss_mb': peak,
          'rss_mb_first_batch': rss_start, 'rss_mb_streaming_max': rss_max,
          'rows': len(source), 'steps': args['steps']}


def cpu_seconds() -> float:
  """CPU time of this process and its finished or running children (worker processes)."""
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def run_child(kind: str, **args) -> dict:
  out = subprocess.run([sys.executable, os.path.abspath(__file__), '--child', kind,
                        '--child_args', json.dumps(args)], capture_output=True, text=True,
                       timeout=900)
  if out.returncode:
    raise RuntimeError(f'{kind} {args} failed: {out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def prepare_images(work: str, num: int = 60000) -> str:
  from sslm_jax.data import images
  from sslm_jax.data.idx import write_idx
  manual, data_dir = os.path.join(work, 'idx'), os.path.join(work, 'tfds')
  if not os.path.exists(data_dir):
    os.makedirs(manual, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (('train', num), ('t10k', 1000)):
      write_idx(os.path.join(manual, f'{prefix}-images-idx3-ubyte'),
                rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
      write_idx(os.path.join(manual, f'{prefix}-labels-idx1-ubyte'),
                rng.integers(0, 10, n, dtype=np.uint8))
    images.prepare('idx_images/mnist', data_dir, manual)
  return data_dir


def step_beside_loader(token_dir: str, args) -> dict:
  """Median GPT step time with a batch already on the device, and fed by the loader."""
  import importlib.util
  import jax
  from sslm_jax.data import loader
  from sslm_jax.models import build_model
  from sslm_jax.objectives import bind_loss
  from sslm_jax.objectives.lm import Vocab
  from sslm_jax.train import optim
  from sslm_jax.train.state import create_train_state
  from sslm_jax.train.step import jit_train_step
  spec = importlib.util.spec_from_file_location(
      'gpt_fortunes', os.path.join(ROOT, 'configs', 'gpt_fortunes.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  batch_size, seq_len = GPT_SHAPE
  model = build_model(config.model, vocab_size=VOCAB)
  vocab = Vocab(size=VOCAB, pad_id=0, bos_id=2, eos_id=3, mask_id=4, first_normal_id=5)
  tx = optim.make_optimizer(config.optimizer, 10_000)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, seq_len), np.int32))['params']
  state = create_train_state(params, tx, jax.random.PRNGKey(1))
  step = jit_train_step(bind_loss(model, config.objective, vocab=vocab), tx)
  source = shards.TokenShards(token_dir, 'train')
  fixed = jax.device_put(source.read(np.arange(batch_size)))
  feed = loader.StepIterator(loader.StepBatches(source, batch_size, 0, order='index_shuffle'),
                             start=0, stop=10 ** 9, place=jax.device_put, prefetch=4)

  def timed(get_batch, n):
    nonlocal state
    times = []
    for _ in range(n):
      begin = time.perf_counter()
      state, metrics = step(state, get_batch())
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - begin)
    return times
  timed(lambda: fixed, 3)  # compile and warm up both ways
  timed(lambda: next(feed), 3)
  alone, fed = [], []
  for _ in range(args.step_samples):  # alternating: load falls on both alike
    alone += timed(lambda: fixed, 1)
    fed += timed(lambda: next(feed), 1)
  feed.close()
  ms_alone, ms_fed = np.median(alone) * 1e3, np.median(fed) * 1e3
  return {'step_ms_alone': float(ms_alone), 'step_ms_with_loader': float(ms_fed),
          'step_tokens_per_s': float(batch_size * seq_len / ms_alone * 1e3),
          'step_slowdown_with_loader': float(ms_fed / ms_alone - 1),
          'step_ms_alone_p10_p90': (np.percentile(alone, [10, 90]) * 1e3).tolist(),
          'step_ms_with_loader_p10_p90': (np.percentile(fed, [10, 90]) * 1e3).tolist()}


def vae_images_per_s() -> float | None:
  try:
    with open(os.path.join(ROOT, 'benchmarks', 'results', 'vae_step.json')) as f:
      return json.load(f)[0]['jax_examples_per_s']
  except (OSError, KeyError, IndexError, ValueError):
    return None


def markdown(r: dict) -> str:
  m = r['meta']
  lines = [
      '# Input pipeline: loader rate, memory, and the step beside it', '',
      f'`{m["command"]}` on {m["cpu_count"]} CPUs, grain {m["grain"]}; load average (1 min) '
      f'{m["load_start"]:.1f} at the start, {m["load_end"]:.1f} at the end. Loader: token shards '
      f'read by `StepIterator` (4 read-ahead threads; or 2 worker processes), global '
      f'`index_shuffle` order, {r["stream_steps"]} steps a run, each run in a fresh process.', '',
      *table_head(['what', 'batch x seq', 'threads only', '2 worker processes'])]
  for name, shape in (('loader tokens/s', GPT_SHAPE), ('loader tokens/s', LARGE_SHAPE)):
    key = f'{shape[0]}x{shape[1]}'
    lines.append(f'| {name} | {shape[0]} x {shape[1]} | {r["loader"][key]["threads"]:,.0f} | '
                 f'{r["loader"][key]["workers"]:,.0f} |')
  lines.append(f'| loader images/s (28x28 tfds records) | 64 | {r["images"]["threads"]:,.0f} | '
               f'{r["images"]["workers"]:,.0f} |')
  vae = r['vae_step_images_per_s']
  lines += [
      '', f'- GPT step (configs/gpt_fortunes.py, {GPT_SHAPE[0]} x {GPT_SHAPE[1]}): '
      f'{r["step_tokens_per_s"]:,.0f} tokens/s alone ({r["step_ms_alone"]:.1f} ms), '
      f'{r["step_ms_with_loader"]:.1f} ms fed by the loader: slowdown '
      f'{100 * r["step_slowdown_with_loader"]:+.1f}% (medians of {r["step_samples"]} alternating '
      f'steps each; p10-p90 {r["step_ms_alone_p10_p90"][0]:.0f}-{r["step_ms_alone_p10_p90"][1]:.0f}'
      f' and {r["step_ms_with_loader_p10_p90"][0]:.0f}-{r["step_ms_with_loader_p10_p90"][1]:.0f}'
      f' ms). Loader / step token rate: {r["loader_over_step"]:.0f}x. The loader spends '
      f'{r["loader_cpu_ms_per_step"]:.2f} CPU-ms a batch ({100 * r["loader_cpu_share_of_step"]:.2f}% '
      f'of a step): the most it can take from the step.',
      f'- VAE step (benchmarks/results/vae_step.json, batch 64): '
      + (f'{vae:,.0f} images/s.' if vae else 'not measured.'),
      f'- Peak RSS streaming {r["stream_steps"]} steps of {LARGE_SHAPE[0]} x {LARGE_SHAPE[1]}: '
      f'{r["peak_rss_mb_1x"]:.0f} MB from a {r["corpus_mb_1x"]:.0f} MB corpus (1x), '
      f'{r["peak_rss_mb_20x"]:.0f} MB from {r["corpus_mb_20x"]:.0f} MB (20x): '
      f'{100 * (r["peak_rss_mb_20x"] / r["peak_rss_mb_1x"] - 1):+.1f}%. Resident while '
      f'streaming (sampled every 10 steps), from the first batch to the largest: '
      + ', '.join(f'{size} {r["memory"][size]["rss_mb_first_batch"]:.0f} -> '
                  f'{r["memory"][size]["rss_mb_streaming_max"]:.0f} MB' for size in ('1x', '20x'))
      + f'; loader rate {r["memory"]["1x"]["items_per_s"]:,.0f} (1x) and '
      f'{r["memory"]["20x"]["items_per_s"]:,.0f} (20x) tokens/s.', '']
  return '\n'.join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.child:
    print(json.dumps(child(args.child, json.loads(args.child_args))))
    return {}
  import grain
  load_start = os.getloadavg()[0]
  work = args.work_dir or tempfile.mkdtemp(prefix='input_pipeline_')
  try:
    row_bytes = (LARGE_SHAPE[1] + 1) * 2
    rows_1x = args.budget_mb * 2 ** 20 // row_bytes
    dirs = {'1x': make_token_dir(os.path.join(work, 'large_1x'), rows_1x, LARGE_SHAPE[1]),
            '20x': make_token_dir(os.path.join(work, 'large_20x'), 20 * rows_1x, LARGE_SHAPE[1]),
            'gpt': make_token_dir(os.path.join(work, 'gpt'), 50_000, GPT_SHAPE[1])}
    print('corpora written', file=sys.stderr)
    loader_rates, loader_cpu = {}, {}
    for key, shape, token_dir in ((f'{GPT_SHAPE[0]}x{GPT_SHAPE[1]}', GPT_SHAPE, dirs['gpt']),
                                  (f'{LARGE_SHAPE[0]}x{LARGE_SHAPE[1]}', LARGE_SHAPE,
                                   dirs['1x'])):
      runs = {mode: run_child('stream', token_dir=token_dir, batch=shape[0],
                              steps=args.stream_steps, workers=workers)
              for mode, workers in (('threads', 0), ('workers', 2))}
      loader_rates[key] = {mode: r['items_per_s'] for mode, r in runs.items()}
      loader_cpu[key] = runs['threads']['cpu_ms_per_batch']
      print(key, runs, file=sys.stderr)
    memory = {size: run_child('stream', token_dir=dirs[size], batch=LARGE_SHAPE[0],
                              steps=args.stream_steps, workers=0) for size in ('1x', '20x')}
    print('memory', memory, file=sys.stderr)
    data_dir = prepare_images(work)
    image_rates = {mode: run_child('images', data_dir=data_dir, batch=64,
                                   steps=args.stream_steps, workers=workers)['items_per_s']
                   for mode, workers in (('threads', 0), ('workers', 2))}
    print('images', image_rates, file=sys.stderr)
    step = step_beside_loader(dirs['gpt'], args)
    print('step', step, file=sys.stderr)
    sizes = {s: sum(e['bytes'] for e in shards.read_manifest(d)['splits']['train']['shards'])
             for s, d in dirs.items()}
  finally:
    if not args.work_dir:
      shutil.rmtree(work, ignore_errors=True)
  gpt_key = f'{GPT_SHAPE[0]}x{GPT_SHAPE[1]}'
  results = {
      'loader_tokens_per_s': loader_rates[gpt_key]['threads'],
      'loader_tokens_per_s_64x1024': loader_rates[f'{LARGE_SHAPE[0]}x{LARGE_SHAPE[1]}']['threads'],
      'loader': loader_rates, 'images': image_rates, 'vae_step_images_per_s': vae_images_per_s(),
      **step, 'loader_over_step': loader_rates[gpt_key]['threads'] / step['step_tokens_per_s'],
      # The loader's CPU time a step, beside the step's time: the most it can take from the step.
      'loader_cpu_ms_per_step': loader_cpu[gpt_key],
      'loader_cpu_share_of_step': loader_cpu[gpt_key] / step['step_ms_alone'],
      'step_samples': args.step_samples,
      'peak_rss_mb_1x': memory['1x']['peak_rss_mb'],
      'peak_rss_mb_20x': memory['20x']['peak_rss_mb'],
      'memory': memory,
      'rows_1x': memory['1x']['rows'], 'rows_20x': memory['20x']['rows'],
      'corpus_mb_1x': memory['1x']['rows'] * row_bytes / 2 ** 20,
      'corpus_mb_20x': memory['20x']['rows'] * row_bytes / 2 ** 20,
      'stream_steps': args.stream_steps, 'shard_bytes': sizes,
      'meta': {'command': command_line('benchmarks.input_pipeline'),
               'cpu_count': os.cpu_count(), 'grain': grain.__version__,
               'load_start': load_start, 'load_end': os.getloadavg()[0]}}
  write_results(args.out_dir, 'input_pipeline', results, markdown(results))
  return results


if __name__ == '__main__':
  main()
