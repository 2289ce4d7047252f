"""A sentence VAE (the seed's section 4.3) on Debian's `fortunes`, sized for 2 CPU cores.

One fortune a row, `bos doc eos`, fortunes over 48 tokens left out (69% of them fit). Encoder: a
2-layer bidirectional Transformer, mean-pooled, to a 32-d Gaussian posterior. Decoder: a 3-layer
causal Transformer (GPT's blocks) seeing z added to every input embedding and as one prefix
vector. Against posterior collapse: KL annealing (linear over 1000 steps), word dropout 0.2 on
the decoder inputs, free bits 0.15 nats a dimension. Reports on the test split, in nats per
sentence: the ELBO, the importance-weighted bound (64 samples), KL, active units, mutual
information, and `lm_nll`, the causal LM of the same decoder size trained on the same sentences:

  sslm-jax train --config configs/text_vae_fortunes_lm.py --workdir runs/text_vae_fortunes_lm
  sslm-jax train --config configs/text_vae_fortunes.py --workdir runs/text_vae_fortunes
  sslm-jax sample --workdir runs/text_vae_fortunes --num 8 --temperature 0    # from the prior
  sslm-jax interpolate --workdir runs/text_vae_fortunes --a 'Take it easy.' --b 'Never trust a computer.'

The ablation (each a new workdir; the last row is this config):
  no annealing      --config.text_vae.kl_schedule=constant --config.text_vae.word_dropout=0.0 --config.text_vae.free_bits=0.0
  annealing         --config.text_vae.word_dropout=0.0 --config.text_vae.free_bits=0.0
  + word dropout    --config.text_vae.free_bits=0.0
  + free bits       (as is)
An encoder warm start: train with --config.text_vae.autoencoder=True, then pass its workdir as
--config.text_vae.encoder_init_from (with --config.text.tokenizer_path=<it>/tokenizer.model).
"""

from sslm_jax.configs import gpt_fortunes
from sslm_jax.runs import reshape

BASELINE_WORKDIR = 'runs/text_vae_fortunes_lm'


def get_config():
  # The data, tokenizer size and optimizer of the GPT config; model, rows and schedule below.
  config = reshape(gpt_fortunes.get_config(), 'text_vae', 'text_vae')
  config.text.seq_len = 48
  config.text.sample_prompt = ''

  config.model.latent_dim = 32
  config.model.num_layers = 3        # the decoder
  config.model.embed_dim = 128
  config.model.mlp_dim = 512
  config.model.max_len = 48
  config.model.encoder_type = 'transformer'
  config.model.encoder_layers = 2
  config.model.latent_conditioning = 'both'
  config.model.latent_prefix_len = 1

  config.text_vae.kl_schedule = 'linear'
  config.text_vae.kl_warmup_steps = 1000
  config.text_vae.word_dropout = 0.2
  config.text_vae.free_bits = 0.15
  config.text_vae.iw_samples = 64
  config.text_vae.eval_iw_samples = 4
  config.text_vae.baseline_workdir = BASELINE_WORKDIR

  config.train.num_steps = 2500      # about 9.5 epochs of the 8,400 training sentences (wins
                                     # over train.num_epochs)
  config.train.eval_every_steps = 500
  config.train.checkpoint_every_steps = 500
  return config
