"""ELECTRA (Clark et al. 2020): a small masked-LM generator and the discriminator it trains.

The discriminator is a bidirectional `TransformerEncoder` (BERT's body) with a per-token head
that scores "this token was replaced"; its `encode` is what a classifier fine-tunes. The
generator is a narrower pre-LN Transformer of the same depth (`generator_fraction` of the
discriminator's heads, width and MLP, the same head size) that reads the discriminator's token
and position embeddings (shared, as in the paper: both losses train them) through a projection
to its width, and predicts masked tokens through those embeddings again (tied output).

Parameters: {'discriminator': <a TransformerEncoder's>, 'discriminator_dense', 'discriminator_out',
'generator_*'}; `init` (through `__call__`) builds all of them.

`ElectraConfig` is the `model` section of the 'electra' family: a Transformer's keys and
`generator_fraction`.
"""

import dataclasses
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.config import Checker
from sslm_jax.models.attention import choose_attention
from sslm_jax.models.transformer import (TransformerConfig, TransformerEncoder, block_class,
                                         kernel_inits, padding_attention_mask)


def generator_sizes(num_heads: int, embed_dim: int, mlp_dim: int,
                    fraction: float) -> tuple[int, int, int]:
  """(heads, width, MLP width) of the generator: `fraction` of the discriminator's heads (at
  least one) at the same head size, and the MLP scaled with the width."""
  heads = max(1, round(num_heads * fraction))
  width = heads * (embed_dim // num_heads)
  return heads, width, max(1, round(mlp_dim * width / embed_dim))


class Electra(nn.Module):
  """tokens (batch, length) -> (generator logits, replaced-token logits); see the module doc."""
  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  positions: str = 'learned'
  generator_fraction: float = 0.25
  dtype: jnp.dtype = jnp.float32
  attention_impl: str = 'auto'  # as the Transformers' (`choose_attention`)
  remat: str = 'none'  # as the Transformers' (`transformer.REMATS`), for both stacks
  weight_init: str = 'lecun'  # as the Transformers' (`transformer.WEIGHT_INITS`), for both
  embed_norm: bool = False  # as the Transformers': on the shared embeddings, for both

  def setup(self):
    self.discriminator = TransformerEncoder(
        vocab_size=self.vocab_size, num_layers=self.num_layers, num_heads=self.num_heads,
        embed_dim=self.embed_dim, mlp_dim=self.mlp_dim, max_len=self.max_len,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        positions=self.positions, dtype=self.dtype, attention_impl=self.attention_impl,
        remat=self.remat, weight_init=self.weight_init, embed_norm=self.embed_norm)
    kernel_init, residual_init = kernel_inits(self.weight_init, self.num_layers)
    self.discriminator_dense = nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=kernel_init)
    self.discriminator_out = nn.Dense(1, dtype=self.dtype, kernel_init=kernel_init)
    heads, width, mlp = generator_sizes(self.num_heads, self.embed_dim, self.mlp_dim,
                                        self.generator_fraction)
    attention_impl = choose_attention(self.attention_impl, dtype=self.dtype,
                                      head_dim=self.embed_dim // self.num_heads,
                                      dropout_rate=self.attention_dropout_rate).impl
    self.generator_in = nn.Dense(width, dtype=self.dtype, kernel_init=kernel_init)
    self.generator_blocks = [
        block_class(self.remat)(heads, mlp, self.dropout_rate, self.attention_dropout_rate,
                                use_rotary=self.positions == 'rotary', dtype=self.dtype,
                                attention_impl=attention_impl, kernel_init=kernel_init,
                                residual_init=residual_init)
        for _ in range(self.num_layers)]
    self.generator_norm = nn.LayerNorm(dtype=self.dtype)
    self.generator_dense = nn.Dense(self.embed_dim, dtype=self.dtype, kernel_init=kernel_init)
    self.generator_head_norm = nn.LayerNorm(dtype=self.dtype)
    self.generator_bias = self.param('generator_bias', nn.initializers.zeros,
                                     (self.vocab_size,))

  def encode(self, tokens: jax.Array, *, padding_mask: Optional[jax.Array] = None,
             deterministic: bool = True) -> jax.Array:
    """The discriminator's final hidden states (batch, length, embed_dim): the features."""
    return self.discriminator.encode(tokens, padding_mask=padding_mask,
                                     deterministic=deterministic)

  def discriminator_logits(self, tokens: jax.Array, *, padding_mask: Optional[jax.Array] = None,
                           deterministic: bool = True) -> jax.Array:
    """(batch, length) float32 logits of "replaced" (ELECTRA's head: dense, GELU, dense)."""
    h = self.encode(tokens, padding_mask=padding_mask, deterministic=deterministic)
    h = nn.gelu(self.discriminator_dense(h))
    return self.discriminator_out(h)[..., 0].astype(jnp.float32)

  def generator_logits(self, tokens: jax.Array, positions: jax.Array, *,
                       padding_mask: Optional[jax.Array] = None,
                       deterministic: bool = True) -> jax.Array:
    """(batch, k, vocab) float32 masked-LM logits at `positions` (batch, k) only: the vocabulary
    projection, the generator's largest matmul, runs on the masked positions alone."""
    x = self.generator_in(self.discriminator.embed_inputs(tokens, deterministic=deterministic))
    mask = padding_attention_mask(tokens, padding_mask)
    for block in self.generator_blocks:
      x = block(x, mask, False, deterministic)  # positional: remat's static arguments
    h = jnp.take_along_axis(self.generator_norm(x), positions[..., None], axis=1)
    h = self.generator_head_norm(nn.gelu(self.generator_dense(h)))
    return (self.discriminator.embed.attend(h) + self.generator_bias).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, *, padding_mask: Optional[jax.Array] = None,
               deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
    """Both heads on the same tokens (generator logits at every position): builds every
    parameter in `init`."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return (self.generator_logits(tokens, positions, padding_mask=padding_mask,
                                  deterministic=deterministic),
            self.discriminator_logits(tokens, padding_mask=padding_mask,
                                      deterministic=deterministic))


@dataclasses.dataclass(frozen=True)
class ElectraConfig(TransformerConfig):
  """The `model` section of the 'electra' family: the discriminator's Transformer keys (a
  classifier reads its hidden states) and the generator's size."""
  MODULE: ClassVar[type[nn.Module]] = Electra
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('electra', 'simcse')
  FEATURES: ClassVar[str] = 'tokens'
  POOLINGS: ClassVar[tuple[str, ...]] = ('mean', 'cls', 'last')  # the discriminator's states
  generator_fraction: float = 0.25  # generator heads (so width, MLP) / the discriminator's

  def check(self, c: Checker) -> None:
    super().check(c)
    c.number('generator_fraction', 0, 1, low_open=True)
    c.check(self.tie_embeddings is True, 'tie_embeddings',
            'True (the generator predicts through the shared token embedding)')

  def module_fields(self) -> dict:
    fields = super().module_fields()
    del fields['tie_embeddings']  # always tied (checked)
    return fields
