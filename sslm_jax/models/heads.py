"""Classifiers: a linear head on the features of a pretraining model's encoder.

The pretraining model is a submodule named `encoder`, so a classifier's parameters are
`{'encoder': <the pretraining model's parameters>, 'head': {...}}` and a pretrained model's
parameters drop in unchanged. `init` builds every parameter of that model (also the LM, MLM or
decoder parts a classifier does not use), so the two trees have the same structure.

Features: for text, the final hidden states of `GPT.encode` / `BertEncoder.encode` /
`Electra.encode` (its discriminator's) pooled over real tokens ('mean'), at the last real token
('last') or at the first position ('cls'); for images, the VAE's posterior mean (the
autoencoder's code, SimCLR's encoder output h).

`freeze_encoder` (a linear probe): the encoder runs deterministically (no dropout) and its
output is behind `stop_gradient`, so no gradient reaches it and its backward pass is skipped.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.models.transformer import GPT

POOLINGS = ('mean', 'last', 'cls')


def pool(hidden: jax.Array, mask: jax.Array | None, pooling: str) -> jax.Array:
  """(batch, length, features) -> (batch, features) over the real tokens (mask True; real
  tokens come first in a row)."""
  if mask is None:
    mask = jnp.ones(hidden.shape[:2], bool)
  mask = mask.astype(hidden.dtype)
  if pooling == 'mean':
    return (hidden * mask[..., None]).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1)[:, None]
  if pooling == 'last':
    last = jnp.maximum(mask.sum(axis=1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  if pooling == 'cls':
    return hidden[:, 0]
  raise ValueError(f'pooling={pooling!r}; allowed: {POOLINGS}')


class _Classifier(nn.Module):
  encoder: nn.Module
  num_classes: int
  dropout_rate: float = 0.0
  freeze_encoder: bool = False

  def _head(self, features: jax.Array, deterministic: bool) -> jax.Array:
    if self.freeze_encoder:
      features = jax.lax.stop_gradient(features)
    features = nn.Dropout(self.dropout_rate)(features.astype(jnp.float32),
                                             deterministic=deterministic)
    return nn.Dense(self.num_classes, name='head')(features)


class TextClassifier(_Classifier):
  """tokens (batch, length), mask (batch, length) True on real tokens -> (batch, classes) logits.

  `encoder` is a `GPT`, a `BertEncoder` or an `Electra`; the bidirectional ones mask padding out
  of attention, and GPT's causal attention never lets a real token see the padding after it.
  """
  pooling: str = 'mean'

  def features(self, tokens: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    """(batch, features) float32: the pooled hidden states the head reads."""
    if isinstance(self.encoder, GPT):
      hidden = self.encoder.encode(tokens, deterministic=deterministic)
    else:
      hidden = self.encoder.encode(tokens, padding_mask=mask, deterministic=deterministic)
    return pool(hidden.astype(jnp.float32), mask, self.pooling)

  @nn.compact
  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    if self.is_initializing():
      self.encoder(tokens)  # every parameter of the pretraining model
    features = self.features(tokens, mask, deterministic=deterministic or self.freeze_encoder)
    return self._head(features, deterministic)


class ImageClassifier(_Classifier):
  """images (batch, H, W, C) in [-1, 1] -> (batch, classes) logits from the encoder's mean code.

  `encoder` is a `VAE`, an `AutoEncoder` or a `SimCLR`, or any model whose `encode(inputs)`
  returns `(mean, _)` and whose `__call__(inputs, rng)` builds all its parameters (the sentence
  VAE); `mask` is accepted and ignored.
  """

  def features(self, images: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    """(batch, features): what the head reads, the encoder's `encode(images)[0]` (a VAE's
    posterior mean, an autoencoder's code, SimCLR's h)."""
    del mask, deterministic
    return self.encoder.encode(images)[0]

  @nn.compact
  def __call__(self, images: jax.Array, mask: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    if self.is_initializing():
      # Every parameter of the pretraining model (the decoder too); the key only draws the
      # VAE's latent sample, which no parameter's initial value depends on.
      self.encoder(images, jax.random.PRNGKey(0))
    return self._head(self.features(images, mask), deterministic)
