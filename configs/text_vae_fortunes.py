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

from sslm_jax.config import base_config

BASELINE_WORKDIR = 'runs/text_vae_fortunes_lm'


def get_config():
  config = base_config()
  config.data.name = 'text_files/fortunes'
  config.data.manual_dir = '/usr/share/games/fortunes'
  config.data.data_dir = 'data/tfds'
  config.data.eval_split = 'validation'
  config.data.test_split = 'test'

  config.text.vocab_size = 4096
  config.text.seq_len = 48

  config.model.name = 'text_vae'
  config.model.latent_dim = 32
  config.model.num_layers = 3        # the decoder
  config.model.num_heads = 4
  config.model.embed_dim = 128
  config.model.mlp_dim = 512
  config.model.max_len = 48
  config.model.dropout_rate = 0.1
  config.model.encoder_type = 'transformer'
  config.model.encoder_layers = 2
  config.model.latent_conditioning = 'both'
  config.model.latent_prefix_len = 1
  config.objective.name = 'text_vae'

  config.text_vae.kl_schedule = 'linear'
  config.text_vae.kl_warmup_steps = 1000
  config.text_vae.word_dropout = 0.2
  config.text_vae.free_bits = 0.15
  config.text_vae.iw_samples = 64
  config.text_vae.eval_iw_samples = 4
  config.text_vae.baseline_workdir = BASELINE_WORKDIR

  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = 200
  config.optimizer.end_learning_rate_factor = 0.1
  config.optimizer.b2 = 0.99
  config.optimizer.weight_decay = 0.1
  config.optimizer.grad_clip_norm = 1.0

  config.train.batch_size = 32
  config.train.num_steps = 2500      # about 9.5 epochs of the 8,400 training sentences
  config.train.eval_batch_size = 64
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 500
  config.train.checkpoint_every_steps = 500
  return config
