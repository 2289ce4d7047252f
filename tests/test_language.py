"""Language-model runs end to end on a generated fortune corpus: GPT, BERT, denoising, CLI."""

import json

import pytest

from conftest import config_with
from sslm_jax import cli
from sslm_jax.train import loop

TINY_TEXT = {
    'data.name': 'text_files/fortunes', 'data.eval_split': 'validation', 'data.test_split': 'test',
    'text.vocab_size': 320, 'text.seq_len': 32, 'text.num_samples': 2,
    'text.sample_prompt': 'Ka',
    'model.name': 'gpt', 'model.num_layers': 1, 'model.num_heads': 2, 'model.embed_dim': 32,
    'model.mlp_dim': 64, 'model.max_len': 32, 'model.dropout_rate': 0.0,
    'objective.name': 'causal_lm', 'optimizer.learning_rate': 3e-3,
    'train.batch_size': 16, 'train.num_steps': 40, 'train.eval_batch_size': 32,
    'train.log_every_steps': 10, 'train.eval_every_steps': 20, 'train.progress_bar': False,
}


def text_config(corpus, **extra):
  data_dir, manual_dir = corpus
  return config_with({**TINY_TEXT, 'data.data_dir': data_dir, 'data.manual_dir': manual_dir,
                      **extra})


def train_losses(workdir):
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [r['loss'] for r in rows if r['split'] == 'train']


def test_gpt_pretrains_evaluates_and_samples(corpus, tmp_path, capsys):
  summary = loop.train_and_evaluate(text_config(corpus), str(tmp_path))
  losses = train_losses(tmp_path)
  assert losses[-1] < losses[0] - 0.5, losses
  for split in ('validation', 'test'):
    assert summary[f'{split}_perplexity'] < 320  # better than uniform over the vocabulary
    assert 0 < summary[f'{split}_bits_per_char'] < 8
  assert (tmp_path / 'tokenizer.model').exists()
  assert (tmp_path / 'samples.txt').read_text().count('--- sample') == 2
  # 'auto' attention of a float32 model is the reference on every backend, and says why
  assert summary['attention_impl'] == 'reference'
  assert 'dtype float32' in summary['attention_impl_reason'], summary['attention_impl_reason']

  # eval and sample reuse the run's tokenizer and checkpoint; greedy decoding with and without
  # the KV cache gives the same text
  capsys.readouterr()
  assert cli.main(['eval', '--workdir', str(tmp_path), '--split', 'test']) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['loss'] == pytest.approx(summary['test_loss'], rel=1e-6)
  outputs = []
  for flags in ([], ['--no_cache']):
    assert cli.main(['sample', '--workdir', str(tmp_path), '--prompt', 'Ka', '--num', '2',
                     '--temperature', '0', *flags]) == 0
    outputs.append(capsys.readouterr().out)
  assert outputs[0] == outputs[1] and outputs[0].count('\nKa') == 2


def test_gpt_resume_continues_with_the_saved_tokenizer(corpus, tmp_path):
  config = text_config(corpus, **{'train.num_steps': 20, 'text.num_samples': 0})
  loop.train_and_evaluate(config, str(tmp_path))
  tokenizer = (tmp_path / 'tokenizer.model').read_bytes()
  config.train.num_steps = 40
  resumed = loop.train_and_evaluate(config, str(tmp_path))
  straight = loop.train_and_evaluate(text_config(corpus, **{'text.num_samples': 0}),
                                     str(tmp_path / 'straight'))
  assert (tmp_path / 'tokenizer.model').read_bytes() == tokenizer
  assert resumed['resumed_from_step'] == 20
  assert resumed['test_loss'] == pytest.approx(straight['test_loss'], rel=1e-5)


@pytest.mark.parametrize('model,objective', [('bert', 'mlm'), ('gpt', 'denoising')])
def test_bert_mlm_and_denoising_train(corpus, tmp_path, model, objective):
  config = text_config(corpus, **{'model.name': model, 'objective.name': objective,
                                  'model.max_len': 65, 'train.num_steps': 30})
  summary = loop.train_and_evaluate(config, str(tmp_path))
  losses = train_losses(tmp_path)
  assert losses[-1] < losses[0] - 0.3, losses
  assert 0 < summary['test_accuracy'] <= 1 and 'test_bits_per_char' not in summary
  assert not (tmp_path / 'samples.txt').exists()


def test_text_config_errors_name_the_key_and_what_is_allowed(corpus, tmp_path, capsys):
  data_dir, manual_dir = corpus
  flags = [f'--config.{k}={v}' for k, v in {**TINY_TEXT, 'data.data_dir': data_dir,
                                            'data.manual_dir': manual_dir}.items()]
  code = cli.main(['train', '--config', 'configs/gpt_fortunes.py', '--workdir', str(tmp_path),
                   *flags, '--config.text.seq_len=64'])
  assert code == 2
  assert 'model.max_len=32 is invalid; allowed: >= 64' in capsys.readouterr().err
  code = cli.main(['train', '--config', 'configs/gpt_fortunes.py', '--workdir', str(tmp_path),
                   *flags, '--config.text.vocab_size=100000'])
  assert code == 2
  assert 'text.vocab_size' in capsys.readouterr().err
  assert not (tmp_path / 'checkpoints').exists()
