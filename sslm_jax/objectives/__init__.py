"""Objectives: pure `loss(params, batch, rng, *, model, config, ...) -> (loss, metrics)` functions."""

import functools

from sslm_jax.objectives import lm, vae

_LOSSES = {'seed': vae.autoencoder_loss, 'elbo': vae.autoencoder_loss,
           'mse': vae.autoencoder_loss, 'causal_lm': lm.lm_loss, 'mlm': lm.lm_loss,
           'denoising': lm.lm_loss}


def bind_loss(model, objective_config, **constants):
  """`loss(params, batch, rng)` for the objective named in `objective_config`.

  `constants`: what the objective needs besides model and config (language models: `vocab`).
  """
  return functools.partial(_LOSSES[objective_config.name], model=model, config=objective_config,
                           **constants)
