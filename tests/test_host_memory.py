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


# What decides a rerun, besides the library itself: a preload, the switch, the rerun's mark.
ALLOCATOR_ENV = ('LD_PRELOAD', host_memory.ENV_SWITCH, host_memory._RERUN_MARK)


def _clean_environ() -> dict:
  """This environment as a fresh shell's: none of ALLOCATOR_ENV."""
  return {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}


def _probe(**env) -> dict:
  environ = _clean_environ()
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


def _record_exec(monkeypatch) -> list:
  calls = []
  monkeypatch.setattr(os, 'execve', lambda *args: calls.append(args))
  monkeypatch.setattr(sys, 'platform', 'linux')
  monkeypatch.setattr(host_memory, 'tcmalloc_loaded', lambda: False)
  monkeypatch.setattr(host_memory, 'tcmalloc_path', lambda: '/opt/x/libtcmalloc_minimal.so.4')
  for name in ALLOCATOR_ENV:
    monkeypatch.delenv(name, raising=False)
  return calls


def test_rerun_keeps_the_command_and_adds_only_the_preload(monkeypatch):
  calls = _record_exec(monkeypatch)
  monkeypatch.setattr(sys, 'orig_argv', ['/usr/bin/python3', '-m', 'sslm_jax.cli', 'train', 'x'])
  host_memory.exec_under_tcmalloc()
  (executable, argv, env), = calls
  assert executable == sys.executable and argv == [sys.executable, '-m', 'sslm_jax.cli', 'train',
                                                   'x']
  assert env['LD_PRELOAD'] == '/opt/x/libtcmalloc_minimal.so.4'
  assert env[host_memory._RERUN_MARK] == '1'
  assert {k: v for k, v in env.items() if k not in ('LD_PRELOAD', host_memory._RERUN_MARK)} == \
      dict(os.environ)


@pytest.mark.parametrize('setting', ['switched off', 'loaded', 'user preload', 'a rerun',
                                     'not installed'])
def test_no_rerun(monkeypatch, setting):
  calls = _record_exec(monkeypatch)
  if setting == 'switched off':
    monkeypatch.setenv(host_memory.ENV_SWITCH, '0')
  elif setting == 'loaded':
    monkeypatch.setattr(host_memory, 'tcmalloc_loaded', lambda: True)
  elif setting == 'user preload':  # e.g. jemalloc, or a sanitizer runtime that must come first
    monkeypatch.setenv('LD_PRELOAD', '/usr/lib/libjemalloc.so.2')
  elif setting == 'a rerun':  # the preload did not take (a wrapper dropped it): no endless reruns
    monkeypatch.setenv(host_memory._RERUN_MARK, '1')
  else:
    monkeypatch.setattr(host_memory, 'tcmalloc_path', lambda: None)
  host_memory.exec_under_tcmalloc()
  assert calls == []


@needs_tcmalloc
def test_the_command_runs_under_tcmalloc(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'sslm_jax.cli', 'eval', '--workdir',
                        str(tmp_path / 'no_run')], capture_output=True, text=True,
                       env=_clean_environ(), timeout=120)
  assert 'host allocator: tcmalloc' in out.stderr, out.stderr
  assert out.returncode == 2 and 'no_run' in out.stderr  # and the command itself still ran
