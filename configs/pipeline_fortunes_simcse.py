"""configs/pipeline_fortunes_bert.py's encoder pretrained by unsupervised SimCSE from scratch.

SimCSE (Gao et al. 2021): each fortune of a batch is encoded twice with different dropout masks
(the model's 0.1), the two mean-pooled final states are a positive pair and the other rows' are
the negatives: InfoNCE at temperature 0.05. 3 epochs of batch 64 (573 steps; each step encodes
every row twice, so about the encoder passes of bert_fortunes.py's 6 epochs, a third of
pipeline_fortunes_bert.py's 18: 1191 s against 1395 s for those 6 epochs, measured with learned
positions and LeCun weights, README "ELECTRA and contrastive pretraining"; not yet run with the
rotary positions and GPT-2 weights bert_fortunes.py now has), AdamW 1e-3 as the other
pretraining runs. Fine-tuning (full, mean-pooled), the scratch run and TF-IDF + LinearSVC are
pipeline_fortunes.py's; no linear probe.

  sslm-jax pipeline --config configs/pipeline_fortunes_simcse.py   # -> runs/pipeline_fortunes_simcse/

configs/pipeline_fortunes_simcse_electra.py continues an ELECTRA discriminator instead.
"""

from sslm_jax.configs import bert_fortunes, pipeline_fortunes
from sslm_jax.runs import reshape


def get_config():
  config = pipeline_fortunes.get_config()
  config.pretrain = reshape(bert_fortunes.get_config(), objective='simcse')
  config.pretrain.objective.temperature = 0.05
  config.pretrain.train.num_epochs = 3
  config.finetune.regimes = ('full',)
  return config
