"""Objectives: pure `loss(params, batch, rng, *, model, config, ...) -> (loss, metrics)` functions."""

import functools

from sslm_jax.objectives import classification, contrastive, electra, lm, vae
from sslm_jax.objectives import text_vae as _text_vae

_LOSSES = {'seed': vae.autoencoder_loss, 'elbo': vae.autoencoder_loss,
           'mse': vae.autoencoder_loss, 'causal_lm': lm.lm_loss, 'mlm': lm.lm_loss,
           'denoising': lm.lm_loss, 'classification': classification.classification_loss}
_LOSSES['text_vae'] = _text_vae.text_vae_loss  # constants: vocab, settings
_LOSSES.update(electra=electra.electra_loss, simcse=contrastive.simcse_loss,
               simclr=contrastive.simclr_loss)


def bind_loss(model, objective_config, **constants):
  """`loss(params, batch, rng)` for the objective named in `objective_config`.

  `constants`: what the objective needs besides model and config (language models: `vocab`;
  classification: `class_weights`).
  """
  return functools.partial(_LOSSES[objective_config.name], model=model, config=objective_config,
                           **constants)
