"""Data parallelism: jit over a mesh, FSDP, pmap, gradient accumulation, bf16.

This process has one CPU device (JAX started with it), so runs on 4 simulated devices happen in a
fresh process (tests/parallel_worker.py) under a timeout; many processes are tested through the
whole loop in tests/test_parallel_loop.py. Across device counts XLA compiles different programs
(other reduction orders), so those comparisons use a tolerance: rtol 1e-5, atol 1e-6 (about 80
float32 ulps). Every run trains with SGD and XLA's convolutions (parallel_worker.LAYOUT_SETTINGS
says why), so differences stay at rounding size for all 10 steps.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import parallel_worker as worker
from sslm_jax.train import parallel
from sslm_jax.train.step import make_train_step

RTOL, ATOL = 1e-5, 1e-6
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'parallel_worker.py')


def worker_env(devices: int) -> dict:
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={devices}')
  return {**os.environ, 'XLA_FLAGS': ' '.join(flags), 'JAX_PLATFORMS': 'cpu'}


def start_worker(devices: int, *args, env=None) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, WORKER, *map(str, args)],
                          env={**worker_env(devices), **(env or {})},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen], timeout: float) -> list[str]:
  """Outputs of `procs`; kills all of them (and fails) if any is still running at `timeout`."""
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f'worker still running after {timeout} s: ' +
                '\n'.join(p.communicate()[0][-2000:] for p in procs))
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


@pytest.fixture(scope='module', autouse=True)
def four_device_worker(tmp_path_factory):
  """The 4-device runs, started with the module so they overlap the single-device tests."""
  out = str(tmp_path_factory.mktemp('parallel') / 'equivalence.npz')
  proc = start_worker(4, 'equivalence', out)
  yield proc, out
  if proc.poll() is None:  # the tests that read it failed early
    proc.kill()
    proc.communicate()


@pytest.fixture(scope='module')
def vae():
  return worker.setup('vae')


@pytest.fixture(scope='module')
def single_device(vae):
  """{'vae_single/loss': (STEPS,), 'vae_single/params': (STEPS, n)}: jit on this one device."""
  losses, params, _ = worker.run(*vae)
  return {'vae_single/loss': losses, 'vae_single/params': params}


@pytest.fixture(scope='module')
def runs(four_device_worker, single_device):
  """Every layout's losses and parameters after each step, by name (see parallel_worker.py)."""
  proc, out = four_device_worker
  finish([proc], timeout=240)
  with np.load(out) as results:
    return {**results, **single_device}


def assert_close(actual, expected, what):
  np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def reference_step(loss_fn, tx):
  """The step as it was before accumulation and pmap existed (commit 27d2506)."""
  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
  return train_step


def test_one_micro_batch_is_the_old_step_exactly(vae):
  # The same jaxpr compiles to the same program: bit-identical results, without running it.
  loss_fn, tx, state = vae
  old = jax.make_jaxpr(reference_step(loss_fn, tx))(state, worker.batch(0))
  new = jax.make_jaxpr(make_train_step(loss_fn, tx, grad_accum_steps=1))(state, worker.batch(0))
  assert str(new) == str(old)
  accumulating = jax.make_jaxpr(make_train_step(loss_fn, tx, grad_accum_steps=2))(
      state, worker.batch(0))
  assert str(accumulating) != str(old) and 'scan' in str(accumulating)


def test_bfloat16_compute_trains_with_float32_params(vae):
  _, _, state = vae
  loss_fn, tx, _ = worker.setup('vae', dtype='bfloat16')
  step_fn = jax.jit(make_train_step(loss_fn, tx))
  fixed = worker.batch(0)
  losses = []
  for _ in range(6):
    state, metrics = step_fn(state, fixed)
    losses.append(float(metrics['loss']))
    assert all(v.dtype == jnp.float32 for v in metrics.values()), metrics
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_pmap_on_one_device_is_the_single_device_step(vae, single_device):
  losses, params, state = worker.run(*vae, mode='pmap')
  assert_close(losses, single_device['vae_single/loss'], 'losses, pmap over 1 replica vs jit')
  assert_close(params, single_device['vae_single/params'], 'params, pmap over 1 replica vs jit')
  assert state.params['encoder']['Conv_0']['kernel'].shape[0] == 1  # the replica axis


def test_grad_accum_checks_its_arguments(vae):
  loss_fn, tx, state = vae
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match='grad_accum_steps'):
      make_train_step(loss_fn, tx, grad_accum_steps=bad)
  step_fn = make_train_step(loss_fn, tx, grad_accum_steps=4)
  with pytest.raises(ValueError, match='allowed: one leading size, a multiple of 4'):
    jax.eval_shape(step_fn, state, worker.batch(0, rows=6))


def test_mesh_shape_must_match_the_devices():
  devices = jax.devices() * 4  # the shape checks need only a count
  assert dict(parallel.make_mesh(devices=devices).shape) == {'data': 4, 'fsdp': 1}
  assert dict(parallel.make_mesh(fsdp=2, devices=devices).shape) == {'data': 2, 'fsdp': 2}
  with pytest.raises(parallel.ParallelError,
                     match=r'data=3 x fsdp=1 needs 3 devices, but there are 4; allowed: '
                           r'data=1 x fsdp=4, data=2 x fsdp=2, data=4 x fsdp=1'):
    parallel.make_mesh(data=3, devices=devices)
  with pytest.raises(parallel.ParallelError, match='fsdp=3 does not divide the 4 devices'):
    parallel.make_mesh(fsdp=3, devices=devices)
  for bad in ({'data': 0}, {'fsdp': -1}, {'data': 'all'}):
    with pytest.raises(parallel.ParallelError, match='allowed: an integer >= 1'):
      parallel.make_mesh(**bad, devices=devices)


def test_check_batch_names_what_divides():
  assert parallel.check_batch(64, 8) == 8
  assert parallel.check_batch(64, 8, grad_accum_steps=2) == 4
  assert parallel.check_batch(5, parallel.make_mesh()) == 5
  with pytest.raises(parallel.ParallelError,
                     match=r'global batch size 60 does not split over 8 data-parallel devices x '
                           r'grad_accum_steps=2; allowed: a multiple of 16 \(e.g. 48 or 64\)'):
    parallel.check_batch(60, 8, grad_accum_steps=2)
  with pytest.raises(parallel.ParallelError, match='global_batch_size=0'):
    parallel.check_batch(0, 8)


def test_step_and_mode_must_agree(vae, monkeypatch):
  # Each strategy makes its own step: pmap's averages over the replicas' axis, jit's over none
  # (sharding decides its all-reduce). (Before, a step made for the other mode was an error.)
  loss_fn, tx, state = vae
  made = []
  monkeypatch.setattr(parallel.step_lib, 'make_train_step',
                      lambda *a, **k: made.append(k['axis_name']) or make_train_step(*a, **k))
  parallel.compile_train_step(loss_fn, tx, mode='pmap')
  parallel.compile_train_step(loss_fn, tx, state_example=state)
  assert made == [parallel.AXIS, None]
  monkeypatch.undo()
  with pytest.raises(parallel.ParallelError, match='needs state_example'):
    parallel.compile_train_step(loss_fn, tx)
  with pytest.raises(parallel.ParallelError, match="mode='shard'; allowed: 'jit', 'pmap'"):
    parallel.compile_train_step(loss_fn, tx, mode='shard', state_example=state)
  ps = parallel.compile_train_step(loss_fn, tx, grad_accum_steps=2, state_example=state)
  with pytest.raises(parallel.ParallelError, match='a multiple of 2'):
    ps.place_batch(worker.batch(0, rows=3))


def test_one_process_needs_no_distributed_runtime(monkeypatch):
  for name in parallel.DISTRIBUTED_ENV:
    monkeypatch.delenv(name, raising=False)
  assert parallel.initialize_distributed() is False
  assert parallel.is_primary() and parallel.process_slice(16) == slice(0, 16)
  with pytest.raises(parallel.ParallelError, match=r'process_id=2; allowed: 0\.\.1'):
    parallel.initialize_distributed('127.0.0.1:1234', num_processes=2, process_id=2)
  with pytest.raises(parallel.ParallelError, match='"host:port" of process 0'):
    parallel.initialize_distributed('localhost', num_processes=2, process_id=0)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '127.0.0.1:1234')
  monkeypatch.setenv('JAX_PROCESS_ID', '0')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '1')
  assert parallel.initialize_distributed() is False
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(parallel.ParallelError, match="must be integers; got 'two', '0'"):
    parallel.initialize_distributed()


# On the VAE, jit over a mesh computes the single-device program (the same noise); pmap draws
# per-replica noise, which is what one device does with grad_accum_steps=4. Accumulation against
# one full batch is compared on the deterministic AE (same encoder and decoder, no sampling).
PAIRS = [('vae_mesh4', 'vae_single'), ('vae_fsdp2x2', 'vae_single'),
         ('vae_pmap4', 'vae_single_k4'), ('ae_single_k4', 'ae_single'),
         ('ae_pmap4', 'ae_single')]


@pytest.mark.timeout(300)
@pytest.mark.parametrize('layout,reference', PAIRS)
def test_layouts_match_on_the_same_global_batch(runs, layout, reference):
  losses, params = runs[f'{layout}/loss'], runs[f'{layout}/params']
  assert losses.shape == (worker.STEPS,) and params.shape[0] == worker.STEPS
  assert_close(losses, runs[f'{reference}/loss'], 'losses of 10 steps')
  assert_close(params[0], runs[f'{reference}/params'][0], 'params after 1 step')
  assert_close(params, runs[f'{reference}/params'], 'params after each of 10 steps')
  assert losses[-1] < losses[0]


@pytest.mark.timeout(300)
def test_noise_really_differs_between_accumulation_and_one_batch(runs):
  # The VAE pairing above is not vacuous: micro-batches draw other noise than one full batch.
  assert not np.allclose(runs['vae_single_k4/loss'], runs['vae_single/loss'], rtol=1e-4)


@pytest.mark.timeout(300)
def test_fsdp_splits_parameters_and_errors_name_the_split(runs):
  specs = set(runs['fsdp_specs'])
  assert "P(None, None, None, 'fsdp')" in specs and 'P()' in specs, specs  # a conv kernel; rng
  pmap_error, jit_error = runs['errors']
  assert 'batch of 6 rows cannot be split over 4 local devices' in pmap_error, pmap_error
  assert 'a multiple of 4' in pmap_error
  assert 'global batch size 6 does not split over 4' in jit_error, jit_error
