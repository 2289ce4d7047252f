"""Classifiers on pretrained encoders and the pipeline end to end, on generated labelled data.

One tiny text pipeline (GPT pretraining, full fine-tuning, scratch, TF-IDF) and one tiny image
pipeline (VAE, linear probe, scratch, logistic regression; IDX images without a validation
split) run once per module; the tests read their run folders.
"""

import json
import shlex
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import SYLLABLES, sentences
from sslm_jax import cli
from sslm_jax import config as config_lib
from sslm_jax import pipeline
from sslm_jax import pipeline_config as pipeline_lib
from sslm_jax import runs as runs_lib
from sslm_jax.config import ConfigError
from sslm_jax.pipeline_config import pipeline_config
from sslm_jax.data import images as image_data
from sslm_jax.data import labels as label_data
from sslm_jax.eval import baselines
from sslm_jax.eval import report as report_lib
from sslm_jax.eval.metrics import classification_metrics
from sslm_jax.models import build_model, heads
from sslm_jax.objectives import classification
from sslm_jax.tasks import Context
from sslm_jax.tasks import classification as cls_task
from sslm_jax.tasks.classification import ClassificationTask
from sslm_jax.train import optim

pytest.importorskip('sklearn', reason="the pipeline's baseline needs scikit-learn: "
                                      "pip install -e '.[test]'")

TOPIC_WORDS = {'computers': ('byte', 'kernel', 'compile'), 'love': ('heart', 'kiss', 'rose'),
               'zippy': ('pinhead', 'yow', 'bowling')}
TINY_GPT = {'model.name': 'gpt', 'model.num_layers': 1, 'model.num_heads': 2,
            'model.embed_dim': 16, 'model.mlp_dim': 32, 'model.max_len': 32,
            'model.dropout_rate': 0.0, 'objective.name': 'causal_lm', 'text.vocab_size': 320,
            'text.seq_len': 32, 'text.num_samples': 0, 'data.name': 'text_files/fortunes',
            'data.eval_split': 'validation'}
# A smaller seed encoder/decoder than conftest's TINY_MODEL: initializing a conv net is most of
# its compile time on a CPU.
TINY_VAE = {'model.input_size': 16, 'model.encoder_features': (8, 8),
            'model.encoder_out_features': 8, 'model.decoder_hidden': (8,),
            'model.decoder_base_features': 4, 'model.decoder_features': (4,),
            'model.latent_dim': 4, 'data.name': 'idx_images/mnist', 'train.num_pictures': 4}
TINY_TRAIN = {'train.batch_size': 8, 'train.eval_batch_size': 64, 'train.log_every_steps': 5,
              'train.progress_bar': False}


def make_topics(folder, per_category=(60, 40, 20), seed=0):
  """A fortune folder whose categories are learnable: each cookie is a shared pseudo-English
  sentence with two words of its category inserted."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True)
  common = sentences(200, seed=2)
  for (name, words), n in zip(TOPIC_WORDS.items(), per_category):
    cookies = []
    for _ in range(n):
      text = common[rng.integers(len(common))].split()
      for _ in range(2):
        text.insert(rng.integers(len(text) + 1), words[rng.integers(len(words))])
      cookies.append(' '.join(text))
    (folder / name).write_text('\n%\n'.join(cookies) + '\n%\n')
  return folder


def set_keys(section, values: dict):
  for key, value in values.items():
    part, name = key.split('.')
    section[part][name] = value


def tiny_pipeline(pretrain: dict, *, regimes, **finetune):
  config = pipeline_config(runs_lib.run_config(pretrain.get('model.name', 'vae'),
                                           pretrain.get('objective.name')))
  set_keys(config.pretrain, {**TINY_TRAIN, 'train.num_steps': 10, **pretrain})
  config.finetune.regimes = regimes
  f = config.finetune
  for key, value in {**TINY_TRAIN, 'train.num_epochs': 2, 'optimizer.learning_rate': 3e-3,
                     **finetune}.items():
    part, name = key.split('.')
    f[part][name] = value
  config.baseline.c_values = (1.0,)
  return config


@pytest.fixture(scope='module')
def topics(tmp_path_factory):
  root = tmp_path_factory.mktemp('topics')
  return str(root / 'tfds'), str(make_topics(root / 'manual'))


@pytest.fixture(scope='module')
def image_run(idx_dataset, tmp_path_factory):
  """(config, workdir, report) of a tiny image pipeline: linear probe and scratch."""
  data_dir, manual_dir = idx_dataset
  config = tiny_pipeline({**TINY_VAE, 'data.data_dir': data_dir, 'data.manual_dir': manual_dir},
                         regimes=('linear_probe',),
                         **{'data.validation_fraction': 0.2, 'train.batch_size': 16})
  config.baseline.probe_features = True
  config.baseline.c_values = (0.01, 1.0)  # two: the probes choose one on validation
  workdir = tmp_path_factory.mktemp('image_pipeline')
  return config, workdir, pipeline.run_pipeline(config, str(workdir))


@pytest.fixture(scope='module')
def text_run(topics, tmp_path_factory):
  """(config, workdir, report) of a tiny text pipeline: full fine-tuning and scratch, each with
  seeds 0 and 3."""
  data_dir, manual_dir = topics
  config = tiny_pipeline({**TINY_GPT, 'data.data_dir': data_dir, 'data.manual_dir': manual_dir},
                         regimes=('full',), **{'text.seq_len': 32})
  config.baseline.probe_features = True
  config.finetune.extra_seeds = (3,)
  workdir = tmp_path_factory.mktemp('text_pipeline')
  return config, workdir, pipeline.run_pipeline(config, str(workdir),
                                                command='sslm-jax pipeline --config tiny.py')


@pytest.mark.slow
def test_text_pipeline_writes_the_report(text_run):
  config, workdir, report = text_run
  entries = report['tasks']['classification']
  assert set(entries) == {'pretrained', 'scratch', 'baseline', 'majority', 'probe_pretrained',
                          'probe_random'}
  for entry in entries.values():
    for key in ('accuracy', 'macro_precision', 'macro_recall', 'macro_f1'):
      assert 0 <= entry[key] <= 1, (key, entry)
  # The topic words make the task easy for TF-IDF; the tiny networks only have to run.
  assert entries['baseline']['macro_f1'] > 0.9
  assert entries['pretrained']['regime'] == 'full'
  assert json.loads((workdir / 'report.json').read_text()) == report
  md = (workdir / 'report.md').read_text()
  for heading in ('## Results (test split)', '## Data', '## Pretraining', '## Fine-tuning',
                  '## Per class (test F1)', '## Confusion matrix', '## Wall time'):
    assert heading in md
  for picture in ('confusion_matrix.png', 'curves.png'):
    with Image.open(workdir / picture) as image:
      assert image.width > 100 and image.height > 100
  timings = json.loads((workdir / 'timings.json').read_text())
  for step in ('data', 'pretrain', 'finetune_pretrained', 'finetune_scratch',
               'finetune_scratch: select and test', 'baseline', 'report'):
    assert timings[step]['invocations'] == 1
  # The test split is read only after each run chose its checkpoint on validation.
  chosen = json.loads((workdir / 'finetune_scratch' / 'test_result.json').read_text())
  assert chosen['selected_step'] in chosen['candidate_steps']
  saved = runs_lib.saved_config(str(workdir / 'finetune_scratch'))
  assert saved.data.test_split == '' and saved.data.eval_split == 'validation'


@pytest.mark.slow
def test_extra_seeds_repeat_each_fine_tuning_run_and_the_report_reads_their_means(text_run):
  config, workdir, report = text_run
  entries = report['tasks']['classification']
  for key, run in (('pretrained', 'finetune_pretrained'), ('scratch', 'finetune_scratch')):
    again = f'{run}_seed3'
    assert runs_lib.saved_config(str(workdir / run)).seed == config.pretrain.seed == 0
    assert runs_lib.saved_config(str(workdir / again)).seed == 3
    # Another seed trains another model: other initial head weights, batch order, dropout.
    _, first, _ = runs_lib.restore_params(str(workdir / run))
    _, second, _ = runs_lib.restore_params(str(workdir / again))
    assert not np.array_equal(np.asarray(first['head']['kernel']),
                              np.asarray(second['head']['kernel']))
    chosen = [json.loads((workdir / r / 'test_result.json').read_text()) for r in (run, again)]
    scores = [c['test']['macro_f1'] for c in chosen]
    e = entries[key]
    assert e['seeds'] == [
        {'seed': seed, 'run': r, 'selected_step': c['selected_step'],
         'macro_f1': c['test']['macro_f1'], 'validation_macro_f1': c['validation']['macro_f1']}
        for seed, r, c in zip((0, 3), (run, again), chosen)]
    assert e['macro_f1'] == scores[0]  # the entry itself stays the first seed's run
    assert e['mean_macro_f1'] == pytest.approx(np.mean(scores))
    assert e['std_macro_f1'] == pytest.approx(np.std(scores, ddof=1))
  md = (workdir / 'report.md').read_text()
  assert '## Fine-tuning seeds' in md and '| entry | seed 0 | seed 3 |' in md
  assert 'means over 2 fine-tuning seeds' in md


def test_the_verdict_compares_means_over_seeds_and_counts_each_seed():
  def entry(*scores):
    return {'macro_f1': scores[0], 'regime': 'full', 'mean_macro_f1': float(np.mean(scores)),
            'seeds': [{'seed': s, 'macro_f1': f} for s, f in zip((0, 1, 2), scores)]}
  entries = {'pretrained': entry(0.40, 0.60, 0.56), 'scratch': entry(0.50, 0.45, 0.58),
             'baseline': {'macro_f1': 0.49, 'method': 'TF-IDF'}}
  lines = report_lib._verdict(entries)
  # The first seed alone would say the opposite (0.40 against 0.50 and 0.49).
  assert lines[0] == ('- Pretrained-then-fine-tuned (full) **beats** the same model trained from '
                      'scratch with the same budget: macro-F1 0.520 vs 0.510 (+0.010) (means '
                      'over 3 fine-tuning seeds); ahead in 1 of 3 seeds.')
  assert lines[1].endswith('0.520 vs 0.490 (+0.030) (means over 3 fine-tuning seeds); ahead in '
                           '2 of 3 seeds.')
  assert lines[-1] == ('- Goal (pretrained beats scratch and the baseline on test macro-F1 (means '
                       'over 3 fine-tuning seeds)): **met**.')
  # Only what the pipeline ran is named: here no scratch run.
  assert report_lib._verdict({k: v for k, v in entries.items() if k != 'scratch'})[-1] == (
      '- Goal (pretrained beats the baseline on test macro-F1 (means over 3 fine-tuning seeds)): '
      '**met**.')
  entries['scratch'] = entry(0.50, 0.65, 0.58)
  assert report_lib._verdict(entries)[-1].endswith('**not met**.')


@pytest.mark.slow
def test_loading_the_pretraining_checkpoint_keeps_the_encoder_bit_identical(text_run):
  config, workdir, _ = text_run
  _, pretrained, _ = runs_lib.restore_params(str(workdir / 'pretrain'))
  runs = pipeline_lib.pipeline_runs(config, str(workdir))
  run = runs_lib.setup(runs['finetune_pretrained'], str(workdir / 'unused'))
  params = run.init_state.params
  assert set(params) == {'encoder', 'head'}
  assert jax.tree.structure(params['encoder']) == jax.tree.structure(pretrained)
  for ours, theirs in zip(jax.tree.leaves(params['encoder']), jax.tree.leaves(pretrained)):
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  # With classifier.reinit_top_layers=1 the (one) block and the final norm are the scratch run's
  # initial values; the embeddings stay pretrained.
  reinit = runs['finetune_pretrained'].copy_and_resolve_references()
  reinit.classifier.reinit_top_layers = 1
  mixed = runs_lib.setup(reinit, str(workdir / 'unused')).init_state.params['encoder']
  start = runs_lib.setup(runs['finetune_scratch'], str(workdir / 'unused')).init_state.params
  for name, expected in (('embed', pretrained), ('blocks_0', start['encoder']),
                         ('final_norm', start['encoder'])):
    for ours, theirs in zip(jax.tree.leaves(mixed[name]), jax.tree.leaves(expected[name])):
      np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  assert not np.array_equal(np.asarray(jax.tree.leaves(pretrained['blocks_0'])[0]),
                            np.asarray(jax.tree.leaves(mixed['blocks_0'])[0]))


@pytest.mark.slow
def test_linear_probe_leaves_the_encoder_unchanged(image_run, text_run):
  for (_, workdir, _), name, frozen in ((image_run, 'finetune_pretrained_linear_probe', True),
                                        (text_run, 'finetune_pretrained', False)):
    _, pretrained, _ = runs_lib.restore_params(str(workdir / 'pretrain'))
    _, params, step = runs_lib.restore_params(str(workdir / name))
    assert step == json.loads((workdir / name / 'summary.json').read_text())['steps']
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params['encoder']),
                                                 jax.tree.leaves(pretrained))]
    assert all(same) if frozen else not all(same), name


@pytest.mark.slow
def test_rerun_resumes_and_retrains_nothing(text_run):
  config, workdir, report = text_run
  kept = [workdir / 'baseline' / 'result.json', workdir / 'feature_probes' / 'result.json']
  written = [path.stat().st_mtime_ns for path in kept]
  assert 'Command: `sslm-jax pipeline --config tiny.py`' in (workdir / 'report.md').read_text()
  resumed = "sslm-jax pipeline --config tiny.py '--config.finetune.extra_seeds=(3,)'"
  again = pipeline.run_pipeline(config, str(workdir), command=resumed)
  assert again['tasks'] == report['tasks']
  # The report names every invocation, in order: the results came from both.
  assert [c['command'] for c in again['commands']] == [
      'sslm-jax pipeline --config tiny.py', resumed]
  md = (workdir / 'report.md').read_text()
  assert '1. `sslm-jax pipeline --config tiny.py` (' in md
  assert f'2. `{resumed}` (' in md
  assert [path.stat().st_mtime_ns for path in kept] == written  # reused, not fitted again
  for name in ('finetune_pretrained', 'finetune_scratch'):
    summary = json.loads((workdir / name / 'summary.json').read_text())
    assert summary['resumed_from_step'] == 0  # written by the one run that trained
  timings = json.loads((workdir / 'timings.json').read_text())
  assert timings['pretrain']['invocations'] == 2


@pytest.mark.slow
def test_image_pipeline_on_idx_images_without_a_validation_split(image_run):
  _, workdir, report = image_run
  entries = report['tasks']['classification']
  assert set(entries) == {'pretrained', 'scratch', 'baseline', 'majority', 'probe_pretrained',
                          'probe_random'}
  assert entries['pretrained']['regime'] == 'linear_probe'
  assert entries['baseline']['method'] == 'logistic regression on raw pixels'
  assert entries['baseline']['macro_f1'] > 0.5  # class-dependent blobs
  assert entries['probe_random']['method'].endswith('the same encoder at random initialization')
  for key in ('probe_pretrained', 'probe_random'):
    assert entries[key]['c'] in (0.01, 1.0) and 0 <= entries[key]['validation_macro_f1'] <= 1
  assert "logistic regression) on the pretrained encoder's frozen features" in \
      (workdir / 'report.md').read_text()
  stats = json.loads((workdir / 'data_stats.json').read_text())
  train, validation = stats['splits']['train'], stats['splits']['validation']
  assert stats['validation_carved'] and train['examples'] + validation['examples'] == 256
  np.testing.assert_allclose(validation['class_counts'],
                             np.round(0.2 * (np.asarray(train['class_counts']) +
                                             validation['class_counts'])))
  assert 'stratified 20% of each class' in (workdir / 'report.md').read_text()


@pytest.mark.slow
def test_feature_probes_fit_what_the_head_reads_of_each_encoder(image_run):
  config, workdir, report = image_run
  entries = report['tasks']['classification']
  probe = pipeline_lib.pipeline_runs(config, str(workdir))['finetune_pretrained_linear_probe']
  run = runs_lib.setup(probe, str(workdir / 'unused'))  # the pretrained encoder, a new head
  task, params = run.task, run.init_state.params
  features = task.features(params, 'validation')
  # The pretrained VAE's posterior mean, computed by the VAE itself (another compilation of the
  # same float32 arithmetic: rounding only).
  pretrain_run, pretrained, _ = runs_lib.restore_params(str(workdir / 'pretrain'))
  images = image_data.to_model_input(task.rows('validation')['image'], probe.model.input_size)
  mean, _ = pretrain_run.task.model.apply({'params': pretrained}, images, method='encode')
  np.testing.assert_allclose(features, mean, rtol=1e-5, atol=1e-6)
  # ... and the head's logits are a linear function of exactly these features.
  head = params['head']
  logits = task.model.apply({'params': params}, images)
  np.testing.assert_allclose(logits, features @ head['kernel'] + head['bias'], rtol=1e-5,
                             atol=1e-5)
  # Refitting on the features of the pretrained encoder and of the one the scratch run starts
  # from gives the report's scores (L-BFGS is deterministic; C chosen on validation again),
  # and the two encoders' features differ.
  scratch = runs_lib.setup(pipeline_lib.pipeline_runs(config, str(workdir))['finetune_scratch'],
                           str(workdir / 'unused'))
  random = scratch.init_state.params
  for key, p in (('probe_pretrained', params), ('probe_random', random)):
    fitted = baselines.fit_on_features(
        *[(task.features(p, s), task.rows(s)['label']) for s in ('train', 'validation', 'test')],
        method='', num_classes=task.num_classes, c_values=config.baseline.c_values)
    test = task.rows('test')['label']
    assert float(classification_metrics(test, fitted['test_predictions'], task.num_classes)
                 ['macro_f1']) == pytest.approx(entries[key]['macro_f1'], abs=1e-12), key
  assert not np.allclose(task.features(random, 'validation'), features)


def test_the_cli_records_a_command_that_reruns_as_typed(tmp_path, monkeypatch):
  seen = {}

  def fake_run_pipeline(config, workdir, *, command):
    seen['command'] = command
    return {'tasks': {}}

  monkeypatch.setattr(pipeline, 'run_pipeline', fake_run_pipeline)
  argv = ['pipeline', '--config', 'configs/pipeline_fortunes.py', '--workdir', str(tmp_path),
          '--config.finetune.extra_seeds=(1,2)', "--config.name=two words"]
  assert cli.main(argv) == 0
  # Unquoted, bash reads `(1,2)` as a syntax error and splits "two words".
  assert shlex.split(seen['command']) == ['sslm-jax', *argv]


def test_pipeline_config_errors_are_named_before_any_work(tmp_path, capsys):
  code = cli.main(['pipeline', '--config', 'configs/pipeline_fortunes.py', '--workdir',
                   str(tmp_path / 'run'), '--config.finetune.train.batch_size=0',
                   "--config.finetune.regimes=('full','probe')",
                   '--config.finetune.classifier.pooling=cls'])
  assert code == 2
  err = capsys.readouterr().err
  assert "finetune.regimes=('full', 'probe') is invalid" in err
  assert 'finetune.train.batch_size=0 is invalid' in err
  assert not (tmp_path / 'run').exists()
  with pytest.raises(ConfigError, match="pretrain.objective.name='classification'"):
    config = pipeline_config()
    config.pretrain.objective.name = 'classification'
    pipeline_lib.validate_pipeline(config)
  assert cli.main(['pipeline', '--config', 'configs/demo.py']) == 2
  assert 'is not a pipeline config' in capsys.readouterr().err


def test_plain_folder_per_class_gives_labelled_splits(tmp_path):
  for name, words in TOPIC_WORDS.items():
    folder = tmp_path / 'manual' / name
    folder.mkdir(parents=True)
    for i in range(12):
      (folder / f'{i}.txt').write_text(f'{words[i % 3]} {SYLLABLES[i]} {i}\n')
  config = runs_lib.run_config('gpt', 'classification')
  set_keys(config, {**TINY_GPT, 'data.name': 'text_files/plain', 'objective.name':
                    'classification', 'data.data_dir': str(tmp_path / 'tfds'),
                    'data.manual_dir': str(tmp_path / 'manual'), 'data.eval_split': 'train',
                    'text.vocab_size': 300})
  task = ClassificationTask(config, Context(str(tmp_path / 'run'), training=True))
  assert task.label_names == tuple(TOPIC_WORDS)
  rows = task.rows('train')
  assert rows['tokens'].shape[1] == 32 and set(rows['label']) <= {0, 1, 2}
  assert rows['tokens'][0, 0] == task.tokenizer.eos_id  # GPT rows start after an end of text


def test_stratified_split_holds_out_each_class_and_is_fixed():
  labels = np.repeat(np.arange(4), [50, 20, 5, 1])
  kept, held = label_data.stratified_split(labels, 0.2, seed=3)
  assert np.bincount(labels[held], minlength=4).tolist() == [10, 4, 1, 0]
  assert sorted(np.r_[kept, held].tolist()) == list(range(len(labels)))
  again = label_data.stratified_split(labels, 0.2, seed=3)
  np.testing.assert_array_equal(again[1], held)


def test_encoder_learning_rate_multiplier_scales_and_freezes():
  config = runs_lib.run_config('vae', 'classification').optimizer
  params = {'encoder': {'w': np.ones(3, np.float32)}, 'head': {'w': np.ones(2, np.float32)}}
  grads = jax.tree.map(np.ones_like, params)
  config.name, config.learning_rate = 'sgd', 0.1
  config.momentum = 0.0
  for multiplier in (0.5, 0.0):
    config.encoder_learning_rate_multiplier = multiplier
    tx = optim.make_optimizer(config, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates['head']['w'], -0.1)
    np.testing.assert_allclose(updates['encoder']['w'], -0.1 * multiplier)
  assert optim.encoder_labels(params) == {'encoder': {'w': 'encoder'}, 'head': {'w': 'head'}}


@pytest.mark.parametrize('model', ['gpt', 'bert', 'electra'])
def test_layer_decay_scales_each_block_of_the_encoder(model):
  config = runs_lib.run_config(model, 'classification')
  set_keys(config, {k: v for k, v in TINY_GPT.items() if k.split('.')[0] == 'model' and
                    k != 'model.name'})
  config.model.num_layers = 3
  config.model.embed_norm = True
  module = heads.TextClassifier(encoder=build_model(config.model, 320), num_classes=3)
  params = module.init(jax.random.key(0), np.zeros((1, 8), np.int32))['params']
  o = config.optimizer
  o.name, o.learning_rate, o.momentum, o.layer_decay = 'sgd', 0.1, 0.0, 0.5
  o.encoder_learning_rate_multiplier = 0.5
  tx = optim.make_optimizer(o, 10)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  flat = {'/'.join(str(k.key) for k in path): np.unique(np.asarray(u)).tolist()
          for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
  stack = 'encoder/discriminator/' if model == 'electra' else 'encoder/'
  # Three blocks: the top block at 0.5 x the encoder's rate, the one below at 0.25, the
  # embeddings (and their norm) below the first block at 0.5 ** 4; the head at the full rate.
  expected = {'head/kernel': -0.1, f'{stack}final_norm/scale': -0.05,
              f'{stack}blocks_2/mlp_in/kernel': -0.025,
              f'{stack}blocks_1/attention_norm/scale': -0.0125,
              f'{stack}blocks_0/mlp_out/bias': -0.00625,
              f'{stack}embed/embedding': -0.003125, f'{stack}embedding_norm/bias': -0.003125}
  # float32 products of powers of 0.5 and 0.1: within a few units of float32 rounding.
  assert {k: flat[k] for k in expected} == {k: [pytest.approx(v, rel=1e-6)]
                                            for k, v in expected.items()}
  o.layer_decay = 1.0  # off: every encoder leaf at the encoder's rate
  tx = optim.make_optimizer(o, 10)
  updates, _ = tx.update(jax.tree.map(np.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(np.concatenate([np.ravel(u) for u in jax.tree.leaves(
      updates['encoder'])]), -0.05, rtol=1e-6)  # float32 products of 0.1 and 0.5


def test_class_weights_and_label_smoothing():
  labels = np.array([0, 0, 0, 1])
  weights = classification.balanced_class_weights(labels, 3)
  np.testing.assert_allclose(weights, [4 / 6, 4 / 2, 0.0])
  logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], np.float32))
  plain = classification.cross_entropy(logits, np.array([0, 1]))
  np.testing.assert_allclose(plain, -np.log([0.7, 0.8]), rtol=1e-6)
  smooth = classification.cross_entropy(logits, np.array([0, 1]), label_smoothing=0.3)
  expected = 0.7 * -np.log([0.7, 0.8]) + 0.3 * -np.log([[0.7, 0.2, 0.1],
                                                        [0.1, 0.8, 0.1]]).mean(axis=1)
  np.testing.assert_allclose(smooth, expected, rtol=1e-6)


def test_reinit_top_layers_takes_the_top_blocks_and_final_norm_from_the_fresh_start():
  def stack(value):
    return {'embed': value, 'final_norm': value, 'head': value,
            **{f'blocks_{i}': value + i for i in range(4)}}
  pretrained, fresh = {'discriminator': stack(100), 'generator_blocks_0': 100}, \
      {'discriminator': stack(0), 'generator_blocks_0': 0}
  mixed = cls_task.reinit_top_blocks(pretrained, fresh, 2)
  # The blocks sort by number, not by name (blocks_10 above blocks_9); a stack's other
  # parameters, and whatever is not a stack of blocks, stay pretrained.
  assert mixed == {'discriminator': {'embed': 100, 'final_norm': 0, 'head': 100, 'blocks_0': 100,
                                     'blocks_1': 101, 'blocks_2': 2, 'blocks_3': 3},
                   'generator_blocks_0': 100}
  assert cls_task.reinit_top_blocks(pretrained, fresh, 0) is pretrained
  deep = {f'blocks_{i}': i for i in range(11)}
  assert [k for k, v in cls_task.reinit_top_blocks(deep, dict.fromkeys(deep, -1), 2).items()
          if v == -1] == ['blocks_9', 'blocks_10']


@pytest.mark.parametrize('key,text_value,text_allowed,image_value,image_allowed', [
    ('classifier.reinit_top_layers', 2, r'at most model.num_layers=1', 1, r'0 for model'),
    ('optimizer.layer_decay', 0.0, r'a float in \(0, 1\] \(1 = no decay\)', 0.8,
     r'1.0 for model')])
def test_transformer_fine_tuning_keys_are_checked(key, text_value, text_allowed, image_value,
                                                  image_allowed):
  section, name = key.split('.')
  config = tiny_pipeline(TINY_GPT, regimes=('full',))
  config.finetune[section][name] = text_value
  with pytest.raises(ConfigError, match=rf'finetune.{key}={text_value} is invalid; allowed: '
                                        rf'{text_allowed}'):
    pipeline_lib.validate_pipeline(config)
  image = tiny_pipeline(TINY_VAE, regimes=('full',))
  image.finetune[section][name] = image_value
  with pytest.raises(ConfigError, match=rf"{name}={image_value} is invalid; allowed: "
                                        rf"{image_allowed} 'vae' \(it has no Transformer blocks"):
    pipeline_lib.validate_pipeline(image)


def test_pooling_reads_only_real_tokens():
  hidden = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
  np.testing.assert_allclose(heads.pool(hidden, mask, 'mean')[0], hidden[0, :2].mean(axis=0))
  np.testing.assert_allclose(heads.pool(hidden, mask, 'last'), hidden[[0, 1], [1, 3]])
  np.testing.assert_allclose(heads.pool(hidden, mask, 'cls'), hidden[:, 0])


def test_library_works_without_scikit_learn(monkeypatch):
  monkeypatch.setitem(sys.modules, 'sklearn', None)  # import sklearn now fails
  config = pipeline_config()
  config.pretrain.data.name = 'text_files/fortunes'
  with pytest.raises(ConfigError, match=r"needs scikit-learn.*baseline.name='none'"):
    pipeline_lib.validate_pipeline(config)
  config.baseline.name = 'none'
  pipeline_lib.validate_pipeline(config)


def test_unusable_data_stops_the_pipeline_before_it_writes(tmp_path, capsys):
  code = cli.main(['pipeline', '--config', 'configs/pipeline_fortunes.py', '--workdir',
                   str(tmp_path / 'run'), f'--config.pretrain.data.data_dir={tmp_path}/tfds',
                   f'--config.pretrain.data.manual_dir={tmp_path}/missing'])
  assert code == 2
  assert 'data.manual_dir' in capsys.readouterr().err
  assert not (tmp_path / 'run').exists()


def test_pipeline_derives_its_runs_from_the_pretraining_config():
  config = pipeline_config(runs_lib.run_config('gpt'))
  set_keys(config.pretrain, {**TINY_GPT, 'model.dropout_rate': 0.1})
  set_keys(config.finetune, {'text.seq_len': 32, 'optimizer.learning_rate': 1e-3,
                             'optimizer.encoder_learning_rate_multiplier': 0.3,
                             'optimizer.layer_decay': 0.8})
  config.finetune.regimes = ('full', 'linear_probe')
  config.finetune.linear_probe_learning_rate = 1e-2
  runs = pipeline_lib.pipeline_runs(config, '/w')
  assert list(runs) == ['pretrain', 'finetune_pretrained', 'finetune_pretrained_linear_probe',
                        'finetune_scratch']
  settings = {name: (r.classifier.init_from, r.text.tokenizer_path, r.optimizer.learning_rate,
                     r.optimizer.encoder_learning_rate_multiplier, r.optimizer.layer_decay,
                     r.model.dropout_rate, r.objective.name, r.data.test_split)
              for name, r in runs.items() if name != 'pretrain'}
  tokenizer = '/w/pretrain/tokenizer.model'
  assert settings == {
      'finetune_pretrained': ('/w/pretrain', tokenizer, 1e-3, 0.3, 0.8, 0.1, 'classification',
                              ''),
      'finetune_pretrained_linear_probe': ('/w/pretrain', tokenizer, 1e-2, 0.0, 0.8, 0.1,
                                           'classification', ''),
      'finetune_scratch': ('', tokenizer, 1e-3, 1.0, 1.0, 0.1, 'classification', '')}
  assert runs['pretrain'] is config.pretrain
  # finetune.extra_seeds: every fine-tuning run again per seed, a seed's runs together.
  config.finetune.extra_seeds = (2, 1)
  pipeline_lib.validate_pipeline(config)
  seeded = pipeline_lib.pipeline_runs(config, '/w')
  first = ['finetune_pretrained', 'finetune_pretrained_linear_probe', 'finetune_scratch']
  assert list(seeded) == ['pretrain', *first, *[f'{r}_seed2' for r in first],
                          *[f'{r}_seed1' for r in first]]
  for name in first:
    for seed in (2, 1):
      again = seeded[f'{name}_seed{seed}']
      assert again.seed == seed
      again.seed = 0
      assert config_lib.differences(again, seeded[name]) == {}
  assert pipeline_lib.seed_runs(config, 'finetune_scratch') == {
      0: 'finetune_scratch', 2: 'finetune_scratch_seed2', 1: 'finetune_scratch_seed1'}
  for seeds in ((0,), (1, 1), (-1,), (1.5,), ([1],)):
    config.finetune.extra_seeds = seeds
    with pytest.raises(ConfigError, match=r'finetune.extra_seeds=.* is invalid; allowed: a tuple '
                                          r'of distinct integer seeds >= 0 other than '
                                          r'pretrain.seed=0'):
      pipeline_lib.validate_pipeline(config)
  config.finetune.extra_seeds = ()
  # finetune.scratch_weight_init changes the scratch run's initial weights, and nothing else.
  config.pretrain.model.weight_init = 'gpt2'
  config.finetune.scratch_weight_init = 'lecun'
  pipeline_lib.validate_pipeline(config)
  runs = pipeline_lib.pipeline_runs(config, '/w')
  assert {name: r.model.weight_init for name, r in runs.items()} == {
      'pretrain': 'gpt2', 'finetune_pretrained': 'gpt2',
      'finetune_pretrained_linear_probe': 'gpt2', 'finetune_scratch': 'lecun'}
  config.finetune.scratch_weight_init = 'xavier'
  with pytest.raises(ConfigError, match=r"finetune.scratch_weight_init='xavier' is invalid; "
                                        r"allowed: '' \(the pretraining model's\), or one of "
                                        r"\('lecun', 'gpt2'\)"):
    pipeline_lib.validate_pipeline(config)
  image = pipeline_config()  # the seed VAE: no weight_init to set
  image.finetune.scratch_weight_init = 'lecun'
  with pytest.raises(ConfigError, match=r"allowed: '' \(model 'vae' has no weight_init\)"):
    pipeline_lib.validate_pipeline(image)


def test_compare_puts_several_pipelines_in_one_table(text_run, image_run, capsys, tmp_path):
  (_, text_dir, _), (_, image_dir, _) = text_run, image_run
  # The report as on disk, which compare reads: test_rerun_resumes_and_retrains_nothing may have
  # rewritten it since the fixture ran, with the rerun's seconds added to the wall times.
  text_report = json.loads((text_dir / 'report.json').read_text())
  assert cli.main(['compare', str(text_dir), str(image_dir), str(text_dir)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith('| pipeline | entry | pretraining |')
  rows = [line.split(' | ') for line in lines[2:]]
  # Each pipeline's pretrained and scratch rows (the repeated folder's too); a baseline or
  # majority row once per dataset and method.
  # Feature probes are the pipeline's own, so never left out.
  probes = ['probe_pretrained', 'probe_random']
  assert [r[1] for r in rows] == ['pretrained', 'scratch', *probes, 'baseline', 'majority',
                                  'pretrained', 'scratch', *probes, 'baseline', 'majority',
                                  'pretrained', 'scratch', *probes]
  assert rows[2][2].endswith('pretrained encoder (gpt / causal_lm)') and rows[2][3] != ''
  assert rows[3][3] == ''
  pretrained = text_report['tasks']['classification']['pretrained']
  assert rows[0][2] == 'gpt / causal_lm (full)' and rows[6][2] == 'vae / seed (linear_probe)'
  assert rows[0][6] == f'{pretrained["macro_f1"]:.3f}'
  assert rows[1][2] == 'none' and rows[1][3] == ''
  # Pretraining steps and seconds on the pretrained rows: the pretraining run's.
  assert rows[0][3] == str(text_report['pretrain']['steps'])
  assert rows[0][4] == str(round(text_report['wall_seconds']['pretrain']))
  # A report.json from before issue 19 names no pretraining: its rows but scratch's were.
  for entry in text_report['tasks']['classification'].values():  # this test's own copy
    entry.pop('pretraining', None)
  (tmp_path / 'report.json').write_text(json.dumps(text_report))
  assert cli.main(['compare', str(tmp_path)]) == 0
  old_rows = [line.split(' | ') for line in capsys.readouterr().out.strip().splitlines()[2:]]
  assert [r[2] for r in old_rows[:2]] == ['pretrained (full)', 'none']
  assert cli.main(['compare', str(text_dir / 'missing')]) == 2
  assert 'report.json not found' in capsys.readouterr().err
