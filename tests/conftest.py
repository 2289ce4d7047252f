"""Shared fixtures: tiny configs and a small IDX dataset made in the test (never the network).

Precision: every test compares float32 at full float32 matmul precision, on every backend. JAX's
default on a GPU is TF32 (10-bit mantissa products), which the float32 tolerances of the parity
and equivalence tests (1e-5 relative and below) are not made for; CPU ignores the setting. So
the suite runs under `jax_default_matmul_precision='highest'` (this process, and through the
environment the subprocesses it starts), and the PyTorch side with TF32 off
(`float32_torch`). Tests marked `gpu` need a CUDA GPU and skip elsewhere with the reason.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

# Before jax is imported here or in a subprocess (which inherits the environment): these are
# read when it starts. Precision: see the module docstring.
os.environ.setdefault('JAX_DEFAULT_MATMUL_PRECISION', 'highest')
# Keep JAX on a predictable small footprint in every test process.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
# One persistent compilation cache for the session: the same small programs are compiled again
# and again by the tests and by the `sslm-jax` processes they start (a kill/resume test runs one
# config four times), and on a 2-core CPU compiling is most of a tiny run. Each session starts
# empty, so every program is still compiled at least once per run of the suite. The cache key
# covers the HLO, the XLA flags and the devices, so a different program never reuses an entry.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='sslm-jax-tests-xla-cache-')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
# LLVM at -O0 instead of XLA's -O2: the suite's programs are tiny and compile far longer than
# they run (compiling was 78% of the wall time of four of its files; -O1 halved it, and -O0 took
# the whole suite from 265 to 214 s on two workers). The code rounds differently (1e-9 apart
# after three steps of the tiny VAE), as another CPU's would, which every tolerance here must
# allow anyway.
#
# XLA's older CPU emitters instead of its fusion emitters (--xla_cpu_use_fusion_emitters=false):
# they compile the suite's 3,300 small programs a third faster (most are single operations the
# tests run eagerly, about 20 ms each to compile; 131 s of the suite's 361 s of test time went to
# compiling programs other than train steps). The suite went from 208 to 145 s on two workers
# here. The same functions, rounded as another CPU's code would round them; the one test this
# moved compared pure rounding noise (test_memory.py, the key bias: `is_zero_gradient_key`).
# Neither flag is used outside the tests, so a miscompile of XLA's default emitters would not
# show here: benchmarks and `make demo` run them. An XLA that does not know a flag aborts at
# start, so each is added only once a process has started with it: the probe runs once a session
# (the marker variable carries its answer to the workers and the subprocesses of the tests;
# set it beforehand, e.g. `SSLM_JAX_TEST_XLA_FLAGS=none XLA_FLAGS=`, to run under XLA's defaults).
_COMPILE_FASTER = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false')


def _xla_starts_with(flag: str):
  """True or False; None if the probe did not finish in a minute (then no flag is added)."""
  # XLA reads its flags when the first backend starts: the CPU's is quick on a GPU machine too.
  # (A CUDA plugin reads them with its own XLA, from the same release as jaxlib's.)
  env = {**os.environ, 'XLA_FLAGS': f"{os.environ.get('XLA_FLAGS', '')} {flag}",
         'JAX_PLATFORMS': 'cpu'}
  try:
    return subprocess.run([sys.executable, '-c', 'import jax; jax.devices()'], env=env,
                          capture_output=True, timeout=60).returncode == 0
  except subprocess.TimeoutExpired:  # only slower without the flags
    return None


if 'SSLM_JAX_TEST_XLA_FLAGS' not in os.environ:  # its value is not read, only its presence
  _missing = [f for f in _COMPILE_FASTER if f.split('=')[0] not in os.environ.get('XLA_FLAGS', '')]
  _started = _xla_starts_with(' '.join(_missing)) if _missing else True  # one probe if all known
  if _started is None:
    _missing = []
  elif not _started:
    _missing = [f for f in _missing if _xla_starts_with(f)]
  os.environ['XLA_FLAGS'] = ' '.join([os.environ.get('XLA_FLAGS', ''), *_missing]).strip()
  os.environ['SSLM_JAX_TEST_XLA_FLAGS'] = os.environ['XLA_FLAGS']

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sslm_jax.runs import run_config  # noqa: E402
from sslm_jax.data.idx import write_idx  # noqa: E402

FLOAT32_MATMUL_PRECISION = 'highest'
jax.config.update('jax_default_matmul_precision', FLOAT32_MATMUL_PRECISION)  # jax imported early


def float32_torch(torch):
  """PyTorch's float32 matmuls and convolutions at full precision (no TF32) on CUDA too."""
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  return torch


def pytest_report_header(config):
  """The machine and the compiler settings, first in every log: the suite's time depends on both
  (issue #15: the same suite took 3x longer on another 2-core CPU)."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    from benchmarks._common import cpu_info
    cpu = cpu_info()
    extensions = ', '.join(cpu['cpu_vector_extensions']) or 'none found'
    machine = f"cpu: {cpu['cpu_model']}, {os.cpu_count()} cores, vector extensions: {extensions}"
  except Exception as e:  # noqa: BLE001 -- a header line is never worth a failed session
    machine = f'cpu: unknown ({type(e).__name__}: {e}), {os.cpu_count()} cores'
  # No backend is started here: under xdist this runs in the controller, which runs no test.
  return [machine, f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"]


def pytest_collection_modifyitems(config, items):
  """Files holding `slow` tests first (a file's own order kept): `make test` spreads whole files
  over two workers (pytest-xdist, `--dist loadfile`), and the longest files started last would
  leave one core idle at the end. Tests marked `gpu` run only where JAX's default backend is a
  GPU."""
  slow_files = {item.path for item in items if 'slow' in item.keywords}
  items.sort(key=lambda item: item.path not in slow_files)  # stable: a file's order is kept
  backend = jax.default_backend()
  if backend == 'gpu':
    return
  skip = pytest.mark.skip(reason=f'needs a CUDA GPU (cuDNN kernels, GPU memory); JAX backend '
                                 f'here is {backend!r}')
  for item in items:
    if 'gpu' in item.keywords:
      item.add_marker(skip)


def rel_err(a, b) -> float:
  """||a - b|| / ||b|| in float64: the tests' measure of a tensor's error."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def is_zero_gradient_key(path: str, positions: str = 'learned') -> bool:
  """Whether a parameter's exact gradient is zero: without RoPE an attention key bias b adds
  q.b to every logit of a query's row, which the softmax ignores. Computed, its gradient is
  rounding noise (norm ~1e-9 where the others are ~1), whose relative error is meaningless: it
  differs between two orders of the same sums, so tests check it is negligible instead."""
  return positions != 'rotary' and path.endswith('attention.key.bias')


def assert_negligible_gradient(gradient, scale: float, what: str) -> None:
  """A zero-gradient parameter's computed gradient (`is_zero_gradient_key`) is below 1e-6 of
  `scale`, the largest gradient's norm: rounding noise is ~1e-9 of it."""
  assert np.linalg.norm(gradient) < 1e-6 * scale, f'{what} gradient is not ~0'


TINY_MODEL = {
    'model.encoder_features': (8, 16, 16),
    'model.encoder_out_features': 16,
    'model.decoder_hidden': (16,),
    'model.decoder_base_features': 8,
    'model.decoder_features': (8, 8),
    'model.latent_dim': 4,
}
TINY_RUN = {**TINY_MODEL, 'train.batch_size': 16, 'train.eval_batch_size': 64,
            'train.log_every_steps': 5, 'train.num_pictures': 8, 'train.progress_bar': False}


def tiny_overrides(**extra) -> list[str]:
  """`--config.key=value` flags for a tiny, fast model and schedule."""
  return [f'--config.{k}={v}' for k, v in {**TINY_RUN, **extra}.items()]


def config_with(overrides: dict):
  """The run config of the overrides' model.name and objective.name (the seed VAE's by default)
  with {'section.key': value} set."""
  config = run_config(overrides.get('model.name', 'vae'), overrides.get('objective.name'))
  for key, value in overrides.items():
    section, name = key.split('.')
    setattr(config[section], name, value)
  return config


def tiny_config(**extra):
  return config_with({**TINY_RUN, **extra})


def make_idx_dir(folder, num_train=256, num_test=100, seed=0, gz=True):
  """Four IDX files of 28x28 images with a learnable structure (class-dependent blobs)."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  suffix = '.gz' if gz else ''
  for prefix, n in (('train', num_train), ('t10k', num_test)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    yy, xx = np.mgrid[:28, :28]
    centers = np.stack([6 + 2 * labels, 20 - labels], axis=1)[:, :, None, None]
    blob = np.exp(-((yy - centers[:, 0]) ** 2 + (xx - centers[:, 1]) ** 2) / 20.0)
    images = np.clip(blob * 255 + rng.normal(0, 8, blob.shape), 0, 255).astype(np.uint8)
    write_idx(os.path.join(folder, f'{prefix}-images-idx3-ubyte{suffix}'), images)
    write_idx(os.path.join(folder, f'{prefix}-labels-idx1-ubyte{suffix}'), labels)
  return folder


SYLLABLES = ['ka', 'lo', 'mi', 'ne', 'ru', 'sa', 'ti', 'vo', 'ze', 'pa', 'qui', 'dor', 'fen']


def sentences(n, seed=0):
  """Pseudo-English: sentences of words made of a few syllables (enough to train a tokenizer)."""
  rng = np.random.default_rng(seed)
  words = [''.join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(300)]
  return [' '.join(rng.choice(words, rng.integers(3, 12))).capitalize() + '.' for _ in range(n)]


def make_fortunes(folder, per_category=(40, 25, 3)):
  """A fortune folder like Debian's: categories, `%` blocks, empty blocks, files to ignore."""
  os.makedirs(folder / 'off')
  lines = iter(sentences(sum(per_category) * 2, seed=1))
  for name, n in zip(('computers', 'love', 'zippy'), per_category):
    cookies = [f'{next(lines)}\n\t-- {next(lines)}' for _ in range(n)]
    (folder / name).write_text('\n%\n'.join(cookies) + '\n%\n\n%\n')  # two empty blocks
    (folder / f'{name}.dat').write_bytes(b'\x00\x00\x00\x02binary index')
    os.symlink(name, folder / f'{name}.u8')
  (folder / 'off' / 'offensive').write_text('not read\n%\n')
  return folder


@pytest.fixture(scope='session')
def idx_dataset(tmp_path_factory):
  """(data_dir, manual_dir) of a prepared `idx_images/mnist` built from generated IDX files."""
  from sslm_jax.data import images
  root = tmp_path_factory.mktemp('idx')
  manual = make_idx_dir(root / 'manual')
  data_dir = str(root / 'tfds')
  images.prepare('idx_images/mnist', data_dir, str(manual))
  return data_dir, str(manual)


@pytest.fixture(scope='session')
def corpus(tmp_path_factory):
  """(data_dir, manual_dir) of a generated fortunes-style folder with enough text to learn."""
  root = tmp_path_factory.mktemp('corpus')
  manual = make_fortunes(root / 'manual', per_category=(200, 120, 40))
  return str(root / 'tfds'), str(manual)
