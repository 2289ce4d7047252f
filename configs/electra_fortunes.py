"""ELECTRA-style replaced-token detection on Debian's `fortunes`, for 2 CPU cores.

The discriminator is configs/bert_fortunes.py's encoder (4 layers, width 192, one fortune a row of
64 tokens, batch 64, the same optimizer); the generator is a quarter of its width (1 head of 48,
MLP 192) at the same depth, sharing its token embeddings (and position embeddings, where
positions are learned; the config's are rotary, as bert_fortunes.py's). 15% of each row's tokens
are masked for the generator and refilled by its samples; the discriminator labels every token
original or replaced. Loss: generator MLM + 50 x discriminator BCE (Clark et al. 2020).
Flax's LeCun initial weights, not bert_fortunes.py's GPT-2 ones: the discriminator pretrains about
as well from either (validation BCE 0.345 against 0.352 after 1031 steps) but fine-tunes much
better from LeCun's (validation macro-F1 0.464 against 0.383). And a LayerNorm on the summed
embeddings (`model.embed_norm`, as BERT's and ELECTRA's own): without it a token's N(0, 0.02)
embedding is about 1/50 of what the first block adds to it, and the discriminator, which must
compare each token with its context, barely learned (validation BCE 0.345 against a constant
answer's 0.390 after 1031 steps; with it 0.318 against 0.389, and fine-tuned 0.510 validation
macro-F1 against 0.464). README, "Fortunes: initial weights and positions".

  sslm-jax train --config configs/electra_fortunes.py --workdir runs/electra_fortunes
"""

from sslm_jax.configs import bert_fortunes
from sslm_jax.runs import reshape


def get_config():
  config = reshape(bert_fortunes.get_config(), 'electra', 'electra')
  config.model.generator_fraction = 0.25
  config.objective.mask_rate = 0.15
  config.objective.discriminator_weight = 50.0
  config.model.weight_init = 'lecun'
  config.model.embed_norm = True
  return config
