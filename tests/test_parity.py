"""Parity of the JAX seed VAE with the PyTorch reference (benchmarks/pytorch_reference).

Same weights (PyTorch's random init, converted) and the same noise must give the same
reconstruction, posterior, seed objective, parameter gradients and Adam update, to a relative
error ||jax - torch|| / ||torch|| below 1e-5 per tensor in float32, for the oneDNN convolutions
(where built) and for XLA's with either transposed-conv form. Float32 means full float32 matmuls
on both sides, on every backend (JAX at 'highest' precision and PyTorch without TF32:
tests/conftest.py). Skipped where torch is not installed (`pip install -e .[torch]`).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch parity tests need torch (pip install -e .[torch]); skipped without')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import config_with, float32_torch, rel_err  # noqa: E402
from benchmarks.pytorch_reference import model as torch_ref  # noqa: E402
from sslm_jax.runs import run_config  # noqa: E402
from sslm_jax.kernels import onednn_conv  # noqa: E402
from sslm_jax.interop import (  # noqa: E402
    flax_to_torch_state_dict, load_params_npz, save_params_npz, torch_state_dict_to_flax)
from sslm_jax.models import build_model  # noqa: E402
from sslm_jax.objectives import bind_loss  # noqa: E402
from sslm_jax.objectives import vae as vae_objectives  # noqa: E402
from sslm_jax.train import optim  # noqa: E402
from sslm_jax.train.state import create_train_state  # noqa: E402
from sslm_jax.train.step import make_train_step  # noqa: E402

float32_torch(torch)
RTOL = 1e-5
BATCH = 8
# The model's convolutions: oneDNN's (conv_impl='onednn'), or XLA's (conv_impl='xla') with the
# decoder's transposed convolutions as `col2im` or as `lax.conv_transpose`.
IMPLS = ('onednn', 'col2im', 'xla')
# Small widths (as tests/conftest.py's TINY_MODEL): the reference takes the JAX model's fields.
TINY = {'latent_dim': 4, 'encoder_features': (8, 16, 16), 'encoder_out_features': 16,
        'decoder_hidden': (16,), 'decoder_base_features': 8, 'decoder_features': (8, 8)}


def assert_close(name_to_pair: dict, what: str):
  errors = {k: rel_err(a, b) for k, (a, b) in name_to_pair.items()}
  worst = max(errors, key=errors.get)
  print(f'\n{what}: max relative error {errors[worst]:.2e} ({worst})')
  bad = {k: v for k, v in errors.items() if not v < RTOL}
  assert not bad, f'{what}: relative error >= {RTOL}: {bad}'


def nchw_to_nhwc(t) -> np.ndarray:
  return np.asarray(t.detach()).transpose(0, 2, 3, 1)


def jax_model(impl: str, **widths):
  config = run_config()
  if impl in ('onednn', 'auto'):  # 'auto': the library's default, whichever it is here
    if impl == 'onednn' and onednn_conv.unavailable_reason():
      pytest.skip(onednn_conv.unavailable_reason())
    config.model.conv_impl = impl
  else:
    config.model.conv_impl = 'xla'
    config.model.conv_transpose_impl = impl
  for name, value in widths.items():
    setattr(config.model, name, value)
  return build_model(config.model), config.objective


def jax_outputs(model, params, images, eps):
  """The VAE's forward pass with explicit noise: what `reparameterize` does, eps given."""
  mean, logvar = model.apply({'params': params}, images, method='encode')
  z = mean + jnp.exp(0.5 * logvar) * eps
  logits = model.apply({'params': params}, z, method='decode_logits')
  return {'recon': jnp.tanh(logits), 'logits': logits, 'mean': mean, 'logvar': logvar}


def make_torch_setup(**widths):
  """(PyTorch VAE with its random init, images NCHW in [-1, 1], noise)."""
  torch.manual_seed(0)
  torch.set_num_threads(1)
  model = torch_ref.VAE(**widths)
  images = torch.rand(BATCH, 1, 32, 32) * 2 - 1
  eps = torch.randn(BATCH, model.latent_dim)
  return model, images, eps


@pytest.fixture
def torch_setup():
  return make_torch_setup()


def test_round_trips_are_exact(torch_setup):
  model = torch_setup[0]
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = torch_state_dict_to_flax(model.state_dict())
  back = flax_to_torch_state_dict(params)
  assert list(back) == list(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k], err_msg=k)
  # The converted tree is exactly the tree the Flax model initialises, shape for shape.
  jmodel, _ = jax_model('col2im')
  init = jmodel.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), jax.random.key(1))['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init)
  again = torch_state_dict_to_flax(flax_to_torch_state_dict(init))
  jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, init))


def test_autoencoder_round_trip():
  torch.manual_seed(1)
  model = torch_ref.AutoEncoder(latent_dim=4, encoder_features=(8, 16), encoder_out_features=16,
                                decoder_hidden=(16,), decoder_base_features=8,
                                decoder_features=(8,))
  params = torch_state_dict_to_flax(model.state_dict())
  assert set(params) == {'encoder', 'code', 'decoder'}
  back = flax_to_torch_state_dict(params)
  for k, v in model.state_dict().items():
    np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


@pytest.mark.parametrize('impl,widths', [(impl, 'seed') for impl in IMPLS]
                         + [('auto', 'tiny')])
def test_forward_loss_and_gradients_match(impl, widths):
  tag = f'[{impl}, {widths} widths]'
  widths = TINY if widths == 'tiny' else {}
  model, images, eps = make_torch_setup(**widths)
  recon, mu, logvar = model(images, eps)
  loss = torch_ref.seed_loss(recon, images, mu, logvar, kl_weight=1e-4)
  loss.backward()
  torch_grads = {k: p.grad.numpy() for k, p in model.named_parameters()}

  jmodel, objective = jax_model(impl, **widths)
  params = jax.tree.map(jnp.asarray, torch_state_dict_to_flax(model.state_dict()))
  x, e = jnp.asarray(nchw_to_nhwc(images)), jnp.asarray(eps.numpy())

  def jax_loss(params):
    outputs = jax_outputs(jmodel, params, x, e)
    stats = vae_objectives.per_example(outputs, x, objective)
    return jnp.mean(stats['objective']), outputs

  (jloss, outputs), grads = jax.value_and_grad(jax_loss, has_aux=True)(params)
  assert_close({'recon': (outputs['recon'], nchw_to_nhwc(recon)),
                'mu': (outputs['mean'], mu.detach()),
                'logvar': (outputs['logvar'], logvar.detach()),
                'loss': (jloss, loss.detach())}, f'{tag} forward and objective')
  jax_grads = flax_to_torch_state_dict(grads)
  assert set(jax_grads) == set(torch_grads)
  assert_close({k: (jax_grads[k], torch_grads[k]) for k in torch_grads},
               f'{tag} gradients ({len(torch_grads)} tensors)')


@pytest.mark.parametrize('impl', IMPLS)
def test_one_adam_step_of_the_library_train_step_matches(torch_setup, impl):
  """The library's train step (loss with its own noise, optax Adam) against torch.optim.Adam."""
  model, images, _ = torch_setup
  jmodel, objective = jax_model(impl)
  config = run_config()
  tx = optim.make_optimizer(config.optimizer, total_steps=10)  # Adam, lr 1e-3, constant
  params = jax.tree.map(jnp.asarray, torch_state_dict_to_flax(model.state_dict()))
  state = create_train_state(params, tx, jax.random.key(3))
  # The noise the step draws: rng folded with the step, then reparameterize's normal draw.
  step_rng = jax.random.fold_in(state.rng, state.step)
  eps = torch.tensor(np.asarray(jax.random.normal(step_rng, (BATCH, jmodel.latent_dim))))

  step = jax.jit(make_train_step(bind_loss(jmodel, objective), tx))
  new_state, metrics = step(state, {'image': jnp.asarray(nchw_to_nhwc(images))})

  opt = torch.optim.Adam(model.parameters(), lr=config.optimizer.learning_rate,
                         betas=(config.optimizer.b1, config.optimizer.b2))
  before = {k: v.detach().clone().numpy() for k, v in model.state_dict().items()}
  opt.zero_grad()
  recon, mu, logvar = model(images, eps)
  loss = torch_ref.seed_loss(recon, images, mu, logvar, kl_weight=objective.kl_weight)
  loss.backward()
  opt.step()

  after = {k: v.numpy() for k, v in model.state_dict().items()}
  jax_after = flax_to_torch_state_dict(new_state.params)
  assert_close({'loss': (metrics['loss'], loss.detach())}, f'[{impl}] train-step loss')
  assert_close({k: (jax_after[k], after[k]) for k in after}, f'[{impl}] weights after Adam')
  # The update itself (new - old): its entries are small, so its relative error is larger, but
  # it still agrees to 1e-3 (entries with gradients near Adam's eps are the most sensitive).
  deltas = {k: (jax_after[k] - before[k], after[k] - before[k]) for k in after}
  errors = {k: rel_err(*pair) for k, pair in deltas.items()}
  print(f'[{impl}] Adam update: max relative error {max(errors.values()):.2e}')
  assert max(errors.values()) < 1e-3, errors


def test_params_npz_round_trip(tmp_path):
  jmodel, _ = jax_model('col2im', **TINY)
  params = jmodel.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), jax.random.key(1))['params']
  save_params_npz(params, str(tmp_path / 'params.npz'))
  loaded = load_params_npz(str(tmp_path / 'params.npz'))
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, params))


def test_reference_training_follows_the_jax_run(idx_dataset, tmp_path):
  """benchmarks/pytorch_reference/train.py from the JAX init with the JAX run's noise (offline):
  a step on the same batch lands on the JAX run's test MSE, KL and objective (measured: 3e-7 and
  1e-5 relative; with torch's own noise 2e-3 and 5e-2)."""
  from benchmarks.pytorch_reference import train
  from sslm_jax.train import loop
  data_dir, manual_dir = idx_dataset
  config = config_with({'data.name': 'idx_images/mnist', 'data.data_dir': data_dir,
                        'data.manual_dir': manual_dir, 'train.batch_size': 16,
                        'train.eval_batch_size': 64, 'train.num_steps': 1,
                        'train.progress_bar': False, 'train.num_pictures': 4})
  jax_summary = loop.train_and_evaluate(config, str(tmp_path / 'jax'))
  out = tmp_path / 'torch.json'
  summary = train.main(['--data_name=idx_images/mnist', f'--data_dir={data_dir}',
                        f'--manual_dir={manual_dir}', '--num_steps=1', '--batch_size=16',
                        '--eval_batch_size=64', '--init=jax', '--noise=jax', f'--out={out}'])
  assert out.exists() and summary['steps'] == 1 and summary['noise'] == 'jax'
  for key in ('test_mse', 'test_kl', 'test_objective'):
    print(key, 'jax', jax_summary[key], 'torch', summary[key])
    np.testing.assert_allclose(summary[key], jax_summary[key], rtol=1e-4, err_msg=key)
