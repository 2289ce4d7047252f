"""tcmalloc for CPU steps: the command reruns itself under it, and freed step memory is reused.

Each check runs a fresh interpreter: the allocator is chosen when a process starts.
"""

import json
import os
import subprocess
import sys

import pytest

from sslm_jax import host_memory

# Reruns itself under tcmalloc (unless told not to), then calls a jitted function whose 64 MB
# temporaries (matmul operands) glibc maps and unmaps on every call, and reports the median minor
# page faults per call after warm-up: a count, not a timing (about 16,400 4-KiB pages each call
# under glibc; under tcmalloc most calls fault none).
PROBE = r"""
import json, os, resource, statistics, sys
from sslm_jax import host_memory
host_memory.exec_under_tcmalloc()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (jnp.tanh(jnp.outer(x, x)) @ jnp.tanh(jnp.outer(x, x))[:, :4]).sum())
x = jnp.linspace(0, 1, 4096)
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'tcmalloc': host_memory.tcmalloc_loaded(), 'argv': sys.argv[1:],
                  'preload': os.environ.get('LD_PRELOAD', ''),
                  'faults_per_call': statistics.median(faults[3:])}))
"""


def _probe(**env) -> dict:
  environ = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
  out = subprocess.run([sys.executable, '-c', PROBE, 'an-argument'], capture_output=True,
                       text=True, env={**environ, **env}, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


needs_tcmalloc = pytest.mark.skipif(
    not sys.platform.startswith('linux') or host_memory.tcmalloc_path() is None,
    reason='tcmalloc is not installed (Debian/Ubuntu: apt-get install libtcmalloc-minimal4)')


@needs_tcmalloc
def test_reruns_under_tcmalloc_and_stops_faulting_step_memory_back_in():
  rerun = _probe()
  plain = _probe(**{host_memory.ENV_SWITCH: '0'})
  assert rerun['tcmalloc'] and rerun['argv'] == ['an-argument'], rerun
  assert host_memory.tcmalloc_path() in rerun['preload'].split(':')
  assert not plain['tcmalloc'] and plain['preload'] == ''
  # Under glibc the 64 MB temporaries are faulted in on every call.
  assert plain['faults_per_call'] > 8000, plain
  assert rerun['faults_per_call'] < 0.1 * plain['faults_per_call'], (rerun, plain)


def test_no_rerun_when_switched_off_or_loaded(monkeypatch):
  def no_exec(*args):
    raise AssertionError(f'exec {args}')
  monkeypatch.setattr(os, 'execve', no_exec)
  monkeypatch.setenv(host_memory.ENV_SWITCH, '0')
  host_memory.exec_under_tcmalloc()
  monkeypatch.setenv(host_memory.ENV_SWITCH, '1')
  monkeypatch.setattr(host_memory, 'tcmalloc_loaded', lambda: True)
  host_memory.exec_under_tcmalloc()
  # Installed and preloaded, yet not loaded (the loader refused it): no endless reruns.
  monkeypatch.setattr(host_memory, 'tcmalloc_loaded', lambda: False)
  monkeypatch.setattr(host_memory, 'tcmalloc_path', lambda: '/opt/x/libtcmalloc_minimal.so.4')
  monkeypatch.setenv('LD_PRELOAD', '/opt/x/libtcmalloc_minimal.so.4')
  host_memory.exec_under_tcmalloc()


@needs_tcmalloc
def test_the_command_runs_under_tcmalloc(tmp_path):
  environ = {k: v for k, v in os.environ.items() if k != 'LD_PRELOAD'}
  out = subprocess.run([sys.executable, '-m', 'sslm_jax.cli', 'eval', '--workdir',
                        str(tmp_path / 'no_run')], capture_output=True, text=True, env=environ,
                       timeout=120)
  assert 'host allocator: tcmalloc' in out.stderr, out.stderr
  assert out.returncode == 2 and 'no_run' in out.stderr  # and the command itself still ran
