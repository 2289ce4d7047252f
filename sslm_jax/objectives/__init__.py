"""Objectives: pure `loss(params, batch, rng, *, model, config) -> (loss, metrics)` functions."""

import functools

from sslm_jax.objectives import vae

_LOSSES = {'seed': vae.autoencoder_loss, 'elbo': vae.autoencoder_loss,
           'mse': vae.autoencoder_loss}


def bind_loss(model, objective_config):
  """`loss(params, batch, rng)` for the objective named in `objective_config`."""
  return functools.partial(_LOSSES[objective_config.name], model=model, config=objective_config)
