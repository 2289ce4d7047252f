"""Language-model objectives as pure functions: causal LM, masked LM, denoising.

Each objective is a `*_terms(params, batch, rng, *, model, config, vocab, train)` function that
returns per-position `(nll, weight, correct)` arrays; the training loss (`lm_loss`) and the
exact split-level evaluation sums (`lm_eval_sums`) are both built from it, so they never
disagree. The loss is a mean over the positions that count (`weight`), never "label > 0".

Batches (numpy from `sslm_jax.data.text`, int32):
- causal_lm: `tokens` (batch, seq_len + 1) packed rows; inputs are `tokens[:, :-1]`, targets
  `tokens[:, 1:]`; optional `row_mask` (batch,) for the padded last eval batch.
- mlm and denoising: `tokens` (batch, seq_len) one document a row, `mask` (batch, seq_len) True
  on real tokens (False on padding).

Noise (MLM masking, denoising corruption) is drawn on the device from the step's key, so a batch
is a pure function of (data seed, step) and its corruption of (run key, step).

Big vocabularies: with `logits_chunk_size` > 0 in the objective config, the model's hidden
states (`encode`) go through its output layer (`head_logits`) that many sequence positions at a
time (`chunked_token_nll`), so the float32 logits of the whole batch never exist at once.

The `objective` sections: `CausalLMConfig`, `MLMConfig`, `DenoisingConfig`.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from sslm_jax.config import Checker, Section


@dataclasses.dataclass(frozen=True)
class CausalLMConfig(Section):
  # > 0 computes the logits and loss this many sequence positions at a time (recomputed in the
  # backward pass), never the float32 logits of the whole batch at once.
  logits_chunk_size: int = 0

  def check(self, c: Checker) -> None:
    c.integer('logits_chunk_size', minimum=0)


@dataclasses.dataclass(frozen=True)
class MLMConfig(CausalLMConfig):
  mask_rate: float = 0.15              # tokens chosen
  mask_token_fraction: float = 0.8     # chosen tokens that become [MASK]
  random_token_fraction: float = 0.1   # chosen tokens that become a random token

  def check(self, c: Checker) -> None:
    super().check(c)
    for key in ('mask_rate', 'mask_token_fraction', 'random_token_fraction'):
      c.number(key, 0, 1, high_open=True)
    if c.valid('mask_token_fraction', 'random_token_fraction'):
      c.check(self.mask_token_fraction + self.random_token_fraction <= 1, 'random_token_fraction',
              f'at most 1 - objective.mask_token_fraction = {1 - self.mask_token_fraction}')


@dataclasses.dataclass(frozen=True)
class DenoisingConfig(CausalLMConfig):
  mask_rate: float = 0.15              # noisy tokens masked
  deletion_rate: float = 0.1           # noisy tokens deleted

  def check(self, c: Checker) -> None:
    super().check(c)
    for key in ('mask_rate', 'deletion_rate'):
      c.number(key, 0, 1, high_open=True)
    # A row is the noisy copy, an end of text and the original (`denoising_sequences`).
    seq_len = c.get('text.seq_len')
    if c.valid('model.max_len', 'text.seq_len'):
      c.check(c.get('model.max_len') >= 2 * seq_len + 1, 'model.max_len',
              f'>= {2 * seq_len + 1} (text.seq_len={seq_len} for objective \'denoising\')')


@dataclasses.dataclass(frozen=True)
class Vocab:
  """What an objective must know of the tokenizer: its size and special ids."""
  size: int
  pad_id: int
  bos_id: int
  eos_id: int
  mask_id: int
  first_normal_id: int  # ids below this are special; random MLM replacements never pick them


def row_mask(batch) -> jax.Array:
  """(batch,) float32: 1 on real rows, 0 on the padding rows of an eval batch ('row_mask')."""
  if 'row_mask' in batch:
    return batch['row_mask'].astype(jnp.float32)
  return jnp.ones(batch['tokens'].shape[:1], jnp.float32)


def _row_weights(batch, shape) -> jax.Array:
  if 'row_mask' in batch:
    return jnp.broadcast_to(batch['row_mask'][:, None], shape).astype(jnp.float32)
  return jnp.ones(shape, jnp.float32)


def token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-position negative log-likelihood (nats) and whether the argmax is right, in float32."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  # argmax == target, i.e. the target holds the row's maximum and no earlier id ties with it,
  # without XLA's (value, index) reduction of argmax, slow on CPU (benchmarks/README.md, "Where
  # the JAX GPT step's time goes"); max is shared with logsumexp and the tie check is one pass.
  # Identical to jnp.argmax(logits, -1) == targets except on rows with a NaN (always wrong here).
  held = jax.lax.stop_gradient(logits)
  row_max = jnp.max(held, axis=-1)
  ids = jax.lax.broadcasted_iota(targets.dtype, held.shape, held.ndim - 1)
  earlier_tie = jnp.any((held == row_max[..., None]) & (ids < targets[..., None]), axis=-1)
  correct = (jax.lax.stop_gradient(target_logit) == row_max) & ~earlier_tie
  return log_z - target_logit, correct.astype(jnp.float32)


def chunked_token_nll(project, hidden: jax.Array, targets: jax.Array,
                      chunk_size: int) -> tuple[jax.Array, jax.Array]:
  """`token_nll(project(hidden), targets)`, `chunk_size` sequence positions at a time.

  hidden (batch, length, features), targets (batch, length). A `lax.scan` over chunks of the
  sequence axis (the batch axis, which data parallelism shards, stays whole) whose body is
  rematerialised: forward and backward each hold one chunk's (batch, chunk, vocab) logits, never
  the whole batch's. Each position goes through the same operations as unchunked.
  """
  batch, length = targets.shape
  chunks = -(-length // chunk_size)
  pad = chunks * chunk_size - length  # padded positions are computed and dropped
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))

  def to_chunks(x):
    return jnp.moveaxis(x.reshape(batch, chunks, chunk_size, *x.shape[2:]), 1, 0)

  @functools.partial(jax.checkpoint, prevent_cse=False)  # under scan CSE cannot undo the remat
  def chunk_terms(h, t):
    return token_nll(project(h), t)

  _, (nll, correct) = jax.lax.scan(lambda carry, x: (carry, chunk_terms(*x)), None,
                                   (to_chunks(hidden), to_chunks(targets)))
  def from_chunks(x):
    return jnp.moveaxis(x, 0, 1).reshape(batch, chunks * chunk_size)[:, :length]
  return from_chunks(nll), from_chunks(correct)


def _model_terms(model, params, inputs, targets, config, **kwargs):
  """token_nll of `model.apply(inputs, **kwargs)`; with config.logits_chunk_size > 0 the
  model's `encode` and then its `head_logits` a chunk at a time (`chunked_token_nll`)."""
  variables = {'params': params}
  chunk_size = getattr(config, 'logits_chunk_size', 0)  # 0 for configs without the key
  if 0 < chunk_size < targets.shape[1]:
    hidden = model.apply(variables, inputs, method='encode', **kwargs)
    project = functools.partial(model.apply, variables, method='head_logits')
    return chunked_token_nll(project, hidden, targets, chunk_size)
  return token_nll(model.apply(variables, inputs, **kwargs), targets)


def causal_lm_terms(params, batch, rng, *, model, config, vocab, train):
  """Next-token prediction on packed rows: every position of every row is a target."""
  del vocab
  tokens = batch['tokens']
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  nll, correct = _model_terms(model, params, inputs, targets, config, deterministic=not train,
                              rngs={'dropout': rng} if train else None)
  return nll, _row_weights(batch, targets.shape), correct


def mlm_corruption(tokens, real, rng, *, vocab: Vocab, mask_rate: float,
                   mask_token_fraction: float, random_token_fraction: float):
  """BERT's corruption: (corrupted tokens, loss mask).

  Each real, non-special token is chosen with probability `mask_rate`; of the chosen, a fraction
  `mask_token_fraction` become [MASK], `random_token_fraction` a random normal token, the rest
  stay unchanged. The loss mask is exactly the chosen positions.
  """
  choose_rng, kind_rng, token_rng = jax.random.split(rng, 3)
  candidates = real & (tokens >= vocab.first_normal_id)
  chosen = candidates & jax.random.bernoulli(choose_rng, mask_rate, tokens.shape)
  u = jax.random.uniform(kind_rng, tokens.shape)
  to_mask = chosen & (u < mask_token_fraction)
  to_random = chosen & (u >= mask_token_fraction) & \
      (u < mask_token_fraction + random_token_fraction)
  random_tokens = jax.random.randint(token_rng, tokens.shape, vocab.first_normal_id, vocab.size,
                                     dtype=tokens.dtype)
  corrupted = jnp.where(to_mask, vocab.mask_id, jnp.where(to_random, random_tokens, tokens))
  return corrupted, chosen


def mlm_terms(params, batch, rng, *, model, config, vocab, train):
  """Masked LM: predict the original token at the chosen positions only."""
  tokens, real = batch['tokens'], batch['mask']
  noise_rng, dropout_rng = jax.random.split(rng)
  corrupted, chosen = mlm_corruption(
      tokens, real, noise_rng, vocab=vocab, mask_rate=config.mask_rate,
      mask_token_fraction=config.mask_token_fraction,
      random_token_fraction=config.random_token_fraction)
  nll, correct = _model_terms(model, params, corrupted, tokens, config, padding_mask=real,
                              deterministic=not train,
                              rngs={'dropout': dropout_rng} if train else None)
  return nll, chosen.astype(jnp.float32) * _row_weights(batch, tokens.shape), correct


def denoising_sequences(tokens, real, rng, *, vocab: Vocab, mask_rate: float,
                        deletion_rate: float):
  """A decoder-only denoising autoencoder's rows: [noisy text, EOS, original text, pad...].

  The noisy copy has each token deleted with probability `deletion_rate` (the rest closed up) and
  then replaced by [MASK] with probability `mask_rate`. Returns (sequence (batch, 2L + 1),
  target weights (batch, 2L)): position j is trained to predict token j + 1 when that token
  belongs to the original copy, so the model must reconstruct the original from the noise.
  """
  batch, length = tokens.shape
  delete_rng, mask_rng = jax.random.split(rng)
  keep = real & ~jax.random.bernoulli(delete_rng, deletion_rate, tokens.shape)
  # Close up the kept tokens: a stable sort moving deleted positions to the end.
  order = jnp.argsort(~keep, axis=1, stable=True)
  noisy = jnp.take_along_axis(tokens, order, axis=1)
  noisy_len = keep.sum(axis=1)
  masked = jax.random.bernoulli(mask_rng, mask_rate, tokens.shape) & \
      (noisy >= vocab.first_normal_id)
  noisy = jnp.where(masked, vocab.mask_id, noisy)
  original_len = real.sum(axis=1)

  source = jnp.concatenate([noisy, jnp.full((batch, 1), vocab.eos_id, tokens.dtype), tokens],
                           axis=1)  # (batch, 2L + 1)
  j = jnp.arange(2 * length + 1)[None, :]
  n = noisy_len[:, None]
  index = jnp.where(j < n, j, jnp.where(j == n, length, length + 1 + (j - n - 1)))
  valid = j < n + 1 + original_len[:, None]
  sequence = jnp.where(valid, jnp.take_along_axis(source, jnp.clip(index, 0, 2 * length),
                                                  axis=1), vocab.pad_id)
  # Position j predicts j + 1; targets are the original copy: j + 1 in [n + 1, n + 1 + len).
  target_pos = j[:, 1:]
  weights = (target_pos >= n + 1) & (target_pos < n + 1 + original_len[:, None])
  return sequence, weights


def denoising_terms(params, batch, rng, *, model, config, vocab, train):
  """Reconstruct the original document from its corrupted copy (causal model, prefix noise)."""
  noise_rng, dropout_rng = jax.random.split(rng)
  sequence, weights = denoising_sequences(batch['tokens'], batch['mask'], noise_rng, vocab=vocab,
                                          mask_rate=config.mask_rate,
                                          deletion_rate=config.deletion_rate)
  nll, correct = _model_terms(model, params, sequence[:, :-1], sequence[:, 1:], config,
                              deterministic=not train,
                              rngs={'dropout': dropout_rng} if train else None)
  return nll, weights.astype(jnp.float32) * _row_weights(batch, weights.shape), correct


TERMS = {'causal_lm': causal_lm_terms, 'mlm': mlm_terms, 'denoising': denoising_terms}


def lm_loss(params, batch, rng, *, model, config, vocab: Vocab):
  """Mean NLL over the positions that count; metrics: accuracy and perplexity of the batch."""
  nll, weight, correct = TERMS[config.name](params, batch, rng, model=model, config=config,
                                            vocab=vocab, train=True)
  total = jnp.maximum(weight.sum(), 1.0)
  loss = (nll * weight).sum() / total
  return loss, {'accuracy': (correct * weight).sum() / total, 'perplexity': jnp.exp(loss),
                'target_fraction': weight.mean()}


def lm_eval_sums(params, batch, rng, *, model, config, vocab: Vocab) -> dict[str, jax.Array]:
  """Sums over one batch (no dropout) that add up to exact split-level means."""
  nll, weight, correct = TERMS[config.name](params, batch, rng, model=model, config=config,
                                            vocab=vocab, train=False)
  return {'nll_sum': (nll * weight).sum(), 'correct_sum': (correct * weight).sum(),
          'targets': weight.sum()}


def summarize(sums: dict[str, float], *, chars_per_token: float, bytes_per_token: float):
  """Split-level loss (nats/token), perplexity, accuracy and bits per character and byte.

  Bits per character divide the same total information by characters instead of tokens:
  nats/token / ln 2 / (chars/token), with chars/token measured on the split's text.
  """
  loss = sums['nll_sum'] / max(sums['targets'], 1.0)
  return {'loss': loss, 'perplexity': math.exp(min(loss, 80.0)),
          'accuracy': sums['correct_sum'] / max(sums['targets'], 1.0),
          'bits_per_char': loss / math.log(2) / chars_per_token,
          'bits_per_byte': loss / math.log(2) / bytes_per_token,
          'targets': sums['targets']}
