"""ELECTRA's replaced-token detection (Clark et al. 2020) as pure functions.

Batches as masked LM's (`sslm_jax.objectives.lm`): `tokens` (batch, length) one document a row,
`mask` True on real tokens, optional `row_mask` for a padded eval batch. A step:

1. chooses, in each row, round(mask_rate * n) of its n real non-special tokens (at least one),
   uniformly without replacement: at most k = ceil(mask_rate * length) a row, so the
   generator's vocabulary projection runs on (batch, k) positions only;
2. trains the generator (`models.electra.Electra`) by masked-LM cross-entropy at those positions,
   which it sees as [MASK];
3. fills each chosen position with a token sampled from the generator's softmax (normal tokens
   only), inside the step, from the step's key. The sample is an integer, which carries no
   gradient (the `stop_gradient` before it only says so): the discriminator's loss never reaches
   the generator through it (the paper trains the generator by its MLM loss alone; shared
   embeddings get both losses);
4. trains the discriminator to tell, at every real token, whether it was replaced: replaced means
   the sample differs from the original (a sampled original counts as original), binary
   cross-entropy averaged over real tokens.

The loss is generator MLM + `discriminator_weight` * discriminator BCE (lambda = 50 in the paper).

The `objective` section: `ReplacedTokenConfig`.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from sslm_jax.config import Checker, Section
from sslm_jax.objectives.lm import Vocab, row_mask, token_nll


@dataclasses.dataclass(frozen=True)
class ReplacedTokenConfig(Section):
  mask_rate: float = 0.15              # real tokens of a row the generator fills
  discriminator_weight: float = 50.0   # the loss: generator MLM + this * replaced-token BCE
  # The generator's logits are divided by this before sampling: above 1 its samples are flatter
  # than its predictions (rarer words), an easier task for a discriminator early on.
  sampling_temperature: float = 1.0

  def check(self, c: Checker) -> None:
    c.number('mask_rate', 0, 1, high_open=True)
    c.number('discriminator_weight', 0)
    c.number('sampling_temperature', 0, low_open=True)


def max_predictions(length: int, mask_rate: float) -> int:
  """Positions a row may have masked: k = ceil(mask_rate * length), at least 1."""
  return max(1, math.ceil(mask_rate * length))


def choose_positions(tokens, real, rng, *, vocab: Vocab, mask_rate: float):
  """(positions (batch, k) int32, valid (batch, k) bool): distinct positions per row, the first
  round(mask_rate * candidates) of them (at least one when there is a candidate) valid."""
  k = max_predictions(tokens.shape[1], mask_rate)
  candidates = real & (tokens >= vocab.first_normal_id)
  scores = jnp.where(candidates, jax.random.uniform(rng, tokens.shape), -1.0)
  top, positions = jax.lax.top_k(scores, k)  # candidates first, in random order
  count = candidates.sum(axis=1)
  chosen = jnp.clip(jnp.round(mask_rate * count), jnp.minimum(count, 1), k)
  valid = (jnp.arange(k)[None, :] < chosen[:, None]) & (top >= 0)
  return positions.astype(jnp.int32), valid


def write_at(tokens, positions, valid, values):
  """`tokens` with `values` (batch, k) written at the valid `positions` (distinct per row)."""
  rows = jnp.arange(tokens.shape[0])[:, None]
  current = jnp.take_along_axis(tokens, positions, axis=1)
  return tokens.at[rows, positions].set(jnp.where(valid, values.astype(tokens.dtype), current))


def sample_replacements(generator_logits, rng, vocab: Vocab, temperature: float = 1.0):
  """(batch, k) tokens drawn from the generator's softmax (logits / temperature) over normal
  tokens; no gradient."""
  logits = jax.lax.stop_gradient(generator_logits) / temperature
  logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab.first_normal_id, -jnp.inf, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def electra_terms(params, batch, rng, *, model, config, vocab: Vocab, train: bool) -> dict:
  """Per-position terms: generator (batch, k) `generator_nll`, `generator_correct`,
  `generator_weight`; discriminator (batch, length) `discriminator_bce`, `discriminator_correct`,
  `discriminator_weight`; `replaced` (batch, length) the labels; `corrupted` its input."""
  tokens, real = batch['tokens'], batch['mask']
  mask_rng, sample_rng, generator_rng, discriminator_rng = jax.random.split(rng, 4)
  positions, valid = choose_positions(tokens, real, mask_rng, vocab=vocab,
                                      mask_rate=config.mask_rate)
  masked = write_at(tokens, positions, valid, jnp.full(positions.shape, vocab.mask_id))
  generator_logits = model.apply(
      {'params': params}, masked, positions, padding_mask=real, deterministic=not train,
      rngs={'dropout': generator_rng} if train else None, method='generator_logits')
  originals = jnp.take_along_axis(tokens, positions, axis=1)
  generator_nll, generator_correct = token_nll(generator_logits, originals)

  corrupted = write_at(tokens, positions, valid,
                       sample_replacements(generator_logits, sample_rng, vocab,
                                           config.sampling_temperature))
  replaced = corrupted != tokens
  logits = model.apply({'params': params}, corrupted, padding_mask=real, deterministic=not train,
                       rngs={'dropout': discriminator_rng} if train else None,
                       method='discriminator_logits')
  rows = row_mask(batch)[:, None]
  return {'generator_nll': generator_nll, 'generator_correct': generator_correct,
          'generator_weight': valid.astype(jnp.float32) * rows,
          'discriminator_bce': optax.sigmoid_binary_cross_entropy(logits, replaced),
          'discriminator_correct': ((logits > 0) == replaced).astype(jnp.float32),
          'discriminator_weight': real.astype(jnp.float32) * rows,
          'replaced': replaced, 'corrupted': corrupted}


def _sums(terms: dict) -> dict:
  g, d = terms['generator_weight'], terms['discriminator_weight']
  replaced = terms['replaced'].astype(jnp.float32) * d
  return {'generator_nll_sum': (terms['generator_nll'] * g).sum(),
          'generator_correct_sum': (terms['generator_correct'] * g).sum(), 'masked': g.sum(),
          'discriminator_bce_sum': (terms['discriminator_bce'] * d).sum(),
          'discriminator_correct_sum': (terms['discriminator_correct'] * d).sum(),
          'replaced_detected_sum': (terms['discriminator_correct'] * replaced).sum(),
          'replaced': replaced.sum(), 'tokens': d.sum()}


def summarize(sums: dict, discriminator_weight: float) -> dict:
  """Means of a batch's or a split's sums: the joint `loss`, the generator's MLM loss,
  perplexity and accuracy, the discriminator's BCE and accuracy (all real tokens), its recall
  on the replaced tokens, and the fraction of real tokens replaced."""
  div = lambda a, b: a / jnp.maximum(sums[b], 1.0)  # noqa: E731
  generator_loss = div(sums['generator_nll_sum'], 'masked')
  discriminator_loss = div(sums['discriminator_bce_sum'], 'tokens')
  return {'loss': generator_loss + discriminator_weight * discriminator_loss,
          'generator_loss': generator_loss,
          'generator_perplexity': jnp.exp(jnp.minimum(generator_loss, 80.0)),
          'generator_accuracy': div(sums['generator_correct_sum'], 'masked'),
          'discriminator_loss': discriminator_loss,
          'discriminator_accuracy': div(sums['discriminator_correct_sum'], 'tokens'),
          'replaced_recall': div(sums['replaced_detected_sum'], 'replaced'),
          'replaced_fraction': div(sums['replaced'], 'tokens')}


def electra_loss(params, batch, rng, *, model, config, vocab: Vocab):
  """Generator MLM + discriminator_weight * replaced-token BCE, and the batch's metrics."""
  metrics = summarize(_sums(electra_terms(params, batch, rng, model=model, config=config,
                                          vocab=vocab, train=True)),
                      config.discriminator_weight)
  return metrics.pop('loss'), metrics


def electra_eval_sums(params, batch, rng, *, model, config, vocab: Vocab) -> dict:
  """Sums over one batch (no dropout) that add up to exact split-level means (`summarize`)."""
  return _sums(electra_terms(params, batch, rng, model=model, config=config, vocab=vocab,
                             train=False))
