"""ELECTRA replaced-token detection and contrastive objectives (SimCSE, SimCLR): labels, gradient
paths, losses against NumPy, views, and tiny runs that learn through the pipeline."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_with
from sslm_jax import pipeline_config as pipeline_lib
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.models.electra import Electra
from sslm_jax.objectives import contrastive, electra, lm
from sslm_jax.tasks.language import LanguageTask
from sslm_jax.train import loop

VOCAB = lm.Vocab(size=40, pad_id=0, bos_id=2, eos_id=3, mask_id=4, first_normal_id=5)
RTD = types.SimpleNamespace(mask_rate=0.3, discriminator_weight=50.0)
TINY_ELECTRA = dict(vocab_size=VOCAB.size, num_layers=1, num_heads=4, embed_dim=16, mlp_dim=32,
                    max_len=24, generator_fraction=0.5)
# A tiny ELECTRA pretraining run on the `corpus` fixture, and its classifier settings.
TINY_RUN = {'data.name': 'text_files/fortunes', 'data.eval_split': 'validation',
            'text.vocab_size': 320, 'text.seq_len': 24, 'text.num_samples': 0,
            'model.name': 'electra', 'model.num_layers': 1, 'model.num_heads': 2,
            'model.embed_dim': 32, 'model.mlp_dim': 64, 'model.max_len': 24,
            'model.generator_fraction': 0.5, 'objective.name': 'electra',
            'optimizer.learning_rate': 3e-3, 'train.batch_size': 16, 'train.num_steps': 30,
            'train.eval_batch_size': 64, 'train.log_every_steps': 5, 'train.progress_bar': False}


def tiny_electra(tokens):
  model = Electra(**TINY_ELECTRA)
  return model, model.init(jax.random.PRNGKey(0), tokens)['params']


def rows(seed=0, batch=6, length=24):
  """`bos` + random normal tokens + `eos`, padded: real lengths from 3 to `length`."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(VOCAB.first_normal_id, VOCAB.size, (batch, length))
  lengths = rng.integers(3, length + 1, batch)
  real = np.arange(length)[None, :] < lengths[:, None]
  tokens[:, 0] = VOCAB.bos_id
  tokens[np.arange(batch), lengths - 1] = VOCAB.eos_id
  return {'tokens': jnp.asarray(np.where(real, tokens, VOCAB.pad_id), jnp.int32),
          'mask': jnp.asarray(real)}


def test_masking_picks_distinct_normal_real_tokens_at_the_rate():
  batch = rows(batch=64)
  positions, valid = electra.choose_positions(batch['tokens'], batch['mask'],
                                              jax.random.PRNGKey(1), vocab=VOCAB, mask_rate=0.3)
  tokens, positions, valid = map(np.asarray, (batch['tokens'], positions, valid))
  assert positions.shape == (64, electra.max_predictions(24, 0.3))
  for row, pos, ok in zip(tokens, positions, valid):
    candidates = int((row >= VOCAB.first_normal_id).sum())
    assert len(set(pos.tolist())) == len(pos)
    assert (row[pos[ok]] >= VOCAB.first_normal_id).all()  # never bos, eos, padding
    assert ok.sum() == max(1, round(0.3 * candidates))


def test_replaced_labels_are_exactly_where_the_sample_differs_from_the_original():
  batch = rows(seed=1)
  # Every other normal token is 7, and the generator samples 7 almost surely: a masked 7 is
  # refilled with itself (label "original"), any other masked token is replaced.
  tokens = np.asarray(batch['tokens'])
  tokens = np.where((tokens >= VOCAB.first_normal_id) & (np.arange(24) % 2 == 0), 7, tokens)
  batch['tokens'] = jnp.asarray(tokens)
  model, params = tiny_electra(batch['tokens'])
  params['generator_bias'] = params['generator_bias'].at[7].set(1e4)
  rng = jax.random.PRNGKey(5)
  terms = jax.jit(lambda p: electra.electra_terms(p, batch, rng, model=model, config=RTD,
                                                 vocab=VOCAB, train=True))(params)
  positions, valid = electra.choose_positions(batch['tokens'], batch['mask'],
                                              jax.random.split(rng, 4)[0], vocab=VOCAB,
                                              mask_rate=RTD.mask_rate)
  masked = np.zeros(tokens.shape, bool)
  for i, (pos, ok) in enumerate(zip(np.asarray(positions), np.asarray(valid))):
    masked[i, pos[ok]] = True
  expected_corrupted = np.where(masked, 7, tokens)
  np.testing.assert_array_equal(np.asarray(terms['corrupted']), expected_corrupted)
  replaced = np.asarray(terms['replaced'])
  np.testing.assert_array_equal(replaced, masked & (tokens != 7))
  assert replaced.any() and (masked & ~replaced).any()  # both kinds of masked position occur


def test_no_gradient_reaches_the_generator_from_the_discriminator():
  batch = rows(seed=2)
  model, params = tiny_electra(batch['tokens'])
  model = model.clone(dropout_rate=0.1)
  rng = jax.random.PRNGKey(3)

  def term_mean(name):
    def f(p):
      terms = electra.electra_terms(p, batch, rng, model=model, config=RTD, vocab=VOCAB,
                                    train=True)
      return (terms[name] * terms[name.split('_')[0] + '_weight']).sum()
    return jax.jit(jax.grad(f))(params)

  from_discriminator = term_mean('discriminator_bce')
  from_generator = term_mean('generator_nll')
  for name, grads in from_discriminator.items():
    zero = all(not np.asarray(g).any() for g in jax.tree.leaves(grads))
    assert zero == name.startswith('generator'), name  # the sample carries no gradient
  for name, grads in from_generator.items():
    zero = all(not np.asarray(g).any() for g in jax.tree.leaves(grads))
    assert zero == name.startswith('discriminator_'), name
  # The shared embeddings learn from both losses; the discriminator's blocks from its own.
  embed = lambda g: np.asarray(g['discriminator']['embed']['embedding'])  # noqa: E731
  assert embed(from_discriminator).any() and embed(from_generator).any()
  assert not any(np.asarray(g).any() for g in jax.tree.leaves(
      from_generator['discriminator']['blocks_0']))


def info_nce_reference(a, b, t, rows):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  losses = []
  for i in np.flatnonzero(rows):
    logits = np.array([a[i] @ b[j] / t for j in np.flatnonzero(rows)])
    target = a[i] @ b[i] / t
    losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - target)
  return np.array(losses)


def nt_xent_reference(z1, z2, t, rows):
  keep = np.flatnonzero(np.r_[rows, rows])
  z = np.concatenate([z1, z2]).astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n, losses = len(z1), []
  for k in keep:
    partner = (k + n) % (2 * n)
    others = [j for j in keep if j != k]
    logits = np.array([z[k] @ z[j] / t for j in others])
    losses.append(np.log(np.exp(logits).sum()) - z[k] @ z[partner] / t)
  return np.array(losses)


def test_info_nce_and_nt_xent_match_numpy_and_skip_padded_rows():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 7, 5)).astype(np.float32)
  rows_ = np.array([1, 1, 1, 1, 1, 0, 0], np.float32)
  b_close = a + 0.3 * b  # partners similar: accuracy near 1, at t = 0.05 losses far from log n
  for t in (0.05, 0.5):
    loss, correct = contrastive.info_nce(a, b_close, t, rows_)
    # float32 matmul and logsumexp against float64 NumPy: agreement to float32 rounding
    np.testing.assert_allclose(np.asarray(loss)[:5], info_nce_reference(a, b_close, t, rows_),
                               rtol=2e-5, atol=2e-5)
    assert not np.asarray(loss)[5:].any() and not np.asarray(correct)[5:].any()
    loss, correct = contrastive.nt_xent(a, b_close, t, rows_)
    keep = np.r_[rows_, rows_] > 0
    np.testing.assert_allclose(np.asarray(loss)[keep], nt_xent_reference(a, b_close, t, rows_),
                               rtol=2e-5, atol=2e-5)
    assert not np.asarray(loss)[~keep].any()
  assert np.asarray(correct)[keep].mean() > 0.8


def test_views_are_crops_of_the_image_and_flips():
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 12, 12, 1), minval=-1, maxval=1)
  whole = contrastive.random_resized_crop(images, jax.random.PRNGKey(1), min_scale=1.0,
                                          log_ratio=0.0)
  # The whole image resampled at its own pixel centres: itself, up to float rounding.
  np.testing.assert_allclose(whole, images, atol=1e-5)
  views = np.asarray(contrastive.augment(images, jax.random.PRNGKey(2), min_scale=0.3))
  assert views.shape == images.shape and np.abs(views).max() <= 1.0 + 1e-6
  differ = [np.abs(v - x).max() > 0.1 for v, x in zip(views, np.asarray(images))]
  assert all(differ)  # crops of at most the whole area at random aspect ratios: all differ


@pytest.fixture(scope='module')
def electra_run(corpus, tmp_path_factory):
  """(config, workdir) of a tiny ELECTRA pretraining run on the generated fortunes."""
  data_dir, manual_dir = corpus
  config = config_with({**TINY_RUN, 'data.data_dir': data_dir, 'data.manual_dir': manual_dir})
  workdir = tmp_path_factory.mktemp('electra')
  loop.train_and_evaluate(config, str(workdir))
  return config, workdir


def test_electra_pretraining_learns_and_its_discriminator_is_the_classifiers_encoder(
    electra_run):
  config, workdir = electra_run
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').open()]
  train = [r for r in records if r['split'] == 'train']
  print([(r['loss'], r['generator_loss'], r['discriminator_accuracy']) for r in train])
  assert train[-1]['loss'] < train[0]['loss'] - 1.0, [r['loss'] for r in train]
  assert train[-1]['generator_loss'] < train[0]['generator_loss']
  final = [r for r in records if r['split'] == 'validation'][-1]
  assert 0 < final['replaced_fraction'] < 0.3 and final['discriminator_accuracy'] > 0.5
  # A pipeline's classifier on this run: its encoder is the whole ELECTRA model, bit for bit.
  pipeline = pipeline_lib.pipeline_config()
  pipeline.pretrain = config
  pipeline.finetune.text.seq_len = TINY_RUN['text.seq_len']
  finetune = pipeline_lib.pipeline_runs(pipeline, str(workdir.parent))['finetune_pretrained']
  finetune.classifier.init_from = str(workdir)
  finetune.text.tokenizer_path = str(workdir / 'tokenizer.model')
  _, pretrained, _ = loop.restore_params(str(workdir))
  encoder = loop.setup(finetune, str(workdir / 'unused')).init_state.params['encoder']
  assert jax.tree.structure(encoder) == jax.tree.structure(pretrained)
  for ours, theirs in zip(jax.tree.leaves(encoder), jax.tree.leaves(pretrained)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_simcse_continues_from_the_electra_run(electra_run, tmp_path):
  config, workdir = electra_run
  simcse = config.copy_and_resolve_references()
  simcse.objective.name = 'simcse'
  simcse.train.init_from = str(workdir)
  simcse.text.tokenizer_path = str(workdir / 'tokenizer.model')
  task = LanguageTask(simcse, str(tmp_path), training=True)
  _, pretrained, _ = loop.restore_params(str(workdir))
  started = task.init_params(jax.random.PRNGKey(7))
  for ours, theirs in zip(jax.tree.leaves(started), jax.tree.leaves(pretrained)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  batch = {k: jnp.asarray(v[:16]) for k, v in task.rows('validation').items()
           if k in ('tokens', 'mask')}
  loss, metrics = jax.jit(task.loss_fn)(started, batch, jax.random.PRNGKey(0))
  assert 0 < float(loss) < np.log(16) + 1 and 0 <= float(metrics['accuracy']) <= 1
  simcse.train.init_from = str(tmp_path / 'nothing')
  with pytest.raises(DataError, match=r"train.init_from='.*nothing' holds no run"):
    LanguageTask(simcse, str(tmp_path), training=True).init_params(jax.random.PRNGKey(7))


def test_simclr_pretraining_learns_on_images(idx_dataset, tmp_path):
  data_dir, manual_dir = idx_dataset
  config = config_with({'model.name': 'simclr', 'objective.name': 'simclr',
                        'model.input_size': 16, 'model.encoder_features': (8, 8),
                        'model.encoder_out_features': 16, 'model.projection_dim': 8,
                        'objective.temperature': 0.5, 'data.name': 'idx_images/mnist',
                        'data.data_dir': data_dir, 'data.manual_dir': manual_dir,
                        'train.batch_size': 32, 'train.num_steps': 40,
                        'train.eval_batch_size': 64, 'train.log_every_steps': 10,
                        'train.num_pictures': 8, 'train.progress_bar': False})
  summary = loop.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').open()]
  losses = [r['loss'] for r in records if r['split'] == 'train']
  assert losses[-1] < losses[0] - 0.3, losses
  # Chance picks the partner among 2 * 64 - 1 views of an eval batch.
  assert summary['test_accuracy'] > 5 / 127
  assert (tmp_path / 'views.png').exists()
