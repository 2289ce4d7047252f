"""Flax Linen modules only: no losses, no optimizers."""

import jax.numpy as jnp

from sslm_jax.models.conv_vae import VAE, AutoEncoder, SimCLR, reparameterize  # noqa: F401
from sslm_jax.models.electra import Electra  # noqa: F401
from sslm_jax.models.transformer import GPT, BertEncoder  # noqa: F401


def build_model(config, vocab_size: int = 0):
  """The module a `model` config section describes (`vocab_size`: the tokenizer's, for text)."""
  dtype = jnp.dtype(config.dtype)
  if config.name == 'text_vae':
    from sslm_jax.models.text_vae import TextVAE
    return TextVAE(vocab_size=vocab_size, latent_dim=config.latent_dim,
                   num_layers=config.num_layers, num_heads=config.num_heads,
                   embed_dim=config.embed_dim, mlp_dim=config.mlp_dim, max_len=config.max_len,
                   encoder_type=config.encoder_type, encoder_layers=config.encoder_layers,
                   conditioning=config.latent_conditioning,
                   prefix_len=config.latent_prefix_len, dropout_rate=config.dropout_rate,
                   attention_dropout_rate=config.attention_dropout_rate,
                   positions=config.positions, tie_embeddings=config.tie_embeddings, dtype=dtype)
  if config.name in ('gpt', 'bert'):
    cls = GPT if config.name == 'gpt' else BertEncoder
    return cls(vocab_size=vocab_size, num_layers=config.num_layers, num_heads=config.num_heads,
               embed_dim=config.embed_dim, mlp_dim=config.mlp_dim, max_len=config.max_len,
               dropout_rate=config.dropout_rate,
               attention_dropout_rate=config.attention_dropout_rate,
               positions=config.positions, tie_embeddings=config.tie_embeddings, dtype=dtype)
  if config.name == 'electra':
    return Electra(vocab_size=vocab_size, num_layers=config.num_layers,
                   num_heads=config.num_heads, embed_dim=config.embed_dim,
                   mlp_dim=config.mlp_dim, max_len=config.max_len,
                   dropout_rate=config.dropout_rate,
                   attention_dropout_rate=config.attention_dropout_rate,
                   positions=config.positions, generator_fraction=config.generator_fraction,
                   dtype=dtype)
  if config.name == 'simclr':
    return SimCLR(input_size=config.input_size, channels=config.channels,
                  encoder_features=tuple(config.encoder_features),
                  encoder_out_features=config.encoder_out_features,
                  projection_dim=config.projection_dim, conv_impl=config.conv_impl, dtype=dtype)
  cls = {'vae': VAE, 'ae': AutoEncoder}[config.name]
  return cls(latent_dim=config.latent_dim, input_size=config.input_size,
             channels=config.channels, encoder_features=tuple(config.encoder_features),
             encoder_out_features=config.encoder_out_features,
             decoder_hidden=tuple(config.decoder_hidden),
             decoder_base_features=config.decoder_base_features,
             decoder_features=tuple(config.decoder_features),
             conv_transpose_impl=config.conv_transpose_impl, conv_impl=config.conv_impl,
             dtype=dtype)


def build_classifier(encoder, *, num_classes: int, pooling: str = 'mean',
                     dropout_rate: float = 0.0, freeze_encoder: bool = False):
  """A linear classifier on `encoder` (a module `build_model` made): `sslm_jax.models.heads`."""
  from sslm_jax.models import heads
  if isinstance(encoder, (GPT, BertEncoder, Electra)):
    return heads.TextClassifier(encoder, num_classes, dropout_rate, freeze_encoder,
                                pooling=pooling)
  return heads.ImageClassifier(encoder, num_classes, dropout_rate, freeze_encoder)
