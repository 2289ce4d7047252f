"""Runs of the train step on several devices, for tests/test_parallel.py.

Run as a script in a fresh process, because the device count (XLA_FLAGS) must be set before JAX
starts; the test process itself has one device. (Many processes are tested through the whole loop
in tests/test_parallel_loop.py.)

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_worker.py \
      equivalence OUT.npz

Results are numpy files of losses and flat float32 parameters after each step, which the test
compares with its own single-device run.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

GLOBAL_BATCH = 16
STEPS = 10


def batch(step: int, rows: int = GLOBAL_BATCH) -> dict:
  """A learnable global batch of 32x32 blobs in [-1, 1], a function of the step alone."""
  rng = np.random.default_rng(1000 + step)
  yy, xx = np.mgrid[:32, :32]
  centers = rng.uniform(8, 24, (rows, 2, 1, 1))
  blob = np.exp(-((yy - centers[:, 0]) ** 2 + (xx - centers[:, 1]) ** 2) / 30.0)
  images = 2 * blob - 1 + rng.normal(0, 0.05, blob.shape)
  return {'image': images[..., None].astype(np.float32)}


def init_params(model) -> dict:
  """Parameters shaped as `model.init` makes them: kernels ~ N(0, 1 / fan_in), biases 0.

  A stand-in for `model.init`, whose compilation takes about 5 s per model on these CPUs; what
  these tests compare does not depend on how parameters start, only that every run starts alike.
  """
  import jax
  import jax.numpy as jnp
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)),
                          jax.random.PRNGKey(0))['params']
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(
      rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape) if len(s.shape) > 1 else
      np.zeros(s.shape), s.dtype), shapes)


# What every layout is compared under (test_parallel.py, test_parallel_loop.py).
# - XLA's convolutions everywhere: model.conv_impl='auto' picks oneDNN on one CPU device and XLA's
#   on several, and those two kernels round differently; what is compared here is the layout.
# - SGD with momentum, not Adam: SGD's update is linear in the gradient, so two layouts whose
#   gradients differ by rounding (another reduction order) stay a rounding apart for the whole
#   trajectory. Adam's first updates are lr * g / (|g| + eps), about lr * sign(g): a gradient
#   entry near zero whose sign rounding flips moves its parameter by 2 lr, and that difference
#   then grows with the steps, by an amount that depends on the CPU's kernels (an AVX2 machine
#   failed a test that an AVX-512 one passed).
LAYOUT_SETTINGS = {'model.conv_impl': 'xla', 'optimizer.name': 'sgd',
                   'optimizer.learning_rate': 0.01, 'optimizer.momentum': 0.9}


def setup(model_name: str = 'vae', dtype: str = 'float32'):
  """(loss_fn, tx, state) of the tiny seed model of tests/conftest.py under LAYOUT_SETTINGS;
  'ae' is the deterministic autoencoder on the same encoder and decoder (no sampling)."""
  import jax
  from conftest import tiny_config
  from sslm_jax.models import build_model
  from sslm_jax.objectives import bind_loss
  from sslm_jax.train import optim
  from sslm_jax.train.state import create_train_state
  config = tiny_config(**LAYOUT_SETTINGS, **{'model.dtype': dtype},
                       **({'model.name': 'ae', 'objective.name': 'mse'} if model_name == 'ae'
                          else {}))
  model = build_model(config.model)
  tx = optim.make_optimizer(config.optimizer, total_steps=100)
  return bind_loss(model, config.objective), tx, create_train_state(init_params(model), tx,
                                                                    jax.random.PRNGKey(1))


def flat(tree) -> np.ndarray:
  import jax
  return np.concatenate([np.asarray(x, np.float32).ravel() for x in jax.tree.leaves(tree)])


def run(loss_fn, tx, state, *, mode='jit', mesh=None, grad_accum_steps=1, steps=STEPS):
  """(losses, flat params after each step, final state) of `steps` steps on global batches."""
  from sslm_jax.train import parallel
  ps = parallel.compile_train_step(loss_fn, tx, mode=mode, mesh=mesh,
                                   grad_accum_steps=grad_accum_steps, state_example=state)
  placed = ps.place_state(state)
  losses, params = [], []
  for s in range(steps):
    placed, metrics = ps.step(placed, ps.place_batch(batch(s)))
    losses.append(float(metrics['loss']))
    params.append(flat(ps.unplace_state(placed).params))
  return np.asarray(losses), np.stack(params), placed


def equivalence(out: str) -> None:
  """Every layout on the same global batches, plus the errors that need several devices."""
  import jax
  from sslm_jax.train import parallel
  assert jax.device_count() == 4, jax.devices()
  one = parallel.make_mesh(devices=jax.devices()[:1])
  vae, ae = setup('vae'), setup('ae')
  layouts = {  # the single-device reference runs in the test process
      'vae_mesh4': (vae, dict(mesh=parallel.make_mesh())),
      'vae_fsdp2x2': (vae, dict(mesh=parallel.make_mesh(data=2, fsdp=2))),
      'vae_single_k4': (vae, dict(mesh=one, grad_accum_steps=4)),
      'vae_pmap4': (vae, dict(mode='pmap')),
      'ae_single': (ae, dict(mesh=one)),
      'ae_single_k4': (ae, dict(mesh=one, grad_accum_steps=4)),
      'ae_pmap4': (ae, dict(mode='pmap')),
  }
  results = {}
  for name, ((loss_fn, tx, state), kwargs) in layouts.items():
    results[f'{name}/loss'], results[f'{name}/params'], placed = run(loss_fn, tx, state,
                                                                     **kwargs)
    if name == 'vae_fsdp2x2':  # the largest leaves really are split along 'fsdp'
      specs = {str(x.sharding.spec) for x in jax.tree.leaves(placed.params)}
      results['fsdp_specs'] = np.asarray(sorted(specs))
  # Errors: a batch pmap cannot deal to 4 devices, one jit cannot shard over them.
  loss_fn, tx, state = vae
  errors = []
  for mode, rows in (('pmap', 6), ('jit', 6)):
    step = parallel.compile_train_step(loss_fn, tx, mode=mode, state_example=state)
    try:
      step.place_batch(batch(0, rows))
      errors.append('no error')
    except parallel.ParallelError as e:
      errors.append(str(e))
  results['errors'] = np.asarray(errors)
  np.savez(out, **results)


def main(argv=None) -> None:
  p = argparse.ArgumentParser()
  p.add_argument('what', choices=('equivalence',))
  p.add_argument('out')
  a = p.parse_args(argv)
  equivalence(a.out)


if __name__ == '__main__':
  main()
