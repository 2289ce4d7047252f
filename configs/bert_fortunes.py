"""A small BERT-style encoder pretrained (masked LM) on Debian's `fortunes`, for 2 CPU cores.

One fortune a row (padded to text.seq_len, longer ones truncated); 15% of tokens chosen, of those
80% [MASK], 10% a random token, 10% unchanged. Reports masked-token loss, perplexity and accuracy.
Rotary positions and GPT-2's initial weights: in the same 1146 steps the masked LM reaches a
validation perplexity of 85 with them, 155 with learned positions and 330 with learned positions
and Flax's default initial weights (README, "Fortunes: initial weights and positions").

  sslm-jax train --config configs/bert_fortunes.py --workdir runs/bert_fortunes
"""

from sslm_jax.configs import gpt_fortunes
from sslm_jax.runs import reshape


def get_config():
  # The same data, tokenizer, sizes and optimizer as the GPT config.
  config = reshape(gpt_fortunes.get_config(), 'bert', 'mlm')
  config.text.sample_prompt = ''
  config.text.num_samples = 0
  # One fortune a row, so rows are short: 64 tokens hold 78% of fortunes whole (the rest are
  # cut), and attention never runs over a long padded tail. 64 rows a step keep the tokens a step
  # of the GPT config (32 x 128).
  config.text.seq_len = 64
  config.model.max_len = 64
  config.train.batch_size = 64
  config.train.num_epochs = 6
  config.model.positions = 'rotary'
  config.model.weight_init = 'gpt2'
  return config
