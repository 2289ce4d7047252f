"""Contrastive objectives as pure functions: SimCSE for text, SimCLR for images.

- `info_nce(a, b, t)` (SimCSE, Gao et al. 2021): row i of `a` is matched with row i of `b` among
  all rows of `b` (in-batch negatives): loss_i = -log softmax_j(cos(a_i, b_j) / t)[i].
- `nt_xent(z1, z2, t)` (SimCLR, Chen et al. 2020): each of the 2N views is matched with its
  partner among the other 2N - 1 views; loss is the mean over all 2N anchors.

Both take a `row_mask` (batch,) that is 0 on the padded rows of an eval batch: those rows are
neither anchors nor negatives. Each returns per-anchor losses and whether the partner scored
highest, so evaluation adds up exact means.

Views: SimCSE's are two dropout masks of the same sentence (one forward pass over the batch
stacked twice, so every row draws its own masks); SimCLR's are random resized crops and
horizontal flips of the same image, drawn on the device from the step's key. Evaluation keeps
that noise (it defines the objective), with a key fixed across evaluations.

The `objective` sections: `SimCSEConfig`, `SimCLRLossConfig`.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from sslm_jax.config import Checker, Section
from sslm_jax.models.heads import pool
from sslm_jax.objectives.lm import row_mask


@dataclasses.dataclass(frozen=True)
class SimCSEConfig(Section):
  temperature: float = 0.05       # of InfoNCE's cosine similarities (SimCSE's 0.05)

  def check(self, c: Checker) -> None:
    c.number('temperature', 0, low_open=True)
    # The two views differ only by their dropout masks: without dropout they are one view.
    if c.valid('model.dropout_rate'):
      c.check(c.get('model.dropout_rate') > 0, 'model.dropout_rate',
              "> 0 for objective 'simcse' (its two views of a sentence are two dropout masks)")


@dataclasses.dataclass(frozen=True)
class SimCLRLossConfig(Section):
  temperature: float = 0.5        # of NT-Xent's cosine similarities
  crop_min_scale: float = 0.3     # the smallest crop of a view, a fraction of the image's area
  # Grey images' colour distortion: each view's intensities scaled by a factor in [1 - b, 1 + b]
  # and its contrast about its own mean by one in [1 - c, 1 + c]. Without it two crops of one
  # image share their intensity histogram, a shortcut that needs no shape.
  brightness: float = 0.0
  contrast: float = 0.0

  def check(self, c: Checker) -> None:
    c.number('temperature', 0, low_open=True)
    c.number('crop_min_scale', 0, 1, low_open=True)
    c.number('brightness', 0, 1)
    c.number('contrast', 0, 1)


@dataclasses.dataclass(frozen=True)
class Views:
  """How SimCLR draws a view (hashable: a static argument of the jitted functions)."""
  min_scale: float = 0.3
  brightness: float = 0.0
  contrast: float = 0.0

  @classmethod
  def of(cls, objective) -> 'Views':
    return cls(objective.crop_min_scale, objective.brightness, objective.contrast)


def _normalized(x):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _masked_cross_entropy(logits, positive, row_mask):
  """Per-row -log softmax(logits)[positive] and argmax == positive, columns of padded rows
  excluded."""
  logits = jnp.where(row_mask[None, :] > 0, logits, -jnp.inf)
  target = jnp.take_along_axis(logits, positive[:, None], axis=1)[:, 0]
  loss = jax.nn.logsumexp(logits, axis=1) - target
  correct = jnp.argmax(logits, axis=1) == positive
  real = row_mask > 0
  return jnp.where(real, loss, 0.0), jnp.where(real, correct, False).astype(jnp.float32)


def info_nce(a, b, temperature: float, row_mask=None):
  """(per-row loss, per-row correct), both (batch,), 0 on padded rows; see the module doc."""
  n = a.shape[0]
  row_mask = jnp.ones(n, jnp.float32) if row_mask is None else row_mask.astype(jnp.float32)
  logits = _normalized(a) @ _normalized(b).T / temperature
  return _masked_cross_entropy(logits, jnp.arange(n), row_mask)


def nt_xent(z1, z2, temperature: float, row_mask=None):
  """(per-view loss, per-view correct), both (2 * batch,): views z1 then z2; see the module
  doc."""
  n = z1.shape[0]
  row_mask = jnp.ones(n, jnp.float32) if row_mask is None else row_mask.astype(jnp.float32)
  z = _normalized(jnp.concatenate([z1, z2]))
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # a view is not its own pair
  partner = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
  return _masked_cross_entropy(logits, partner, jnp.concatenate([row_mask, row_mask]))


def _means(loss, correct, row_mask):
  n = jnp.maximum(row_mask.sum(), 1.0)
  return loss.sum() / n, {'accuracy': correct.sum() / n}


# --- SimCSE (text: BertEncoder or Electra, whose `encode` gives the hidden states) ---

def simcse_terms(params, batch, rng, *, model, config):
  """Per-row InfoNCE terms of two dropout views of each row, mean-pooled over real tokens."""
  tokens, real = batch['tokens'], batch['mask']
  both, both_mask = jnp.concatenate([tokens, tokens]), jnp.concatenate([real, real])
  hidden = model.apply({'params': params}, both, padding_mask=both_mask, deterministic=False,
                       rngs={'dropout': rng}, method='encode')
  pooled = pool(hidden.astype(jnp.float32), both_mask, 'mean')
  n = tokens.shape[0]
  return info_nce(pooled[:n], pooled[n:], config.temperature, batch.get('row_mask'))


def simcse_loss(params, batch, rng, *, model, config, vocab=None):
  """Mean InfoNCE over the batch; metrics: accuracy (the partner view ranked first)."""
  del vocab  # language objectives are bound with the tokenizer's; SimCSE needs none
  loss, correct = simcse_terms(params, batch, rng, model=model, config=config)
  return _means(loss, correct, row_mask(batch))


def simcse_eval_sums(params, batch, rng, *, model, config, vocab=None) -> dict:
  """InfoNCE sums of one eval batch (padded rows are neither anchors nor negatives)."""
  del vocab
  loss, correct = simcse_terms(params, batch, rng, model=model, config=config)
  return {'loss_sum': loss.sum(), 'correct_sum': correct.sum(), 'rows': batch['row_mask'].sum()}


def eval_means(totals: dict, count: str) -> dict:
  """A split's mean loss and accuracy from the sums of its batches (`count`: what they are
  over)."""
  return {'loss': float(totals['loss_sum'] / totals[count]),
          'accuracy': float(totals['correct_sum'] / totals[count])}


# --- SimCLR (images: models.conv_vae.SimCLR) ---

def random_resized_crop(images, rng, *, min_scale: float, log_ratio=math.log(4 / 3)):
  """Each NHWC image cropped to a random box (area a fraction in [min_scale, 1] of the image,
  aspect ratio in [exp(-log_ratio), exp(log_ratio)]; a side longer than the image's is cut to
  it, so above min_scale 3/4 an area can fall below min_scale) and resized back to its size."""
  n = images.shape[0]
  area_rng, ratio_rng, y_rng, x_rng = jax.random.split(rng, 4)
  area = jax.random.uniform(area_rng, (n,), minval=min_scale, maxval=1.0)
  ratio = jnp.exp(jax.random.uniform(ratio_rng, (n,), minval=-log_ratio, maxval=log_ratio))
  height = jnp.minimum(jnp.sqrt(area / ratio), 1.0)
  width = jnp.minimum(jnp.sqrt(area * ratio), 1.0)
  top = jax.random.uniform(y_rng, (n,)) * (1.0 - height)
  left = jax.random.uniform(x_rng, (n,)) * (1.0 - width)
  return crop_and_resize(images, top, left, height, width)


def crop_and_resize(images, top, left, height, width):
  """Each NHWC image's box (top, left, height, width: (n,) fractions of its sides) resized to
  the image's size, bilinearly."""
  _, h, w, c = images.shape
  scale = jnp.stack([1.0 / height, 1.0 / width], axis=1)  # output pixels per input pixel
  translation = -jnp.stack([top * h, left * w], axis=1) * scale

  def one(image, s, t):
    return jax.image.scale_and_translate(image, (h, w, c), (0, 1), s, t, method='linear',
                                         antialias=False)
  return jax.vmap(one)(images.astype(jnp.float32), scale, translation)


def jitter(images, rng, *, brightness: float, contrast: float):
  """NHWC images in [-1, 1], each with its intensities (as [0, 1]) scaled by a factor drawn in
  [1 - brightness, 1 + brightness], then its contrast about its mean by one in [1 - contrast,
  1 + contrast], clipped back to the range."""
  n = images.shape[0]
  b_rng, c_rng = jax.random.split(rng)
  def factor(key, strength):
    return jax.random.uniform(key, (n, 1, 1, 1), minval=1 - strength, maxval=1 + strength)
  x = (images + 1) / 2 * factor(b_rng, brightness)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = (x - mean) * factor(c_rng, contrast) + mean
  return jnp.clip(x, 0.0, 1.0) * 2 - 1


def augment(images, rng, views: Views):
  """SimCLR's views of grey images: a random resized crop, a horizontal flip half the time,
  then the intensity jitter (none at strengths 0)."""
  crop_rng, flip_rng, jitter_rng = jax.random.split(rng, 3)
  x = random_resized_crop(images, crop_rng, min_scale=views.min_scale)
  flip = jax.random.bernoulli(flip_rng, 0.5, (x.shape[0], 1, 1, 1))
  x = jnp.where(flip, x[:, :, ::-1], x)
  if views.brightness or views.contrast:
    x = jitter(x, jitter_rng, brightness=views.brightness, contrast=views.contrast)
  return x


def simclr_terms(params, images, row_mask, rng, *, model, temperature: float, views: Views):
  """Per-view NT-Xent terms of two augmented views of each image (NHWC in [-1, 1])."""
  rng_1, rng_2 = jax.random.split(rng)
  pairs = jnp.concatenate([augment(images, rng_1, views), augment(images, rng_2, views)])
  z = model.apply({'params': params}, pairs)['projection']
  n = images.shape[0]
  return nt_xent(z[:n], z[n:], temperature, row_mask)


def simclr_loss(params, batch, rng, *, model, config):
  """Mean NT-Xent over the 2N views; metrics: accuracy (the partner view ranked first)."""
  images = batch['image']
  rows = jnp.ones(images.shape[0], jnp.float32)
  loss, correct = simclr_terms(params, images, rows, rng, model=model,
                               temperature=config.temperature, views=Views.of(config))
  return _means(loss, correct, jnp.concatenate([rows, rows]))
