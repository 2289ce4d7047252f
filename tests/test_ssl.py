"""ELECTRA replaced-token detection and contrastive objectives (SimCSE, SimCLR): labels, gradient
paths, losses against NumPy, views, and tiny runs that learn through the pipeline."""

import json
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import config_with
from sslm_jax import pipeline_config as pipeline_lib
from sslm_jax import runs
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.objectives import contrastive, electra, lm
from sslm_jax.tasks import Context
from sslm_jax.tasks.base import restore_matching
from sslm_jax.tasks.classification import ClassificationTask
from sslm_jax.tasks.language import LanguageTask
from sslm_jax.train import loop

VOCAB = lm.Vocab(size=40, pad_id=0, bos_id=2, eos_id=3, mask_id=4, first_normal_id=5)
RTD = types.SimpleNamespace(mask_rate=0.3, discriminator_weight=50.0, sampling_temperature=1.0)
# A tiny ELECTRA pretraining run on the `corpus` fixture.
TINY_RUN = {'data.name': 'text_files/fortunes', 'data.eval_split': 'validation',
            'text.vocab_size': 320, 'text.seq_len': 24, 'text.num_samples': 0,
            'model.name': 'electra', 'model.num_layers': 1, 'model.num_heads': 2,
            'model.embed_dim': 32, 'model.mlp_dim': 64, 'model.max_len': 24,
            'model.generator_fraction': 0.5, 'objective.name': 'electra',
            'optimizer.learning_rate': 3e-3, 'train.batch_size': 16, 'train.num_steps': 30,
            'train.eval_batch_size': 64, 'train.log_every_steps': 5, 'train.eval_every_steps': 30,
            'train.checkpoint_every_steps': 30, 'train.progress_bar': False}


class StandIn(nn.Module):
  """ELECTRA's interface at a fraction of its compile time: a generator and a discriminator on
  one shared token embedding (as `models.electra.Electra`'s), each a dense layer."""

  @nn.compact
  def __call__(self, tokens, positions=None, *, part, padding_mask=None, deterministic=True):
    del padding_mask, deterministic
    embed = nn.Embed(VOCAB.size, 8, name='shared_embed')
    h = embed(tokens)
    if part == 'generator':
      h = jnp.take_along_axis(nn.Dense(8, name='generator_dense')(h), positions[..., None], 1)
      bias = self.param('generator_bias', nn.initializers.zeros, (VOCAB.size,))
      return embed.attend(h) + bias
    return nn.Dense(1, name='discriminator_dense')(jnp.tanh(h))[..., 0]

  def generator_logits(self, tokens, positions, **kwargs):
    return self(tokens, positions, part='generator', **kwargs)

  def discriminator_logits(self, tokens, **kwargs):
    return self(tokens, part='discriminator', **kwargs)


def stand_in():
  """The stand-in and its parameters (drawn directly: `init` would cost more than the test)."""
  rng = np.random.default_rng(0)
  dense = lambda n, m: {'kernel': jnp.asarray(rng.normal(0, 0.3, (n, m)), jnp.float32),  # noqa: E731
                        'bias': jnp.zeros(m)}
  return StandIn(), {'shared_embed': {'embedding': jnp.asarray(rng.normal(0, 1, (VOCAB.size, 8)),
                                                               jnp.float32)},
                     'generator_dense': dense(8, 8), 'discriminator_dense': dense(8, 1),
                     'generator_bias': jnp.zeros(VOCAB.size)}


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


@pytest.fixture(scope='module')
def rtd():
  """(tokens, masked positions, terms, gradients of each loss) of one ELECTRA step of the stand-in
  model, all from one compilation. Every other normal token is 7 and the generator samples 7
  almost surely: a masked 7 is refilled with itself (label "original"), any other masked token
  is replaced."""
  batch = rows(seed=1)
  tokens = np.asarray(batch['tokens'])
  tokens = np.where((tokens >= VOCAB.first_normal_id) & (np.arange(24) % 2 == 0), 7, tokens)
  batch['tokens'] = jnp.asarray(tokens)
  model, params = stand_in()
  params['generator_bias'] = params['generator_bias'].at[7].set(1e4)
  rng = jax.random.PRNGKey(5)

  def loss_sums(p):
    terms = electra.electra_terms(p, batch, rng, model=model, config=RTD, vocab=VOCAB,
                                  train=True)
    sums = jnp.stack([(terms[f'{part}_{kind}'] * terms[f'{part}_weight']).sum()
                      for part, kind in (('discriminator', 'bce'), ('generator', 'nll'))])
    return sums, terms

  grads, terms = jax.jit(jax.jacrev(loss_sums, has_aux=True))(params)  # leaves: (2, *shape)
  positions, valid = electra.choose_positions(batch['tokens'], batch['mask'],
                                              jax.random.split(rng, 4)[0], vocab=VOCAB,
                                              mask_rate=RTD.mask_rate)
  masked = np.zeros(tokens.shape, bool)
  for i, (pos, ok) in enumerate(zip(np.asarray(positions), np.asarray(valid))):
    masked[i, pos[ok]] = True
  return tokens, masked, terms, grads


def test_replaced_labels_are_exactly_where_the_sample_differs_from_the_original(rtd):
  tokens, masked, terms, _ = rtd
  np.testing.assert_array_equal(np.asarray(terms['corrupted']), np.where(masked, 7, tokens))
  replaced = np.asarray(terms['replaced'])
  np.testing.assert_array_equal(replaced, masked & (tokens != 7))
  assert replaced.any() and (masked & ~replaced).any()  # both kinds of masked position occur


def test_no_gradient_reaches_the_generator_from_the_discriminator(rtd):
  grads = rtd[3]
  touched = [{k for k, g in grads.items() if any(np.asarray(x[i]).any()
                                                 for x in jax.tree.leaves(g))} for i in (0, 1)]
  # The sample is an integer drawn behind stop_gradient: the discriminator's loss reaches the
  # shared embedding and its own layer, never the generator's; the MLM loss the other way.
  assert touched[0] == {'shared_embed', 'discriminator_dense'}
  assert touched[1] == {'shared_embed', 'generator_dense', 'generator_bias'}


def test_sampling_temperature_flattens_the_generators_distribution():
  # Three normal tokens at probabilities 0.7, 0.2 and 0.1 (specials high, never drawn): at
  # temperature T the sample follows p ** (1 / T), renormalised.
  p = np.array([0.7, 0.2, 0.1])
  logits = np.full(VOCAB.first_normal_id + 3, 5.0)
  logits[VOCAB.first_normal_id:] = np.log(p)
  logits = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (200, 100, len(logits)))
  n = 200 * 100
  for temperature in (1.0, 3.0):
    drawn = np.asarray(electra.sample_replacements(logits, jax.random.PRNGKey(0), VOCAB,
                                                   temperature)).ravel()
    assert drawn.min() >= VOCAB.first_normal_id
    counts = np.bincount(drawn - VOCAB.first_normal_id, minlength=3)
    expected = p ** (1 / temperature) / (p ** (1 / temperature)).sum()
    # Binomial counts: 5 standard deviations (at most 0.018 of 20,000 draws) is never exceeded
    # by chance, while 0.7 against 0.45 at T = 3 is 0.25.
    np.testing.assert_allclose(counts / n, expected, atol=5 * np.sqrt(0.25 / n))


def test_intensity_jitter_scales_brightness_and_contrast_within_the_strengths():
  rng = np.random.default_rng(0)
  # Grey images in [-1, 0] ([0, 0.5] as intensities): no brightness factor up to 1.4 pushes
  # them out of range, so nothing is clipped and each factor can be read back.
  images = jnp.asarray(rng.uniform(-1, 0, (64, 6, 6, 1)), jnp.float32)
  x = (np.asarray(images) + 1) / 2
  brighter = (np.asarray(contrastive.jitter(images, jax.random.PRNGKey(1), brightness=0.4,
                                            contrast=0.0)) + 1) / 2
  factor = brighter.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))  # one an image, in [0.6, 1.4]
  # float32 rounding of values below 1 (the [-1, 1] <-> [0, 1] maps round to about 1e-7).
  np.testing.assert_allclose(brighter, x * factor[:, None, None, None], atol=1e-6)
  assert 0.6 <= factor.min() and factor.max() <= 1.4 and np.ptp(factor) > 0.4
  # Intensities in [0.25, 0.75]: a spread about the mean scaled up to 1.4 stays in [0, 1].
  images = jnp.asarray(rng.uniform(-0.5, 0.5, (64, 6, 6, 1)), jnp.float32)
  x = (np.asarray(images) + 1) / 2
  contrasted = (np.asarray(contrastive.jitter(images, jax.random.PRNGKey(2), brightness=0.0,
                                              contrast=0.4)) + 1) / 2
  # The mean stays, the spread about it scales by one factor an image in [0.6, 1.4]; 1e-5:
  # float32 rounding of a mean and a deviation over 36 pixels (about 1e-7), with room.
  np.testing.assert_allclose(contrasted.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-5)
  spread = contrasted.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
  assert 0.6 - 1e-5 <= spread.min() and spread.max() <= 1.4 + 1e-5 and np.ptp(spread) > 0.4
  # Clipped to the images' range whatever the factor.
  white = contrastive.jitter(jnp.ones((8, 4, 4, 1)), jax.random.PRNGKey(3), brightness=1.0,
                             contrast=1.0)
  assert float(white.max()) <= 1.0 and float(white.min()) >= -1.0


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
  keep = np.r_[rows_, rows_] > 0
  loss, correct = jax.jit(contrastive.info_nce, static_argnums=2)(a, b_close, 0.05, rows_)
  # float32 matmul and logsumexp against float64 NumPy: agreement to float32 rounding
  np.testing.assert_allclose(np.asarray(loss)[:5], info_nce_reference(a, b_close, 0.05, rows_),
                             rtol=2e-5, atol=2e-5)
  assert not np.asarray(loss)[5:].any() and not np.asarray(correct)[5:].any()
  assert np.asarray(correct)[:5].mean() > 0.8
  loss, correct = jax.jit(contrastive.nt_xent, static_argnums=2)(a, b_close, 0.5, rows_)
  np.testing.assert_allclose(np.asarray(loss)[keep], nt_xent_reference(a, b_close, 0.5, rows_),
                             rtol=2e-5, atol=2e-5)
  assert not np.asarray(loss)[~keep].any() and not np.asarray(correct)[~keep].any()
  assert np.asarray(correct)[keep].mean() > 0.8


def test_views_are_random_crops_of_the_image():
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 12, 12, 1), minval=-1, maxval=1)
  crop = jax.jit(contrastive.random_resized_crop, static_argnames=('min_scale', 'log_ratio'))
  whole = crop(images, jax.random.PRNGKey(1), min_scale=1.0, log_ratio=0.0)
  # The whole image resampled at its own pixel centres: itself, up to float rounding.
  np.testing.assert_allclose(whole, images, atol=1e-5)
  views = np.asarray(crop(images, jax.random.PRNGKey(2), min_scale=0.3))
  assert np.abs(views).max() <= 1.0 + 1e-6  # bilinear: within the image's range
  # Crops of 30-100% of the area at random aspect ratios: every view is another picture.
  assert all(np.abs(v - x).max() > 0.1 for v, x in zip(views, np.asarray(images)))
  # A known box: rows 3-8 and columns 6-11 of 12, i.e. the slice resized. Inside a border of one
  # pixel both read the same input points; at the edge the slice's resize clamps to the slice,
  # the crop reads on into the image. Float rounding of the sample positions only.
  box = [jnp.full((8,), v) for v in (3 / 12, 6 / 12, 6 / 12, 6 / 12)]
  cropped = np.asarray(contrastive.crop_and_resize(images, *box))
  sliced = np.asarray(jax.image.resize(images[:, 3:9, 6:12], images.shape, 'linear'))
  np.testing.assert_allclose(cropped[:, 1:-1, 1:-1], sliced[:, 1:-1, 1:-1], atol=1e-5)


def test_a_view_is_flipped_left_to_right_half_the_time():
  # A ramp rising left to right: any crop of it still rises, its mirror image falls.
  images = jnp.tile(jnp.linspace(-1, 1, 10)[None, None, :, None], (64, 10, 1, 1))
  views = np.asarray(jax.jit(contrastive.augment, static_argnames='views')(
      images, jax.random.PRNGKey(3), contrastive.Views(min_scale=0.5)))
  step = np.diff(views, axis=2)  # along the width
  rising, falling = (step > 0).all(axis=(1, 2, 3)), (step < 0).all(axis=(1, 2, 3))
  assert (rising | falling).all()  # each view is a crop, or a crop mirrored left to right
  assert 16 < falling.sum() < 48  # binomial(64, 1/2): outside this 1 time in 10^4


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
  assert train[-1]['loss'] < train[0]['loss'] - 1.0, [r['loss'] for r in train]
  assert train[-1]['generator_loss'] < train[0]['generator_loss']
  final = [r for r in records if r['split'] == 'validation'][-1]
  assert 0 < final['replaced_fraction'] < 0.3 and final['discriminator_accuracy'] > 0.5
  # The discriminator reads its input: below the binary entropy of the replaced fraction (a
  # constant "original" reaches it, about 0.37 nats here), and it finds replaced tokens (0.23
  # and 0.53 when written).
  p = final['replaced_fraction']
  assert final['discriminator_loss'] < 0.9 * -(p * np.log(p) + (1 - p) * np.log(1 - p))
  assert final['replaced_recall'] > 0.2
  # A pipeline's classifier on this run: its encoder is the whole ELECTRA model, bit for bit.
  pipeline = pipeline_lib.pipeline_config(config)
  pipeline.finetune.text.seq_len = TINY_RUN['text.seq_len']
  finetune = pipeline_lib.pipeline_runs(pipeline, str(workdir.parent))['finetune_pretrained']
  finetune.classifier.init_from = str(workdir)
  finetune.text.tokenizer_path = str(workdir / 'tokenizer.model')
  _, pretrained, _ = runs.restore_params(str(workdir))
  context = Context(str(workdir / 'unused'), training=False, restore=runs.restore)
  task = ClassificationTask(finetune, context)
  shapes = task.init_params(jax.random.PRNGKey(0))  # the classifier's tree, not computed
  assert set(shapes) == {'encoder', 'head'}
  assert jax.tree.structure(shapes['encoder']) == jax.tree.structure(pretrained)
  # What ClassificationTask.init_params puts under 'encoder' (shapes and tokenizer checked).
  loaded, step = restore_matching(context, str(workdir), None, key='classifier.init_from',
                                  config=finetune, tokenizer=task.tokenizer,
                                  like=shapes['encoder'])
  assert step == TINY_RUN['train.num_steps']
  for ours, theirs in zip(jax.tree.leaves(loaded), jax.tree.leaves(pretrained)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_simcse_continues_from_the_electra_run(electra_run, tmp_path):
  config, workdir = electra_run
  simcse = runs.reshape(config, objective='simcse')
  simcse.train.init_from = str(workdir)
  simcse.text.tokenizer_path = str(workdir / 'tokenizer.model')
  context = Context(str(tmp_path), training=True, restore=runs.restore)
  task = LanguageTask(simcse, context)
  _, pretrained, _ = runs.restore_params(str(workdir))
  started = task.init_params(jax.random.PRNGKey(7))
  for ours, theirs in zip(jax.tree.leaves(started), jax.tree.leaves(pretrained)):
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  batch = {k: jnp.asarray(v[:16]) for k, v in task.rows('validation').items()
           if k in ('tokens', 'mask')}
  loss, metrics = jax.jit(task.loss_fn)(started, batch, jax.random.PRNGKey(0))
  # Two dropout views of each of 16 rows: the partners are found well above chance (1/16; 8 of
  # 16 when written, after 30 steps of ELECTRA), and the views differ (a loss of 0 would mean
  # identical views at this temperature).
  assert 1e-3 < float(loss) < np.log(16) and float(metrics['accuracy']) >= 0.25, (loss, metrics)
  simcse.train.init_from = str(tmp_path / 'nothing')
  with pytest.raises(DataError, match=r"train.init_from='.*nothing' holds no run"):
    LanguageTask(simcse, context).init_params(jax.random.PRNGKey(7))


def test_simclr_pretraining_learns_on_images(idx_dataset, tmp_path):
  data_dir, manual_dir = idx_dataset
  config = config_with({'model.name': 'simclr', 'objective.name': 'simclr',
                        'model.input_size': 8, 'model.encoder_features': (8,),
                        'model.encoder_out_features': 16, 'model.projection_dim': 8,
                        'objective.temperature': 0.5, 'data.name': 'idx_images/mnist',
                        'data.data_dir': data_dir, 'data.manual_dir': manual_dir,
                        'train.batch_size': 16, 'train.num_steps': 30,
                        'train.eval_batch_size': 64, 'train.log_every_steps': 10,
                        'train.eval_every_steps': 30,
                        'train.num_pictures': 8, 'train.progress_bar': False})
  summary = loop.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').open()]
  losses = [r['loss'] for r in records if r['split'] == 'train']
  assert losses[-1] < losses[0] - 0.2, losses  # from about ln(31), chance among 31 views
  # Chance picks the partner among 2 * 64 - 1 views of an eval batch.
  assert summary['test_accuracy'] > 5 / 127
  assert (tmp_path / 'views.png').exists()
  # A classifier's encoder is the whole SimCLR model (its head reads the features h).
  classifier = runs.reshape(config, objective='classification')
  classifier.classifier.init_from = str(tmp_path)
  task = ClassificationTask(classifier, Context(str(tmp_path / 'unused'), training=False,
                                                restore=runs.restore))
  shapes = task.init_params(jax.random.PRNGKey(0))  # traced, not computed
  assert shapes['head']['kernel'].shape == (16, 10)  # encoder_out_features -> classes
  _, pretrained, _ = runs.restore_params(str(tmp_path))
  assert jax.tree.structure(shapes['encoder']) == jax.tree.structure(pretrained)
