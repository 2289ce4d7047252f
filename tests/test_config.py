import glob
import os
import runpy

import pytest

from sslm_jax import config as config_lib
from sslm_jax.config import ConfigError, base_config, validate


def test_base_config_is_valid_and_the_seed():
  c = validate(base_config())
  assert (c.train.batch_size, c.optimizer.learning_rate, c.train.num_epochs,
          c.model.latent_dim, c.train.eval_batch_size) == (64, 1e-3, 30, 32, 1000)


def test_locked_config_rejects_a_misspelled_key():
  c = base_config()
  with pytest.raises(AttributeError, match='batch_size'):
    c.train.batchsize = 3


@pytest.mark.parametrize('key,value,fragment', [
    ('train.batch_size', 0, 'train.batch_size=0 is invalid; allowed: an integer >= 1'),
    ('model.name', 'gan', "allowed: 'vae', 'ae'"),
    ('objective.name', 'mse', "objective.name='mse' is invalid; allowed: 'seed', 'elbo'"),
    ('optimizer.name', 'lamb', 'allowed'),
    ('optimizer.learning_rate', -1.0, 'a float > 0'),
    ('model.input_size', 28, 'a multiple of 2**3'),
    ('model.encoder_features', (), 'non-empty tuple'),
    ('data.name', '', 'a tfds dataset name'),
    ('model.generator_fraction', 0.0, 'model.generator_fraction=0.0 is invalid; allowed: a '
                                      'float in (0, 1]'),
    ('objective.temperature', 0.0, 'objective.temperature=0.0 is invalid; allowed: a float > 0'),
])
def test_invalid_values_name_key_and_allowed(key, value, fragment):
  c = base_config()
  section, name = key.split('.')
  setattr(c[section], name, value)
  with pytest.raises(ConfigError, match='allowed') as e:
    validate(c)
  assert fragment in str(e.value)


def test_contrastive_and_electra_objectives_fit_their_models():
  c = base_config()
  c.model.name, c.objective.name = 'vae', 'simcse'
  with pytest.raises(ConfigError, match="objective.name='simcse' is invalid; allowed: 'seed'"):
    validate(c)
  c.model.name, c.objective.name = 'electra', 'simcse'
  c.model.max_len = c.text.seq_len
  validate(c)
  c.objective.name, c.train.init_from = 'classification', 'runs/x'
  with pytest.raises(ConfigError, match="train.init_from='runs/x' is invalid; allowed: '' with "
                                        "objective.name='classification'"):
    validate(c)


def test_every_problem_is_reported_at_once():
  c = base_config()
  c.train.batch_size = 0
  c.optimizer.name = 'lamb'
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert 'train.batch_size' in str(e.value) and 'optimizer.name' in str(e.value)


def test_unknown_key_in_unlocked_config_is_named():
  c = base_config()
  with c.unlocked():
    c.train.batchsize = 3
  with pytest.raises(ConfigError, match="unknown key 'train.batchsize'"):
    validate(c)


def test_json_round_trip_keeps_tuples():
  c = base_config()
  back = config_lib.from_json(config_lib.to_json(c))
  assert back.model.encoder_features == (64, 128, 256)
  assert config_lib.differences(c, back) == {}


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', '*.py'))),
    ids=os.path.basename)
def test_every_shipped_config_is_valid(path):
  """Each configs/*.py loads and passes its validation (a pipeline's covers the runs it derives)."""
  from sslm_jax import pipeline_config
  config = runpy.run_path(path)['get_config']()
  if 'pretrain' in config:
    pipeline_config.validate_pipeline(config)
  else:
    validate(config)
