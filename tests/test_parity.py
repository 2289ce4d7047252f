"""Parity of the JAX seed VAE with the PyTorch reference (benchmarks/pytorch_reference).

Same weights (PyTorch's random init, converted) and the same noise must give the same
reconstruction, posterior, seed objective, parameter gradients and Adam update, to a relative
error ||jax - torch|| / ||torch|| below 1e-5 per tensor in float32, for both transposed-conv
implementations. Skipped where torch is not installed (`pip install -e .[torch]`).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch parity tests need torch (pip install -e .[torch]); skipped without')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.pytorch_reference import model as torch_ref  # noqa: E402
from sslm_jax.config import base_config  # noqa: E402
from sslm_jax.interop import flax_to_torch_state_dict, torch_state_dict_to_flax  # noqa: E402
from sslm_jax.models import build_model  # noqa: E402
from sslm_jax.objectives import vae as vae_objectives  # noqa: E402
from sslm_jax.train import optim  # noqa: E402
from sslm_jax.train.state import create_train_state  # noqa: E402
from sslm_jax.train.step import make_train_step  # noqa: E402

RTOL = 1e-5
BATCH = 8
IMPLS = ('subpixel', 'xla')


def rel_err(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_close(name_to_pair: dict, what: str):
  errors = {k: rel_err(a, b) for k, (a, b) in name_to_pair.items()}
  worst = max(errors, key=errors.get)
  print(f'\n{what}: max relative error {errors[worst]:.2e} ({worst})')
  bad = {k: v for k, v in errors.items() if not v < RTOL}
  assert not bad, f'{what}: relative error >= {RTOL}: {bad}'


def nchw_to_nhwc(t) -> np.ndarray:
  return np.asarray(t.detach()).transpose(0, 2, 3, 1)


def jax_model(impl: str):
  config = base_config()
  config.model.conv_transpose_impl = impl
  return build_model(config.model), config.objective


def jax_outputs(model, params, images, eps):
  """The VAE's forward pass with explicit noise: what `reparameterize` does, eps given."""
  mean, logvar = model.apply({'params': params}, images, method='encode')
  z = mean + jnp.exp(0.5 * logvar) * eps
  logits = model.apply({'params': params}, z, method='decode_logits')
  return {'recon': jnp.tanh(logits), 'logits': logits, 'mean': mean, 'logvar': logvar}


@pytest.fixture
def torch_setup():
  """(PyTorch VAE with its random init, images NCHW in [-1, 1], noise)."""
  torch.manual_seed(0)
  torch.set_num_threads(1)
  model = torch_ref.VAE()
  images = torch.rand(BATCH, 1, 32, 32) * 2 - 1
  eps = torch.randn(BATCH, model.latent_dim)
  return model, images, eps


def test_round_trips_are_exact(torch_setup):
  model = torch_setup[0]
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  params = torch_state_dict_to_flax(model.state_dict())
  back = flax_to_torch_state_dict(params)
  assert list(back) == list(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k], err_msg=k)
  # The converted tree is exactly the tree the Flax model initialises, shape for shape.
  jmodel, _ = jax_model('subpixel')
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


@pytest.mark.parametrize('impl', IMPLS)
def test_forward_loss_and_gradients_match(torch_setup, impl):
  model, images, eps = torch_setup
  recon, mu, logvar = model(images, eps)
  loss = torch_ref.seed_loss(recon, images, mu, logvar, kl_weight=1e-4)
  loss.backward()
  torch_grads = {k: p.grad.numpy() for k, p in model.named_parameters()}

  jmodel, objective = jax_model(impl)
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
                'loss': (jloss, loss.detach())}, f'[{impl}] forward and seed objective')
  jax_grads = flax_to_torch_state_dict(grads)
  assert set(jax_grads) == set(torch_grads)
  assert_close({k: (jax_grads[k], torch_grads[k]) for k in torch_grads},
               f'[{impl}] gradients ({len(torch_grads)} tensors)')


@pytest.mark.parametrize('impl', IMPLS)
def test_one_adam_step_of_the_library_train_step_matches(torch_setup, impl):
  """The library's train step (loss with its own noise, optax Adam) against torch.optim.Adam."""
  model, images, _ = torch_setup
  jmodel, objective = jax_model(impl)
  config = base_config()
  tx = optim.make_optimizer(config.optimizer, total_steps=10)  # Adam, lr 1e-3, constant
  params = jax.tree.map(jnp.asarray, torch_state_dict_to_flax(model.state_dict()))
  state = create_train_state(params, tx, jax.random.key(3))
  # The noise the step draws: rng folded with the step, then reparameterize's normal draw.
  step_rng = jax.random.fold_in(state.rng, state.step)
  eps = torch.tensor(np.asarray(jax.random.normal(step_rng, (BATCH, jmodel.latent_dim))))

  loss_fn = lambda p, b, r: vae_objectives.autoencoder_loss(p, b, r, model=jmodel,
                                                            config=objective)
  step = jax.jit(make_train_step(loss_fn, tx))
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
  # The step itself (new - old) too, a stricter check than the weights.
  deltas = {k: (jax_after[k] - before[k], after[k] - before[k]) for k in after}
  errors = {k: rel_err(*pair) for k, pair in deltas.items()}
  print(f'[{impl}] Adam update: max relative error {max(errors.values()):.2e}')
  assert max(errors.values()) < 1e-3, errors
