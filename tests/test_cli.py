"""The command line end to end on mock data, and every bad input it must refuse cleanly."""

import hashlib
import json
import os

import pytest
import tensorflow_datasets as tfds

from conftest import tiny_overrides
from sslm_jax import cli


def snapshot(folder):
  """{relative path: (sha256, mtime)} of every file under `folder`: nothing written over."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = (hashlib.sha256(f.read()).hexdigest(),
                                              os.stat(path).st_mtime_ns)
  return out


def train(workdir, *extra, config='configs/vae_mnist.py'):
  return cli.main(['train', '--config', config, '--workdir', str(workdir),
                   *tiny_overrides(**{'train.num_steps': 20, 'train.eval_every_steps': 20,
                                      'train.checkpoint_every_steps': 10}), *extra])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  with tfds.testing.mock_data(num_examples=128):
    assert train(workdir) == 0
  return workdir


def test_train_eval_sample_resume(trained, tmp_path, capsys):
  with open(trained / 'summary.json') as f:
    summary = json.load(f)
  assert {'test_mse', 'test_kl', 'wall_seconds'} <= set(summary) and summary['steps'] == 20
  with tfds.testing.mock_data(num_examples=128):
    capsys.readouterr()
    assert cli.main(['eval', '--workdir', str(trained)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['step'] == 20 and result['mse'] == pytest.approx(summary['test_mse'])
    out = tmp_path / 's.png'
    assert cli.main(['sample', '--workdir', str(trained), '--num', '4', '--out', str(out)]) == 0
    assert out.stat().st_size > 0
    assert cli.main(['eval', '--workdir', str(trained), '--step', '10']) == 0
    # resume: the same command with a longer schedule continues from step 20
    assert train(trained, '--config.train.num_steps=30') == 0
  with open(trained / 'summary.json') as f:
    resumed = json.load(f)
  assert resumed['resumed_from_step'] == 20 and resumed['steps'] == 30
  with open(trained / 'metrics.jsonl') as f:
    steps = [r['step'] for r in map(json.loads, f) if r['split'] == 'train']
  assert steps == sorted(set(steps)) and steps[-1] == 30
  # a finished run rerun: nothing to do, nothing rewritten
  before = snapshot(trained)
  with tfds.testing.mock_data(num_examples=128):
    assert train(trained, '--config.train.num_steps=30') == 0
  assert snapshot(trained) == before


def test_ae_config_trains(tmp_path):
  with tfds.testing.mock_data(num_examples=64):
    assert train(tmp_path, '--config.data.name=mnist', config='configs/ae_fashion_mnist.py') == 0
  assert 'test_kl' not in json.loads((tmp_path / 'summary.json').read_text())


@pytest.mark.parametrize('args,message', [
    (['--config.train.batchsize=3'], 'batchsize'),                       # unknown key
    (['--config.train.batch_size=abc'], 'invalid literal'),              # wrong type
    (['--config.train.batch_size=0'], 'train.batch_size=0 is invalid'),  # value
    (['--config.seed=-1'], 'seed=-1 is invalid'),
    (['--config.model.latent_dim=7'], 'holds a different model'),
    (['--config.optimizer.name=sgd'], 'holds a run with different settings'),
    (['--config.seed=5'], 'seed: saved 0 vs asked 5'),
])
def test_bad_input_on_an_existing_run_is_a_clear_error_and_writes_nothing(
    trained, capsys, args, message):
  before = snapshot(trained)
  with tfds.testing.mock_data(num_examples=128):
    code = train(trained, '--config.train.num_steps=40', *args)
  assert code == 2
  assert message in capsys.readouterr().err
  assert snapshot(trained) == before


@pytest.mark.parametrize('args,message', [
    (['--config.data.name=no_such_set'], "data.name='no_such_set' is not a tfds"),
    (['--config.data.name=idx_images/nope'], "data.name='idx_images/nope' is not a tfds"),
    (['--config.data.name=idx_images/mnist', '--config.data.manual_dir=/nonexistent'],
     'does not exist'),
    (['--config.model.channels=3'], 'model.channels=3'),                 # images' shape
])
def test_bad_data_is_a_clear_error_and_creates_nothing(tmp_path, capsys, args, message):
  with tfds.testing.mock_data(num_examples=16):
    assert train(tmp_path / 'run', *args) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / 'run').exists()


def test_missing_config_file(tmp_path, capsys):
  assert cli.main(['train', '--config', 'configs/nope.py', '--workdir', str(tmp_path)]) == 2
  assert 'configs/nope.py' in capsys.readouterr().err


def test_eval_errors(tmp_path, trained, capsys):
  assert cli.main(['eval', '--workdir', str(tmp_path)]) == 2
  assert 'config.json' in capsys.readouterr().err
  with tfds.testing.mock_data(num_examples=128):
    assert cli.main(['eval', '--workdir', str(trained), '--step', '7']) == 2
  assert 'allowed' in capsys.readouterr().err


def test_unreadable_checkpoint_is_a_clear_error_for_eval(tmp_path, capsys):
  with tfds.testing.mock_data(num_examples=64):
    assert train(tmp_path) == 0
    for root, _, files in os.walk(tmp_path / 'checkpoints' / '20'):
      for name in files:
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')
    before = snapshot(tmp_path)
    assert cli.main(['eval', '--workdir', str(tmp_path), '--step', '20']) == 2
  assert 'unreadable' in capsys.readouterr().err
  assert snapshot(tmp_path) == before


def test_sample_needs_no_data_and_checks_num(trained, tmp_path, capsys):
  out = tmp_path / 'x.png'  # outside mock_data: the dataset is not there, and not needed
  assert cli.main(['sample', '--workdir', str(trained), '--num', '3', '--out', str(out)]) == 0
  assert out.exists()
  with pytest.raises(SystemExit) as e:
    cli.main(['sample', '--workdir', str(trained), '--num', '0'])
  assert e.value.code == 2 and 'an integer >= 1' in capsys.readouterr().err


def test_data_prepare_and_info(tmp_path, capsys):
  from conftest import make_idx_dir
  manual = make_idx_dir(tmp_path / 'm', num_train=30, num_test=12)
  data_dir = str(tmp_path / 'tfds')
  assert cli.main(['data', 'info', '--name', 'idx_images/mnist', '--data_dir', data_dir]) == 2
  assert 'is not prepared' in capsys.readouterr().err
  assert cli.main(['data', 'prepare', '--name', 'idx_images/mnist', '--manual_dir', str(manual),
                   '--data_dir', data_dir]) == 0
  out = capsys.readouterr().out
  info = json.loads(out[out.index('{'):])
  assert info['splits']['train']['examples'] == 30 and info['splits']['test']['examples'] == 12
  assert cli.main(['data', 'info', '--name', 'no_such_set', '--data_dir', data_dir]) == 2
