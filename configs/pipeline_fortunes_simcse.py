"""configs/pipeline_fortunes_electra.py's discriminator, then unsupervised SimCSE on it.

SimCSE (Gao et al. 2021): each fortune is encoded twice with different dropout masks (the
model's 0.1), the two mean-pooled discriminator states are a positive pair and the other rows'
are the negatives: InfoNCE at temperature 0.05, one epoch of batch 64 at AdamW 1e-4 starting from
the ELECTRA run's parameters and tokenizer (`train.init_from`). Its pretraining time adds to
ELECTRA's. Fine-tuning, baselines and splits as pipeline_fortunes_electra.py (no scratch run:
that pipeline has it).

  sslm-jax pipeline --config configs/pipeline_fortunes_electra.py   # first: the ELECTRA run
  sslm-jax pipeline --config configs/pipeline_fortunes_simcse.py    # -> runs/pipeline_fortunes_simcse/
"""

import os
import runpy

_here = os.path.dirname(__file__)
_electra_pipeline = runpy.run_path(os.path.join(_here, 'pipeline_fortunes_electra.py'))

ELECTRA_RUN = 'runs/pipeline_fortunes_electra/pretrain'


def get_config():
  config = _electra_pipeline['get_config']()
  p = config.pretrain
  p.objective.name = 'simcse'
  p.objective.temperature = 0.05
  p.train.init_from = ELECTRA_RUN
  p.text.tokenizer_path = os.path.join(ELECTRA_RUN, 'tokenizer.model')
  p.optimizer.learning_rate = 1e-4
  p.optimizer.warmup_steps = 20
  p.train.num_steps = 0
  p.train.num_epochs = 1
  config.finetune.scratch = False
  return config
