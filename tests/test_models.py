"""Image models: shapes, parameter counts, equivalent formulations. Comparisons are float32 at
full matmul precision on every backend (tests/conftest.py: JAX's GPU default, TF32, would not
meet their 1e-5 tolerances)."""

import jax
import jax.numpy as jnp
import numpy as np

from sslm_jax.runs import run_config
from sslm_jax.models import build_model
from sslm_jax.models.conv_vae import AutoEncoder, Decoder, Encoder, VAE, reparameterize


def count(params):
  return sum(x.size for x in jax.tree.leaves(params))


def test_encoder_and_decoder_shapes():
  x = jnp.zeros((3, 32, 32, 1))
  # Shapes only: traced, not run (running the seed model op by op takes seconds).
  feats, _ = jax.eval_shape(Encoder().init_with_output, jax.random.PRNGKey(0), x)
  assert feats.shape == (3, 256)
  logits, _ = jax.eval_shape(Decoder().init_with_output, jax.random.PRNGKey(0),
                             jnp.zeros((3, 32)))
  assert logits.shape == (3, 32, 32, 1)


def test_vae_and_ae_shapes():
  x = jnp.zeros((2, 32, 32, 1))
  rng = jax.random.PRNGKey(0)
  out, _ = VAE().init_with_output(rng, x, rng)
  assert out['recon'].shape == x.shape and out['logits'].shape == x.shape
  assert out['mean'].shape == out['logvar'].shape == out['z'].shape == (2, 32)
  np.testing.assert_allclose(out['recon'], jnp.tanh(out['logits']))
  out, _ = AutoEncoder().init_with_output(rng, x)
  assert out['recon'].shape == x.shape and out['z'].shape == (2, 32)


def seed_parameter_count(latent=32):
  """The corrected seed model of seed-reference.md, layer by layer (PyTorch layout)."""
  conv = lambda cin, cout, k=4: cin * cout * k * k + cout  # noqa: E731
  dense = lambda cin, cout: cin * cout + cout  # noqa: E731
  encoder = conv(1, 64) + conv(64, 128) + conv(128, 256) + conv(256, 256)
  head = dense(256, 2 * latent)
  decoder = (dense(latent, 256) + dense(256, 128) + dense(128, 64) + dense(64, 64 * 4 * 4) +
             conv(64, 128) + conv(128, 64) + conv(64, 1))
  return encoder + head + decoder


def test_seed_parameter_count():
  model = build_model(run_config().model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)), jax.random.PRNGKey(1))
  assert count(params) == seed_parameter_count() == 2_101_633


def test_conv_transpose_impls_compute_the_same_model():
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, 32, 32, 1), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(4)
  a = VAE(conv_transpose_impl='col2im', conv_impl='xla')
  b = VAE(conv_transpose_impl='xla', conv_impl='xla')
  params = a.init(rng, x, rng)
  np.testing.assert_allclose(np.asarray(a.apply(params, x, rng)['recon']),
                             np.asarray(b.apply(params, x, rng)['recon']), atol=1e-5)


def test_reparameterize_gradients():
  mean, logvar = jnp.array([0.5, -1.0]), jnp.array([0.2, -0.4])
  rng = jax.random.PRNGKey(0)
  eps = jax.random.normal(rng, mean.shape)
  g_mean, g_logvar = jax.grad(lambda m, lv: jnp.sum(reparameterize(rng, m, lv)),
                              argnums=(0, 1))(mean, logvar)
  np.testing.assert_allclose(g_mean, np.ones(2))  # dz/dmean = 1
  np.testing.assert_allclose(g_logvar, 0.5 * np.exp(0.5 * logvar) * eps, rtol=1e-6)


def test_reparameterize_distribution():
  z = reparameterize(jax.random.PRNGKey(0), jnp.full((200_000,), 2.0),
                     jnp.full((200_000,), np.log(0.25)))
  assert abs(float(z.mean()) - 2.0) < 0.01 and abs(float(z.std()) - 0.5) < 0.01


def test_whole_map_conv_is_the_valid_conv_it_replaces():
  """Same parameter tree and init as nn.Conv(VALID) over the whole map, same outputs."""
  import flax.linen as nn
  from sslm_jax.models.conv_vae import WholeMapConv
  x = jax.random.normal(jax.random.key(0), (3, 4, 4, 8))
  ours, conv = WholeMapConv(5), nn.Conv(5, (4, 4), padding='VALID')
  params = ours.init(jax.random.key(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, conv.init(jax.random.key(1), x))
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x).reshape(3, 5),
                             rtol=1e-5, atol=1e-5)
