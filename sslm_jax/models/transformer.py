"""Pre-LayerNorm Transformers: a causal language model (GPT) and a bidirectional encoder (BERT).

Both embed tokens (plus learned absolute positions, or rotary positions inside attention), run
`num_layers` pre-LN blocks, apply a final LayerNorm and return float32 logits over the
vocabulary, by default through the token embedding itself (tied). `encode` returns the final
hidden states instead, for heads added later, and `head_logits` the logits from those hidden
states (what a chunked loss calls a slice at a time). `TransformerEncoder` is BERT without its
MLM head (ELECTRA's discriminator, `sslm_jax.models.electra`). Dropout draws from the 'dropout' rng
(`sslm_jax.models.dropout.Dropout`: flax's, with the same masks drawn faster on CPU).

`attention_impl` picks the attention kernel ('auto': cuDNN flash attention where it applies,
`sslm_jax.models.attention.choose_attention`); `remat` recomputes each block's activations in
the backward pass instead of keeping them ('block', or a named `jax.checkpoint_policies` policy
of what to keep), the same numbers from less memory. `weight_init` picks the dense layers'
initial weights (`WEIGHT_INITS`).

`TransformerConfig` is the `model` section of the 'gpt' and 'bert' families (and the base of
ELECTRA's and the text VAE's); it chooses the attention once (`attention`) and hands the modules
the choice.
"""

import dataclasses
import logging
import math
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.config import Checker
from sslm_jax.models.attention import (ATTENTION_IMPLS, AttentionChoice, MultiHeadAttention,
                                       choose_attention)
from sslm_jax.models.dropout import Dropout
from sslm_jax.models.family import ModelConfig

POSITIONS = ('learned', 'rotary')
# 'none', 'block' (keep only each block's input), or a jax.checkpoint_policies policy by name.
REMAT_POLICIES = ('dots_saveable', 'dots_with_no_batch_dims_saveable', 'nothing_saveable',
                  'everything_saveable')
REMATS = ('none', 'block') + REMAT_POLICIES
_EMBED_INIT = nn.initializers.normal(stddev=0.02)
# The dense layers' initial weights. 'lecun': Flax's default, LeCun normal (variance 1/fan-in),
# so each block's two residual branches start about 50 times the size of the N(0, 0.02)
# embeddings they are added to.
# 'gpt2': GPT-2's and BERT's, N(0, 0.02) for every kernel of the Transformer stacks and their
# heads (the text VAE's latent layers keep their own), divided by sqrt(2 * num_layers) on the
# two projections that write into the residual stream: each block starts as a small change to
# the embeddings. With it the masked LM of configs/bert_fortunes.py (learned positions) reached
# at step 573 the validation perplexity that LeCun's reached at step 1146 (325 and 330; README,
# "Fortunes: initial weights and positions").
WEIGHT_INITS = ('lecun', 'gpt2')
# Parameter names below the first block: what layer-wise schemes count as depth 0.
EMBEDDING_PARAMS = ('embed', 'position_embed', 'embedding_norm')


def block_index(name: str) -> int | None:
  """i for a stack's block i (Flax names the modules of the `blocks` list `blocks_<i>`), else
  None (also for the generator's `generator_blocks_<i>`)."""
  prefix, _, index = name.partition('_')
  return int(index) if prefix == 'blocks' and index.isdigit() else None


def kernel_inits(weight_init: str, num_layers: int):
  """(a dense layer's kernel initializer, a residual output projection's) for `weight_init`."""
  if weight_init == 'lecun':
    return nn.linear.default_kernel_init, nn.linear.default_kernel_init
  if weight_init == 'gpt2':
    return (nn.initializers.normal(stddev=0.02),
            nn.initializers.normal(stddev=0.02 / math.sqrt(2 * num_layers)))
  raise ValueError(f'weight_init must be one of {WEIGHT_INITS}; got {weight_init!r}')


class TransformerBlock(nn.Module):
  """x + Dropout(Attention(LN(x))), then x + Dropout(MLP(LN(x))) with a GELU MLP."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  use_rotary: bool = False
  dtype: jnp.dtype = jnp.float32
  decode: bool = False
  attention_impl: str = 'reference'  # a concrete one: 'reference', 'xla' or 'cudnn'
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  residual_init: nn.initializers.Initializer = nn.linear.default_kernel_init  # the outputs'

  # Positional arguments: `nn.remat` marks causal and deterministic static by position.
  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None, causal: bool = False,
               deterministic: bool = True) -> jax.Array:
    h = nn.LayerNorm(dtype=self.dtype, name='attention_norm')(x)
    h = MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate,
                           dtype=self.dtype, use_rotary=self.use_rotary, decode=self.decode,
                           implementation=self.attention_impl,
                           kernel_init=self.kernel_init, out_kernel_init=self.residual_init,
                           name='attention')(h, mask=mask, causal=causal,
                                             deterministic=deterministic)
    x = x + Dropout(self.dropout_rate)(h, deterministic=deterministic)
    h = nn.LayerNorm(dtype=self.dtype, name='mlp_norm')(x)
    h = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=self.kernel_init,
                         name='mlp_in')(h))
    h = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=self.residual_init,
                 name='mlp_out')(h)
    return x + Dropout(self.dropout_rate)(h, deterministic=deterministic)


def block_class(remat: str) -> type[nn.Module]:
  """TransformerBlock, or with `remat` (REMATS) its activations recomputed in the backward pass."""
  if remat == 'none':
    return TransformerBlock
  policy = None if remat == 'block' else getattr(jax.checkpoint_policies, remat)
  return nn.remat(TransformerBlock, static_argnums=(3, 4), policy=policy)


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
  attention_impl: str = 'auto'  # 'auto', 'reference', 'xla', 'cudnn' (choose_attention)
  remat: str = 'none'  # REMATS
  weight_init: str = 'lecun'  # WEIGHT_INITS
  embed_norm: bool = False  # a LayerNorm on the summed embeddings (BERT's and ELECTRA's)

  def _build(self, decode: bool):
    if self.positions not in POSITIONS:
      raise ValueError(f'positions must be one of {POSITIONS}; got {self.positions!r}')
    if self.embed_dim % self.num_heads:
      raise ValueError(f'embed_dim {self.embed_dim} is not divisible by num_heads '
                       f'{self.num_heads}')
    if self.remat not in REMATS:
      raise ValueError(f'remat must be one of {REMATS}; got {self.remat!r}')
    attention_impl = choose_attention(self.attention_impl, dtype=self.dtype,
                                      head_dim=self.embed_dim // self.num_heads,
                                      dropout_rate=self.attention_dropout_rate).impl
    block = block_class('none' if decode else self.remat)  # decoding computes no gradient
    kernel_init, residual_init = kernel_inits(self.weight_init, self.num_layers)
    self.embed = nn.Embed(self.vocab_size, self.embed_dim, embedding_init=_EMBED_INIT,
                          dtype=self.dtype)
    if self.positions == 'learned':
      self.position_embed = LearnedPositions(self.max_len, self.embed_dim, self.dtype, decode)
    if self.embed_norm:
      self.embedding_norm = nn.LayerNorm(dtype=self.dtype)
    self.embed_dropout = Dropout(self.dropout_rate)
    self.blocks = [
        block(self.num_heads, self.mlp_dim, self.dropout_rate, self.attention_dropout_rate,
              use_rotary=self.positions == 'rotary', dtype=self.dtype, decode=decode,
              attention_impl=attention_impl, kernel_init=kernel_init,
              residual_init=residual_init)
        for i in range(self.num_layers)]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    if not self.tie_embeddings:
      self.lm_head = nn.Dense(self.vocab_size, dtype=self.dtype, kernel_init=kernel_init)

  def embed_inputs(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    """Token (plus learned position) embeddings, LayerNorm-ed with `embed_norm`, after dropout:
    (batch, length, embed_dim)."""
    if tokens.ndim != 2:
      raise ValueError(f'tokens must be (batch, length); got shape {tokens.shape}')
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'sequence length {tokens.shape[1]} exceeds max_len {self.max_len}')
    x = self.embed(tokens)
    if self.positions == 'learned':
      x = x + self.position_embed(tokens.shape[1])[None]
    if self.embed_norm:
      x = self.embedding_norm(x)
    return self.embed_dropout(x, deterministic=deterministic)

  def _hidden(self, tokens, mask, causal, deterministic):
    x = self.embed_inputs(tokens, deterministic=deterministic)
    for block in self.blocks:
      x = block(x, mask, causal, deterministic)
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

  def head_logits(self, hidden: jax.Array) -> jax.Array:
    """float32 logits (..., vocab) from `encode`'s hidden states (..., embed_dim)."""
    return self._logits(hidden)

  def __call__(self, tokens: jax.Array, *, deterministic: bool = True) -> jax.Array:
    return self.head_logits(self.encode(tokens, deterministic=deterministic))


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
    self.mlm_dense = nn.Dense(self.embed_dim, dtype=self.dtype,
                              kernel_init=kernel_inits(self.weight_init, self.num_layers)[0])
    self.mlm_norm = nn.LayerNorm(dtype=self.dtype)
    if self.tie_embeddings:
      self.mlm_bias = self.param('mlm_bias', nn.initializers.zeros, (self.vocab_size,))

  def __call__(self, tokens: jax.Array, *, padding_mask: Optional[jax.Array] = None,
               deterministic: bool = True) -> jax.Array:
    return self.head_logits(self.encode(tokens, padding_mask=padding_mask,
                                        deterministic=deterministic))

  def head_logits(self, hidden: jax.Array) -> jax.Array:
    """The MLM head: float32 logits (..., vocab) from `encode`'s hidden states."""
    logits = self._logits(self.mlm_norm(nn.gelu(self.mlm_dense(hidden))))
    if self.tie_embeddings:
      logits = logits + self.mlm_bias
    return logits


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
  """The `model` section of a Transformer family; the vocabulary size is the tokenizer's."""
  INPUTS: ClassVar[str] = 'text'
  WEIGHT_INITS: ClassVar[tuple[str, ...]] = WEIGHT_INITS  # what `weight_init` may be
  num_layers: int = 4
  num_heads: int = 4
  embed_dim: int = 256
  mlp_dim: int = 1024
  max_len: int = 128              # longest input; >= text.seq_len (2 * seq_len + 1 denoising)
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  positions: str = 'learned'
  tie_embeddings: bool = True
  # Accelerators: the attention kernel ('auto' = cuDNN flash attention on a GPU where it applies,
  # the reference SDPA elsewhere) and rematerialisation of the blocks ('none', 'block' or a
  # jax.checkpoint_policies name), which trades recomputation for activation memory.
  attention_impl: str = 'auto'
  remat: str = 'none'
  weight_init: str = 'lecun'  # the dense layers' initial weights: WEIGHT_INITS
  # A LayerNorm on the summed embeddings, as BERT's and ELECTRA's: the residual stream then
  # starts at unit scale, not N(0, 0.02) under branches ~50 times larger (LeCun's weights).
  embed_norm: bool = False

  def check(self, c: Checker) -> None:
    super().check(c)
    for key in ('num_layers', 'num_heads', 'embed_dim', 'mlp_dim', 'max_len'):
      c.integer(key)
    c.choice('positions', POSITIONS)
    c.choice('remat', REMATS)
    c.choice('weight_init', self.WEIGHT_INITS)
    for key in ('dropout_rate', 'attention_dropout_rate'):
      c.number(key, 0, 1, high_open=True)
    if not c.valid('embed_dim', 'num_heads'):
      return
    head_dim = self.embed_dim // self.num_heads
    c.check(self.embed_dim % self.num_heads == 0, 'embed_dim',
            f'a multiple of model.num_heads={self.num_heads}')
    c.check(self.positions != 'rotary' or head_dim % 2 == 0, 'positions',
            f"'learned', or 'rotary' with an even head size (embed_dim / num_heads = {head_dim})")
    if c.choice('attention_impl', ATTENTION_IMPLS) and c.valid('dtype', 'attention_dropout_rate'):
      try:
        self.attention()
      except ValueError as e:
        c.check(False, 'attention_impl', f"'auto', 'reference' or 'xla' here ({e})")
    seq_len, objective = c.get('text.seq_len'), c.get('objective.name')
    if c.valid('max_len', 'text.seq_len'):
      c.check(self.max_len >= seq_len, 'max_len',
              f'>= {seq_len} (text.seq_len={seq_len} for objective {objective!r})')

  def attention(self) -> AttentionChoice:
    """The attention the model runs, and why (`choose_attention`, on the default device)."""
    return choose_attention(self.attention_impl, dtype=jnp.dtype(self.dtype),
                            head_dim=self.embed_dim // self.num_heads,
                            dropout_rate=self.attention_dropout_rate)

  def build(self, vocab_size: int = 0) -> nn.Module:
    choice = self.attention()
    logging.getLogger(__name__).info('attention: %s (model.attention_impl=%r: %s)', choice.impl,
                                     self.attention_impl, choice.reason)
    return self.MODULE(vocab_size=vocab_size,
                       **{**self.module_fields(), 'attention_impl': choice.impl})

  def backend_facts(self) -> dict:
    choice = self.attention()
    return {'attention_impl': choice.impl, 'attention_impl_reason': choice.reason}


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
  MODULE: ClassVar[type[nn.Module]] = GPT
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('causal_lm', 'denoising')
  FEATURES: ClassVar[str] = 'tokens'
  # 'cls' would read the first position, which a causal model sees alone.
  POOLINGS: ClassVar[tuple[str, ...]] = ('mean', 'last')


@dataclasses.dataclass(frozen=True)
class BertConfig(TransformerConfig):
  MODULE: ClassVar[type[nn.Module]] = BertEncoder
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('mlm', 'simcse')
  FEATURES: ClassVar[str] = 'tokens'
  POOLINGS: ClassVar[tuple[str, ...]] = ('mean', 'cls', 'last')
