"""The seed's convolutional encoder and decoder, its VAE, a plain autoencoder, and the encoder
with SimCLR's projection head.

Shapes follow the corrected seed model (shared/design/seed-reference.md): a 32x32 image goes
through stride-2 4x4 convolutions (32 -> 16 -> 8 -> 4), one 4x4 valid convolution to 1x1x256, and
a linear head to the Gaussian posterior's mean and log-variance. The decoder mirrors it with a
dense stack, a channels-first unflatten (as PyTorch's `nn.Unflatten`) and stride-2 transposed
convolutions back to the input size. Images are NHWC in [-1, 1]. `conv_impl` picks who computes
the convolutions: oneDNN (sslm_jax/kernels) or XLA; the parameters and the function are the same.
The model decides once (`conv_impls`) and hands its encoder and decoder concrete choices.

`CodecConfig` is the `model` section of the 'vae' and 'ae' families, `SimCLRConfig` that of
'simclr'; both start from the encoder's keys (`ConvEncoderConfig`).
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
    conv = onednn_conv.choose(self.conv_impl, self.dtype)  # the encoder takes a concrete choice
    self.encoder = Encoder(self.encoder_features, self.encoder_out_features, conv.impl,
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


@dataclasses.dataclass(frozen=True)
class ConvEncoderConfig(ModelConfig):
  """The seed encoder's keys, which every image family's `model` section starts from."""
  INPUTS: ClassVar[str] = 'image'
  INTEGERS: ClassVar[tuple[str, ...]] = ('input_size', 'channels', 'encoder_out_features')
  TUPLES: ClassVar[tuple[str, ...]] = ('encoder_features',)  # of positive integers
  # {tuple key: stride-2 layers besides one a value}: input_size is halved that many times.
  STRIDE2: ClassVar[dict[str, int]] = {'encoder_features': 0}
  input_size: int = 32                        # images are resized to this square size
  channels: int = 1
  encoder_features: tuple[int, ...] = (64, 128, 256)  # stride-2 convolutions
  encoder_out_features: int = 256             # the final valid convolution to 1x1
  conv_impl: str = 'auto'         # oneDNN convolutions where built (sslm_jax/kernels), else XLA

  def check(self, c: Checker) -> None:
    super().check(c)
    for key in self.INTEGERS:
      c.integer(key)
    for key in self.TUPLES:
      c.positive_ints(key)
    if c.valid('input_size', *self.STRIDE2):
      for key, extra in self.STRIDE2.items():
        n_stride2 = len(getattr(self, key)) + extra
        c.check(self.input_size % (2 ** n_stride2) == 0, 'input_size',
                f'a multiple of 2**{n_stride2} (the {n_stride2} stride-2 layers of model.{key})')
    self.check_more(c)
    if c.choice('conv_impl', onednn_conv.CONV_IMPLS) and c.valid('dtype'):
      try:
        onednn_conv.choose(self.conv_impl, self.dtype)
      except ValueError:
        c.check(False, 'conv_impl',
                f"'auto' or 'xla' here ({onednn_conv.cannot_run(self.dtype)})")

  def check_more(self, c: Checker) -> None:
    """A family's rules beyond the integers, tuples and input size (before conv_impl's)."""

  def module_fields(self) -> dict:
    fields = super().module_fields()
    for key in self.TUPLES:
      fields[key] = tuple(fields[key])
    return fields

  def convolutions(self) -> str:
    """Who computes the convolutions, and why (logged when the model is built)."""
    conv = onednn_conv.choose(self.conv_impl, self.dtype)
    return f'{conv.impl} (model.conv_impl={self.conv_impl!r}: {conv.reason})'

  def build(self, vocab_size: int = 0) -> nn.Module:
    logging.getLogger(__name__).info('convolutions: %s', self.convolutions())
    return super().build(vocab_size)

  def backend_facts(self) -> dict:
    return {'convolutions': onednn_conv.choose(self.conv_impl, self.dtype).impl}


@dataclasses.dataclass(frozen=True)
class CodecConfig(ConvEncoderConfig):
  """The `model` section of the seed's encoder and decoder (families 'vae' and 'ae')."""
  INTEGERS: ClassVar[tuple[str, ...]] = ('latent_dim', 'input_size', 'channels',
                                         'encoder_out_features', 'decoder_base_features')
  TUPLES: ClassVar[tuple[str, ...]] = ('encoder_features', 'decoder_hidden', 'decoder_features')
  STRIDE2: ClassVar[dict[str, int]] = {'encoder_features': 0, 'decoder_features': 1}
  latent_dim: int = 32
  decoder_hidden: tuple[int, ...] = (256, 128, 64)    # dense layers after z
  decoder_base_features: int = 64             # channels of the unflattened map
  decoder_features: tuple[int, ...] = (128, 64)       # stride-2 transposed convs before the last
  conv_transpose_impl: str = 'col2im'  # the decoder's XLA formulation (when not oneDNN)

  def check_more(self, c: Checker) -> None:
    c.choice('conv_transpose_impl', CONV_TRANSPOSE_IMPLS)

  def convolutions(self) -> str:
    _, conv_transpose = conv_impls(self.conv_impl, self.conv_transpose_impl, self.dtype)
    return (f'{super().convolutions()}; transposed convolutions: {conv_transpose}' +
            ('' if conv_transpose == self.conv_transpose_impl else
             f' (model.conv_transpose_impl={self.conv_transpose_impl!r} applies to XLA\'s)'))


@dataclasses.dataclass(frozen=True)
class VAEConfig(CodecConfig):
  MODULE: ClassVar[type[nn.Module]] = VAE
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('seed', 'elbo')


@dataclasses.dataclass(frozen=True)
class AEConfig(CodecConfig):
  MODULE: ClassVar[type[nn.Module]] = AutoEncoder
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('mse',)


@dataclasses.dataclass(frozen=True)
class SimCLRConfig(ConvEncoderConfig):
  """The `model` section of the 'simclr' family: the seed encoder and the projection head."""
  MODULE: ClassVar[type[nn.Module]] = SimCLR
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('simclr',)
  INTEGERS: ClassVar[tuple[str, ...]] = ConvEncoderConfig.INTEGERS + ('projection_dim',)
  projection_dim: int = 64        # the projection head's output (its hidden layer:
                                  # encoder_out_features)
