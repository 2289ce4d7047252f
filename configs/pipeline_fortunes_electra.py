"""configs/pipeline_fortunes.py with ELECTRA pretraining (configs/electra_fortunes.py) for the
pretraining wall time of the masked LM of configs/pipeline_fortunes_bert.py.

Same pretraining time: the MLM run takes 6 epochs of batch 64 (1146 steps). Each objective's
step rate was measured in short runs back to back on the same 2 cores (README, "ELECTRA and
contrastive pretraining"); ELECTRA's step ran at STEP_RATIO times the MLM's, so it gets
round(1146 * STEP_RATIO) steps of the same batch: the same seconds on a quiet 2-core machine.
That ratio was measured with learned positions; with the rotary positions bert_fortunes.py now
has, the two steps ran at about the same rate (1.7-2.0 against 1.8-1.9 steps/s, alone on the
machine), so ELECTRA's 1031 steps take at most the MLM's time.
Fine-tuning (full, mean-pooled discriminator states, 3 epochs), the scratch run and TF-IDF +
LinearSVC are pipeline_fortunes.py's; the linear probe is left out to save time.

  sslm-jax pipeline --config configs/pipeline_fortunes_electra.py   # -> runs/pipeline_fortunes_electra/
"""

from sslm_jax.configs import electra_fortunes, pipeline_fortunes

MLM_STEPS = 1146  # configs/pipeline_fortunes_bert.py: 6 epochs of 191 steps
STEP_RATIO = 0.90  # ELECTRA steps/s / MLM steps/s, measured (README)


def get_config():
  config = pipeline_fortunes.get_config()
  config.pretrain = electra_fortunes.get_config()
  config.pretrain.train.num_steps = round(MLM_STEPS * STEP_RATIO)
  config.finetune.regimes = ('full',)
  return config
