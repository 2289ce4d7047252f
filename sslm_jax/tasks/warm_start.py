"""Parameters from another run's checkpoint, checked to fit this run's model: a classifier's
pretrained encoder (`classifier.init_from`) or a pretraining run that continues another one
(`train.init_from`, e.g. SimCSE on an ELECTRA discriminator)."""

import os

import jax

from sslm_jax import config as config_lib
from sslm_jax.data.tfds_utils import DataError

# Model settings a run may change from the run it starts from (they change no parameter).
FREE_MODEL_KEYS = ('dropout_rate', 'attention_dropout_rate', 'dtype')
TOKENIZER_FILE = 'tokenizer.model'


def restore_matching(init_from: str, step: int | None, *, key: str, config, tokenizer, like):
  """(params, step) of the checkpoint `step` (None: the newest) of the run in `init_from`.

  Raises DataError, naming `key` (the config key that asked), when that run's model settings,
  tokenizer or parameter shapes differ from this run's (`config`, `tokenizer`, `like`: the
  parameters this model would start from).
  """
  from sslm_jax.train import loop  # noqa: PLC0415  the one way to read a run (loop imports tasks)
  if loop.saved_config(init_from) is None:
    raise DataError(f'{key}={init_from!r} holds no run (no config.json); allowed: the workdir of '
                    f'a training run')
  run, params, loaded_step = loop.restore_params(init_from, step)
  different = {k: v for k, v in config_lib.differences(run.config.model, config.model).items()
               if k not in FREE_MODEL_KEYS}
  if different:
    listed = ', '.join(f'model.{k}: {a!r} there vs {b!r} here'
                       for k, (a, b) in different.items())
    raise DataError(f'{key}={init_from!r} holds a model with other settings ({listed}); '
                    f"allowed: the pretraining run's model settings")
  theirs = getattr(run.task, 'tokenizer', None)
  if tokenizer is not None and (theirs is None or theirs.model_proto != tokenizer.model_proto):
    raise DataError(f'the tokenizer of this run is not the one {key}={init_from!r} was trained '
                    f'with; allowed: text.tokenizer_path='
                    f'{os.path.join(init_from, TOKENIZER_FILE)!r}')
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
  if shapes(params) != shapes(like):
    raise DataError(f'the parameters in {key}={init_from!r} do not fit this model; allowed: a '
                    f'pretraining run of the same model')
  return params, loaded_step
