"""Flax Linen modules only: no losses, no optimizers."""

import jax.numpy as jnp

from sslm_jax.models.conv_vae import AutoEncoder, VAE, reparameterize  # noqa: F401


def build_model(config):
  """The module a `model` config section describes."""
  cls = {'vae': VAE, 'ae': AutoEncoder}[config.name]
  return cls(latent_dim=config.latent_dim, input_size=config.input_size,
             channels=config.channels, encoder_features=tuple(config.encoder_features),
             encoder_out_features=config.encoder_out_features,
             decoder_hidden=tuple(config.decoder_hidden),
             decoder_base_features=config.decoder_base_features,
             decoder_features=tuple(config.decoder_features),
             conv_transpose_impl=config.conv_transpose_impl,
             dtype=jnp.dtype(config.dtype))
