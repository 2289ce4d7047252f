"""Losses of the image autoencoders, as pure functions.

Every objective has the signature `loss(params, batch, rng, *, model, config) -> (loss, metrics)`
and also returns per-example statistics through `per_example(...)`, which evaluation sums over a
whole split (so a padded last batch is weighted exactly).

Conventions: images and reconstructions are in [-1, 1]; `kl` is the KL divergence of one example
in nats (summed over latent dimensions); `mse` is the mean squared error per pixel.

The `objective` sections of 'seed', 'elbo' and 'mse' are `SeedConfig`, `ElboConfig` and
`MSEConfig`; a VAE's evaluation reports the ELBO under `likelihood` whatever it trains.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from sslm_jax.config import Checker, Section

LIKELIHOODS = ('gaussian', 'bernoulli')


@dataclasses.dataclass(frozen=True)
class MSEConfig(Section):
  """'mse': the mean squared error of the reconstruction (no keys)."""


@dataclasses.dataclass(frozen=True)
class _LikelihoodConfig(Section):
  likelihood: str = 'bernoulli'
  likelihood_scale: float = 0.1  # std of the gaussian likelihood, in [-1, 1] pixel units

  def check(self, c: Checker) -> None:
    c.choice('likelihood', LIKELIHOODS)
    c.number('likelihood_scale', 0, low_open=True)


@dataclasses.dataclass(frozen=True)
class SeedConfig(_LikelihoodConfig):
  """'seed': MSE + kl_weight * mean(mu^2 + var - 1 - logvar) (seed-reference.md)."""
  kl_weight: float = 1e-4

  def check(self, c: Checker) -> None:
    super().check(c)
    c.number('kl_weight', 0)


@dataclasses.dataclass(frozen=True)
class ElboConfig(_LikelihoodConfig):
  """'elbo': recon_nll + beta * KL."""
  beta: float = 1.0

  def check(self, c: Checker) -> None:
    super().check(c)
    c.number('beta', 0)


def mse(recon: jax.Array, images: jax.Array) -> jax.Array:
  """Per-example mean squared error over all pixels: (batch,)."""
  return jnp.mean(jnp.square(recon - images).reshape(images.shape[0], -1), axis=-1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over latent dims: (batch,)."""
  return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def seed_kl_term(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """The seed's penalty per example: mean over dims of mu^2 + exp(logvar) - 1 - logvar.

  Equal to 2 * gaussian_kl / latent_dim (seed-reference.md row 7).
  """
  return jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def reconstruction_nll(logits: jax.Array, images: jax.Array, likelihood: str,
                       scale: float) -> jax.Array:
  """-log p(x | z) per example in nats, summed over pixels: (batch,).

  'gaussian': N(x; tanh(logits), scale^2) per pixel. 'bernoulli': pixels mapped to [0, 1] are
  Bernoulli targets with logits 2 * logits, whose mean (tanh(logits) + 1) / 2 matches the image the
  decoder draws.
  """
  flat_logits = logits.reshape(logits.shape[0], -1)
  flat_images = images.reshape(images.shape[0], -1)
  if likelihood == 'gaussian':
    z = (flat_images - jnp.tanh(flat_logits)) / scale
    return jnp.sum(0.5 * jnp.square(z) + math.log(scale) + 0.5 * math.log(2 * math.pi), axis=-1)
  if likelihood == 'bernoulli':
    targets = (flat_images + 1.0) / 2.0
    bernoulli_logits = 2.0 * flat_logits
    # -[t log sigmoid(l) + (1 - t) log sigmoid(-l)], computed stably
    return jnp.sum(jax.nn.softplus(bernoulli_logits) - targets * bernoulli_logits, axis=-1)
  raise ValueError(f'likelihood={likelihood!r}; allowed: {LIKELIHOODS}')


def per_example(outputs: dict, images: jax.Array, config) -> dict[str, jax.Array]:
  """Per-example statistics of one batch for the objective in `config` (a ConfigDict-like).

  Always: `mse`. With a posterior (VAE): `kl`, `elbo_nats` (negative ELBO with beta = 1, the
  bound on -log p(x)). `objective`: the per-example value whose batch mean is the training loss.
  """
  stats = {'mse': mse(outputs['recon'], images)}
  name = config.name
  if 'logvar' in outputs:
    stats['kl'] = gaussian_kl(outputs['mean'], outputs['logvar'])
    stats['recon_nll'] = reconstruction_nll(outputs['logits'], images, config.likelihood,
                                            config.likelihood_scale)
    stats['elbo_nats'] = stats['recon_nll'] + stats['kl']
  if name == 'seed':
    stats['objective'] = stats['mse'] + config.kl_weight * seed_kl_term(outputs['mean'],
                                                                        outputs['logvar'])
  elif name == 'elbo':
    stats['objective'] = stats['recon_nll'] + config.beta * stats['kl']
  elif name == 'mse':
    stats['objective'] = stats['mse']
  else:
    raise ValueError(f'objective.name={name!r}; allowed: seed, elbo, mse')
  return stats


def autoencoder_loss(params, batch, rng, *, model, config):
  """Batch-mean objective of a VAE or AE on `batch['image']`; metrics are batch means too."""
  images = batch['image']
  outputs = model.apply({'params': params}, images, rng)
  stats = per_example(outputs, images, config)
  metrics = {k: jnp.mean(v) for k, v in stats.items()}
  return metrics['objective'], metrics
