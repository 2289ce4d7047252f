"""What the benchmarks compute MFU and write results with: peaks, model FLOPs, logged rates."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common  # noqa: E402
from benchmarks.train_mfu import logged_rate  # noqa: E402
from sslm_jax.models import GPT  # noqa: E402


@pytest.mark.parametrize('kind,dtype,peak,source', [
    ('NVIDIA H200', 'bfloat16', 989.4, 'table: NVIDIA H200 dense bfloat16'),
    ('NVIDIA H200', 'float32', 494.7, 'table: NVIDIA H200 dense TF32 (JAX float32 default)'),
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.4, 'table: NVIDIA H100 SXM dense bfloat16'),
    ('NVIDIA H100 PCIe', 'bfloat16', 756.0, 'table: NVIDIA H100 PCIe dense bfloat16'),
    ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312.0, 'table: NVIDIA A100 dense bfloat16'),
    ('NVIDIA L4', 'float32', 60.0, 'table: NVIDIA L4 dense TF32 (JAX float32 default)'),
    ('TPU v4', 'bfloat16', 275.0, 'table: TPU v4 dense bfloat16'),
    ('TPU v5 lite', 'bfloat16', 197.0, 'table: TPU v5e dense bfloat16'),
    ('TPU v5', 'bfloat16', 459.0, 'table: TPU v5p dense bfloat16'),
    ('TPU v6 lite', 'bfloat16', 918.0, 'table: TPU v6e dense bfloat16'),
    ('TPU v4', 'float32', None, None),  # no datasheet float32 peak: measured instead
    ('cpu', 'float32', None, None),
    ('NVIDIA GeForce RTX 4090', 'bfloat16', None, None),
])
def test_table_peaks(kind, dtype, peak, source):
  assert _common.table_peak(kind, dtype) == (peak, source)


def test_peak_here_is_measured_on_a_cpu():
  if jax.default_backend() != 'cpu':
    pytest.skip('checks the measured fallback on a CPU')
  tflops, source = _common.peak_tflops('float32', matmul_n=256)
  assert 0 < tflops < 100 and source == 'measured: median of 7 256^3 float32 matmuls in JAX'


def test_gpt_flops_per_token_counts_every_multiplying_parameter():
  v, layers, d, mlp, t = 50, 2, 16, 24, 8
  model = GPT(vocab_size=v, num_layers=layers, num_heads=2, embed_dim=d, mlp_dim=mlp,
              max_len=t)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, t), jnp.int32))['params']
  per_block = 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)  # 2 LNs, attn, MLP
  n = layers * per_block + 2 * d + v * d  # + final LN + tied output projection
  assert _common.gpt_flops_per_token(params, vocab_size=v, embed_dim=d, num_layers=layers,
                                     seq_len=t) == (6 * n + 12 * layers * t * d, n)


def test_results_name_and_writer_record_the_cpu(tmp_path):
  assert _common.results_name('gpt_step') == 'gpt_step'
  assert _common.results_name('gpt_step', 'gpu') == 'gpt_step_gpu'
  _common.write_results(str(tmp_path), 'x', [{'a': 1}], '# t\n', backend='gpu')
  _common.write_results(str(tmp_path), 'y', {'a': 1}, '# t\n')
  cpu = _common.cpu_info()
  assert cpu['cpu_model'] and isinstance(cpu['cpu_vector_extensions'], list)
  assert json.loads((tmp_path / 'x_gpu.json').read_text()) == [{'a': 1, 'cpu': cpu}]
  assert json.loads((tmp_path / 'y.json').read_text()) == {'a': 1, 'cpu': cpu}
  assert f'CPU: {cpu["cpu_model"]} (vector extensions:' in (tmp_path / 'y.md').read_text()


def test_logged_rate_leaves_out_warmup_and_weights_by_steps(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  records = [{'step': 25, 'split': 'train', 'steps_per_second': 0.5, 'loss': 9.0},
             {'step': 50, 'split': 'train', 'steps_per_second': 5.0, 'loss': 8.0},
             {'step': 50, 'split': 'validation', 'loss': 8.1},
             {'step': 60, 'split': 'train', 'steps_per_second': 2.5, 'loss': 7.0}]
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  rate = logged_rate(str(path), skip_logs=1)
  # 25 steps in 5 s and 10 steps in 4 s: 35 steps in 9 s.
  assert rate['steps_per_s'] == pytest.approx(35 / 9) and rate['steps_timed'] == 35
  assert rate['windows_used'] == 2 and len(rate['windows']) == 3
  with pytest.raises(SystemExit, match='none after the first 3'):
    logged_rate(str(path), skip_logs=3)
