"""Host memory for training on CPU: run under tcmalloc, which keeps freed memory for reuse.

A jitted step on XLA:CPU allocates its temporaries every call (74 MB for the seed VAE at batch
64) and frees them at the end. glibc's malloc serves a block that size with a fresh `mmap` and
unmaps it on free (its mmap threshold is capped at 32 MB), so every step page-faults the same
memory back in: on the 2-core VM about 21,000 minor faults and 40 ms of kernel time per VAE step,
which made it 1.1-1.25x slower than under tcmalloc (benchmarks/README.md). glibc's own knobs
(`mallopt`: one arena, no mmap, no trimming) remove the faults too but fragment the heap: with
them, a function with one 64 MB temporary grew glibc's heap from 100 to 600 MB in 300 calls. tcmalloc keeps freed pages in size-class caches,
returns them to the kernel gradually, and stays bounded.

A process cannot switch allocators once running, so `exec_under_tcmalloc()` re-executes the
current command with tcmalloc in LD_PRELOAD when it is installed (Debian/Ubuntu:
`libtcmalloc-minimal4`, which `make demo` and `make test` install) and not loaded yet. The
`sslm-jax` command line and the benchmarks call it first thing; `SSLM_JAX_TCMALLOC=0` turns it
off. Elsewhere (no tcmalloc, not Linux) it does nothing.
"""

import ctypes.util
import glob
import logging
import os
import sys

log = logging.getLogger(__name__)

ENV_SWITCH = 'SSLM_JAX_TCMALLOC'
_SEARCH = ('/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4', '/usr/lib/*-linux-gnu/libtcmalloc.so.4',
           '/usr/lib64/libtcmalloc_minimal.so.4', '/usr/lib/libtcmalloc_minimal.so.4')


def tcmalloc_path() -> str | None:
  """The installed tcmalloc shared library, or None."""
  for pattern in _SEARCH:
    found = sorted(glob.glob(pattern))
    if found:
      return found[0]
  name = ctypes.util.find_library('tcmalloc_minimal') or ctypes.util.find_library('tcmalloc')
  return name if name and os.path.isabs(name) else None


def tcmalloc_loaded() -> bool:
  """Whether this process runs with tcmalloc (from /proc/self/maps; False off Linux)."""
  try:
    with open('/proc/self/maps') as f:
      return 'libtcmalloc' in f.read()
  except OSError:
    return False


def describe() -> str:
  """Which allocator this process runs with, and why, in a few words."""
  if tcmalloc_loaded():
    return 'tcmalloc'
  if switched_off():
    return f'the system malloc ({ENV_SWITCH}=0)'
  if tcmalloc_path() is None:
    return 'the system malloc (tcmalloc not installed)'
  return 'the system malloc'


def switched_off() -> bool:
  return os.environ.get(ENV_SWITCH, '1').strip().lower() in ('0', 'false', 'no', 'off')


def exec_under_tcmalloc() -> None:
  """Re-executes this process's command with tcmalloc preloaded; returns where it does not.

  It returns (and the command runs as it is) when tcmalloc is loaded already, when it is not
  installed, off Linux, or with SSLM_JAX_TCMALLOC=0. Call it before any work: everything the
  process did is discarded by the exec.
  """
  if switched_off() or not sys.platform.startswith('linux') or tcmalloc_loaded():
    return
  preload = os.environ.get('LD_PRELOAD', '')
  library = tcmalloc_path()
  if library is None or library in preload.split(':'):  # installed but failed to load: no loop
    if library is None:
      log.info('tcmalloc is not installed: XLA:CPU steps will page-fault their temporaries back '
               'in every step (apt-get install libtcmalloc-minimal4 makes them faster)')
    return
  env = dict(os.environ, LD_PRELOAD=':'.join(p for p in (library, preload) if p))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
