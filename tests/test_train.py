import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from conftest import tiny_config
from sslm_jax.runs import run_config
from sslm_jax.kernels import onednn_conv
from sslm_jax.models import build_model
from sslm_jax.objectives import bind_loss
from sslm_jax.runs import setup
from sslm_jax.train import loop, optim
from sslm_jax.train.checkpoint import CheckpointError, Checkpointer
from sslm_jax.train.state import create_train_state
from sslm_jax.train.step import jit_train_step, make_train_step


def read_metrics(workdir, split='train'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


def test_tiny_run_loss_goes_down(tmp_path, idx_dataset):
  # mock_data images are i.i.d. noise, which no autoencoder can learn (the loss stays flat), so
  # the learning test uses the generated IDX dataset, whose images have structure.
  config = tiny_config(**{'train.num_steps': 120, 'train.log_every_steps': 20,
                          'optimizer.learning_rate': 3e-3})
  config.data.name, config.data.data_dir = 'idx_images/mnist', idx_dataset[0]
  summary = loop.train_and_evaluate(config, str(tmp_path))
  losses = [r['loss'] for r in read_metrics(tmp_path)]
  assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
  assert summary['steps'] == 120 and summary['test_examples'] == 100
  # Who computed the convolutions: oneDNN where its kernels are built (`make test` builds them).
  assert summary['convolutions'] == ('xla' if onednn_conv.unavailable_reason() else 'onednn')
  for name in ('summary.json', 'metrics.jsonl', 'reconstructions.png', 'samples.png',
               'config.json'):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / 'tensorboard')
  assert Checkpointer(str(tmp_path), read_only=True).steps()[-1] == 120


@pytest.mark.parametrize('name,schedule,clip', [('adam', 'constant', 0.0),
                                                ('adamw', 'warmup_cosine', 1.0),
                                                ('sgd', 'cosine', 0.0),
                                                ('sgd', 'linear', 0.5)])
def test_every_optimizer_takes_a_step(name, schedule, clip):
  config = tiny_config()
  config.optimizer.name, config.optimizer.schedule = name, schedule
  config.optimizer.grad_clip_norm, config.optimizer.warmup_steps = clip, 2
  model = build_model(config.model)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 1), minval=-1, maxval=1)
  params = model.init(jax.random.PRNGKey(1), x, jax.random.PRNGKey(2))['params']
  tx = optim.make_optimizer(config.optimizer, total_steps=10)
  state = create_train_state(params, tx, jax.random.PRNGKey(3))
  step = jit_train_step(bind_loss(model, config.objective), tx)
  before = jax.tree.map(np.asarray, state.params)
  for _ in range(3):
    state, metrics = step(state, {'image': x})
  assert int(state.step) == 3 and np.isfinite(float(metrics['loss']))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
  assert all(jax.tree.leaves(changed))


def test_schedules_have_the_documented_shape():
  c = run_config().optimizer
  c.schedule, c.warmup_steps = 'warmup_cosine', 10
  lr = optim.learning_rate_schedule(c, 100)
  assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(1e-3)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-9)
  c.schedule, c.warmup_steps, c.end_learning_rate_factor = 'linear', 0, 0.1
  lr = optim.learning_rate_schedule(c, 100)
  assert float(lr(100)) == pytest.approx(1e-4)


def test_step_uses_a_different_key_each_step_and_is_pure():
  """fold_in(rng, step): the same state and batch give the same result; the next step differs."""
  def loss(params, batch, rng):
    noise = jax.random.normal(rng, ())
    return jnp.sum(params['w'] * noise), {}
  tx = optax.sgd(1.0)
  state = create_train_state({'w': jnp.ones(())}, tx, jax.random.PRNGKey(0))
  step = jax.jit(make_train_step(loss, tx))
  a, _ = step(state, {})
  b, _ = step(state, {})
  c, _ = step(a, {})
  assert float(a.params['w']) == float(b.params['w'])
  assert float(c.params['w'] - a.params['w']) != float(a.params['w'] - state.params['w'])


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  # Logs only at the end: the check before each save (every 5 steps) must catch the NaN alone.
  config = tiny_config(**{'train.num_steps': 60, 'train.checkpoint_every_steps': 5,
                          'train.log_every_steps': 1000, 'train.eval_every_steps': 1000})
  config.data.name = 'mnist'
  with tfds.testing.mock_data(num_examples=256):
    loop.train_and_evaluate(config, str(tmp_path))  # 60 good steps
    config.train.num_steps = 80
    config.optimizer.learning_rate = 1e30  # Adam moves every weight by ~lr: overflow
    with pytest.raises(loop.NonFiniteLossError, match='loss is (nan|inf)'):
      loop.train_and_evaluate(config, str(tmp_path))
    run_state = setup(config, str(tmp_path), training=False).init_state
  ckpt = Checkpointer(str(tmp_path), read_only=True)
  steps = ckpt.steps()
  assert 60 in steps
  for step in steps:  # whatever was saved is finite
    params = ckpt.restore(step, run_state).params
    assert all(np.all(np.isfinite(np.asarray(p))) for p in jax.tree.leaves(params)), step


def test_no_readable_checkpoint_is_an_error_and_moves_nothing(tmp_path):
  config = tiny_config(**{'train.num_steps': 20, 'train.checkpoint_every_steps': 10})
  config.data.name = 'mnist'
  with tfds.testing.mock_data(num_examples=64):
    loop.train_and_evaluate(config, str(tmp_path))
    for root, _, files in os.walk(tmp_path / 'checkpoints'):
      for name in files:
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
    config.train.num_steps = 30
    with pytest.raises(CheckpointError, match='no checkpoint .* restores; nothing was moved'):
      loop.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '20']
  assert not (tmp_path / 'quarantine').exists()


def test_eval_means_do_not_depend_on_the_batch_size():
  """100 examples in batches of 64 (a padded tail of 28) or of 100 give the same means."""
  from sslm_jax.data.images import ImageSplit
  from sslm_jax.eval.autoencoder import evaluate
  config = tiny_config(**{'model.name': 'ae', 'objective.name': 'mse'})  # no noise
  model = build_model(config.model)
  images = np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1)).astype(np.uint8)
  split = ImageSplit(images, np.zeros(100, np.int64), 10)
  params = setup(config, '', training=False).init_state.params
  means = [evaluate(params, split, model=model, objective_config=config.objective,
                    input_size=32, batch_size=b, rng=jax.random.PRNGKey(0)) for b in (64, 100, 7)]
  for other in means[1:]:
    for key in ('mse', 'objective'):
      assert other[key] == pytest.approx(means[0][key], rel=1e-5)


def test_metric_writer_starts_without_importing_torch(tmp_path):
  # A fresh interpreter (this one has torch loaded by other tests): the writer's TensorBoard
  # events are written, torch stays unimported (tensorboardX would import it: seconds of every
  # run's start), and `import torch` still works after.
  script = f'''
import importlib.util, os, sys
from sslm_jax.train.writers import MetricWriter
w = MetricWriter({str(tmp_path)!r})
w.write(3, 'train', {{'loss': 1.5}})
assert 'torch' not in sys.modules, 'torch imported'
assert os.listdir(os.path.join({str(tmp_path)!r}, 'tensorboard'))
if importlib.util.find_spec('torch') is not None:
  import torch
  assert torch.ones(2).sum().item() == 2.0
print('ok')
'''
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr[-2000:]
  record = json.loads((tmp_path / 'metrics.jsonl').read_text())
  assert record == {'step': 3, 'split': 'train', 'loss': 1.5}
