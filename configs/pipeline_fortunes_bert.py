"""configs/pipeline_fortunes.py with BERT-style pretraining: the masked LM of
configs/bert_fortunes.py (one fortune a row, 64 tokens) in place of the causal LM, the same
fine-tuning (mean-pooled final hidden states, which attend both ways here), scratch run and
TF-IDF baseline on the same split.

  sslm-jax pipeline --config configs/pipeline_fortunes_bert.py   # -> runs/pipeline_fortunes_bert/
"""

from sslm_jax.configs import bert_fortunes, pipeline_fortunes


def get_config():
  config = pipeline_fortunes.get_config()
  config.pretrain = bert_fortunes.get_config()
  return config
