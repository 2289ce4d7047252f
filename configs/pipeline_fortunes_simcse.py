"""configs/pipeline_fortunes_bert.py's encoder pretrained by unsupervised SimCSE from scratch.

SimCSE (Gao et al. 2021): each fortune of a batch is encoded twice with different dropout masks
(the model's 0.1), the two mean-pooled final states are a positive pair and the other rows' are
the negatives: InfoNCE at temperature 0.05. 3 epochs of batch 64 (573 steps, about half the MLM
run's pretraining time: README, "ELECTRA and contrastive pretraining"), AdamW 1e-3 as the other
pretraining runs. Fine-tuning (full, mean-pooled), the scratch run and TF-IDF + LinearSVC are
pipeline_fortunes.py's; no linear probe.

  sslm-jax pipeline --config configs/pipeline_fortunes_simcse.py   # -> runs/pipeline_fortunes_simcse/

configs/pipeline_fortunes_simcse_electra.py continues an ELECTRA discriminator instead.
"""

import os
import runpy

_here = os.path.dirname(__file__)
_pipeline = runpy.run_path(os.path.join(_here, 'pipeline_fortunes.py'))
_bert_fortunes = runpy.run_path(os.path.join(_here, 'bert_fortunes.py'))


def get_config():
  config = _pipeline['get_config']()
  config.pretrain = _bert_fortunes['get_config']()
  config.pretrain.objective.name = 'simcse'
  config.pretrain.objective.temperature = 0.05
  config.pretrain.train.num_epochs = 3
  config.finetune.regimes = ('full',)
  return config
