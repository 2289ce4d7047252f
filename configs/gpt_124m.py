"""A GPT-2 small class model (124M parameters with a 50k vocabulary) for accelerators.

12 layers, 12 heads, 768 wide, context 1024, bf16 compute with float32 parameters, AdamW with
warm-up and cosine decay. Point it at a large corpus, e.g. --config.data.name=lm1b (needs the
internet to prepare) or text_files/plain with --config.data.manual_dir=/path/to/text.
"""

from sslm_jax.config import base_config


def get_config():
  config = base_config()
  config.data.name = 'lm1b'
  config.data.eval_split = 'test'
  config.text.vocab_size = 50304
  config.text.tokenizer_type = 'bpe'
  config.text.seq_len = 1024
  config.text.sample_prompt = 'The'

  config.model.name = 'gpt'
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.embed_dim = 768
  config.model.mlp_dim = 3072
  config.model.max_len = 1024
  config.model.dropout_rate = 0.0
  config.model.dtype = 'bfloat16'
  config.objective.name = 'causal_lm'

  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 6e-4
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = 2000
  config.optimizer.end_learning_rate_factor = 0.1
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.1
  config.optimizer.grad_clip_norm = 1.0

  config.train.batch_size = 512
  config.train.num_epochs = 0
  config.train.num_steps = 100_000
  config.train.eval_batch_size = 64
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 5000
  config.train.checkpoint_every_steps = 2000
  return config
