"""Pre-LayerNorm Transformers: a causal language model (GPT) and a bidirectional encoder (BERT).

Both embed tokens (plus learned absolute positions, or rotary positions inside attention), run
`num_layers` pre-LN blocks, apply a final LayerNorm and return float32 logits over the
vocabulary, by default through the token embedding itself (tied). `encode` returns the final
hidden states instead, for heads added later. `TransformerEncoder` is BERT without its MLM head
(ELECTRA's discriminator, `sslm_jax.models.electra`). Dropout draws from the 'dropout' rng
(`sslm_jax.models.dropout.Dropout`: flax's, with the same masks drawn faster on CPU).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.models.attention import MultiHeadAttention
from sslm_jax.models.dropout import Dropout

POSITIONS = ('learned', 'rotary')
_EMBED_INIT = nn.initializers.normal(stddev=0.02)


class TransformerBlock(nn.Module):
  """x + Dropout(Attention(LN(x))), then x + Dropout(MLP(LN(x))) with a GELU MLP."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  use_rotary: bool = False
  dtype: jnp.dtype = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None, causal: bool = False,
               deterministic: bool = True) -> jax.Array:
    h = nn.LayerNorm(dtype=self.dtype, name='attention_norm')(x)
    h = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                           dtype=self.dtype, use_rotary=self.use_rotary, decode=self.decode,
                           name='attention')(h, mask=mask, causal=causal,
                                             deterministic=deterministic)
    x = x + Dropout(self.dropout_rate)(h, deterministic=deterministic)
    h = nn.LayerNorm(dtype=self.dtype, name='mlp_norm')(x)
    h = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name='mlp_in')(h))
    h = nn.Dense(x.shape[-1], dtype=self.dtype, name='mlp_out')(h)
    return x + Dropout(self.dropout_rate)(h, deterministic=deterministic)


class LearnedPositions(nn.Module):
  """(length, features) learned absolute position embeddings for positions offset..offset+len-1.

  In decode mode the offset is a 'cache' counter (0 during `init`), advanced by each call, so
  one token at a time gets positions 0, 1, 2, ...
  """
  max_len: int
  features: int
  dtype: jnp.dtype = jnp.float32
  decode: bool = False

  @nn.compact
  def __call__(self, length: int) -> jax.Array:
    positions = jnp.arange(length)
    if self.decode:
      initialized = self.has_variable('cache', 'position_index')
      index = self.variable('cache', 'position_index', lambda: jnp.array(0, jnp.int32))
      if initialized:
        positions = positions + index.value
        index.value = index.value + length
    table = self.param('embedding', _EMBED_INIT, (self.max_len, self.features))
    # take() fills out-of-range rows with NaN, so decoding past max_len shows in the logits.
    return jnp.take(table, positions, axis=0).astype(self.dtype)


class _Transformer(nn.Module):
  """Fields and the shared stack of GPT and BertEncoder; subclasses choose the attention mask."""
  vocab_size: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  positions: str = 'learned'
  tie_embeddings: bool = True
  dtype: jnp.dtype = jnp.float32

  def _build(self, decode: bool):
    if self.positions not in POSITIONS:
      raise ValueError(f'positions must be one of {POSITIONS}; got {self.positions!r}')
    if self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim {self.embed_dim} is not divisible by num_heads '
                       f'{self.num_heads}')
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=_EMBED_INIT,
                          dtype=self.dtype)
    if self.positions == 'learned':
      self.position_embed = LearnedPositions(self.max_len, self.embed_dim, self.dtype, decode)
    self.embed_dropout = Dropout(self.dropout_rate)
    self.blocks = [
        TransformerBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                         self.attention_dropout_rate, use_rotary=self.positions == 'rotary',
                         dtype=self.dtype, decode=decode)
        for i in range(self.num_layers)]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    if not self.tie_embeddings:
      self.lm_head = nn.Dense(self.vocab_size, dtype=self.dtype)

  def embed_inputs(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Token (plus learned position) embeddings after dropout: (batch, length, embed_dim)."""
    if tokens.ndim != 2:
      raise ValueError(f'tokens must be (batch, length); got shape {tokens.shape}')
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'sequence length {tokens.shape[1]} exceeds max_len {self.max_len}')
    x = self.embed(tokens)
    if self.positions == 'learned':
      x = x + self.position_embed(tokens.shape[1])[None]
    return self.embed_dropout(x, deterministic=deterministic)

  def _hidden(self, tokens, mask, causal, deterministic):
    x = self.embed_inputs(tokens, deterministic=deterministic)
    for block in self.blocks:
      x = block(x, mask=mask, causal=causal, deterministic=deterministic)
    return self.final_norm(x)

  def _logits(self, hidden):
    if self.tie_embeddings:
      return self.embed.attend(hidden).astype(jnp.float32)
    return self.lm_head(hidden).astype(jnp.float32)


class GPT(_Transformer):
  """Causal language model: tokens (batch, length) -> next-token logits (batch, length, vocab).

  With `decode=True` it keeps a key/value cache: `init` on (batch, max_len) tokens creates it,
  then each `apply(..., mutable=['cache'])` feeds the next token(s); positions continue from the
  cache. Feeding past max_len is not checked inside jit (see `sslm_jax.models.generate`).
  """
  decode: bool = False

  def setup(self):
    self._build(self.decode)

  def encode(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Final (LayerNorm-ed) hidden states (batch, length, embed_dim) in the compute dtype."""
    return self._hidden(tokens, None, True, deterministic)

  def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    return self._logits(self.encode(tokens, deterministic=deterministic))


def padding_attention_mask(tokens: jax.Array,
                           padding_mask: Optional[jax.Array]) -> Optional[jax.Array]:
  """(batch, 1, 1, length) keys-only attention mask from a (batch, length) padding mask."""
  if padding_mask is None:
    return None
  if padding_mask.shape != tokens.shape:
    raise ValueError(f'padding_mask shape {padding_mask.shape} must equal tokens shape '
                     f'{tokens.shape}')
  return padding_mask.astype(bool)[:, None, None, :]


class TransformerEncoder(_Transformer):
  """Bidirectional encoder without an output head (ELECTRA's discriminator body).

  `padding_mask` (batch, length) is True on real tokens: no position attends to padding, so
  padded tokens never change the outputs at real positions.
  """

  def setup(self):
    self._build(decode=False)

  def encode(self, tokens: jax.Array, *, padding_mask: Optional[jax.Array] = None,
             deterministic: bool = True) -> jax.Array:
    """Final (LayerNorm-ed) hidden states (batch, length, embed_dim) in the compute dtype."""
    return self._hidden(tokens, padding_attention_mask(tokens, padding_mask), False,
                        deterministic)


class BertEncoder(TransformerEncoder):
  """Bidirectional encoder with a masked-LM head: tokens -> logits (batch, length, vocab).

  The MLM head is BERT's: a dense GELU layer and LayerNorm, then the (tied) output projection
  with a per-token bias.
  """

  def setup(self):
    super().setup()
    self.mlm_dense = nn.Dense(self.embed_dim, dtype=self.dtype)
    self.mlm_norm = nn.LayerNorm(dtype=self.dtype)
    if self.tie_embeddings:
      self.mlm_bias = self.param('mlm_bias', nn.initializers.zeros, (self.vocab_size,))

  def __call__(self, tokens: jax.Array, *, padding_mask: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    h = self.encode(tokens, padding_mask=padding_mask, deterministic=deterministic)
    h = self.mlm_norm(nn.gelu(self.mlm_dense(h)))
    logits = self._logits(h)
    if self.tie_embeddings:
      logits = logits + self.mlm_bias
    return logits
