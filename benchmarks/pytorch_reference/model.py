"""The corrected seed VAE in PyTorch, layer for layer as in shared/design/seed-reference.md.

With the default widths this is the seed's network once its defects are fixed:

  encoder: Conv2d(1, 64, 4, 2, 1) ReLU Conv2d(64, 128, 4, 2, 1) ReLU Conv2d(128, 256, 4, 2, 1) ReLU
           Conv2d(256, 256, 4, 1, 0) ReLU Flatten
  head:    Linear(256, 2 * latent) -> mu, logvar
  decoder: Linear(latent, 256) ReLU Linear(256, 128) ReLU Linear(128, 64) ReLU
           Linear(64, 64 * 4 * 4) ReLU Unflatten(1, (64, 4, 4))
           ConvTranspose2d(64, 128, 4, 2, 1) ReLU ConvTranspose2d(128, 64, 4, 2, 1) ReLU
           ConvTranspose2d(64, 1, 4, 2, 1) Tanh

The widths are constructor arguments named like the fields of `sslm_jax.models.VAE`, so small
models can be tested. `encoder` and `decoder` are `nn.Sequential`s as in the seed, which fixes the
state_dict names (`encoder.0.weight`, ..., `decoder.9.weight`) that `sslm_jax.interop` converts.
Images are NCHW in [-1, 1].
"""

from typing import Sequence

import torch
from torch import nn


def make_encoder(channels: int, input_size: int, features: Sequence[int],
                 out_features: int) -> nn.Sequential:
  layers, cin = [], channels
  for width in features:
    layers += [nn.Conv2d(cin, width, 4, 2, 1), nn.ReLU()]
    cin = width
  side = input_size // 2 ** len(features)  # the last kernel covers what is left: 4 for 32x32
  layers += [nn.Conv2d(cin, out_features, side, 1, 0), nn.ReLU(), nn.Flatten()]
  return nn.Sequential(*layers)


def make_decoder(latent_dim: int, channels: int, input_size: int, hidden: Sequence[int],
                 base_features: int, features: Sequence[int]) -> nn.Sequential:
  side = input_size // 2 ** (len(features) + 1)
  layers, cin = [], latent_dim
  for width in list(hidden) + [base_features * side * side]:
    layers += [nn.Linear(cin, width), nn.ReLU()]
    cin = width
  layers.append(nn.Unflatten(1, (base_features, side, side)))
  cin = base_features
  for width in features:
    layers += [nn.ConvTranspose2d(cin, width, 4, 2, 1), nn.ReLU()]
    cin = width
  layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1), nn.Tanh()]
  return nn.Sequential(*layers)


class _SeedCodec(nn.Module):
  """Encoder, a linear head (`head_name`, `head_outputs` x latent_dim outputs), decoder; the
  fields mirror sslm_jax's VAE and AutoEncoder."""
  head_name = ''
  head_outputs = 1

  def __init__(self, latent_dim: int = 32, input_size: int = 32, channels: int = 1,
               encoder_features: Sequence[int] = (64, 128, 256), encoder_out_features: int = 256,
               decoder_hidden: Sequence[int] = (256, 128, 64), decoder_base_features: int = 64,
               decoder_features: Sequence[int] = (128, 64)):
    super().__init__()
    self.latent_dim = latent_dim
    self.encoder = make_encoder(channels, input_size, encoder_features, encoder_out_features)
    setattr(self, self.head_name,
            nn.Linear(encoder_out_features, self.head_outputs * latent_dim))
    self.decoder = make_decoder(latent_dim, channels, input_size, decoder_hidden,
                                decoder_base_features, decoder_features)


class VAE(_SeedCodec):
  """The seed VAE; `forward(x, eps)` takes the reparameterization noise explicitly."""
  head_name, head_outputs = 'posterior', 2

  def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    stats = self.posterior(self.encoder(x))
    return stats[:, :self.latent_dim], stats[:, self.latent_dim:]

  def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
    """(recon, mu, logvar); `eps` ~ N(0, I) of shape (batch, latent), drawn here if None."""
    mu, logvar = self.encode(x)
    if eps is None:
      eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    return self.decoder(z), mu, logvar


class AutoEncoder(_SeedCodec):
  """Deterministic autoencoder on the same encoder and decoder, as `sslm_jax.models.AutoEncoder`."""
  head_name = 'code'

  def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recon, code)."""
    code = self.code(self.encoder(x))
    return self.decoder(code), code


def seed_kl_term(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
  """Per example: mean over latent dims of mu^2 + exp(logvar) - 1 - logvar (= 2 KL / latent)."""
  return torch.mean(mu ** 2 + torch.exp(logvar) - 1 - logvar, dim=1)


def seed_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              kl_weight: float = 1e-4) -> torch.Tensor:
  """The seed objective (seed-reference.md row 7).

  MSE over all pixels + kl_weight * mean over batch and latents of mu^2 + exp(logvar) - 1 - logvar.
  """
  return nn.functional.mse_loss(recon, x) + kl_weight * torch.mean(seed_kl_term(mu, logvar))


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
  """KL(N(mu, exp(logvar)) || N(0, I)) per example in nats, as `sslm_jax.objectives.vae`."""
  return 0.5 * torch.sum(mu ** 2 + torch.exp(logvar) - 1 - logvar, dim=1)
