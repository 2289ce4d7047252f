"""Kills, corruption and resume, with real processes: `sslm-jax train` run as a user runs it.

Each run trains a tiny model on the generated IDX dataset (see conftest). On CPU the same
compiled program is bit-identical across processes, so a killed-and-resumed run must end with
exactly the parameters of an uninterrupted one. The runs stream their images through Grain
(data.pipeline='grain'), so the data position also comes back from the checkpoints; in-memory
splits go through the same loader, position and checkpoints (tests/test_streaming.py) and resume
in tests/test_language.py and tests/test_parallel_loop.py.
"""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import tiny_overrides
from sslm_jax.train.checkpoint import Checkpointer

pytestmark = pytest.mark.slow
NUM_STEPS = 160


def command(workdir, data_dir):
  overrides = tiny_overrides(**{'train.num_steps': NUM_STEPS, 'train.checkpoint_every_steps': 20,
                                'train.eval_every_steps': 80, 'train.log_every_steps': 10,
                                'train.keep_checkpoints': 3, 'data.pipeline': 'grain'})
  return [sys.executable, '-m', 'sslm_jax.cli', 'train', '--config', 'configs/vae_mnist.py',
          '--workdir', str(workdir), '--config.data.name=idx_images/mnist',
          f'--config.data.data_dir={data_dir}', *overrides]


def run_to_end(workdir, data_dir):
  result = subprocess.run(command(workdir, data_dir), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def start(workdir, data_dir):
  return subprocess.Popen(command(workdir, data_dir), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def final_params(workdir):
  ckpt = Checkpointer(str(workdir), read_only=True)
  step = ckpt.steps()[-1]
  assert step == NUM_STEPS
  restored = ckpt.restore(step, None)  # without a target: the raw arrays as saved
  ckpt.close()
  return jax.tree.map(np.asarray, restored['params'])


def assert_bit_identical(a, b):
  flat_a, flat_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(flat_a) == len(flat_b)
  for x, y in zip(flat_a, flat_b):
    assert x.dtype == y.dtype and np.array_equal(x, y)


def wait_for(predicate, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    time.sleep(0.01)
  return False


@pytest.fixture(scope='module')
def reference(tmp_path_factory, idx_dataset):
  """(workdir, final params) of the uninterrupted run."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  run_to_end(workdir, idx_dataset[0])
  return workdir, final_params(workdir)


def kill(proc):
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return proc.returncode == -signal.SIGKILL


def test_killed_right_after_a_checkpoint_then_at_a_random_moment_then_resumed(
    tmp_path, idx_dataset, reference):
  """Two interruptions of one run, each resumed by the next process: a kill as soon as
  checkpoint 40 exists, then a kill at a random moment after the resumed process writes
  checkpoint 60 (a different moment each run of the suite: mid-step, mid-save, mid-eval)."""
  proc = start(tmp_path, idx_dataset[0])
  assert wait_for(lambda: os.path.isdir(tmp_path / 'checkpoints' / '40')), 'no checkpoint 40'
  assert kill(proc)
  assert not os.path.exists(tmp_path / 'checkpoints' / '60')
  delay = random.Random().uniform(0.0, 1.5)
  print(f'second kill {delay:.3f} s after checkpoint 60')
  proc = start(tmp_path, idx_dataset[0])
  # Count from a checkpoint the second process writes, so that the kill interrupts a resumed run.
  assert wait_for(lambda: os.path.isdir(tmp_path / 'checkpoints' / '60'))
  time.sleep(delay)
  assert kill(proc), 'the run ended before the kill: nothing was tested'
  assert 'resuming from checkpoint 40' in proc.stderr.read()
  result = run_to_end(tmp_path, idx_dataset[0])
  assert 'resuming from checkpoint' in result.stderr
  assert_bit_identical(final_params(tmp_path), reference[1])


def test_corrupt_latest_checkpoint_falls_back_and_keeps_it(tmp_path, idx_dataset, reference):
  shutil.copytree(reference[0], tmp_path, dirs_exist_ok=True)  # a finished run
  # Truncate every file of the newest checkpoint's array data (as a full disk or a bad copy).
  latest = tmp_path / 'checkpoints' / str(NUM_STEPS)
  damaged = 0
  for root, _, files in os.walk(latest):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64 and 'metadata' not in name:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)
        damaged += 1
  assert damaged
  result = run_to_end(tmp_path, idx_dataset[0])
  assert 'unreadable' in result.stderr and 'quarantine' in result.stderr
  # nothing deleted: the damaged checkpoint sits in the quarantine folder
  quarantined = os.listdir(tmp_path / 'quarantine')
  assert len(quarantined) == 1 and quarantined[0].startswith(f'{NUM_STEPS}-')
  # it resumed from the previous checkpoint and trained the last steps again, identically
  assert 'resuming from checkpoint 140' in result.stderr
  assert_bit_identical(final_params(tmp_path), reference[1])
