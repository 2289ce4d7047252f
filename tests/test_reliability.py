"""Kills, corruption and resume, with real processes: `sslm-jax train` run as a user runs it.

Each run trains a tiny model on the generated IDX dataset (see conftest). On CPU the same
compiled program is bit-identical across processes, so a killed-and-resumed run must end with
exactly the parameters of an uninterrupted one. The random-moment kill streams the images
through Grain (data.pipeline='grain'): its data position comes back from the checkpoint.
"""

import os
import random
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


def command(workdir, data_dir, pipeline='memory'):
  overrides = tiny_overrides(**{'train.num_steps': NUM_STEPS, 'train.checkpoint_every_steps': 20,
                                'train.eval_every_steps': 80, 'train.log_every_steps': 10,
                                'train.keep_checkpoints': 3, 'data.pipeline': pipeline})
  return [sys.executable, '-m', 'sslm_jax.cli', 'train', '--config', 'configs/vae_mnist.py',
          '--workdir', str(workdir), '--config.data.name=idx_images/mnist',
          f'--config.data.data_dir={data_dir}', *overrides]


def run_to_end(workdir, data_dir, pipeline='memory'):
  result = subprocess.run(command(workdir, data_dir, pipeline), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def start(workdir, data_dir, pipeline='memory'):
  return subprocess.Popen(command(workdir, data_dir, pipeline), stdout=subprocess.DEVNULL,
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
  workdir = tmp_path_factory.mktemp('uninterrupted')
  run_to_end(workdir, idx_dataset[0])
  return final_params(workdir)


@pytest.fixture(scope='module')
def streamed_reference(tmp_path_factory, idx_dataset):
  workdir = tmp_path_factory.mktemp('uninterrupted_streamed')
  run_to_end(workdir, idx_dataset[0], 'grain')
  return final_params(workdir)


def test_kill_right_after_a_checkpoint_then_resume(tmp_path, idx_dataset, reference):
  proc = start(tmp_path, idx_dataset[0])
  assert wait_for(lambda: os.path.isdir(tmp_path / 'checkpoints' / '40')), 'no checkpoint 40'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  result = run_to_end(tmp_path, idx_dataset[0])
  assert 'resuming from checkpoint' in result.stderr
  assert_bit_identical(final_params(tmp_path), reference)


def test_kill_at_a_random_moment_then_resume(tmp_path, idx_dataset, streamed_reference):
  delay = random.Random().uniform(0.0, 1.5)  # a different moment each run of the suite
  print(f'killing {delay:.3f} s after checkpoint 20')
  proc = start(tmp_path, idx_dataset[0], 'grain')
  # Count from the first checkpoint, so that the rerun has something to resume from.
  assert wait_for(lambda: os.path.isdir(tmp_path / 'checkpoints' / '20'))
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, 'the run ended before the kill: nothing was tested'
  result = run_to_end(tmp_path, idx_dataset[0], 'grain')
  assert 'resuming from checkpoint' in result.stderr
  assert_bit_identical(final_params(tmp_path), streamed_reference)


def test_corrupt_latest_checkpoint_falls_back_and_keeps_it(tmp_path, idx_dataset, reference):
  run_to_end(tmp_path, idx_dataset[0])
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
  assert_bit_identical(final_params(tmp_path), reference)
