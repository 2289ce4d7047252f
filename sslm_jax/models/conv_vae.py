"""The seed's convolutional encoder and decoder, its VAE and a plain autoencoder.

Shapes follow the corrected seed model (shared/design/seed-reference.md): a 32x32 image goes
through stride-2 4x4 convolutions (32 -> 16 -> 8 -> 4), one 4x4 valid convolution to 1x1x256, and
a linear head to the Gaussian posterior's mean and log-variance. The decoder mirrors it with a
dense stack, a channels-first unflatten (as PyTorch's `nn.Unflatten`) and stride-2 transposed
convolutions back to the input size. Images are NHWC in [-1, 1]. `conv_impl` picks who computes
the convolutions: oneDNN (sslm_jax/kernels) or XLA; the parameters and the function are the same.
The model decides once (`conv_impls`) and hands its encoder and decoder concrete choices.

`CodecConfig` is the `model` section of the 'vae' and 'ae' families.
"""

import dataclasses
import logging
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.config import Checker
from sslm_jax.kernels import onednn_conv
from sslm_jax.models.family import ModelConfig
from sslm_jax.models.layers import CONV_TRANSPOSE_IMPLS, ConvTranspose2x, conv_kernel_init


def reparameterize(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """z = mean + exp(logvar / 2) * eps, eps ~ N(0, I): differentiable in mean and logvar."""
  eps = jax.random.normal(rng, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def conv_impls(conv_impl: str, conv_transpose_impl: str,
               dtype) -> tuple[onednn_conv.ConvChoice, str]:
  """(who computes the convolutions, the impl of the decoder's transposed convolutions).

  Where oneDNN computes the convolutions it computes the transposed ones too (as the adjoint of
  a convolution), whatever `conv_transpose_impl` says: that picks among XLA's formulations.
  """
  choice = onednn_conv.choose(conv_impl, dtype)
  return choice, 'onednn' if choice.impl == 'onednn' else conv_transpose_impl


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
  conv_impl: str = 'xla'  # a concrete choice, 'xla' or 'onednn' (`conv_impls`)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = images.astype(self.dtype)
    onednn = self.conv_impl == 'onednn'
    for width in self.features:
      x = nn.relu(nn.Conv(width, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                          dtype=self.dtype, kernel_init=conv_kernel_init,
                          conv_general_dilated=onednn_conv.conv_general_dilated if onednn else None
                          )(x))
    # The last kernel covers what is left (4x4 for the seed's 32x32 input): one output pixel.
    x = WholeMapConv(self.out_features, dtype=self.dtype, name=f'Conv_{len(self.features)}')(x)
    return nn.relu(x)


class WholeMapConv(nn.Module):
  """A VALID convolution whose kernel covers the whole map, computed as the matmul it is.

  Same parameters (names, HWIO shape, init) as `nn.Conv(features, (h, w), padding='VALID')` on an
  (h, w) map; returns (batch, features). XLA:CPU ran the convolution form's gradients at a
  fraction of its matmul speed (benchmarks/README.md, "Where the JAX step's time went").
  """
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    kernel = self.param('kernel', conv_kernel_init, (h, w, c, self.features))
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
  conv_transpose_impl: str = 'col2im'  # a concrete choice: 'col2im', 'xla' or 'onednn'
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
    for i, width in enumerate(widths):
      x = ConvTranspose2x(width, impl=self.conv_transpose_impl, dtype=self.dtype,
                          name=f'ConvTranspose_{i}')(x)
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
    conv, conv_transpose = conv_impls(self.conv_impl, self.conv_transpose_impl, self.dtype)
    self.encoder = Encoder(self.encoder_features, self.encoder_out_features, conv.impl,
                           dtype=self.dtype)
    self.decoder = Decoder(self.input_size, self.channels, self.decoder_hidden,
                           self.decoder_base_features, self.decoder_features, conv_transpose,
                           dtype=self.dtype)

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


@dataclasses.dataclass(frozen=True)
class CodecConfig(ModelConfig):
  """The `model` section of the seed's encoder and decoder (families 'vae' and 'ae')."""
  INPUTS: ClassVar[str] = 'image'
  latent_dim: int = 32
  input_size: int = 32                        # images are resized to this square size
  channels: int = 1
  encoder_features: tuple[int, ...] = (64, 128, 256)  # stride-2 convolutions
  encoder_out_features: int = 256             # the final valid convolution to 1x1
  decoder_hidden: tuple[int, ...] = (256, 128, 64)    # dense layers after z
  decoder_base_features: int = 64             # channels of the unflattened map
  decoder_features: tuple[int, ...] = (128, 64)       # stride-2 transposed convs before the last
  conv_impl: str = 'auto'         # oneDNN convolutions where built (sslm_jax/kernels), else XLA
  conv_transpose_impl: str = 'col2im'  # the decoder's XLA formulation (when not oneDNN)

  def check(self, c: Checker) -> None:
    super().check(c)
    for key in ('latent_dim', 'input_size', 'channels', 'encoder_out_features',
                'decoder_base_features'):
      c.integer(key)
    for key in ('encoder_features', 'decoder_hidden', 'decoder_features'):
      c.positive_ints(key)
    if c.valid('input_size', 'encoder_features', 'decoder_features'):
      for key, n_stride2 in (('encoder_features', len(self.encoder_features)),
                             ('decoder_features', len(self.decoder_features) + 1)):
        c.check(self.input_size % (2 ** n_stride2) == 0, 'input_size',
                f'a multiple of 2**{n_stride2} (the {n_stride2} stride-2 layers of model.{key})')
    c.choice('conv_transpose_impl', CONV_TRANSPOSE_IMPLS)
    if c.choice('conv_impl', onednn_conv.CONV_IMPLS) and c.valid('dtype'):
      try:
        onednn_conv.choose(self.conv_impl, self.dtype)
      except ValueError:
        c.check(False, 'conv_impl',
                f"'auto' or 'xla' here ({onednn_conv.cannot_run(self.dtype)})")

  def module_fields(self) -> dict:
    fields = super().module_fields()
    for key in ('encoder_features', 'decoder_hidden', 'decoder_features'):
      fields[key] = tuple(fields[key])
    return fields

  def build(self, vocab_size: int = 0) -> nn.Module:
    conv, conv_transpose = conv_impls(self.conv_impl, self.conv_transpose_impl, self.dtype)
    logging.getLogger(__name__).info(
        'convolutions: %s (model.conv_impl=%r: %s); transposed convolutions: %s%s', conv.impl,
        self.conv_impl, conv.reason, conv_transpose,
        '' if conv_transpose == self.conv_transpose_impl else
        f' (model.conv_transpose_impl={self.conv_transpose_impl!r} applies to XLA\'s)')
    return super().build(vocab_size)

  def backend_facts(self) -> dict:
    return {'convolutions': onednn_conv.choose(self.conv_impl, self.dtype).impl}


@dataclasses.dataclass(frozen=True)
class VAEConfig(CodecConfig):
  MODULE: ClassVar[type[nn.Module]] = VAE
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('seed', 'elbo')


@dataclasses.dataclass(frozen=True)
class AEConfig(CodecConfig):
  MODULE: ClassVar[type[nn.Module]] = AutoEncoder
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('mse',)
