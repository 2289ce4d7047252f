"""What the side-by-side train-step benchmarks share: timing, memory, and the run's metadata."""

import json
import os
import platform
import shlex
import resource
import sys
import time

import numpy as np

from sslm_jax import host_memory


def rss_mb() -> float:
  """Current resident set size of this process (Linux /proc; else the peak from getrusage)."""
  try:
    with open('/proc/self/statm') as f:
      return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(step_fn, n: int) -> list[float]:
  """Seconds of each of `n` calls; `step_fn` must return only once the step is complete."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    step_fn()
    times.append(time.perf_counter() - start)
  return times


def summary(times: list[float] | None, items: int, unit: str = 'examples') -> dict:
  """Median step time in ms, its 10th and 90th percentiles, and `items` per second."""
  if not times:
    return {'ms': None, 'ms_p10': None, 'ms_p90': None, f'{unit}_per_s': None}
  ms = np.asarray(times) * 1e3
  median = float(np.median(ms))
  return {'ms': median, 'ms_p10': float(np.percentile(ms, 10)),
          'ms_p90': float(np.percentile(ms, 90)), f'{unit}_per_s': items / median * 1e3}


# x86 /proc/cpuinfo flags of the vector extensions the kernels may use, and their names.
VECTOR_FLAGS = (('avx2', 'AVX2'), ('fma', 'FMA'), ('avx512f', 'AVX-512F'),
                ('avx512_vnni', 'AVX-512 VNNI'), ('avx512_bf16', 'AVX-512 BF16'),
                ('amx_tile', 'AMX'), ('amx_bf16', 'AMX-BF16'), ('asimd', 'NEON'),
                ('sve', 'SVE'))


def cpu_info() -> dict:
  """The CPU's model name and vector extensions (Linux /proc/cpuinfo; else what Python knows)."""
  model, flags = None, set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = (part.strip() for part in line.partition(':'))
        if key in ('model name', 'Model') and model is None:
          model = value
        elif key in ('flags', 'Features') and not flags:
          flags = set(value.split())
  except OSError:
    pass
  return {'cpu_model': model or platform.processor() or platform.machine(),
          'cpu_vector_extensions': [name for flag, name in VECTOR_FLAGS if flag in flags]}


def results_name(name: str, backend: str = 'cpu') -> str:
  """`name` on CPU, `name_<backend>` elsewhere: a GPU run never overwrites the CPU table."""
  return name if backend == 'cpu' else f'{name}_{backend}'


def write_results(out_dir: str, name: str, results, table: str, backend: str = 'cpu') -> None:
  """<out_dir>/<name>[_<backend>].json (the results) and .md (the table); prints the table.

  Both record the CPU's model and vector extensions (`cpu_info`): a dict of results under
  'cpu', a list in each row; the table in a closing line.
  """
  os.makedirs(out_dir, exist_ok=True)
  cpu = cpu_info()
  if isinstance(results, dict):
    results = {**results, 'cpu': cpu}
  elif isinstance(results, list):
    results = [{**row, 'cpu': cpu} if isinstance(row, dict) else row for row in results]
  extensions = ', '.join(cpu['cpu_vector_extensions']) or 'none found'
  table = table.rstrip('\n') + f'\n\nCPU: {cpu["cpu_model"]} (vector extensions: {extensions}).\n'
  name = results_name(name, backend)
  with open(os.path.join(out_dir, f'{name}.json'), 'w') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, f'{name}.md'), 'w') as f:
    f.write(table)
  print(table)


def command_line(module: str) -> str:
  """How this run was started, as `python benchmarks/x.py ...` or `python -m module ...`, quoted
  for a shell (a `--row "name=CONFIG --config.k=v"` stays one argument)."""
  return shlex.join(['python'] + (['-m', module] if not sys.argv[0].endswith('.py')
                                  else [os.path.relpath(sys.argv[0])]) + sys.argv[1:])


def machine() -> dict:
  return {'platform': platform.platform(), 'processor': platform.processor(), **cpu_info(),
          'cpu_count': os.cpu_count(), 'python': platform.python_version(),
          'host_allocator': host_memory.describe()}


# Dense (no sparsity) peak TFLOP/s of known accelerators from their makers' datasheets, by a
# lower-case part of jax's `device_kind` (first match wins) and the compute dtype. float32 on an
# NVIDIA GPU is its TF32 peak: JAX's default float32 matmul precision there is TF32. TPUs' float32
# and unknown devices: no entry (`peak_tflops` then measures a large matmul).
PEAK_TFLOPS = (
    ('h200', 'NVIDIA H200', {'bfloat16': 989.4, 'float16': 989.4, 'float32': 494.7}),
    ('h100 pcie', 'NVIDIA H100 PCIe', {'bfloat16': 756.0, 'float16': 756.0, 'float32': 378.0}),
    ('h100 nvl', 'NVIDIA H100 NVL', {'bfloat16': 835.5, 'float16': 835.5, 'float32': 417.5}),
    ('h100', 'NVIDIA H100 SXM', {'bfloat16': 989.4, 'float16': 989.4, 'float32': 494.7}),
    ('a100', 'NVIDIA A100', {'bfloat16': 312.0, 'float16': 312.0, 'float32': 156.0}),
    ('l4', 'NVIDIA L4', {'bfloat16': 121.0, 'float16': 121.0, 'float32': 60.0}),
    ('tpu v4', 'TPU v4', {'bfloat16': 275.0}),
    ('tpu v5 lite', 'TPU v5e', {'bfloat16': 197.0}),
    ('tpu v5e', 'TPU v5e', {'bfloat16': 197.0}),
    ('tpu v5', 'TPU v5p', {'bfloat16': 459.0}),
    ('tpu v6', 'TPU v6e', {'bfloat16': 918.0}),
)


def table_peak(device_kind: str, dtype: str) -> tuple[float | None, str | None]:
  """(dense peak TFLOP/s, where it comes from) of a known device for `dtype`, else (None, None)."""
  kind = device_kind.lower()
  for key, name, peaks in PEAK_TFLOPS:
    if key in kind:
      if dtype not in peaks:
        return None, None
      what = 'TF32 (JAX float32 default)' if dtype == 'float32' else dtype
      return peaks[dtype], f'table: {name} dense {what}'
  return None, None


def measured_peak(dtype: str, n: int) -> tuple[float, str]:
  """(TFLOP/s, source): the median of 7 n^3 matmuls in JAX in `dtype` on the default device."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, a))
  seconds = np.median(timed(lambda: jax.block_until_ready(matmul(a, a)), 7))
  return 2 * n ** 3 / seconds / 1e12, f'measured: median of 7 {n}^3 {dtype} matmuls in JAX'


def peak_tflops(dtype: str, device=None, matmul_n: int | None = None) -> tuple[float, str]:
  """The MFU denominator: the datasheet's dense peak of a known device (`PEAK_TFLOPS`), else a
  measured large matmul (8192^3 on an accelerator, 2048^3 on a CPU) in `dtype`."""
  import jax
  device = device or jax.devices()[0]
  peak, source = table_peak(device.device_kind, dtype)
  if peak is not None:
    return peak, source
  return measured_peak(dtype, matmul_n or (2048 if device.platform == 'cpu' else 8192))


def gpt_flops_per_token(params, *, vocab_size: int, embed_dim: int, num_layers: int,
                        seq_len: int) -> tuple[float, int]:
  """Model FLOPs of a GPT train step per token, (6 N + 12 L T d, N).

  N counts every parameter that multiplies an activation: the blocks' (weights, biases and
  LayerNorms), the final LayerNorm, and the output projection V d once; the token and position
  embedding lookups are not counted. 12 L T d is attention's q k^T and weights @ v over the full
  T x T square (the causal half is not subtracted, as in the PaLM paper's MFU).
  """
  import jax
  n = sum(int(np.prod(x.shape)) for k, v in params.items() if k.startswith('blocks_')
          for x in jax.tree.leaves(v))
  n += sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params['final_norm']))
  n += vocab_size * embed_dim
  return 6 * n + 12 * num_layers * seq_len * embed_dim, n


def versions() -> dict:
  import flax
  import jax
  import optax
  import torch
  return {'jax': jax.__version__, 'jaxlib': jax.lib.__version__, 'flax': flax.__version__,
          'optax': optax.__version__, 'torch': torch.__version__, 'numpy': np.__version__}


def error_text(e: Exception) -> str:
  """One line for a failed runner (torch.compile needs a working C++ toolchain, among others)."""
  return f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]


def interleaved_times(makers: dict, *, warmup: int, steps: int, repeats: int, label: str):
  """Builds each runner (skipping those that fail), warms it up, then times them interleaved.

  Interleaving (`repeats` rounds of `steps` steps each) shares any background load fairly
  between the implementations. Returns (runners, times, rss_growth_mb, errors) keyed by name.
  """
  runners, rss_growth, errors = {}, {}, {}
  for name, make in makers.items():
    before = rss_mb()
    try:
      runner = make()
      timed(runner, warmup)
    except Exception as e:  # torch.compile needs a working C++ toolchain, among other things
      errors[name] = error_text(e)
      print(f'{label}: {name} failed: {errors[name]}', file=sys.stderr)
      continue
    runners[name] = runner
    rss_growth[name] = rss_mb() - before
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, runner in runners.items():
      times[name] += timed(runner, steps)
  return runners, times, rss_growth, errors


# --- the markdown of results tables -----------------------------------------------------------

def fmt(value, spec: str = '.1f') -> str:
  """`value` formatted, or '-' where it was not measured (None)."""
  return '-' if value is None else format(value, spec)


def ms_cell(row: dict, name: str) -> str:
  """'median (p10-p90)' of `row`'s `{name}_ms*` timings, or '-'."""
  if row.get(f'{name}_ms') is None:
    return '-'
  return f'{fmt(row[f"{name}_ms"])} ({fmt(row[f"{name}_ms_p10"])}-{fmt(row[f"{name}_ms_p90"])})'


def table_head(columns: list[str]) -> list[str]:
  """The header and separator lines of a markdown table."""
  return ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]


def load_warning(load: dict, cpu_count: int, advice: str) -> list[str]:
  """A paragraph warning that the machine was oversubscribed while measuring, or nothing."""
  if max(load['start'], load['end']) <= cpu_count:
    return []
  return ['', f'Warning: the machine was oversubscribed (load average above its {cpu_count} '
              f'CPUs). {advice}']


def failures(rows: list[dict], label) -> list[str]:
  """The errors of the rows (`label(row)` names each), as a paragraph, or nothing."""
  errors = [f'- {label(r)}: {k}: {v}' for r in rows for k, v in (r.get('errors') or {}).items()]
  return ['', 'Failures (reported as `-`):', *errors] if errors else []
