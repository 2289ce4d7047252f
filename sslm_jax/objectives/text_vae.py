"""The sentence VAE's objective: the ELBO with the usual remedies against posterior collapse.

Per sentence x (a row `bos doc eos`, pad), in nats:

  recon(x) = -log p(x | z), z ~ q(z | x) one sample: the decoder's NLL of `doc eos` given `bos`
  kl(x)    = KL(q(z | x) || N(0, I)), closed form (`vae.gaussian_kl`)
  elbo_nll = recon + kl >= -log p(x)

Training minimizes (sum of recon + beta(step) * penalty) / (predicted tokens in the batch): the
ELBO of the batch in nats per token, so gradients have the scale of a language model's loss. The
remedies, each off by default (`Settings`):

- KL annealing: beta(step) ramps from 0 to 1 over `kl_warmup_steps` ('linear', 'logistic' (a
  sigmoid rescaled to start at 0 and end at 1), 'cyclical' (Fu et al. 2019: `kl_cycles` linear
  ramps, each over the first `kl_cycle_ratio` of its cycle, then 1)); 'constant' is beta = 1.
- Word dropout (Bowman et al. 2016): each decoder input token of the document (never `bos`, never
  padding) becomes [MASK] with probability `word_dropout`, so the decoder must lean on z.
- Free bits (Kingma et al. 2016): the penalty is sum_d max(free_bits, batch mean of KL_d), so
  dimensions under `free_bits` nats cost nothing; or target KL: max(target_kl, batch mean KL).
- Autoencoder (`autoencoder=True`): z = the posterior mean and beta = 0, the objective an encoder
  warm start is trained with (Li et al. 2019).

The train step passes no step number, so the task adds the batch's step to every row
(`batch['step']`, int32 (batch,)); without it beta is 1.

Evaluation (`text_vae_eval_stats`) draws k samples z_k ~ q(z | x) per sentence and returns per-row
statistics: the ELBO (mean recon over the samples + closed-form KL), the importance-weighted bound
-log (1/k sum_k p(x, z_k) / q(z_k | x)) (Burda et al. 2016), and the posterior means and
log-variances for active units and mutual information (`sslm_jax.eval.text_vae`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from sslm_jax.config import Checker, Section
from sslm_jax.models.conv_vae import reparameterize
from sslm_jax.models.text_vae import TextVAE
from sslm_jax.objectives.lm import Vocab, row_mask, token_nll
from sslm_jax.objectives.vae import gaussian_kl

KL_SCHEDULES = ('constant', 'linear', 'logistic', 'cyclical')
_LOGISTIC_SLOPE = 10.0  # the sigmoid spans -5..5 over the warm-up


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig(Section):
  """The objective section of 'text_vae' (no keys: its settings are the `text_vae` section's)."""


@dataclasses.dataclass(frozen=True)
class Settings(Section):
  """The `text_vae` section's training keys: the remedies against posterior collapse (hashable,
  for jit). Its other keys are the task's (`sslm_jax.tasks.text_vae.TextVAERunConfig`)."""
  kl_schedule: str = 'constant'   # KL weight: 'constant' 1, or 0 -> 1 'linear', 'logistic',
  kl_warmup_steps: int = 0        # 'cyclical' over this many steps (1 from then on)
  kl_cycles: int = 1              # cyclical: ramps within kl_warmup_steps
  kl_cycle_ratio: float = 0.5     # cyclical: the fraction of a cycle spent ramping up
  word_dropout: float = 0.0       # decoder input tokens replaced by [MASK]
  free_bits: float = 0.0          # nats a latent dimension may use for free (batch mean)
  target_kl: float = 0.0          # or: nats a sentence may use for free (batch mean)
  autoencoder: bool = False       # z = posterior mean, no KL: trains an encoder warm start

  def check(self, c: Checker) -> None:
    c.choice('kl_schedule', KL_SCHEDULES)
    if c.integer('kl_warmup_steps', minimum=0):
      c.check(self.kl_schedule == 'constant' or self.kl_warmup_steps > 0, 'kl_warmup_steps',
              f'an integer > 0 with text_vae.kl_schedule={self.kl_schedule!r}')
    c.integer('kl_cycles')
    c.number('kl_cycle_ratio', 0, 1, low_open=True)
    c.number('word_dropout', 0, 1)
    for key in ('free_bits', 'target_kl'):
      c.number(key, 0, note=' (0 = off)')
    c.check(not (self.free_bits and self.target_kl), 'target_kl',
            '0.0 when text_vae.free_bits > 0 (one threshold: per dimension or per sentence)')


def kl_weight(step, *, schedule: str, warmup_steps: int, cycles: int = 1,
              cycle_ratio: float = 0.5):
  """beta at `step` (a scalar or array, numpy or jax): 0 at step 0, 1 from warmup_steps on."""
  if schedule not in KL_SCHEDULES:
    raise ValueError(f'kl_schedule={schedule!r}; allowed: {KL_SCHEDULES}')
  step = jnp.asarray(step, jnp.float32)
  if schedule == 'constant' or warmup_steps <= 0:
    return jnp.ones_like(step)
  progress = jnp.clip(step / warmup_steps, 0.0, 1.0)
  if schedule == 'linear':
    return progress
  if schedule == 'logistic':
    low, high = jax.nn.sigmoid(-_LOGISTIC_SLOPE / 2), jax.nn.sigmoid(_LOGISTIC_SLOPE / 2)
    value = (jax.nn.sigmoid(_LOGISTIC_SLOPE * (progress - 0.5)) - low) / (high - low)
    return jnp.clip(value, 0.0, 1.0)
  cycle_len = warmup_steps / cycles
  in_cycle = jnp.mod(step, cycle_len) / cycle_len
  return jnp.where(step >= warmup_steps, 1.0, jnp.clip(in_cycle / cycle_ratio, 0.0, 1.0))


def word_dropout(inputs: jax.Array, droppable: jax.Array, rng: jax.Array, rate: float,
                 replacement_id: int) -> jax.Array:
  """`inputs` with each `droppable` position replaced by `replacement_id` w.p. `rate`."""
  if rate <= 0:
    return inputs
  dropped = droppable & jax.random.bernoulli(rng, rate, inputs.shape)
  return jnp.where(dropped, replacement_id, inputs)


def decoder_rows(tokens: jax.Array, mask: jax.Array):
  """(inputs, targets, weights) of rows `bos doc eos pad`: inputs tokens[:, :-1] predict
  targets tokens[:, 1:] where the target is a real token."""
  return tokens[:, :-1], tokens[:, 1:], mask[:, 1:].astype(jnp.float32)


def kl_penalty(kl_dims: jax.Array, rows: jax.Array, *, free_bits: float = 0.0,
               target_kl: float = 0.0) -> jax.Array:
  """The batch's KL term (a sum over rows) with free bits per dimension or a target KL.

  kl_dims (batch, latent) per-dimension KL; rows (batch,) 1.0 on real rows. Below the threshold
  the term is constant (no gradient), above it the plain sum.
  """
  n = jnp.maximum(rows.sum(), 1.0)
  per_dim = (kl_dims * rows[:, None]).sum(0) / n  # batch-mean KL of each dimension
  if free_bits > 0:
    return n * jnp.maximum(per_dim, free_bits).sum()
  if target_kl > 0:
    return n * jnp.maximum(per_dim.sum(), target_kl)
  return n * per_dim.sum()


def text_vae_loss(params, batch, rng, *, model: TextVAE, config, vocab: Vocab,
                  settings: Settings):
  """The annealed, remedied negative ELBO in nats per predicted token; metrics per sentence."""
  del config  # the objective section names the loss; its settings are `settings`
  tokens, mask = batch['tokens'], batch['mask'].astype(bool)
  rows = row_mask(batch)
  drop_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
  inputs, targets, weights = decoder_rows(tokens, mask)
  # Document tokens only (ids below first_normal_id are bos, eos, pad and the other specials).
  droppable = mask[:, :-1] & (inputs >= vocab.first_normal_id)
  noisy = word_dropout(inputs, droppable, drop_rng, settings.word_dropout, vocab.mask_id)
  out = model.apply({'params': params}, tokens, z_rng, mask, decoder_inputs=noisy,
                    deterministic=False, sample=not settings.autoencoder,
                    rngs={'dropout': dropout_rng})
  nll, correct = token_nll(out['logits'], targets)
  weights = weights * rows[:, None]
  recon = (nll * weights).sum(-1)                                    # (batch,)
  kl_dims = gaussian_kl(out['mean'][..., None], out['logvar'][..., None])  # (batch, latent)
  kl = kl_dims.sum(-1)
  if 'step' in batch and not settings.autoencoder:
    beta = kl_weight(batch['step'][0], schedule=settings.kl_schedule,
                     warmup_steps=settings.kl_warmup_steps, cycles=settings.kl_cycles,
                     cycle_ratio=settings.kl_cycle_ratio)
  else:
    beta = jnp.asarray(0.0 if settings.autoencoder else 1.0)
  penalty = kl_penalty(kl_dims, rows, free_bits=settings.free_bits,
                       target_kl=settings.target_kl)
  num_targets = jnp.maximum(weights.sum(), 1.0)
  loss = ((recon * rows).sum() + beta * penalty) / num_targets
  n = jnp.maximum(rows.sum(), 1.0)
  mean_kl = (kl * rows).sum() / n
  mean_recon = (recon * rows).sum() / n
  return loss, {'recon': mean_recon, 'kl': mean_kl, 'elbo_nll': mean_recon + mean_kl,
                'kl_weight': beta, 'accuracy': (correct * weights).sum() / num_targets,
                'elbo_perplexity': jnp.exp((mean_recon + mean_kl) * n / num_targets),
                'input_dropped_fraction': ((noisy != inputs) & droppable).sum() /
                jnp.maximum(droppable.sum(), 1)}


def sentence_nll(params, tokens, mask, *, model, kind: str):
  """(NLL of each row's `doc eos` in nats, its targets) under a causal LM: a GPT ('gpt') or a
  text_vae decoder without latent ('text_vae'): the causal-LM baseline of a text VAE."""
  inputs, targets, weights = decoder_rows(tokens, mask)
  if kind == 'gpt':
    logits = model.apply({'params': params}, inputs)
  else:
    logits = model.apply({'params': params}, inputs, None, method=TextVAE.decode)
  nll, _ = token_nll(logits, targets)
  return (nll * weights).sum(-1), weights.sum(-1)


def log_normal(x: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """log N(x; mean, exp(logvar)) summed over the last axis."""
  return -0.5 * jnp.sum(math.log(2 * math.pi) + logvar + jnp.square(x - mean) / jnp.exp(logvar),
                        axis=-1)


def text_vae_eval_stats(params, batch, rng, *, model: TextVAE, num_samples: int):
  """Per-row statistics of one batch with `num_samples` posterior samples (no dropout):

  recon (mean over samples of -log p(x | z_k)), kl (closed form), elbo_nll = recon + kl,
  mc_elbo_nll = -mean_k log w_k, iw_nll = -log mean_k w_k (w_k = p(x, z_k) / q(z_k | x)), so
  iw_nll <= mc_elbo_nll exactly (Jensen); targets; mean and logvar (batch, latent).
  """
  tokens, mask = batch['tokens'], batch['mask'].astype(bool)
  inputs, targets, weights = decoder_rows(tokens, mask)
  variables = {'params': params}
  mean, logvar = model.apply(variables, tokens, mask, method=TextVAE.encode)

  def one_sample(_, key):
    z = reparameterize(key, mean, logvar)
    logits = model.apply(variables, inputs, z, method=TextVAE.decode)
    recon = (token_nll(logits, targets)[0] * weights).sum(-1)
    log_w = -recon + log_normal(z, 0.0, jnp.zeros_like(z)) - log_normal(z, mean, logvar)
    return None, (recon, log_w)

  _, (recon, log_w) = jax.lax.scan(one_sample, None, jax.random.split(rng, num_samples))
  kl = gaussian_kl(mean, logvar)
  recon_mean = recon.mean(0)
  return {'recon': recon_mean, 'kl': kl, 'elbo_nll': recon_mean + kl,
          'mc_elbo_nll': -log_w.mean(0),
          'iw_nll': -(jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples)),
          'targets': weights.sum(-1), 'mean': mean, 'logvar': logvar}
