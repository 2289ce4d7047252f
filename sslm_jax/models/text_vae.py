"""A sentence VAE (the seed's section 4.3): a Gaussian posterior over z from an encoder, and an
autoregressive Transformer decoder conditioned on z.

Rows are one sentence each, `bos doc eos` padded (pad id 0). The encoder reads the whole row:
a bidirectional pre-LN Transformer (the blocks of `transformer.py`, padding masked out of
attention, mean-pooled over real tokens) or a bidirectional GRU (final states at each row's real
end); a dense layer gives the posterior mean and log-variance.

The decoder is GPT's stack (`transformer._Transformer`: same parameter names, so with
latent_conditioning 'none' it is exactly a `GPT` and is the causal-LM baseline). It sees z through
`latent_conditioning`:

- 'embedding': a projection of z added to every input embedding, so every position has a direct
  path to z (the stronger signal against posterior collapse on short sentences);
- 'prefix': `latent_prefix_len` vectors projected from z placed before the tokens, attended to as
  memory by every layer's causal attention (Optimus-style "memory");
- 'both' (the default): both, at the cost of one small dense layer each;
- 'none': no latent; the encoder is not built and the posterior is the prior.

The prefix vectors take attention positions (and rotary positions) 0..P-1 before the tokens;
learned position embeddings count tokens only, so a 'none' decoder and a `GPT` agree.
`generate_from_latent` decodes with GPT's key/value cache: the prefix goes in with the prompt,
then one token per step, each with z's embedding added.

`TextVAEConfig` is the family's `model` section: the Transformer keys size the decoder (and the
encoder's width), `latent_dim` the posterior.
"""

import dataclasses
import functools
from typing import ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sslm_jax.config import Checker
from sslm_jax.models.conv_vae import reparameterize
from sslm_jax.models.generate import decode_tokens, filter_logits
from sslm_jax.models.transformer import TransformerConfig, _Transformer

CONDITIONINGS = ('embedding', 'prefix', 'both', 'none')
ENCODERS = ('transformer', 'gru')
# z ~ N(0, I) projected at the scale of GPT's token embeddings (std 0.02): a default (std ~1)
# projection swamps them with per-sentence noise and the decoder stalls near a unigram model.
_LATENT_INIT = nn.initializers.variance_scaling(0.02 ** 2, 'fan_in', 'normal')


class TransformerSentenceEncoder(_Transformer):
  """Bidirectional Transformer over a padded row -> (batch, embed_dim) mean over real tokens."""

  def setup(self):
    self._build(decode=False)

  def __call__(self, tokens, mask, *, deterministic: bool = True):
    hidden = self._hidden(tokens, mask[:, None, None, :], False, deterministic)
    weights = mask.astype(jnp.float32)[..., None]
    return (hidden.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


class GRUSentenceEncoder(nn.Module):
  """Bidirectional GRU -> (batch, 2 * features): the forward state after the last real token and
  the backward state after the first."""
  vocab_size: int
  features: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens, mask, *, deterministic: bool = True):
    x = nn.Embed(self.vocab_size, self.features, dtype=self.dtype, name='embed')(tokens)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    gru = functools.partial(nn.RNN, nn.GRUCell(self.features, dtype=self.dtype))
    (forward, backward), _ = nn.Bidirectional(gru(), gru(), return_carry=True)(
        x, seq_lengths=mask.sum(axis=1).astype(jnp.int32))
    return jnp.concatenate([forward, backward], axis=-1).astype(jnp.float32)


class PosteriorEncoder(nn.Module):
  """tokens, mask -> (mean, logvar), each (batch, latent_dim) float32."""
  vocab_size: int
  latent_dim: int
  encoder_type: str
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  positions: str = 'learned'
  dtype: jnp.dtype = jnp.float32
  attention_impl: str = 'auto'
  remat: str = 'none'
  weight_init: str = 'lecun'

  @nn.compact
  def __call__(self, tokens, mask, *, deterministic: bool = True):
    if self.encoder_type == 'transformer':
      features = TransformerSentenceEncoder(
          self.vocab_size, self.num_layers, self.num_heads, self.embed_dim, self.mlp_dim,
          self.max_len, self.dropout_rate, self.attention_dropout_rate, self.positions,
          dtype=self.dtype, attention_impl=self.attention_impl, remat=self.remat,
          weight_init=self.weight_init, name='transformer')(tokens, mask,
                                                            deterministic=deterministic)
    elif self.encoder_type == 'gru':
      features = GRUSentenceEncoder(self.vocab_size, self.embed_dim, self.dropout_rate,
                                    self.dtype, name='gru')(tokens, mask,
                                                            deterministic=deterministic)
    else:
      raise ValueError(f'encoder_type={self.encoder_type!r}; allowed: {ENCODERS}')
    stats = nn.Dense(2 * self.latent_dim, name='posterior')(features)
    mean, logvar = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    return mean, logvar


class LatentDecoder(_Transformer):
  """GPT conditioned on z: tokens (batch, length), z (batch, latent) -> logits at the tokens.

  `prefix=False` leaves the prefix out: decode-mode calls after the first (the prefix is in the
  cache already).
  """
  latent_conditioning: str = 'both'
  latent_prefix_len: int = 1
  decode: bool = False

  def setup(self):
    if self.latent_conditioning not in CONDITIONINGS:
      raise ValueError(f'latent_conditioning={self.latent_conditioning!r}; allowed: '
                       f'{CONDITIONINGS}')
    self._build(self.decode)
    if self.latent_conditioning in ('embedding', 'both'):
      self.latent_to_embedding = nn.Dense(self.embed_dim, dtype=self.dtype,
                                          kernel_init=_LATENT_INIT)
    if self.latent_conditioning in ('prefix', 'both'):
      self.latent_to_prefix = nn.Dense(self.latent_prefix_len * self.embed_dim, dtype=self.dtype,
                                       kernel_init=_LATENT_INIT)

  def __call__(self, tokens, z: Optional[jax.Array], *, deterministic: bool = True,
               prefix: bool = True):
    if tokens.ndim != 2:
      raise ValueError(f'tokens must be (batch, length); got shape {tokens.shape}')
    if tokens.shape[1] > self.max_len:
      raise ValueError(f'sequence length {tokens.shape[1]} exceeds max_len {self.max_len}')
    if self.latent_conditioning != 'none' and (z is None or z.ndim != 2 or
                                        z.shape[0] != tokens.shape[0]):
      raise ValueError(f'z must be (batch, latent_dim) for batch {tokens.shape[0]}; got '
                       f'{None if z is None else z.shape}')
    x = self.embed(tokens)
    if self.positions == 'learned':
      x = x + self.position_embed(tokens.shape[1])[None]
    if self.latent_conditioning in ('embedding', 'both'):
      x = x + self.latent_to_embedding(z)[:, None, :]
    num_prefix = 0
    if self.latent_conditioning in ('prefix', 'both') and prefix:
      memory = self.latent_to_prefix(z).reshape(z.shape[0], self.latent_prefix_len,
                                                self.embed_dim)
      x = jnp.concatenate([memory.astype(x.dtype), x], axis=1)
      num_prefix = self.latent_prefix_len
    x = self.embed_dropout(x, deterministic=deterministic)
    for block in self.blocks:
      x = block(x, None, True, deterministic)  # positional: see TransformerBlock
    return self._logits(self.final_norm(x)[:, num_prefix:])


class TextVAE(nn.Module):
  """Sentence VAE; `__call__(tokens, rng)` creates every parameter ({'encoder', 'decoder'})."""
  vocab_size: int
  latent_dim: int
  num_layers: int
  num_heads: int
  embed_dim: int
  mlp_dim: int
  max_len: int
  encoder_type: str = 'transformer'
  encoder_layers: int = 2
  latent_conditioning: str = 'both'
  latent_prefix_len: int = 1
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  positions: str = 'learned'
  tie_embeddings: bool = True
  pad_id: int = 0
  dtype: jnp.dtype = jnp.float32
  attention_impl: str = 'auto'  # as the Transformers' (sslm_jax.models.transformer)
  remat: str = 'none'
  weight_init: str = 'lecun'

  def setup(self):
    if self.latent_conditioning != 'none':
      self.encoder = PosteriorEncoder(
          self.vocab_size, self.latent_dim, self.encoder_type, self.encoder_layers,
          self.num_heads, self.embed_dim, self.mlp_dim, self.max_len, self.dropout_rate,
          self.attention_dropout_rate, self.positions, self.dtype, self.attention_impl,
          self.remat, self.weight_init)
    self.decoder = self.decoder_module()

  @nn.nowrap
  def decoder_module(self, decode: bool = False) -> LatentDecoder:
    """The decoder alone (e.g. in decode mode); its parameters are params['decoder']."""
    return LatentDecoder(self.vocab_size, self.num_layers, self.num_heads, self.embed_dim,
                         self.mlp_dim, self.max_len, self.dropout_rate,
                         self.attention_dropout_rate, self.positions, self.tie_embeddings,
                         self.dtype, self.attention_impl, self.remat, self.weight_init,
                         latent_conditioning=self.latent_conditioning,
                         latent_prefix_len=self.latent_prefix_len, decode=decode)

  def encode(self, tokens, mask=None, *, deterministic: bool = True):
    """(mean, logvar) of q(z | x), (batch, latent_dim) float32; `mask` defaults to tokens !=
    pad_id. Without conditioning the posterior is the prior N(0, I)."""
    if mask is None:
      mask = tokens != self.pad_id
    if self.latent_conditioning == 'none':
      zeros = jnp.zeros((tokens.shape[0], self.latent_dim), jnp.float32)
      return zeros, zeros
    return self.encoder(tokens, mask.astype(bool), deterministic=deterministic)

  def decode(self, inputs, z, *, deterministic: bool = True):
    """Next-token logits (batch, length, vocab) float32 for decoder `inputs` given z."""
    return self.decoder(inputs, z, deterministic=deterministic)

  def __call__(self, tokens, rng, mask=None, *, decoder_inputs=None,
               deterministic: bool = True, sample: bool = True):
    """Encodes `tokens`, draws z (the mean when `sample` is False) and decodes
    `decoder_inputs` (default tokens[:, :-1]): {'mean', 'logvar', 'z', 'logits'}."""
    mean, logvar = self.encode(tokens, mask, deterministic=deterministic)
    z = reparameterize(rng, mean, logvar) if sample else mean
    inputs = tokens[:, :-1] if decoder_inputs is None else decoder_inputs
    return {'mean': mean, 'logvar': logvar, 'z': z,
            'logits': self.decode(inputs, z, deterministic=deterministic)}


def generate_from_latent(model: TextVAE, params, z: jax.Array, prompt: jax.Array, *,
                         max_new_tokens: int, rng: jax.Array, temperature: float = 1.0,
                         top_k: int = 0, top_p: float = 1.0, use_cache: bool = True,
                         eos_id: Optional[int] = None) -> jax.Array:
  """Continues `prompt` (batch, prompt_len) given z (batch, latent_dim), as
  `sslm_jax.models.generate.generate` continues a GPT's (same sampling, same keys).

  `params` is the TextVAE's (with 'decoder'). Returns (batch, prompt_len + max_new_tokens).
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f'prompt must be (batch, prompt_len >= 1); got shape {prompt.shape}')
  if prompt.shape[1] + max_new_tokens > model.max_len:
    raise ValueError(f'prompt_len {prompt.shape[1]} + max_new_tokens {max_new_tokens} exceeds '
                     f'the model max_len {model.max_len}')
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy); got {temperature}')
  filter_logits(jnp.zeros((1,)), top_k, top_p)  # validates top_k and top_p early
  z = jnp.asarray(z, jnp.float32)
  if z.shape != (prompt.shape[0], model.latent_dim):
    raise ValueError(f'z must be (batch, latent_dim) = {(prompt.shape[0], model.latent_dim)}; '
                     f'got {z.shape}')
  if max_new_tokens == 0:
    return prompt
  params = params['params'] if 'params' in params else params
  # The prefix vectors of z go in with the prompt; single-token steps add z's embedding only.
  return decode_tokens(model.decoder_module(), {'params': params['decoder']}, prompt, rng, (z,),
                       max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                       top_k=int(top_k), top_p=float(top_p), use_cache=bool(use_cache),
                       eos_id=None if eos_id is None else int(eos_id),
                       step_kwargs=(('prefix', False),))


def interpolate(a: jax.Array, b: jax.Array, steps: int) -> jax.Array:
  """`steps` points from a to b (inclusive), linearly: (steps, *a.shape); steps >= 2."""
  if steps < 2:
    raise ValueError(f'steps={steps}; allowed: an integer >= 2 (the two endpoints included)')
  t = jnp.linspace(0.0, 1.0, steps).reshape((steps,) + (1,) * jnp.ndim(a))
  return (1.0 - t) * a + t * b


@dataclasses.dataclass(frozen=True)
class TextVAEConfig(TransformerConfig):
  """The `model` section of the 'text_vae' family."""
  MODULE: ClassVar[type[nn.Module]] = TextVAE
  OBJECTIVES: ClassVar[tuple[str, ...]] = ('text_vae',)
  POOLINGS: ClassVar[tuple[str, ...]] = ('mean',)  # the sentence's posterior mean
  latent_dim: int = 32
  encoder_type: str = 'transformer'  # or 'gru' (bidirectional, embed_dim units a direction)
  encoder_layers: int = 2
  latent_conditioning: str = 'both'  # z added to every input embedding and/or as a prefix
  latent_prefix_len: int = 1         # prefix vectors ('prefix', 'both')

  def check(self, c: Checker) -> None:
    super().check(c)
    c.integer('latent_dim')
    c.choice('encoder_type', ENCODERS)
    c.integer('encoder_layers')
    c.choice('latent_conditioning', CONDITIONINGS)
    c.integer('latent_prefix_len')
    # The latent is added to the input embeddings: where a LayerNorm would sit around that sum
    # is a choice not made yet.
    c.check(self.embed_norm is False, 'embed_norm', 'False (not built for the text VAE)')

  def module_fields(self) -> dict:
    fields = super().module_fields()
    del fields['embed_norm']  # always False (checked)
    return fields
