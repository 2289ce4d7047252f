"""Autoregressive generation from a `GPT`: greedy or sampled (temperature, top-k, top-p).

With the cache (default) the model is cloned with `decode=True`, its key/value cache is created
for (batch, max_len), the prompt goes through it in one chunk (prefill), and then one token per
step, so each new token costs one position's work against the cache. Without the cache every
new token reruns the full forward pass over a (batch, prompt_len + max_new_tokens) buffer; it is
the slow reference the cached path is tested against.

The key for new token i is `fold_in(rng, i)` in both paths, so they sample alike given the same
logits. Everything, prefill and the `lax.scan` over tokens, is one jitted function per
(model, lengths, sampling settings).
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from sslm_jax.models.transformer import GPT


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Sets to -inf every logit outside the top-k, then outside the nucleus of mass top_p.

  top_k=0 keeps all; top_p=1 keeps all. The nucleus is the smallest set of most probable tokens
  whose probability reaches top_p (the most probable token is always kept). Ties at a cut-off
  are kept. Works on the last axis of any (..., vocab) array.
  """
  if not isinstance(top_k, int) or top_k < 0:
    raise ValueError(f'top_k must be an int >= 0 (0 = off); got {top_k!r}')
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f'top_p must be in (0, 1] (1 = off); got {top_p!r}')
  if 0 < top_k < logits.shape[-1]:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
    probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # exactly 0 for the top token
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    cutoff = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return logits


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0) -> jax.Array:
  """Token ids (...,) int32 from logits (..., vocab); temperature 0 is greedy (argmax)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits.astype(jnp.float32) / temperature, top_k, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def generate(model: GPT, params, prompt: jax.Array, *, max_new_tokens: int, rng: jax.Array,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             use_cache: bool = True, eos_id: Optional[int] = None) -> jax.Array:
  """Continues `prompt` (batch, prompt_len) by `max_new_tokens` tokens.

  Args:
    model: a `GPT` (its `decode` field is ignored: each path clones what it needs).
    params: the model's 'params' collection (a `{'params': ...}` variables dict works too).
    prompt: int (batch, prompt_len), prompt_len >= 1.
    max_new_tokens: tokens to add; prompt_len + max_new_tokens <= model.max_len.
    rng: key for sampling (unused when greedy).
    temperature: logits are divided by it; 0 = greedy.
    top_k: keep only the k most probable tokens (0 = off).
    top_p: nucleus sampling mass (1 = off).
    use_cache: decode through the key/value cache; False recomputes the whole prefix per token.
    eos_id: once a row emits it, the rest of that row is eos_id.

  Returns:
    (batch, prompt_len + max_new_tokens) int32: the prompt followed by the new tokens.
  """
  if not isinstance(model, GPT):
    raise TypeError(f'generate needs a GPT model; got {type(model).__name__}')
  prompt = jnp.asarray(prompt)
  if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
    raise ValueError(f'prompt must be integer (batch, prompt_len); got {prompt.dtype} '
                     f'{prompt.shape}')
  prompt_len = prompt.shape[1]
  if prompt_len < 1:
    raise ValueError('prompt must hold at least one token')
  if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
    raise ValueError(f'max_new_tokens must be an int >= 0; got {max_new_tokens!r}')
  if prompt_len + max_new_tokens > model.max_len:
    raise ValueError(f'prompt_len {prompt_len} + max_new_tokens {max_new_tokens} = '
                     f'{prompt_len + max_new_tokens} exceeds the model max_len {model.max_len}')
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0 (0 = greedy); got {temperature}')
  filter_logits(jnp.zeros((1,)), top_k, top_p)  # validates top_k and top_p early
  if max_new_tokens == 0:
    return prompt.astype(jnp.int32)
  variables = {'params': params['params'] if 'params' in params else params}
  return decode_tokens(model.clone(decode=False), variables, prompt.astype(jnp.int32), rng,
                       max_new_tokens=max_new_tokens, temperature=float(temperature),
                       top_k=int(top_k), top_p=float(top_p), use_cache=bool(use_cache),
                       eos_id=None if eos_id is None else int(eos_id))


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'temperature', 'top_k',
                                             'top_p', 'use_cache', 'eos_id', 'step_kwargs'))
def decode_tokens(model, variables, prompt, rng, conditioning=(), *, max_new_tokens, temperature,
                  top_k, top_p, use_cache, eos_id, step_kwargs=()):
  """The sampling loop of `generate`, for any causal model with a `decode` field and a cache.

  `conditioning`: arrays every call of the model gets after the tokens (a text VAE's z);
  `step_kwargs`: (name, value) pairs for the one-token cached calls only. Arguments are
  checked by the callers.
  """
  batch, prompt_len = prompt.shape

  def pick(logits, i, done):
    """New token i from the logits of the position before it."""
    token = sample_logits(logits, jax.random.fold_in(rng, i), temperature=temperature,
                          top_k=top_k, top_p=top_p)
    if eos_id is not None:
      token = jnp.where(done, eos_id, token)
      done = done | (token == eos_id)
    return token, done

  done = jnp.zeros((batch,), bool)
  if not use_cache:
    tokens = jnp.zeros((batch, prompt_len + max_new_tokens), jnp.int32)
    tokens = tokens.at[:, :prompt_len].set(prompt)

    def full_step(carry, i):
      tokens, done = carry
      # Causal: the zeros after the current position do not change its logits.
      logits = model.apply(variables, tokens, *conditioning)
      last = lax.dynamic_index_in_dim(logits, prompt_len + i - 1, axis=1, keepdims=False)
      token, done = pick(last, i, done)
      return (tokens.at[:, prompt_len + i].set(token), done), None

    (tokens, _), _ = lax.scan(full_step, (tokens, done), jnp.arange(max_new_tokens))
    return tokens

  decoder = model.clone(decode=True)
  # Every cache variable starts at zero, so its shapes are all that init has to tell.
  shapes = jax.eval_shape(decoder.init, jax.random.key(0),
                          jnp.zeros((batch, model.max_len), jnp.int32), *conditioning)
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['cache'])
  logits, state = decoder.apply({**variables, 'cache': cache}, prompt, *conditioning,
                                mutable=['cache'])
  first, done = pick(logits[:, -1], 0, done)

  def cached_step(carry, i):
    cache, token, done = carry
    logits, state = decoder.apply({**variables, 'cache': cache}, token[:, None], *conditioning,
                                  **dict(step_kwargs), mutable=['cache'])
    token, done = pick(logits[:, -1], i, done)
    return (state['cache'], token, done), token

  _, rest = lax.scan(cached_step, (state['cache'], first, done), jnp.arange(1, max_new_tokens))
  return jnp.concatenate([prompt, first[:, None], rest.T], axis=1)
