"""configs/pipeline_fortunes.py with BERT-style pretraining: the masked LM of
configs/bert_fortunes.py (one fortune a row, 64 tokens) in place of the causal LM, the same
fine-tuning (mean-pooled final hidden states, which attend both ways here), scratch run and
TF-IDF baseline on the same split.

  sslm-jax pipeline --config configs/pipeline_fortunes_bert.py   # -> runs/pipeline_fortunes_bert/
"""

import os
import runpy

_here = os.path.dirname(__file__)
_pipeline = runpy.run_path(os.path.join(_here, 'pipeline_fortunes.py'))
_bert_fortunes = runpy.run_path(os.path.join(_here, 'bert_fortunes.py'))


def get_config():
  config = _pipeline['get_config']()
  config.pretrain = _bert_fortunes['get_config']()
  return config
