"""Host memory for training on CPU: run under tcmalloc, which keeps freed memory for reuse.

A jitted step on XLA:CPU allocates its temporaries every call (74 MB for the seed VAE at batch
64) and frees them at the end. glibc's malloc serves a block that size with a fresh `mmap` and
unmaps it on free (its mmap threshold is capped at 32 MB), so every step page-faults the same
memory back in, which made steps measurably slower than under tcmalloc. glibc's own knobs
(`mallopt`: one arena, no mmap, no trimming) remove the faults too but fragment the heap.
tcmalloc keeps freed pages in size-class caches, returns them to the kernel gradually, and stays
bounded. (benchmarks/README.md, "Where the JAX step's time went", has the faults, times and heap
sizes measured.)

A process cannot switch allocators once running, so `exec_under_tcmalloc()` re-executes the
current command with tcmalloc in LD_PRELOAD when it is installed (Debian/Ubuntu:
`libtcmalloc-minimal4`, which `make demo` and `make test` try to install) and not loaded yet. The
`sslm-jax` command line and the benchmarks call it first thing; `SSLM_JAX_TCMALLOC=0` turns it
off. It does nothing off Linux, without tcmalloc, or when LD_PRELOAD is set already.
"""

import os
import sys
import sysconfig

ENV_SWITCH = 'SSLM_JAX_TCMALLOC'
_RERUN_MARK = '_SSLM_JAX_TCMALLOC_RERUN'  # set in the rerun's environment: never exec twice
_NAMES = ('libtcmalloc_minimal.so.4', 'libtcmalloc.so.4')


def tcmalloc_path() -> str | None:
  """The installed tcmalloc shared library for this interpreter's architecture, or None."""
  multiarch = sysconfig.get_config_var('MULTIARCH')  # e.g. x86_64-linux-gnu (Debian, Ubuntu)
  folders = ([f'/usr/lib/{multiarch}'] if multiarch else []) + ['/usr/lib64', '/usr/lib',
                                                                 '/usr/local/lib']
  for folder in folders:
    for name in _NAMES:
      path = os.path.join(folder, name)
      if os.path.isfile(path):
        return path
  return None


def tcmalloc_loaded() -> bool:
  """Whether this process runs with tcmalloc (from /proc/self/maps; False off Linux)."""
  try:
    with open('/proc/self/maps') as f:
      return 'libtcmalloc' in f.read()
  except OSError:
    return False


def decide() -> tuple[str | None, str]:
  """The one decision of this process's allocator: (the tcmalloc library to re-execute under,
  or None to run as it is; which allocator the process then runs with, and why)."""
  if tcmalloc_loaded():
    return None, 'tcmalloc'
  if switched_off():
    return None, f'the system malloc ({ENV_SWITCH}=0)'
  if not sys.platform.startswith('linux'):
    return None, f'the system malloc (no tcmalloc rerun on {sys.platform})'
  if os.environ.get('LD_PRELOAD'):
    return None, f'the system malloc, or LD_PRELOAD={os.environ["LD_PRELOAD"]}'
  if os.environ.get(_RERUN_MARK):
    return None, 'the system malloc (tcmalloc did not load in the rerun)'
  library = tcmalloc_path()
  if library is None:
    return None, 'the system malloc (tcmalloc not installed)'
  return library, 'the system malloc (until exec_under_tcmalloc reruns it under tcmalloc)'


def describe() -> str:
  """Which allocator this process runs with, and why, in a few words (`decide`'s)."""
  return decide()[1]


def switched_off() -> bool:
  return os.environ.get(ENV_SWITCH, '1').strip().lower() in ('0', 'false', 'no', 'off')


def exec_under_tcmalloc() -> None:
  """Re-executes this process's command with tcmalloc preloaded; returns where it does not.

  It returns (and the command runs as it is) off Linux, with SSLM_JAX_TCMALLOC=0, when
  tcmalloc is loaded already or not installed, when LD_PRELOAD is set (the user's choice wins),
  and in the rerun itself (`decide`). Call it before any work: the exec discards what the
  process did.
  """
  library, _ = decide()
  if library is None:
    return
  env = dict(os.environ, LD_PRELOAD=library, **{_RERUN_MARK: '1'})
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
