import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslm_jax.runs import run_config
from sslm_jax.objectives import bind_loss, vae


def test_gaussian_kl_against_monte_carlo():
  mean, logvar = jnp.array([[0.7, -0.3, 1.2]]), jnp.array([[-0.5, 0.4, 0.1]])
  std = jnp.exp(0.5 * logvar)
  z = mean + std * jax.random.normal(jax.random.PRNGKey(0), (400_000, 3))
  log_q = -0.5 * (((z - mean) / std) ** 2 + logvar + math.log(2 * math.pi))
  log_p = -0.5 * (z ** 2 + math.log(2 * math.pi))
  mc = float(jnp.mean(jnp.sum(log_q - log_p, axis=-1)))
  closed = float(vae.gaussian_kl(mean, logvar)[0])
  assert closed == pytest.approx(mc, abs=0.01)


def test_seed_objective_by_hand():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (4, 8, 8, 1))
  recon = rng.uniform(-1, 1, (4, 8, 8, 1))
  mu, logvar = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
  # The seed's loss with sigma read as the log-variance (seed-reference.md rows 6-7).
  expected = np.mean((recon - x) ** 2) + 1e-4 * np.mean(mu ** 2 + np.exp(logvar) - 1 - logvar)
  config = run_config().objective
  outputs = {'recon': recon, 'logits': np.arctanh(recon), 'mean': mu, 'logvar': logvar}
  stats = vae.per_example(outputs, jnp.asarray(x), config)
  assert float(jnp.mean(stats['objective'])) == pytest.approx(expected, rel=1e-5)
  # and the seed's penalty is 2 KL / latent_dim
  np.testing.assert_allclose(vae.seed_kl_term(mu, logvar), 2 * vae.gaussian_kl(mu, logvar) / 5,
                             rtol=1e-5)


def test_bernoulli_nll_by_hand():
  logits = np.array([[0.3, -1.2, 2.0]])
  images = np.array([[1.0, -1.0, 0.0]])  # targets 1, 0, 0.5
  p = 1 / (1 + np.exp(-2 * logits))
  t = (images + 1) / 2
  expected = -np.sum(t * np.log(p) + (1 - t) * np.log(1 - p))
  got = float(vae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(images), 'bernoulli', 1.0)[0])
  assert got == pytest.approx(expected, rel=1e-5)
  # the Bernoulli mean is the image the decoder draws
  np.testing.assert_allclose(2 * p - 1, np.tanh(logits), rtol=1e-6)


def test_gaussian_nll_by_hand():
  logits, images, s = np.array([[0.1, 0.5]]), np.array([[0.2, -0.3]]), 0.1
  mu = np.tanh(logits)
  expected = np.sum(0.5 * ((images - mu) / s) ** 2 + np.log(s) + 0.5 * np.log(2 * np.pi))
  got = float(vae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(images), 'gaussian', s)[0])
  assert got == pytest.approx(expected, rel=1e-5)


def test_elbo_objective_is_nll_plus_beta_kl():
  config = run_config().objective
  with config.unlocked():
    config.name, config.beta = 'elbo', 0.5
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(-1, 1, (3, 4, 4, 1)))
  outputs = {'recon': jnp.tanh(x * 0.9), 'logits': x * 0.9,
             'mean': jnp.asarray(rng.normal(size=(3, 2))),
             'logvar': jnp.asarray(rng.normal(size=(3, 2)))}
  stats = vae.per_example(outputs, x, config)
  np.testing.assert_allclose(stats['objective'], stats['recon_nll'] + 0.5 * stats['kl'], rtol=1e-6)
  np.testing.assert_allclose(stats['elbo_nats'], stats['recon_nll'] + stats['kl'], rtol=1e-6)


def test_bound_loss_is_differentiable_batch_mean():
  from sslm_jax.models import build_model
  config = run_config()
  model = build_model(config.model)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 32, 32, 1), minval=-1, maxval=1)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, jax.random.PRNGKey(2))['params']
  loss_fn = bind_loss(model, config.objective)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, {'image': x}, jax.random.PRNGKey(3))
  assert float(loss) == pytest.approx(float(metrics['objective']))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert set(metrics) >= {'mse', 'kl', 'elbo_nats', 'objective'}
