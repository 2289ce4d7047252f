"""Run folders written before run configs held only their own keys (issue 18) still load,
validate, resume, evaluate and sample.

tests/fixtures/runs_before_18 holds what that code (ca5719a, its make_runs.py) wrote for tiny
runs on this suite's generated data: each run's config.json (every key of the old union config)
and the tree of the train state its checkpoints hold. A checkpoint restores into a state of the
same tree (paths, shapes, dtypes), so an old folder's checkpoints restore when the state the
code now builds from its config.json has that tree; the resumes below run from that config.json
(on checkpoints written now, since a few KB of configs are what the suite ships).
"""

import glob
import json
import os

import jax
import pytest

import test_finetune
from sslm_jax import cli, runs
from sslm_jax import config as config_lib
from sslm_jax import pipeline_config as pipeline_lib
from sslm_jax.train import loop

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures', 'runs_before_18')
RUNS = ('vae', 'gpt', 'text_vae')
# Keys added since those folders were written, and the values that they load with.
ADDED_SINCE = {'train.init_from': '', 'classifier.reinit_top_layers': 0,
               'model.weight_init': 'lecun', 'model.embed_norm': False,
               'optimizer.layer_decay': 1.0}


def old_config_text(name: str, data: tuple[str, str], workdir: str = '') -> str:
  with open(os.path.join(FIXTURES, name, 'config.json')) as f:
    text = f.read()
  return (text.replace('$DATA_DIR', data[0]).replace('$MANUAL_DIR', data[1])
          .replace('$WORKDIR', workdir))


def state_tree(state) -> list:
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  return [[jax.tree_util.keystr(path), list(leaf.shape), str(leaf.dtype)] for path, leaf in leaves]


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(FIXTURES, '**', 'config.json'),
                                                  recursive=True)),
                         ids=lambda p: os.path.relpath(os.path.dirname(p), FIXTURES))
def test_old_configs_load_as_the_configs_of_their_runs(path):
  with open(path) as f:
    old = config_lib.flatten(config_lib.json_values(f.read()))
  with open(path) as f:
    config = runs.validate(runs.from_json(f.read()))
  new = config_lib.flatten(config.to_dict())
  added = {k: v for k, v in new.items() if k not in old}
  assert added == {k: v for k, v in ADDED_SINCE.items() if k in new}  # at their defaults
  new = {k: v for k, v in new.items() if k not in added}
  assert set(new) < set(old)  # the run's other keys, every one of them in the old config
  assert {k: v for k, v in old.items() if k in new} == new  # at the saved values
  dropped = {k: v for k, v in old.items() if k not in new}
  assert all(runs.legacy_default(k, v) for k, v in dropped.items())
  assert config_lib.differences(runs.from_json(config_lib.to_json(config)), config) == {}


def test_a_key_the_run_does_not_read_must_hold_a_default():
  with open(os.path.join(FIXTURES, 'vae', 'config.json')) as f:
    values = json.load(f)
  values['model']['num_layers'] = 6  # a Transformer key, in a VAE's config
  with pytest.raises(config_lib.ConfigError, match=r'model.num_layers=6 is invalid; allowed: '
                                                   r'absent, or a default \(4\)'):
    runs.from_json(json.dumps(values))


@pytest.fixture(scope='module')
def data(idx_dataset, corpus):
  return {'vae': idx_dataset, 'gpt': corpus, 'text_vae': corpus}


@pytest.mark.parametrize('name', RUNS)
def test_old_states_are_the_states_built_now(name, data, tmp_path):
  config = runs.from_json(old_config_text(name, data[name]))
  with open(os.path.join(FIXTURES, name, 'state_tree.json')) as f:
    expected = json.load(f)
  # Shapes only: tracing the initializers needs no compilation.
  run = jax.eval_shape(lambda: runs.setup(config, str(tmp_path)).init_state)
  assert state_tree(run) == expected


@pytest.mark.slow
@pytest.mark.parametrize('name', ('vae', 'gpt'))
def test_old_folders_resume_evaluate_and_sample(name, data, tmp_path, capsys):
  text = old_config_text(name, data[name])
  config = runs.from_json(text)
  old_json = tmp_path / 'config.json'

  def as_old_folder():  # each start writes config.json anew; put the old one back
    old_json.write_text(text)

  as_old_folder()
  config.train.num_steps = 2
  loop.train_and_evaluate(config, str(tmp_path))
  as_old_folder()
  config.train.num_steps = 4
  resumed = loop.train_and_evaluate(config, str(tmp_path))
  assert resumed['resumed_from_step'] == 2 and resumed['steps'] == 4
  as_old_folder()
  capsys.readouterr()
  assert cli.main(['eval', '--workdir', str(tmp_path), '--split', 'test']) == 0
  result = json.loads(capsys.readouterr().out)
  key = 'mse' if name == 'vae' else 'loss'
  assert result['step'] == 4 and result[key] == pytest.approx(resumed[f'test_{key}'], rel=1e-6)
  sample = ['--out', str(tmp_path / 's.png')] if name == 'vae' else ['--prompt', 'Ka']
  assert cli.main(['sample', '--workdir', str(tmp_path), '--num', '2', *sample]) == 0


@pytest.mark.parametrize('name,regimes,finetune', [
    ('pipeline_images', ('linear_probe',), {'data.validation_fraction': 0.2,
                                            'train.batch_size': 16}),
    ('pipeline_text', ('full',), {'text.seq_len': 32})])
def test_old_pipeline_folders_hold_the_runs_the_pipeline_derives_now(name, regimes, finetune,
                                                                     data, tmp_path):
  """A pipeline resumes only where each run's folder holds the run it derives (check_workdir)."""
  pretrain = dict(test_finetune.TINY_VAE if name == 'pipeline_images' else
                  test_finetune.TINY_GPT)
  where = data['vae' if name == 'pipeline_images' else 'gpt']
  config = test_finetune.tiny_pipeline(
      {**pretrain, 'data.data_dir': where[0], 'data.manual_dir': where[1]}, regimes=regimes,
      **finetune)
  derived = pipeline_lib.pipeline_runs(config, str(tmp_path))
  assert sorted(derived) == sorted(n for n in os.listdir(os.path.join(FIXTURES, name))
                                  if not n.endswith('.json'))
  for run_name, run_config in derived.items():
    folder = tmp_path / run_name
    folder.mkdir()
    (folder / 'config.json').write_text(
        old_config_text(f'{name}/{run_name}', where, str(tmp_path)))
    assert config_lib.differences(runs.saved_config(str(folder)), run_config) == {}
    runs.check_workdir(run_config, str(folder))
