"""What the side-by-side train-step benchmarks share: timing, memory, and the run's metadata."""

import json
import os
import platform
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


def write_results(out_dir: str, name: str, results, table: str) -> None:
  """<out_dir>/<name>.json (the results) and <name>.md (the table); prints the table."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, f'{name}.json'), 'w') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, f'{name}.md'), 'w') as f:
    f.write(table)
  print(table)


def command_line(module: str) -> str:
  """How this run was started, as `python benchmarks/x.py ...` or `python -m module ...`."""
  return ' '.join(['python'] + (['-m', module] if not sys.argv[0].endswith('.py')
                                else [os.path.relpath(sys.argv[0])]) + sys.argv[1:])


def machine() -> dict:
  return {'platform': platform.platform(), 'processor': platform.processor(),
          'cpu_count': os.cpu_count(), 'python': platform.python_version(),
          'host_allocator': host_memory.describe()}


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
