"""Unsupervised SimCSE (configs/pipeline_fortunes_simcse.py) continuing the ELECTRA
discriminator of configs/pipeline_fortunes_electra.py: its parameters and tokenizer
(`train.init_from`, `text.tokenizer_path`), one epoch at AdamW 1e-4. Its pretraining time adds to
ELECTRA's. No scratch run (pipeline_fortunes_electra.py has the same model's).

  sslm-jax pipeline --config configs/pipeline_fortunes_electra.py          # first: the ELECTRA run
  sslm-jax pipeline --config configs/pipeline_fortunes_simcse_electra.py

ELECTRA_RUN is relative to the folder the command runs in; an ELECTRA run elsewhere is named by
  --config.pretrain.train.init_from=DIR --config.pretrain.text.tokenizer_path=DIR/tokenizer.model
"""

import os

from sslm_jax.configs import pipeline_fortunes_electra
from sslm_jax.runs import reshape

ELECTRA_RUN = 'runs/pipeline_fortunes_electra/pretrain'


def get_config():
  config = pipeline_fortunes_electra.get_config()
  p = config.pretrain = reshape(config.pretrain, objective='simcse')
  p.objective.temperature = 0.05
  p.train.init_from = ELECTRA_RUN
  p.text.tokenizer_path = os.path.join(ELECTRA_RUN, 'tokenizer.model')
  p.optimizer.learning_rate = 1e-4
  p.optimizer.warmup_steps = 20
  p.train.num_steps = 0
  p.train.num_epochs = 1
  config.finetune.scratch = False
  return config
