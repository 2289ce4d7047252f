"""benchmarks/pretrain_steps.py: the interleaved step-rate table that sets an equal-time step
count, on tiny versions of the shipped fortunes configs (generated corpus, no network)."""

import json
import os
import shlex
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import _common, pretrain_steps  # noqa: E402
from configs import pipeline_fortunes_electra  # noqa: E402
from sslm_jax.config import ConfigError  # noqa: E402

# A 1-layer encoder of width 32 (4 heads, so ELECTRA's quarter-width generator keeps one head).
TINY = {'model.num_layers': 1, 'model.num_heads': 4, 'model.embed_dim': 32,
        'model.mlp_dim': 32, 'text.vocab_size': 320, 'train.batch_size': 8}


def flags(corpus, prefix='') -> str:
  data_dir, manual_dir = corpus
  values = {**TINY, 'data.data_dir': data_dir, 'data.manual_dir': manual_dir}
  return ' '.join(f'--config.{prefix}{k}={v}' for k, v in values.items())


@pytest.mark.slow
def test_rows_are_timed_interleaved_and_give_the_equal_time_steps(corpus, tmp_path):
  rows = pretrain_steps.main([
      '--row', f'mlm=configs/bert_fortunes.py {flags(corpus)}',
      # A pipeline config: its pretraining run is the one timed.
      '--row', f'electra=configs/pipeline_fortunes_electra.py {flags(corpus, "pretrain.")}',
      '--steps=2', '--repeats=2', '--warmup=1', '--batches=2', f'--out_dir={tmp_path}'])
  mlm, electra = rows
  assert (mlm['objective'], electra['objective']) == ('mlm', 'electra')
  assert mlm['ratio'] == 1.0 and mlm['equal_time_steps'] == mlm['configured_steps']
  assert electra['ratio'] == electra['steps_per_s'] / mlm['steps_per_s']
  assert electra['equal_time_steps'] == round(mlm['configured_steps'] * electra['ratio'])
  # The pipeline row's configured steps are its pretraining's, not a run config's epochs.
  assert electra['configured_steps'] == pipeline_fortunes_electra.get_config().pretrain.train.num_steps
  for row in rows:
    assert row['ms_p10'] <= row['ms_per_step'] <= row['ms_p90']
    assert row['steps_per_s'] == pytest.approx(1e3 / row['ms_per_step'])
  name = _common.results_name('pretrain_steps', jax.default_backend())
  saved = json.loads((tmp_path / f'{name}.json').read_text())
  assert [r['row'] for r in saved['rows']] == ['mlm', 'electra']
  assert saved['meta']['settings'] == {'steps': 2, 'repeats': 2, 'warmup': 1, 'batches': 2}


@pytest.mark.slow
def test_the_runner_trains_the_run_on_its_own_batches(corpus, tmp_path):
  _, config = pretrain_steps.row_config(f'x=configs/electra_fortunes.py {flags(corpus)}')
  runner = pretrain_steps.StepRunner(config, str(tmp_path / 'x'), num_batches=2)
  first = jax.device_get(runner.state.params)
  for _ in range(3):
    runner()
  assert int(runner.state.step) == 3 and runner.calls == 3
  assert len(runner.batches) == 2
  assert runner.batches[0]['tokens'].shape[0] == TINY['train.batch_size']
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), first,
                         jax.device_get(runner.state.params))
  assert any(jax.tree.leaves(changed))


@pytest.mark.parametrize('spec,message', [
    ('configs/bert_fortunes.py', 'allowed: NAME=CONFIG'),
    ('mlm=', 'allowed: NAME=CONFIG'),
    ('mlm=--config.model.num_layers=1', 'allowed: NAME=CONFIG'),
    ('mlm=configs/bert_fortunes.py --config.model.no_such_key=1', 'row mlm: '),
    ('el=configs/pipeline_fortunes_electra.py --config.pretrain.model.num_layers=0',
     'row el: '),
])
def test_a_bad_row_is_named_before_any_work(spec, message):
  with pytest.raises(ConfigError, match=message):
    pretrain_steps.row_config(spec)


@pytest.mark.parametrize('flag', ['--steps=0', '--repeats=0', '--warmup=0', '--batches=0'])
def test_counts_must_be_positive(flag, capsys):
  with pytest.raises(SystemExit):
    pretrain_steps.parse_args([flag])
  assert f'{flag.split("=")[0]} must be at least 1' in capsys.readouterr().err


def test_rows_need_distinct_names(tmp_path):
  with pytest.raises(ConfigError, match='row names must differ'):
    pretrain_steps.main(['--row', 'a=configs/bert_fortunes.py',
                         '--row', 'a=configs/electra_fortunes.py', f'--out_dir={tmp_path}'])


def test_the_recorded_command_reruns_as_typed(monkeypatch):
  # A row holds spaces: the command written beside the results must keep it one argument.
  argv = ['benchmarks/pretrain_steps.py', '--row', 'mlm=configs/bert_fortunes.py --config.seed=1',
          '--steps=3']
  monkeypatch.setattr(sys, 'argv', argv)
  recorded = _common.command_line('benchmarks.pretrain_steps')
  assert shlex.split(recorded) == ['python', os.path.relpath(argv[0])] + argv[1:]
