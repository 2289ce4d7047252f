"""The causal-LM baseline of `text_vae_fortunes.py`: its decoder without a latent (exactly a GPT
of the same size: sslm_jax/models/text_vae.py), trained on the same sentences, rows and schedule.
Its test NLL is the VAE's `lm_nll`; train it first:

  sslm-jax train --config configs/text_vae_fortunes_lm.py --workdir runs/text_vae_fortunes_lm
"""

from sslm_jax.configs import text_vae_fortunes


def get_config():
  config = text_vae_fortunes.get_config()
  config.model.latent_conditioning = 'none'
  config.text_vae.kl_schedule = 'constant'
  config.text_vae.word_dropout = 0.0
  config.text_vae.free_bits = 0.0
  config.text_vae.baseline_workdir = ''
  config.text.num_samples = 0
  return config
