"""The training loop data-parallel on 4 simulated devices: jit over a mesh and pmap, end to end.

pmap over n devices computes what one device computes with grad_accum_steps=n (each replica
draws the noise of one micro-batch), and jit over a mesh is the single-device program, so both
are compared with single-device runs in this process, with the tolerance of test_parallel.py
and its settings (SGD, XLA's convolutions: parallel_worker.LAYOUT_SETTINGS says why).
The tiny GPT has no dropout, so both of its layouts must match one device without accumulation.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import tiny_config
from sslm_jax import config as config_lib
from sslm_jax import runs
from sslm_jax.train import loop
from parallel_worker import LAYOUT_SETTINGS
from test_language import text_config
from test_parallel import worker_env

pytestmark = pytest.mark.slow
RTOL = 1e-5  # as test_parallel.py: rounding of other reduction orders, not grown by Adam
RUNS = {'jit': {'parallel.mode': 'jit', 'train.grad_accum_steps': 1},
        'pmap': {'parallel.mode': 'pmap', 'train.grad_accum_steps': 1}}


def run_config(idx_dataset, **extra):
  data_dir, manual_dir = idx_dataset
  return tiny_config(**{'data.name': 'idx_images/mnist', 'data.data_dir': data_dir,
                        'data.manual_dir': manual_dir, 'train.num_steps': 8,
                        'train.checkpoint_every_steps': 4, 'train.eval_every_steps': 8,
                        **LAYOUT_SETTINGS, **extra})


@pytest.fixture(scope='module')
def one_device(idx_dataset, tmp_path_factory):
  """(summary, workdir) of the VAE run on this process's one device, the reference of both tests."""
  workdir = str(tmp_path_factory.mktemp('one'))
  return loop.train_and_evaluate(run_config(idx_dataset), workdir), workdir


WORKER = '''
import json, sys
from sslm_jax import runs
from sslm_jax.train import loop
for name, (config_json, workdir) in json.loads(sys.argv[1]).items():
  summary = loop.train_and_evaluate(runs.from_json(config_json), workdir)
  print('SUMMARY', name, json.dumps(summary))
'''


def gpt_config(corpus, **extra):
  """A tiny GPT without dropout: every layout computes the same function of the same batch."""
  return text_config(corpus, **{'train.num_steps': 8, 'train.batch_size': 16,
                                'train.eval_every_steps': 8, 'text.num_samples': 0,
                                'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.1,
                                'optimizer.momentum': 0.9, **extra})


@pytest.mark.timeout(300)
def test_loop_on_four_devices_matches_one_device(idx_dataset, corpus, one_device, tmp_path):
  jobs = {name: (config_lib.to_json(run_config(idx_dataset, **extra)), str(tmp_path / name))
          for name, extra in RUNS.items()}
  # The single-device GPT first: it prepares the data and trains the tokenizer the others reuse.
  gpt = loop.train_and_evaluate(gpt_config(corpus), str(tmp_path / 'gpt_one'))
  tokenizer = str(tmp_path / 'gpt_one' / 'tokenizer.model')
  for mode in ('jit', 'pmap'):
    jobs[f'gpt_{mode}'] = (config_lib.to_json(gpt_config(
        corpus, **{'parallel.mode': mode, 'text.tokenizer_path': tokenizer})),
        str(tmp_path / f'gpt_{mode}'))
  worker = subprocess.Popen([sys.executable, '-c', WORKER, json.dumps(jobs)], env=worker_env(4),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  # Meanwhile, the single-device references in this process.
  one = one_device[0]
  accum4 = loop.train_and_evaluate(run_config(idx_dataset, **{'train.grad_accum_steps': 4}),
                                   str(tmp_path / 'accum4'))
  try:
    out = worker.communicate(timeout=240)[0]
  except subprocess.TimeoutExpired:
    worker.kill()
    pytest.fail('the 4-device worker did not finish in 240 s: ' + worker.communicate()[0][-3000:])
  assert worker.returncode == 0, out[-4000:]
  four = {line.split(' ', 2)[1]: json.loads(line.split(' ', 2)[2])
          for line in out.splitlines() if line.startswith('SUMMARY ')}
  for name, reference, keys in (('jit', one, ('test_mse', 'test_kl', 'test_objective')),
                                ('pmap', accum4, ('test_mse', 'test_kl', 'test_objective')),
                                ('gpt_jit', gpt, ('validation_loss', 'test_loss')),
                                ('gpt_pmap', gpt, ('validation_loss', 'test_loss'))):
    assert four[name]['devices'] == 4 and four[name]['steps'] == 8
    for key in keys:
      assert four[name][key] == pytest.approx(reference[key], rel=RTOL), (name, key)
  # The checkpoints are ordinary: a single-device eval restores the 4-device runs.
  for name in RUNS:
    run, params, step = runs.restore_params(str(tmp_path / name))
    assert step == 8
    assert run.task.evaluate(params, 'test')['mse'] == pytest.approx(four[name]['test_mse'],
                                                                    rel=RTOL)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


PROCESS_WORKER = '''
import json, sys
from sslm_jax import runs
from sslm_jax.train import loop
summary = loop.train_and_evaluate(runs.from_json(sys.argv[1]), sys.argv[2])
print('SUMMARY', json.dumps(summary))
'''


@pytest.mark.timeout(300)
def test_loop_on_two_processes_matches_one_device_and_resumes(idx_dataset, one_device, tmp_path):
  """The whole loop as 2 processes x 2 devices on 127.0.0.1 (gloo), stopped after 4 steps and
  resumed by fresh processes to 8: the same numbers as one device, and process 0 alone writes.

  The first run joins by config keys and shards parameters over each process's 2 devices (data
  across processes, FSDP within); the resumed one joins by the JAX_* environment variables on a
  data-only mesh, so the checkpoint is restored onto another layout.
  """
  workdir = str(tmp_path / 'two')
  summaries = {}
  for steps in (4, 8):  # a run of 4 steps, then the same run asked for 8: it resumes at 4
    port = free_port()
    procs = []
    for i in range(2):
      config = run_config(idx_dataset, **{'train.num_steps': steps})
      env = worker_env(2)
      if steps == 4:
        config.parallel.num_processes, config.parallel.process_id = 2, i
        config.parallel.coordinator_address = f'127.0.0.1:{port}'
        config.parallel.mesh_fsdp = 2
      else:
        env.update(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES='2',
                   JAX_PROCESS_ID=str(i))
      procs.append(subprocess.Popen(
          [sys.executable, '-c', PROCESS_WORKER, config_lib.to_json(config), workdir],
          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
      outs = [p.communicate(timeout=200)[0] for p in procs]
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail(f'2-process run of {steps} steps did not finish in 200 s')
    for p, out in zip(procs, outs):
      assert p.returncode == 0, out[-4000:]
    # Every process computes the summary (evaluation is collective); compare them.
    per_process = [json.loads(next(line for line in out.splitlines()
                                   if line.startswith('SUMMARY '))[8:]) for out in outs]
    assert per_process[0] == {**per_process[1], 'wall_seconds': per_process[0]['wall_seconds']}
    summaries[steps] = per_process[0]
  resumed = summaries[8]
  assert resumed['processes'] == 2 and resumed['devices'] == 4
  assert resumed['resumed_from_step'] == 4 and resumed['steps'] == 8
  one, one_dir = one_device
  for key in ('test_mse', 'test_kl', 'test_objective'):
    assert resumed[key] == pytest.approx(one[key], rel=RTOL), key
  # Process 0 alone wrote: each logged and evaluated step once, one summary, one set of pictures.
  with open(tmp_path / 'two' / 'metrics.jsonl') as f:
    records = [(r['step'], r['split']) for r in map(json.loads, f)]
  with open(os.path.join(one_dir, 'metrics.jsonl')) as f:
    expected = [(r['step'], r['split']) for r in map(json.loads, f)]
  assert len(records) == len(set(records)) and set(expected) <= set(records)
  assert {step for step, _ in set(records) - set(expected)} == {4}  # the first run's last step
  with open(tmp_path / 'two' / 'summary.json') as f:
    assert json.load(f)['steps'] == 8
  assert sorted(p.name for p in (tmp_path / 'two').iterdir()) == \
      sorted(os.listdir(one_dir))
  run, params, step = runs.restore_params(workdir)
  assert step == 8
  assert run.task.evaluate(params, 'test')['mse'] == pytest.approx(resumed['test_mse'], rel=RTOL)
