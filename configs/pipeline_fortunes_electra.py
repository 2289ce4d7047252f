"""configs/pipeline_fortunes.py with ELECTRA pretraining (configs/electra_fortunes.py) for the
pretraining wall time of the masked LM of configs/pipeline_fortunes_bert.py.

Same pretraining time: the MLM runs 18 epochs of batch 64 (3438 steps). Each objective's step
rate is the median of the steps/s its pretraining logged alone on the same 2 cores; with rotary
positions ELECTRA's step ran at 1.01 times the MLM's (1.85 against 1.83 steps/s), so it gets
round(3438 * STEP_RATIO) steps of the same batch, STEP_RATIO taken as 1.0, the side that does not
favour ELECTRA. That rate was measured before ELECTRA took the embeddings' LayerNorm
(configs/electra_fortunes.py), which adds one LayerNorm a step, and not measured again. (With
learned positions the ratio was 0.90: the older README rows give ELECTRA 1031 steps against the
MLM's 1146.)
Fine-tuning (full, mean-pooled discriminator states, 3 epochs), the scratch run and TF-IDF +
LinearSVC are pipeline_fortunes.py's; the linear probe is left out to save time.

  sslm-jax pipeline --config configs/pipeline_fortunes_electra.py   # -> runs/pipeline_fortunes_electra/
"""

from sslm_jax.configs import electra_fortunes, pipeline_fortunes, pipeline_fortunes_bert

MLM_STEPS = pipeline_fortunes_bert.PRETRAIN_EPOCHS * pipeline_fortunes_bert.STEPS_PER_EPOCH
STEP_RATIO = 1.0  # ELECTRA steps/s / MLM steps/s, measured 1.01 (README)


def get_config():
  config = pipeline_fortunes.get_config()
  config.pretrain = electra_fortunes.get_config()
  config.pretrain.train.num_steps = round(MLM_STEPS * STEP_RATIO)
  config.finetune.regimes = ('full',)
  return config
