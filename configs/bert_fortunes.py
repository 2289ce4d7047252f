"""A small BERT-style encoder pretrained (masked LM) on Debian's `fortunes`, for 2 CPU cores.

One fortune a row (padded to text.seq_len, longer ones truncated); 15% of tokens chosen, of those
80% [MASK], 10% a random token, 10% unchanged. Reports masked-token loss, perplexity and accuracy.

  sslm-jax train --config configs/bert_fortunes.py --workdir runs/bert_fortunes
"""

import os
import runpy

# The same data, tokenizer, sizes and optimizer as the GPT config.
_gpt_fortunes = runpy.run_path(os.path.join(os.path.dirname(__file__), 'gpt_fortunes.py'))


def get_config():
  config = _gpt_fortunes['get_config']()
  config.model.name = 'bert'
  config.objective.name = 'mlm'
  config.text.sample_prompt = ''
  config.text.num_samples = 0
  config.train.num_epochs = 12  # one fortune a row: fewer tokens a step than packed GPT rows
  return config
