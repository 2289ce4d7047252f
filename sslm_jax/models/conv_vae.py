"""The seed's convolutional encoder and decoder, its VAE, a plain autoencoder, and the encoder
with SimCLR's projection head.

Shapes follow the corrected seed model (shared/design/seed-reference.md): a 32x32 image goes
through stride-2 4x4 convolutions (32 -> 16 -> 8 -> 4), one 4x4 valid convolution to 1x1x256, and
a linear head to the Gaussian posterior's mean and log-variance. The decoder mirrors it with a
dense stack, a channels-first unflatten (as PyTorch's `nn.Unflatten`) and stride-2 transposed
convolutions back to the input size. Images are NHWC in [-1, 1]. `conv_impl` picks who computes
the convolutions: oneDNN (sslm_jax/kernels) or XLA; the parameters and the function are the same.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.kernels import onednn_conv
from sslm_jax.models.layers import ConvTranspose2x


def reparameterize(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): differentiable in mean and logvar."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def spatial_after_downsampling(input_size: int, num_stride2: int) -> int:
  """Side of the feature map left after `num_stride2` stride-2 layers (exact halvings)."""
  return input_size // (2 ** num_stride2)


class Encoder(nn.Module):
  """Stride-2 4x4 convolutions, then one valid convolution that collapses the map to 1x1.

  Returns the flat feature vector (batch, out_features); the posterior head is separate so the
  same encoder serves the VAE and the autoencoder.
  """
  features: Sequence[int] = (64, 128, 256)
  out_features: int = 256
  conv_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(self.dtype)
    onednn = onednn_conv.resolve(self.conv_impl, self.dtype) == 'onednn'
    for width in self.features:
      x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                          dtype=self.dtype,
                          conv_general_dilated=onednn_conv.conv_general_dilated if onednn else None
                          )(x))
    # The last kernel covers what is left (4x4 for the seed's 32x32 input): one output pixel.
    x = WholeMapConv(self.out_features, dtype=self.dtype, name=f'Conv_{len(self.features)}')(x)
    return nn.relu(x)


class WholeMapConv(nn.Module):
  """A VALID convolution whose kernel covers the whole map, computed as the matmul it is.

  Same parameters (names, HWIO shape, init) as `nn.Conv(features, (h, w), padding='VALID')` on an
  (h, w) map; returns (batch, features). XLA:CPU ran the convolution form's gradients at a
  fraction of its matmul speed (seed encoder, batch 64: forward + gradients 13.5 ms against
  PyTorch's 7.6).
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (h, w, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    return x.reshape(b, h * w * c) @ kernel.reshape(h * w * c, self.features) + bias


class Decoder(nn.Module):
  """Dense stack -> (C, s, s) unflatten -> stride-2 transposed convolutions -> pre-tanh logits.

  Returns the pre-activation `logits`; the image is `tanh(logits)`. Keeping the logits lets the
  Bernoulli ELBO use `2 * logits` as exact Bernoulli logits (tanh(h) = 2 sigmoid(2h) - 1).
  """
  output_size: int = 32
  output_channels: int = 1
  hidden: Sequence[int] = (256, 128, 64)
  base_features: int = 64
  features: Sequence[int] = (128, 64)
  conv_transpose_impl: str = 'col2im'
  conv_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    x = z.astype(self.dtype)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))
    num_up = len(self.features) + 1
    side = spatial_after_downsampling(self.output_size, num_up)
    x = nn.relu(nn.Dense(self.base_features * side * side, dtype=self.dtype)(x))
    # Channels-first unflatten, as PyTorch's nn.Unflatten(1, (C, s, s)), then NHWC: weights map
    # one to one between the two frameworks without permuting the dense layer.
    x = x.reshape(x.shape[0], self.base_features, side, side).transpose(0, 2, 3, 1)
    widths = list(self.features) + [self.output_channels]
    onednn = onednn_conv.resolve(self.conv_impl, self.dtype) == 'onednn'
    for i, width in enumerate(widths):
      x = ConvTranspose2x(width, impl='onednn' if onednn else self.conv_transpose_impl,
                          dtype=self.dtype, name=f'ConvTranspose_{i}')(x)
      if i < len(widths) - 1:
        x = nn.relu(x)
    return x


class _SeedCodec(nn.Module):
  """Fields and decoding shared by the VAE and the autoencoder; subclasses add the code head."""
  latent_dim: int = 32
  input_size: int = 32
  channels: int = 1
  encoder_features: Sequence[int] = (64, 128, 256)
  encoder_out_features: int = 256
  decoder_hidden: Sequence[int] = (256, 128, 64)
  decoder_base_features: int = 64
  decoder_features: Sequence[int] = (128, 64)
  conv_transpose_impl: str = 'col2im'
  conv_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  def _build_encoder_decoder(self):
    self.encoder = Encoder(self.encoder_features, self.encoder_out_features, self.conv_impl,
                           dtype=self.dtype)
    self.decoder = Decoder(self.input_size, self.channels, self.decoder_hidden,
                           self.decoder_base_features, self.decoder_features,
                           self.conv_transpose_impl, self.conv_impl, dtype=self.dtype)

  def decode_logits(self, z: jax.Array) -> jax.Array:
    return self.decoder(z).astype(jnp.float32)

  def decode(self, z: jax.Array) -> jax.Array:
    return jnp.tanh(self.decode_logits(z))


class VAE(_SeedCodec):
  """The seed's reparameterized VAE: encoder, linear posterior head, decoder."""

  def setup(self):
    self._build_encoder_decoder()
    self.posterior = nn.Dense(2 * self.latent_dim, dtype=self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Posterior parameters (mean, logvar), each (batch, latent_dim), in float32."""
    stats = self.posterior(self.encoder(images)).astype(jnp.float32)
    return stats[:, :self.latent_dim], stats[:, self.latent_dim:]

  def __call__(self, images: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
    mean, logvar = self.encode(images)
    z = reparameterize(rng, mean, logvar)
    logits = self.decode_logits(z)
    return {'recon': jnp.tanh(logits), 'logits': logits, 'mean': mean, 'logvar': logvar, 'z': z}


class AutoEncoder(_SeedCodec):
  """Deterministic autoencoder on the same encoder and decoder; the code is a linear head."""

  def setup(self):
    self._build_encoder_decoder()
    self.code = nn.Dense(self.latent_dim, dtype=self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, None]:
    """(code, None): the code stands where a VAE has its posterior mean."""
    return self.code(self.encoder(images)).astype(jnp.float32), None

  def __call__(self, images: jax.Array, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    del rng  # deterministic; the argument keeps one calling convention for every model
    code, _ = self.encode(images)
    logits = self.decode_logits(code)
    return {'recon': jnp.tanh(logits), 'logits': logits, 'mean': code, 'z': code}


class SimCLR(nn.Module):
  """The seed encoder with SimCLR's projection head (Chen et al. 2020), no decoder.

  The representation is the encoder's output h (`encoder_out_features`); the contrastive loss
  reads z = Dense(relu(Dense(h))) (`projection_dim`), which downstream tasks drop, as in the
  paper.
  """
  input_size: int = 32
  channels: int = 1
  encoder_features: Sequence[int] = (64, 128, 256)
  encoder_out_features: int = 256
  projection_dim: int = 64
  conv_impl: str = 'auto'
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.encoder_features, self.encoder_out_features, self.conv_impl,
                           dtype=self.dtype)
    self.projection_hidden = nn.Dense(self.encoder_out_features, dtype=self.dtype)
    self.projection_out = nn.Dense(self.projection_dim, dtype=self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, None]:
    """(h, None), h (batch, encoder_out_features) float32: where a VAE has its posterior mean."""
    return self.encoder(images).astype(jnp.float32), None

  def project(self, features: jax.Array) -> jax.Array:
    """(batch, projection_dim) float32: the head the contrastive loss reads."""
    h = nn.relu(self.projection_hidden(features.astype(self.dtype)))
    return self.projection_out(h).astype(jnp.float32)

  def __call__(self, images: jax.Array, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    del rng  # deterministic; the argument keeps one calling convention for every model
    features, _ = self.encode(images)
    return {'features': features, 'projection': self.project(features)}
