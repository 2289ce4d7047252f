"""GPT-2 small (124M parameters, GPT-2's padded vocabulary of 50,304) for one GPU.

12 layers, 12 heads, 768 wide, context 1024, bf16 compute with float32 parameters, AdamW with
warm-up and cosine decay: GPT-2's recipe of about 0.5M tokens a step (512 rows of 1024 tokens) as
8 micro-batches of 64 rows (`train.grad_accum_steps`), from GPT-2's initial weights
(`model.weight_init='gpt2'`). The loss takes the logits 256 positions
at a time (`objective.logits_chunk_size`: 64 x 256 x 50,304 float32 logits, 3.3 GB, instead of
13 GB for the whole micro-batch, and as much again for their gradient), at the price of
recomputing the output layer in the backward pass (2 V d FLOPs a token, about 10% of the step;
`--config.objective.logits_chunk_size=0` takes it back on a GPU with room); attention is cuDNN
flash attention on a GPU (`model.attention_impl='auto'`). On a GPU with less memory than an 80 GB H100, halve the
micro-batch (grad_accum_steps=16) or recompute the blocks (`--config.model.remat=block`).
Point it at a large corpus, e.g. --config.data.name=lm1b (needs the internet to prepare) or
text_files/plain with --config.data.manual_dir=/path/to/text.
"""

from sslm_jax.runs import run_config


def get_config():
  config = run_config('gpt', 'causal_lm')
  config.data.name = 'lm1b'
  config.data.eval_split = 'test'
  config.text.vocab_size = 50304
  config.text.tokenizer_type = 'bpe'
  config.text.seq_len = 1024
  config.text.sample_prompt = 'The'

  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.embed_dim = 768
  config.model.mlp_dim = 3072
  config.model.max_len = 1024
  config.model.dropout_rate = 0.0
  config.model.dtype = 'bfloat16'
  config.model.attention_impl = 'auto'
  config.model.remat = 'none'
  config.model.weight_init = 'gpt2'  # GPT-2's initial weights, as its recipe assumes
  config.objective.logits_chunk_size = 256

  config.optimizer.name = 'adamw'
  config.optimizer.learning_rate = 6e-4
  config.optimizer.schedule = 'warmup_cosine'
  config.optimizer.warmup_steps = 2000
  config.optimizer.end_learning_rate_factor = 0.1
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.1
  config.optimizer.grad_clip_norm = 1.0

  config.train.batch_size = 512       # x 1024 tokens = 524,288 tokens a step
  config.train.grad_accum_steps = 8   # micro-batches of 64 rows
  config.train.num_epochs = 0
  config.train.num_steps = 100_000
  config.train.eval_batch_size = 64
  config.train.log_every_steps = 100
  config.train.eval_every_steps = 5000
  config.train.checkpoint_every_steps = 2000
  return config
