r"""Tokens/s and MFU of a finished `sslm-jax train` run of a GPT, from its own logged steps/s.

Reads the run's workdir: config.json (model and batch), summary.json (the tokenizer's vocabulary,
the attention the run used) and metrics.jsonl (the loop's `steps_per_second` of each logging
window). The first `--skip_logs` windows (compilation and warm-up) are left out; the rest give
steps/s as all their steps over all their time. tokens/s = steps/s x batch_size x seq_len; MFU =
tokens/s x model FLOPs per token (6 N + 12 L T d, `benchmarks._common.gpt_flops_per_token`) / the
device's dense peak for the model's dtype (`benchmarks._common.peak_tflops`: a datasheet's for
known accelerators, else a measured large matmul). Writes results/train.{json,md} on a CPU and
results/train_<backend>.{json,md} elsewhere, with the command that made the run.

  python benchmarks/train_mfu.py --workdir runs/gpt_124m --command "sslm-jax train ..."
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks._common import (gpt_flops_per_token, machine, peak_tflops,  # noqa: E402
                                table_head, versions, write_results)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True, help='the finished run')
  p.add_argument('--command', default='', help='the command that made the run (recorded)')
  p.add_argument('--skip_logs', type=int, default=1,
                 help='logging windows left out at the start (compilation, warm-up)')
  p.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), 'results'))
  return p.parse_args(argv)


def logged_rate(metrics_path: str, skip_logs: int) -> dict:
  """Steps/s of the train windows after the first `skip_logs`, weighted by their steps."""
  with open(metrics_path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  train = [r for r in records if r.get('split') == 'train' and 'steps_per_second' in r]
  windows, previous = [], 0
  for r in train:
    windows.append({'step': r['step'], 'steps': r['step'] - previous,
                    'steps_per_second': r['steps_per_second']})
    previous = r['step']
  used = windows[skip_logs:]
  if not used:
    raise SystemExit(f'{metrics_path}: {len(windows)} logged train windows, none after the '
                     f'first {skip_logs}; allowed: a run with more steps or log_every_steps lower')
  steps = sum(w['steps'] for w in used)
  seconds = sum(w['steps'] / w['steps_per_second'] for w in used)
  return {'steps_per_s': steps / seconds, 'steps_timed': steps, 'windows': windows,
          'windows_used': len(used)}


def main(argv=None) -> dict:
  args = parse_args(argv)
  import jax
  import jax.numpy as jnp
  from sslm_jax import runs
  from sslm_jax.models import build_model
  with open(os.path.join(args.workdir, 'config.json')) as f:
    config = runs.from_json(f.read())
  with open(os.path.join(args.workdir, 'summary.json')) as f:
    run_summary = json.load(f)
  m, vocab = config.model, run_summary['vocab_size']
  seq_len, batch = config.text.seq_len, config.train.batch_size
  model = build_model(m, vocab_size=vocab)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32))
  flops_per_token, n_params = gpt_flops_per_token(shapes['params'], vocab_size=vocab,
                                                  embed_dim=m.embed_dim,
                                                  num_layers=m.num_layers, seq_len=seq_len)
  rate = logged_rate(os.path.join(args.workdir, 'metrics.jsonl'), args.skip_logs)
  tokens_per_s = rate['steps_per_s'] * batch * seq_len
  peak, source = peak_tflops(m.dtype)
  device = jax.devices()[0]
  result = {
      'command': args.command, 'workdir': args.workdir, 'tokens_per_s': tokens_per_s,
      'mfu': tokens_per_s * flops_per_token / (peak * 1e12), **rate,
      'tokens_per_step': batch * seq_len, 'batch_size': batch, 'seq_len': seq_len,
      'grad_accum_steps': config.train.grad_accum_steps, 'vocab_size': vocab,
      'num_layers': m.num_layers, 'embed_dim': m.embed_dim, 'num_heads': m.num_heads,
      'dtype': m.dtype, 'remat': m.remat,
      'logits_chunk_size': config.objective.logits_chunk_size,
      'attention_impl': run_summary.get('attention_impl'),
      'attention_impl_reason': run_summary.get('attention_impl_reason'),
      'model_flop_params': n_params, 'model_flops_per_token': flops_per_token,
      'flops': '6 N + 12 L T d per token', 'peak_tflops': peak, 'peak_source': source,
      'device_kind': device.device_kind, 'jax_backend': jax.default_backend(),
      'final_train_loss': _last_train_loss(os.path.join(args.workdir, 'metrics.jsonl')),
      'summary': {k: v for k, v in run_summary.items() if isinstance(v, (int, float, str))},
      'machine': machine(), 'versions': versions(),
  }
  table = '\n'.join([
      '# `sslm-jax train`: tokens/s and MFU from the loop\'s logged steps/s',
      '',
      f'`{args.command or "(command not given)"}` on {device.device_kind} (JAX '
      f'{jax.__version__}, {jax.default_backend()}). Steps/s over {rate["steps_timed"]} steps '
      f'({rate["windows_used"]} logging windows after the first {args.skip_logs}). MFU = '
      f'tokens/s x (6 N + 12 L T d) / peak, {peak:.4g} TFLOP/s ({source}).',
      '',
      *table_head(['model', 'dtype', 'attention', 'batch x seq (accum)', 'steps/s', 'tokens/s',
                   'MFU', 'final train loss']),
      f'| {n_params / 1e6:.1f}M FLOP params, L {m.num_layers}, d {m.embed_dim}, V {vocab} | '
      f'{m.dtype} | {result["attention_impl"]} | {batch} x {seq_len} '
      f'({config.train.grad_accum_steps}) | {rate["steps_per_s"]:.3f} | {tokens_per_s:,.0f} | '
      f'{result["mfu"]:.3f} | {result["final_train_loss"]} |',
  ]) + '\n'
  write_results(args.out_dir, 'train', result, table, backend=jax.default_backend())
  return result


def _last_train_loss(metrics_path: str):
  with open(metrics_path) as f:
    losses = [r['loss'] for r in map(json.loads, filter(str.strip, f))
              if r.get('split') == 'train' and 'loss' in r]
  return losses[-1] if losses else None


if __name__ == '__main__':
  main()
