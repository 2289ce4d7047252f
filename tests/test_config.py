import glob
import os
import runpy

import pytest

from sslm_jax import config as config_lib
from sslm_jax import runs
from sslm_jax.config import ConfigError
from sslm_jax.runs import run_config, validate


def test_base_config_is_valid_and_the_seed():
  c = validate(run_config())
  assert (c.train.batch_size, c.optimizer.learning_rate, c.train.num_epochs,
          c.model.latent_dim, c.train.eval_batch_size) == (64, 1e-3, 30, 32, 1000)


def test_locked_config_rejects_a_misspelled_key():
  c = run_config()
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
    ('model.dropout_rate', 0.0, "model.dropout_rate=0.0 is invalid; allowed: > 0 for objective "
                                "'simcse'"),
    ('model.weight_init', 'xavier', "model.weight_init='xavier' is invalid; allowed: 'lecun', "
                                    "'gpt2'"),
])
def test_invalid_values_name_key_and_allowed(key, value, fragment):
  # A run that holds the key: ELECTRA's, SimCSE's, else the seed VAE's.
  c = run_config(*{'model.generator_fraction': ('electra', 'electra'),
                   'objective.temperature': ('bert', 'simcse'),
                   'model.dropout_rate': ('bert', 'simcse'),
                   'model.weight_init': ('gpt', 'causal_lm')}.get(key, ('vae',)))
  section, name = key.split('.')
  setattr(c[section], name, value)
  with pytest.raises(ConfigError, match='allowed') as e:
    validate(c)
  assert fragment in str(e.value)


def test_contrastive_and_electra_objectives_fit_their_models():
  c = run_config()
  c.model.name, c.objective.name = 'vae', 'simcse'
  with pytest.raises(ConfigError, match="objective.name='simcse' is invalid; allowed: 'seed'"):
    validate(c)
  c = run_config('electra', 'simcse')
  c.model.max_len = c.text.seq_len
  validate(c)
  c.train.init_from = 'runs/x'
  validate(c)
  # A classifier starts from classifier.init_from: its run config has no train.init_from.
  c = runs.reshape(c, objective='classification')
  with pytest.raises(AttributeError, match='init_from'):
    c.train.init_from = 'runs/x'
  with c.unlocked():
    c.train.init_from = 'runs/x'
  with pytest.raises(ConfigError, match="unknown key 'train.init_from'"):
    validate(c)


def test_every_problem_is_reported_at_once():
  c = run_config()
  c.train.batch_size = 0
  c.optimizer.name = 'lamb'
  with pytest.raises(ConfigError) as e:
    validate(c)
  assert 'train.batch_size' in str(e.value) and 'optimizer.name' in str(e.value)


def test_unknown_key_in_unlocked_config_is_named():
  c = run_config()
  with c.unlocked():
    c.train.batchsize = 3
  with pytest.raises(ConfigError, match="unknown key 'train.batchsize'"):
    validate(c)


def test_json_round_trip_keeps_tuples():
  c = run_config()
  back = runs.from_json(config_lib.to_json(c))
  assert back.model.encoder_features == (64, 128, 256)
  assert config_lib.differences(c, back) == {}


@pytest.mark.parametrize('path', sorted(p for p in glob.glob(os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', '*.py'))
    if not p.endswith('__init__.py')), ids=os.path.basename)
def test_every_shipped_config_is_valid(path):
  """Each configs/*.py loads and passes its validation (a pipeline's covers the runs it derives)."""
  from sslm_jax import pipeline_config
  config = runpy.run_path(path)['get_config']()
  if 'pretrain' in config:
    pipeline_config.validate_pipeline(config)
  else:
    validate(config)


def test_a_flag_that_changes_the_objective_reshapes_the_config_first():
  """`--config.objective.name=elbo` on the seed VAE's config works as it did when every config
  held every key: the elbo keys are there for the flags after it, the seed's are gone."""
  from sslm_jax import cli
  config, _ = cli._load_config(['--config', 'configs/vae_mnist.py', '--workdir', '/unused',
                                '--config.objective.name', 'elbo', '--config.objective.beta=2.0'])
  assert (config.objective.name, config.objective.beta) == ('elbo', 2.0)
  assert 'kl_weight' not in config.objective
  with pytest.raises(ConfigError, match="'beta'.*--config.objective.name flag reshapes"):
    cli._load_config(['--config', 'configs/vae_mnist.py', '--workdir', '/unused',
                      '--config.objective.beta=2.0'])
  with pytest.raises(ConfigError, match="objective.name='mlm' is invalid; allowed: 'seed'"):
    cli._load_config(['--config', 'configs/vae_mnist.py', '--workdir', '/unused',
                      '--config.objective.name=mlm'])
