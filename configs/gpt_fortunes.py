"""A small GPT pretrained (causal LM) on Debian's `fortunes`, sized for 2 CPU cores.

Data: `apt-get install fortunes`; the text_files/fortunes tfds builder reads
/usr/share/games/fortunes (43 category files) with a fixed 80/10/10 split by example.
Evaluated on validation during training and on test at the end (perplexity, bits per char).

  sslm-jax train --config configs/gpt_fortunes.py --workdir runs/gpt_fortunes
  sslm-jax sample --workdir runs/gpt_fortunes --prompt "The computer" --temperature 0.8
"""

from sslm_jax.runs import run_config


def get_config():
  config = run_config('gpt', 'causal_lm')
  config.data.name = 'text_files/fortunes'
  config.data.manual_dir = '/usr/share/games/fortunes'
  config.data.data_dir = 'data/tfds'
  config.data.eval_split = 'validation'
  config.data.test_split = 'test'

  config.text.vocab_size = 4096
  config.text.seq_len = 128
  config.text.sample_prompt = 'The'

  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.embed_dim = 192
  config.model.mlp_dim = 768
  config.model.max_len = 128
  config.model.dropout_rate = 0.1
  config.model.positions = 'learned'

  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = 200
  config.optimizer.end_learning_rate_factor = 0.1
  config.optimizer.b2 = 0.99
  config.optimizer.weight_decay = 0.1
  config.optimizer.grad_clip_norm = 1.0

  config.train.batch_size = 32
  config.train.num_epochs = 6
  config.train.eval_batch_size = 64
  config.train.log_every_steps = 50
  config.train.checkpoint_every_steps = 250
  return config
