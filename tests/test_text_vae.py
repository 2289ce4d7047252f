"""The sentence VAE: its ELBO by hand, the remedies against posterior collapse, the bounds, a
tiny run beside its causal-LM baseline, and its uses (sampling, reconstruction, homotopy)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import SYLLABLES, config_with
from sslm_jax import cli
from sslm_jax import runs
from sslm_jax.config import ConfigError
from sslm_jax.runs import run_config, validate
from sslm_jax.eval import text_vae as tv_eval
from sslm_jax.models import GPT, build_classifier
from sslm_jax.models.conv_vae import reparameterize
from sslm_jax.models.text_vae import TextVAE, generate_from_latent, interpolate
from sslm_jax.objectives import lm
from sslm_jax.objectives import text_vae as tv
from sslm_jax.train import loop

VOCAB = lm.Vocab(size=24, pad_id=0, bos_id=2, eos_id=3, mask_id=4, first_normal_id=5)
TOKENS = np.array([[2, 7, 8, 9, 3, 0], [2, 10, 11, 3, 0, 0]], np.int32)  # bos doc eos pad


def tiny_model(**fields):
  return TextVAE(**{'vocab_size': VOCAB.size, 'latent_dim': 3, 'num_layers': 1, 'num_heads': 2,
                    'embed_dim': 8, 'mlp_dim': 16, 'max_len': 8, 'encoder_layers': 1, **fields})


MODEL = tiny_model()
SCHEDULE = tv.Settings(kl_schedule='linear', kl_warmup_steps=10)


def batch_at(step):
  return {'tokens': TOKENS, 'mask': TOKENS != 0, 'step': np.full(2, step, np.int32)}


@pytest.fixture(scope='module')
def params():
  return jax.jit(MODEL.init)(jax.random.PRNGKey(0), jnp.asarray(TOKENS),
                             jax.random.PRNGKey(1))['params']


@functools.lru_cache
def loss_fn(settings):
  """The jitted loss of MODEL (compiled once per settings: compiling dominates on a busy CPU)."""
  return jax.jit(functools.partial(tv.text_vae_loss, model=MODEL, config=None, vocab=VOCAB,
                                   settings=settings))


def log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


# --- the objective ---

def test_elbo_is_reconstruction_plus_kl_by_hand(params):
  rng = jax.random.PRNGKey(7)
  loss, metrics = loss_fn(SCHEDULE)(params, batch_at(10), rng)  # beta = 1 from step 10 on

  @jax.jit
  def by_hand(params):  # the same draw of z: the loss splits its key (word dropout, z, dropout)
    mean, logvar = MODEL.apply({'params': params}, TOKENS, method=TextVAE.encode)
    z = reparameterize(jax.random.split(rng, 3)[1], mean, logvar)
    return mean, logvar, MODEL.apply({'params': params}, TOKENS[:, :-1], z,
                                     method=TextVAE.decode)

  mean, logvar, logits = by_hand(params)
  logp = log_softmax(logits)
  recon = np.zeros(2)
  for row in range(2):
    for pos in range(TOKENS.shape[1] - 1):
      if TOKENS[row, pos + 1] != 0:  # every real target: doc tokens and eos
        recon[row] -= logp[row, pos, TOKENS[row, pos + 1]]
  mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  kl = 0.5 * (mean ** 2 + np.exp(logvar) - 1 - logvar).sum(-1)
  assert metrics['recon'] == pytest.approx(recon.mean(), rel=1e-5)
  assert metrics['kl'] == pytest.approx(kl.mean(), rel=1e-5)
  assert metrics['elbo_nll'] == pytest.approx(recon.mean() + kl.mean(), rel=1e-5)
  targets = (TOKENS[:, 1:] != 0).sum()  # 4 + 3
  assert float(loss) == pytest.approx((recon.sum() + kl.sum()) / targets, rel=1e-5)
  # A closed-form case: KL(N((1, 0), diag(1, 4)) || N(0, I)) = 0.5 + 0.5 * (3 - log 4).
  kl_dims = tv.gaussian_kl(np.array([[1.0, 0.0]])[..., None],
                           np.log(np.array([[1.0, 4.0]]))[..., None])
  assert float(kl_dims.sum()) == pytest.approx(0.5 + 0.5 * (3 - math.log(4)), rel=1e-6)


def test_annealing_schedule_values(params):
  steps = np.array([0, 25, 50, 75, 100, 200])
  linear = tv.kl_weight(steps, schedule='linear', warmup_steps=100)
  np.testing.assert_allclose(linear, [0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)
  logistic = np.asarray(tv.kl_weight(steps, schedule='logistic', warmup_steps=100))
  np.testing.assert_allclose(logistic[[0, 2, 4, 5]], [0, 0.5, 1, 1], atol=1e-6)
  assert 0 < logistic[1] < 0.1 and 0.9 < logistic[3] < 1  # slow, fast, slow
  # Two cycles of 50 steps, each ramping over its first half, then 1.
  cyclical = tv.kl_weight(np.array([0, 10, 25, 40, 50, 60, 99, 100, 150]), schedule='cyclical',
                          warmup_steps=100, cycles=2, cycle_ratio=0.5)
  np.testing.assert_allclose(cyclical, [0, 0.4, 1, 1, 0, 0.4, 1, 1, 1], atol=1e-6)
  np.testing.assert_allclose(tv.kl_weight(steps, schedule='constant', warmup_steps=0), 1.0)

  # The loss reads the step of its batch: at step 0 of a linear warm-up the KL costs nothing.
  targets = (TOKENS[:, 1:] != 0).sum()
  for step, beta in ((0, 0.0), (5, 0.5), (10, 1.0)):
    loss, m = loss_fn(SCHEDULE)(params, batch_at(step), jax.random.PRNGKey(0))
    assert float(m['kl_weight']) == pytest.approx(beta)
    expected = 2 * (float(m['recon']) + beta * float(m['kl'])) / targets
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_word_dropout_rate_and_what_it_may_replace():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 40, 400)
  tokens = np.zeros((400, 41), np.int32)
  for i, n in enumerate(lengths):  # bos doc eos pad
    tokens[i, :n + 2] = [2, *rng.integers(5, 24, n), 3]
  inputs, mask = tokens[:, :-1], (tokens != 0)[:, :-1]
  droppable = mask & (inputs >= VOCAB.first_normal_id)
  for rate in (0.0, 0.25, 0.5, 1.0):
    out = np.asarray(tv.word_dropout(inputs, droppable, jax.random.PRNGKey(3), rate,
                                     VOCAB.mask_id))
    replaced = out != inputs
    assert not (replaced & ~droppable).any()  # bos, eos, padding never
    assert (out[replaced] == VOCAB.mask_id).all()
    fraction = replaced.sum() / droppable.sum()
    sd = math.sqrt(rate * (1 - rate) / droppable.sum())
    assert abs(fraction - rate) <= 4 * sd + 1e-9, (rate, fraction)


def test_free_bits_and_target_kl_thresholds():
  kl_dims = jnp.array([[0.1, 2.0, 0.5], [0.3, 4.0, 0.5]])  # batch means 0.2, 3.0, 0.5
  rows = jnp.ones(2)
  assert float(tv.kl_penalty(kl_dims, rows)) == pytest.approx(7.4)
  # Free bits 1 nat a dimension: 2 * (1 + 3 + 1); only the dimension above it has a gradient.
  free = lambda k: tv.kl_penalty(k, rows, free_bits=1.0)  # noqa: E731
  assert float(free(kl_dims)) == pytest.approx(10.0)
  np.testing.assert_allclose(jax.grad(free)(kl_dims), [[0, 1, 0], [0, 1, 0]])
  # Target KL per sentence: max(5, 3.7) per row; no gradient below it, the plain sum above.
  target = lambda k, t: tv.kl_penalty(k, rows, target_kl=t)  # noqa: E731
  assert float(target(kl_dims, 5.0)) == pytest.approx(10.0)
  np.testing.assert_allclose(jax.grad(target)(kl_dims, 5.0), 0.0)
  np.testing.assert_allclose(jax.grad(target)(kl_dims, 3.0), 1.0)
  # Padded rows (row_mask 0) count for nothing.
  assert float(tv.kl_penalty(kl_dims, jnp.array([1.0, 0.0]), free_bits=1.0)) == \
      pytest.approx(1 + 2 + 1)


def test_autoencoder_objective_decodes_the_mean_without_kl(params):
  autoencoder = loss_fn(tv.Settings(autoencoder=True))
  losses = [autoencoder(params, batch_at(0), jax.random.PRNGKey(s)) for s in (0, 1)]
  assert float(losses[0][0]) == pytest.approx(float(losses[1][0]))  # no noise: z is the mean
  loss, m = losses[0]
  assert float(m['kl_weight']) == 0 and float(m['kl']) > 0
  assert float(loss) == pytest.approx(2 * float(m['recon']) / (TOKENS[:, 1:] != 0).sum())


def test_importance_weighted_bound_is_at_most_the_elbo(params):
  stats = jax.jit(functools.partial(tv.text_vae_eval_stats, model=MODEL, num_samples=50))(
      params, batch_at(0), jax.random.PRNGKey(0))
  assert (stats['iw_nll'] <= stats['mc_elbo_nll'] + 1e-5).all()  # Jensen, the same samples
  assert (stats['iw_nll'] <= stats['elbo_nll']).all()  # the closed-form-KL ELBO
  np.testing.assert_allclose(stats['elbo_nll'], stats['recon'] + stats['kl'], rtol=1e-6)
  # (Without a latent every bound is the exact NLL: the baseline run below checks it.)


def test_latent_enters_at_the_scale_of_token_embeddings(params):
  # A default (std ~1) projection of z ~ N(0, I) drowns GPT's std-0.02 token embeddings in noise
  # and the decoder stalls near a unigram model.
  decoder = params['decoder']
  for name in ('latent_to_embedding', 'latent_to_prefix'):
    column_norms = np.linalg.norm(decoder[name]['kernel'], axis=0)  # output std for z ~ N(0, I)
    assert 0.005 < column_norms.mean() < 0.05, (name, column_norms)


def test_both_encoders_ignore_padding(params):
  gru = tiny_model(encoder_type='gru')
  gru_params = jax.eval_shape(gru.init, jax.random.PRNGKey(0), TOKENS, jax.random.PRNGKey(1))
  gru_params = jax.tree.map(lambda s: jnp.full(s.shape, 0.3, s.dtype) *
                            jnp.cos(jnp.arange(s.size, dtype=s.dtype).reshape(s.shape)),
                            gru_params['params'])  # any values: no compile of its init
  noisy = np.where(TOKENS == 0, 17, TOKENS)  # other tokens where the mask says padding

  @jax.jit
  def posteriors(params, gru_params):
    return [model.apply({'params': p}, t, TOKENS != 0, method=TextVAE.encode)
            for model, p in ((MODEL, params), (gru, gru_params)) for t in (TOKENS, noisy)]

  transformer_clean, transformer_noisy, gru_clean, gru_noisy = posteriors(params, gru_params)
  for clean, noisy_out in ((transformer_clean, transformer_noisy), (gru_clean, gru_noisy)):
    np.testing.assert_allclose(clean[0], noisy_out[0], atol=1e-6)
    np.testing.assert_allclose(clean[1], noisy_out[1], atol=1e-6)
  assert gru_clean[0].shape == (2, 3) and not np.allclose(gru_clean[0][0], gru_clean[0][1])


def test_active_units_and_mutual_information():
  rng = np.random.default_rng(0)
  n = 400
  # Dimension 0 carries the sentence (means spread, posteriors narrow), 1 a little, 2 nothing.
  means = np.stack([rng.normal(0, 3, n), rng.normal(0, 0.05, n), np.zeros(n)], axis=1)
  logvars = np.log(np.array([[1e-8, 1.0, 1.0]])).repeat(n, 0)
  assert tv_eval.active_units(means) == 1  # variance 0.0025 < 0.01 for dimension 1
  assert tv_eval.active_units(means, threshold=1e-3) == 2
  # Posteriors that never overlap tell the sentence apart: log N; identical ones: exactly 0.
  assert tv_eval.mutual_information(means, logvars) == pytest.approx(math.log(n), abs=0.05)
  assert tv_eval.mutual_information(np.zeros((n, 3)), np.zeros((n, 3))) == \
      pytest.approx(0.0, abs=1e-9)


def test_decoder_without_latent_is_a_gpt_and_latent_means_feed_a_classifier(params):
  lm_model = tiny_model(latent_conditioning='none')
  gpt = GPT(VOCAB.size, 1, 2, 8, 16, 8)
  gpt_params = jax.jit(gpt.init)(jax.random.PRNGKey(0), jnp.asarray(TOKENS))['params']
  lm_params = jax.eval_shape(lm_model.init, jax.random.PRNGKey(0), TOKENS,
                             jax.random.PRNGKey(1))['params']
  shapes = lambda t: jax.tree.map(lambda x: x.shape, t)  # noqa: E731
  assert list(lm_params) == ['decoder'] and shapes(lm_params['decoder']) == shapes(gpt_params)

  classifier = build_classifier(MODEL, num_classes=3)
  head = {'kernel': jnp.arange(9.0).reshape(3, 3) / 9, 'bias': jnp.ones(3)}

  @jax.jit
  def outputs(gpt_params, params):
    variables = {'params': {'encoder': params, 'head': head}}
    means, _ = MODEL.apply({'params': params}, TOKENS, method=TextVAE.encode)
    return (lm_model.apply({'params': {'decoder': gpt_params}}, TOKENS, None,
                           method=TextVAE.decode),
            gpt.apply({'params': gpt_params}, TOKENS),
            classifier.apply(variables, TOKENS, TOKENS != 0), means @ head['kernel'] + 1)

  as_lm, as_gpt, logits, expected = outputs(gpt_params, params)
  np.testing.assert_allclose(as_lm, as_gpt, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_generation_from_a_latent_is_the_same_with_and_without_the_cache(params):
  """Greedy decoding given z: the key/value cache (prefix with the prompt, then one token a step
  with z's embedding) gives the tokens of recomputing the whole prefix each step."""
  z = jax.random.normal(jax.random.PRNGKey(5), (3, MODEL.latent_dim)) * 3
  prompt = jnp.full((3, 1), VOCAB.bos_id, jnp.int32)
  runs = [generate_from_latent(MODEL, params, z, prompt, max_new_tokens=6,
                               rng=jax.random.PRNGKey(0), temperature=0.0, use_cache=cache)
          for cache in (True, False)]
  np.testing.assert_array_equal(runs[0], runs[1])
  assert runs[0].shape == (3, 7) and len({tuple(r) for r in np.asarray(runs[0])}) > 1  # z matters


def test_text_vae_config_errors_name_the_key():
  config = run_config('text_vae', 'text_vae')
  config.text_vae.kl_schedule = 'linear'  # without a warm-up length
  config.text_vae.free_bits, config.text_vae.target_kl = 0.5, 2.0
  config.model.latent_conditioning = 'sideways'
  with pytest.raises(ConfigError) as e:
    validate(config)
  for text in ('text_vae.kl_warmup_steps=0 is invalid', 'text_vae.target_kl=2.0 is invalid',
               "model.latent_conditioning='sideways' is invalid; allowed: 'embedding'"):
    assert text in str(e.value)
  config = run_config('text_vae', 'text_vae')
  config.objective.name = 'causal_lm'
  with pytest.raises(ConfigError, match="objective.name='causal_lm' is invalid"):
    validate(config)


# --- a tiny run on generated sentences ---

NAMES = ['Kalo', 'Mire', 'Tosa', 'Venu', 'Ruka', 'Zefi']
VERBS = ['sees', 'likes', 'finds', 'draws', 'calls', 'takes']
THINGS = ['the cat', 'a red box', 'the moon', 'two fish', 'a long road', 'the old tree']
TINY_VAE = {
    'data.name': 'text_files/fortunes', 'data.eval_split': 'validation', 'data.test_split': 'test',
    'text.vocab_size': 320, 'text.seq_len': 24, 'text.num_samples': 2,
    'model.name': 'text_vae', 'model.num_layers': 1, 'model.num_heads': 2, 'model.embed_dim': 32,
    'model.mlp_dim': 64, 'model.max_len': 24, 'model.dropout_rate': 0.0, 'model.latent_dim': 4,
    'model.encoder_layers': 1, 'objective.name': 'text_vae', 'optimizer.learning_rate': 3e-3,
    'text_vae.kl_schedule': 'linear', 'text_vae.kl_warmup_steps': 20,
    'text_vae.word_dropout': 0.2, 'text_vae.free_bits': 0.1, 'text_vae.iw_samples': 4,
    'text_vae.eval_iw_samples': 4, 'train.batch_size': 16, 'train.num_steps': 40,
    'train.eval_batch_size': 64, 'train.log_every_steps': 10, 'train.progress_bar': False,
    'train.eval_every_steps': 1000, 'train.checkpoint_every_steps': 1000,  # at the end only
}


@pytest.fixture(scope='module')
def sentence_corpus(tmp_path_factory):
  """A fortunes-style folder of one short sentence a cookie."""
  root = tmp_path_factory.mktemp('sentences')
  manual = root / 'manual'
  manual.mkdir()
  rng = np.random.default_rng(0)
  names = NAMES + [''.join(rng.choice(SYLLABLES, 2)).capitalize() for _ in range(30)]
  for category in ('one', 'two'):
    cookies = [f'{rng.choice(names)} {rng.choice(VERBS)} {rng.choice(THINGS)}.'
               for _ in range(200)]
    (manual / category).write_text('\n%\n'.join(cookies) + '\n%\n')
  return str(root / 'tfds'), str(manual)


def vae_config(corpus, **extra):
  data_dir, manual_dir = corpus
  return config_with({**TINY_VAE, 'data.data_dir': data_dir, 'data.manual_dir': manual_dir,
                      **extra})


@pytest.fixture(scope='module')
def lm_run(sentence_corpus, tmp_path_factory):
  """The causal-LM baseline: the same decoder without a latent, on the same rows."""
  workdir = tmp_path_factory.mktemp('lm')
  config = vae_config(sentence_corpus, **{'model.latent_conditioning': 'none',
                                          'text_vae.kl_schedule': 'constant',
                                          'text_vae.word_dropout': 0.0,
                                          'text_vae.free_bits': 0.0, 'text.num_samples': 0,
                                          'train.num_steps': 20})
  return str(workdir), loop.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope='module')
def vae_run(sentence_corpus, lm_run, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('vae')
  config = vae_config(sentence_corpus, **{'text_vae.baseline_workdir': lm_run[0]})
  return workdir, loop.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_tiny_run_trains_and_reports_bounds_beside_the_lm(vae_run, lm_run):
  workdir, summary = vae_run
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  train = [r for r in rows if r['split'] == 'train']
  assert train[-1]['loss'] < train[0]['loss'] - 0.5, [r['loss'] for r in train]
  assert [r['kl_weight'] for r in train][:2] == pytest.approx([0.225, 0.725])  # steps 0-9, 10-19
  for key in ('elbo_nll', 'iw_nll', 'kl', 'active_units', 'lm_nll', 'mutual_info'):
    assert summary[key] == summary[f'test_{key}']
  assert summary['iw_nll'] <= summary['test_mc_elbo_nll'] and summary['kl'] > 0  # Jensen
  assert summary['test_sentences'] > 30  # every sentence fits text.seq_len: none is dropped
  assert 0 <= summary['active_units'] <= 4 and summary['test_iw_samples'] == 4
  # lm_nll is the baseline run's own NLL of the same sentences; without a latent its bounds are
  # exact (the posterior is the prior) and one sample is enough.
  lm = lm_run[1]
  assert lm['test_iw_samples'] == 1 and lm['test_kl'] == 0 and lm['test_active_units'] == 0
  assert lm['test_mutual_info'] == pytest.approx(0.0, abs=1e-9)
  assert lm['test_iw_nll'] == pytest.approx(lm['test_elbo_nll'], rel=1e-6)
  assert summary['lm_nll'] == pytest.approx(lm['test_elbo_nll'], rel=1e-5)
  text = (workdir / 'samples.txt').read_text()
  assert text.count('--- sample') == 2 and '--- homotopy ---' in text


@pytest.fixture(scope='module')
def restored(vae_run):
  """(run, params) of the tiny VAE's last checkpoint."""
  run, params, _ = runs.restore_params(str(vae_run[0]))
  return run, params


@pytest.mark.slow
def test_homotopy_endpoints_are_the_latent_means_and_the_cli_uses(vae_run, restored, capsys):
  workdir, _ = vae_run
  run, params = restored
  a, b = 'Kalo sees the cat.', 'Venu takes a long road.'
  means = run.task.latent_means(params, [a, b])
  z, texts = run.task.homotopy(params, a, b, steps=5)  # the shape samples.txt compiled
  np.testing.assert_allclose(z[0], means[0], atol=1e-6)
  np.testing.assert_allclose(z[-1], means[1], atol=1e-6)
  np.testing.assert_allclose(z[1], means[0] + (means[1] - means[0]) / 4, atol=1e-6)
  assert [texts[0], texts[-1]] == run.task.reconstruct(params, [a, b])
  np.testing.assert_allclose(interpolate(jnp.zeros(2), jnp.ones(2), 3), [[0, 0], [.5, .5], [1, 1]])

  capsys.readouterr()
  assert cli.main(['interpolate', '--workdir', str(workdir), '--a', a, '--b', b]) == 0
  out = capsys.readouterr().out
  assert f'a: {a}\n=> {texts[0]}' in out and '0.50: ' in out and f'1.00: {texts[-1]}' in out
  # Prior samples through `sslm-jax sample`; greedy decoding with and without the cache agree.
  outputs = []
  for flags in ([], ['--no_cache']):
    assert cli.main(['sample', '--workdir', str(workdir), '--num', '2', '--temperature', '0',
                     '--top_k', '0', *flags]) == 0
    outputs.append(capsys.readouterr().out)
  assert outputs[0] == outputs[1] and outputs[0].count('--- sample') == 2
  assert all(f'--- sample {i} (z ~ N(0, I), greedy) ---\n{line}\n' in
             (workdir / 'samples.txt').read_text()
             for i, line in enumerate(outputs[0].splitlines()[1::2]))  # what draw() wrote


@pytest.mark.slow
def test_encoder_warm_start_loads_the_encoder_only(vae_run, restored, sentence_corpus,
                                                   tmp_path):
  source, _ = vae_run
  source_params = restored[1]
  config = vae_config(sentence_corpus, **{'text_vae.encoder_init_from': str(source),
                                          'text.tokenizer_path': str(source / 'tokenizer.model')})
  params = runs.setup(config, str(tmp_path)).init_state.params
  same = jax.tree.map(np.array_equal, params['encoder'], source_params['encoder'])
  assert all(jax.tree.leaves(same))
  assert not np.array_equal(params['decoder']['embed']['embedding'],
                            source_params['decoder']['embed']['embedding'])
