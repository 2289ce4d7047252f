"""Language-model objectives: masking statistics, denoising layout, exact losses."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslm_jax.objectives import lm

VOCAB = lm.Vocab(size=50, pad_id=0, bos_id=2, eos_id=3, mask_id=4, first_normal_id=5)
MLM = types.SimpleNamespace(name='mlm', mask_rate=0.15, mask_token_fraction=0.8,
                            random_token_fraction=0.1)


class Bigram(nn.Module):
  """A stand-in LM: logits depend on the current token only (any padding_mask ignored)."""

  @nn.compact
  def __call__(self, tokens, *, padding_mask=None, deterministic=True):
    del padding_mask, deterministic
    return nn.Embed(VOCAB.size, VOCAB.size)(tokens)


def test_mlm_corruption_statistics_and_explicit_loss_mask():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(VOCAB.first_normal_id, VOCAB.size, (64, 256)), jnp.int32)
  real = jnp.asarray(np.arange(256)[None, :] < rng.integers(100, 257, (64, 1)))
  tokens = jnp.where(real, tokens, VOCAB.pad_id).at[:, 0].set(VOCAB.bos_id)
  corrupted, chosen = lm.mlm_corruption(tokens, real, jax.random.PRNGKey(1), vocab=VOCAB,
                                        mask_rate=0.15, mask_token_fraction=0.8,
                                        random_token_fraction=0.1)
  chosen, corrupted, tokens, real = map(np.asarray, (chosen, corrupted, tokens, real))
  eligible = real & (tokens >= VOCAB.first_normal_id)
  assert not chosen[~eligible].any()  # never padding, never special tokens
  assert chosen[eligible].mean() == pytest.approx(0.15, abs=0.01)
  assert (corrupted[~chosen] == tokens[~chosen]).all()  # only chosen positions change
  as_mask = (corrupted == VOCAB.mask_id)[chosen].mean()
  unchanged = (corrupted == tokens)[chosen].mean()
  assert as_mask == pytest.approx(0.8, abs=0.03)
  # random replacements land on the original token 1 time in 45: 10% + ~0.2% unchanged
  assert unchanged == pytest.approx(0.1 + 0.1 / 45, abs=0.03)
  assert (corrupted[chosen] >= VOCAB.first_normal_id).sum() + as_mask * chosen.sum() == \
      pytest.approx(chosen.sum())


def test_mlm_loss_counts_only_the_chosen_positions():
  model = Bigram()
  tokens = jnp.asarray(np.random.default_rng(0).integers(5, 50, (8, 32)), jnp.int32)
  batch = {'tokens': tokens, 'mask': jnp.ones_like(tokens, bool)}
  params = model.init(jax.random.PRNGKey(0), tokens)['params']
  rng = jax.random.PRNGKey(3)
  loss, metrics = lm.lm_loss(params, batch, rng, model=model, config=MLM, vocab=VOCAB)
  nll, weight, _ = lm.mlm_terms(params, batch, rng, model=model, config=MLM, vocab=VOCAB,
                                train=True)
  _, chosen = lm.mlm_corruption(tokens, batch['mask'], jax.random.split(rng)[0], vocab=VOCAB,
                                mask_rate=0.15, mask_token_fraction=0.8,
                                random_token_fraction=0.1)
  np.testing.assert_array_equal(np.asarray(weight), np.asarray(chosen, np.float32))
  assert float(loss) == pytest.approx(float(nll[chosen].mean()), rel=1e-6)
  assert float(metrics['target_fraction']) == pytest.approx(float(chosen.mean()))


def test_causal_lm_loss_is_mean_next_token_nll_and_eval_sums_skip_padding_rows():
  model = Bigram()
  rows = jnp.asarray(np.random.default_rng(1).integers(5, 50, (4, 9)), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), rows)['params']
  config = types.SimpleNamespace(name='causal_lm')
  loss, _ = lm.lm_loss(params, {'tokens': rows}, jax.random.PRNGKey(0), model=model, config=config, vocab=VOCAB)
  logits = np.asarray(model.apply({'params': params}, rows[:, :-1]), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_probs, np.asarray(rows[:, 1:])[..., None], -1).mean()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  sums = lm.lm_eval_sums(params, {'tokens': rows, 'row_mask': jnp.array([1, 1, 0, 0], bool)},
                         None, model=model, config=config, vocab=VOCAB)
  assert float(sums['targets']) == 16
  first_two = -np.take_along_axis(log_probs[:2], np.asarray(rows[:2, 1:])[..., None], -1).sum()
  assert float(sums['nll_sum']) == pytest.approx(first_two, rel=1e-5)


def test_denoising_rows_hold_noise_then_eos_then_the_original():
  tokens = jnp.array([[2, 10, 11, 12, 3, 0], [2, 20, 3, 0, 0, 0]], jnp.int32)
  real = tokens != 0
  clean, weights = lm.denoising_sequences(tokens, real, jax.random.PRNGKey(0), vocab=VOCAB,
                                          mask_rate=0.0, deletion_rate=0.0)
  assert clean[0].tolist() == [2, 10, 11, 12, 3, 3, 2, 10, 11, 12, 3, 0, 0]
  assert clean[1].tolist() == [2, 20, 3, 3, 2, 20, 3] + [0] * 6
  # position j predicts j + 1: exactly the original copy's tokens are targets
  assert np.asarray(weights[0]).nonzero()[0].tolist() == [5, 6, 7, 8, 9]
  assert np.asarray(clean[0])[np.asarray(weights[0]).nonzero()[0] + 1].tolist() == \
      [2, 10, 11, 12, 3]

  long = jnp.asarray(np.random.default_rng(0).integers(5, 50, (32, 40)), jnp.int32)
  noisy, weights = lm.denoising_sequences(long, long > 0, jax.random.PRNGKey(1), vocab=VOCAB,
                                          mask_rate=0.5, deletion_rate=0.25)
  noisy, weights = np.asarray(noisy), np.asarray(weights)
  for row, w, original in zip(noisy, weights, np.asarray(long)):
    n = int(np.argmax(row == VOCAB.eos_id))  # the separator follows the noisy copy
    assert 20 <= n <= 40 and 0.2 < (row[:n] == VOCAB.mask_id).mean() < 0.8
    kept = row[:n][row[:n] != VOCAB.mask_id]
    it = iter(original.tolist())  # the unmasked noisy tokens are a subsequence, in order
    assert all(any(t == o for o in it) for t in kept.tolist())
    assert row[n + 1:n + 41].tolist() == original.tolist() and w.sum() == 40


def test_token_nll_accuracy_is_argmax_equals_target_ties_included():
  # Quantized logits make ties common: the first maximal id is the prediction, as argmax's.
  logits = jnp.round(jax.random.normal(jax.random.key(0), (6, 40, 9)) * 1.5)
  targets = jax.random.randint(jax.random.key(1), (6, 40), 0, 9)
  targets = jnp.where(jnp.arange(40) % 2 == 0, jnp.argmax(logits, -1), targets)
  nll, correct = jax.jit(lm.token_nll)(logits, targets)
  expected = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  np.testing.assert_array_equal(correct, expected)
  ties = jnp.sum(logits == jnp.max(logits, -1, keepdims=True), -1) > 1
  assert bool(jnp.any(ties & (expected == 0) & (jnp.take_along_axis(
      logits, targets[..., None], -1)[..., 0] == jnp.max(logits, -1))))  # a tie the check saw
  np.testing.assert_allclose(nll, jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
      logits, targets[..., None], -1)[..., 0], rtol=1e-6)
