"""Objectives: pure `loss(params, batch, rng, *, model, config, ...) -> (loss, metrics)` functions.

`OBJECTIVES` lists them, one line each: `objective.name` -> its loss, its `objective` section
(keys and rules, in the objective's own file), the task that runs it (`sslm_jax.tasks.TASKS`)
and whether that task can stream its data through Grain (`data.pipeline='grain'`).
"""

import dataclasses
import functools
from typing import Callable

from sslm_jax.objectives import classification, contrastive, electra, lm, vae
from sslm_jax.objectives import text_vae as _text_vae


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: Callable      # loss(params, batch, rng, *, model, config, **constants)
  config: type        # the objective section (a sslm_jax.config.Section), besides `name`
  task: str           # the task that runs it
  streams: bool = False


OBJECTIVES: dict[str, Objective] = {
    'seed': Objective(vae.autoencoder_loss, vae.SeedConfig, 'images', streams=True),
    'elbo': Objective(vae.autoencoder_loss, vae.ElboConfig, 'images', streams=True),
    'mse': Objective(vae.autoencoder_loss, vae.MSEConfig, 'images', streams=True),
    'causal_lm': Objective(lm.lm_loss, lm.CausalLMConfig, 'language', streams=True),
    'denoising': Objective(lm.lm_loss, lm.DenoisingConfig, 'language'),
    'mlm': Objective(lm.lm_loss, lm.MLMConfig, 'language'),
    'electra': Objective(electra.electra_loss, electra.ReplacedTokenConfig, 'language'),
    'simcse': Objective(contrastive.simcse_loss, contrastive.SimCSEConfig, 'language'),
    'simclr': Objective(contrastive.simclr_loss, contrastive.SimCLRLossConfig,
                        'contrastive_images', streams=True),
    'text_vae': Objective(_text_vae.text_vae_loss, _text_vae.ObjectiveConfig, 'text_vae'),
    'classification': Objective(classification.classification_loss,
                                classification.ClassificationConfig, 'classification'),
}


def bind_loss(model, objective_config, **constants):
  """`loss(params, batch, rng)` for the objective named in `objective_config`.

  `constants`: what the objective needs besides model and config (language models: `vocab`;
  classification: `class_weights`; the text VAE: `settings`).
  """
  return functools.partial(OBJECTIVES[objective_config.name].loss, model=model,
                           config=objective_config, **constants)
