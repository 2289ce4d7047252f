"""Scaled dot-product attention, rotary position embedding and multi-head attention.

Layout is (batch, length, heads, head_dim) throughout, as `jax.nn.dot_product_attention`. Masks
are boolean with True = may attend, broadcastable to (batch, heads, q_len, kv_len); biases are
additive floats with the same broadcast.

The reference path (`implementation=None` or 'reference') computes logits and softmax in float32
whatever the input dtype, gives exact zeros for a query that may attend to nothing (a padded row,
the first rows of a causal block longer than its keys), and supports attention dropout. 'xla' and
'cudnn' hand the same computation to `jax.nn.dot_product_attention` when no dropout is active (see
`scaled_dot_product_attention`). A model's choice among them (`model.attention_impl`, 'auto' among
them) is made once by `choose_attention`, which also says why.

`MultiHeadAttention` keeps a key/value cache in the 'cache' collection, as the Flax lm1b example:
initialize with the full-length input (`decode=True`, `init` with (batch, max_len)), then call
with `mutable=['cache']` on one token (or a chunk) at a time.
"""

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sslm_jax.models.dropout import bernoulli

IMPLEMENTATIONS = (None, 'reference', 'xla', 'cudnn')
ATTENTION_IMPLS = ('auto', 'reference', 'xla', 'cudnn')  # a model's choice (model.attention_impl)
CUDNN_DTYPES = ('bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class AttentionChoice:
  """The implementation a model's attention runs ('reference', 'xla' or 'cudnn') and why."""
  impl: str
  reason: str


def _device_facts() -> tuple[str, Optional[str]]:
  """(platform, CUDA compute capability or None) of the default device."""
  device = jax.devices()[0]
  capability = getattr(device, 'compute_capability', None)
  if not (isinstance(capability, str) and capability.replace('.', '').isdigit()):
    capability = None  # not CUDA (e.g. ROCm's 'gfx90a')
  return device.platform, capability


def cudnn_problems(*, dtype, head_dim: int, dropout_rate: float, platform: str,
                   compute_capability: Optional[str]) -> list[str]:
  """Why cuDNN flash attention (`jax.nn.dot_product_attention(implementation='cudnn')`) cannot
  run a model's attention; empty when it can. The limits are jax's own checks (jax 0.10/0.11)."""
  problems = []
  capability = None
  if platform != 'gpu' or compute_capability is None:
    problems.append(f'not an NVIDIA GPU (platform {platform!r})')
  else:
    capability = tuple(int(v) for v in compute_capability.split('.'))
    if capability < (8, 0):
      problems.append(f'compute capability {compute_capability} (cuDNN flash attention needs '
                      '8.0, Ampere, or later)')
  dtype_name = jnp.dtype(dtype).name
  if dtype_name not in CUDNN_DTYPES:
    problems.append(f'dtype {dtype_name} (cuDNN flash attention takes {" or ".join(CUDNN_DTYPES)})')
  max_head_dim = 256 if capability and capability >= (9, 0) else 128
  if head_dim % 8 or head_dim > max_head_dim:
    problems.append(f'head_dim {head_dim} (cuDNN needs a multiple of 8, at most {max_head_dim} '
                    'here)')
  if dropout_rate > 0:
    problems.append(f'attention dropout {dropout_rate} (jax.nn.dot_product_attention has none)')
  return problems


def choose_attention(requested: str, *, dtype, head_dim: int, dropout_rate: float,
                     platform: Optional[str] = None,
                     compute_capability: Optional[str] = None) -> AttentionChoice:
  """The one decision of which attention a model runs, and why.

  'reference' and 'xla' are taken as asked. 'cudnn' must be possible (else ValueError naming
  why). 'auto' takes cuDNN flash attention where it applies (an NVIDIA GPU of compute
  capability >= 8.0, bfloat16/float16, head_dim a multiple of 8 up to 128 (256 on Hopper), no
  attention dropout) and the reference otherwise, saying which condition failed. Whatever is
  chosen, a KV-cache decode step and a call with a padding mask run the reference
  (`call_implementation`): cuDNN runs the causal attention of GPT and the text VAE's decoder. `platform` and `compute_capability` default to the default device's.
  """
  if requested not in ATTENTION_IMPLS:
    raise ValueError(f'attention_impl={requested!r}; allowed: {ATTENTION_IMPLS}')
  if requested in ('reference', 'xla'):
    return AttentionChoice(requested, 'as configured')
  if platform is None:
    platform, compute_capability = _device_facts()
  problems = cudnn_problems(dtype=dtype, head_dim=head_dim, dropout_rate=dropout_rate,
                            platform=platform, compute_capability=compute_capability)
  if requested == 'cudnn':
    if problems:
      raise ValueError(f"attention_impl='cudnn' cannot run here: {'; '.join(problems)}; "
                       "allowed: 'auto' (takes cuDNN where it applies), 'reference', 'xla'")
    return AttentionChoice('cudnn', 'as configured')
  if problems:
    return AttentionChoice('reference', 'auto: no cuDNN flash attention: ' + '; '.join(problems))
  return AttentionChoice('cudnn', f'auto: cuDNN flash attention ({jnp.dtype(dtype).name}, '
                                  f'head_dim {head_dim}, compute capability '
                                  f'{compute_capability})')


def call_implementation(implementation: Optional[str], *, masked: bool,
                        decoding: bool) -> Optional[str]:
  """What one call of a model's attention runs: `implementation`, except the reference instead
  of cuDNN for a KV-cache decode step (new queries against the whole cache through a mask; one
  query's work gains nothing from flash attention) and for a call with a mask (padding): cuDNN
  takes a mask as a dense bias and jax then asks it for the bias's gradient too, which needs even
  lengths and is not yet verified on a GPU for per-row masks (`scaled_dot_product_attention`
  itself runs masks on cuDNN; tests/test_attention.py checks it there)."""
  if implementation == 'cudnn' and (decoding or masked):
    return 'reference'
  return implementation


def _broadcast_error(name: str, shape, target) -> Optional[str]:
  if len(shape) > 4:
    return (f'{name} has {len(shape)} dims {tuple(shape)}; it must broadcast to (batch, heads, '
            f'q_len, kv_len) = {target} (at most 4 dims)')
  try:
    np.broadcast_shapes(tuple(shape), target)
  except ValueError:
    return (f'{name} shape {tuple(shape)} does not broadcast to (batch, heads, q_len, kv_len) '
            f'= {target}')
  if np.broadcast_shapes(tuple(shape), target) != target:
    return f'{name} shape {tuple(shape)} would enlarge (batch, heads, q_len, kv_len) = {target}'
  return None


def _check_inputs(query, key, value, bias, mask, dropout_rate, implementation):
  for name, t in (('query', query), ('key', key), ('value', value)):
    if t.ndim != 4:
      raise ValueError(f'{name} must be 4-D (batch, length, heads, head_dim); got shape {t.shape}')
    if not jnp.issubdtype(t.dtype, jnp.floating):
      raise ValueError(f'{name} must be floating point; got {t.dtype}')
  if key.shape != value.shape:
    raise ValueError(f'key and value must have the same shape; got {key.shape} and {value.shape}')
  b, _, h, d = query.shape
  if (key.shape[0], key.shape[2], key.shape[3]) != (b, h, d):
    raise ValueError(f'query {query.shape} and key {key.shape} must agree in batch, heads and '
                     'head_dim (only the length may differ)')
  target = (b, h, query.shape[1], key.shape[1])
  if mask is not None:
    if mask.dtype != jnp.bool_:
      raise ValueError(f'mask must be boolean (True = may attend); got {mask.dtype}; pass '
                       'additive masks as bias')
    if (error := _broadcast_error('mask', mask.shape, target)):
      raise ValueError(error)
  if bias is not None:
    if not jnp.issubdtype(bias.dtype, jnp.floating):
      raise ValueError(f'bias must be floating point (additive); got {bias.dtype}')
    if (error := _broadcast_error('bias', bias.shape, target)):
      raise ValueError(error)
  if not 0.0 <= dropout_rate < 1.0:
    raise ValueError(f'dropout_rate must be in [0, 1); got {dropout_rate}')
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation must be one of {IMPLEMENTATIONS}; got {implementation!r}')


def causal_mask(q_len: int, kv_len: int) -> jax.Array:
  """(q_len, kv_len) bool: query i may attend key j iff j <= i + (kv_len - q_len).

  The queries are the last `q_len` positions of the keys' sequence, so a block of new tokens
  appended to earlier keys (and a single decode step) is causal too.
  """
  offset = kv_len - q_len
  return jnp.arange(kv_len)[None, :] <= jnp.arange(q_len)[:, None] + offset


def _combined_mask(mask, causal, q_len, kv_len):
  if causal:
    c = causal_mask(q_len, kv_len)
    mask = c if mask is None else jnp.logical_and(mask, c)
  return mask


def attention_weights(query: jax.Array, key: jax.Array, *, bias: Optional[jax.Array] = None,
                      mask: Optional[jax.Array] = None, causal: bool = False) -> jax.Array:
  """Softmax attention weights (batch, heads, q_len, kv_len) in float32 (or wider).

  Rows where every key is masked (or every logit is -inf) are all zeros rather than uniform.
  """
  _check_inputs(query, key, key, bias, mask, 0.0, None)
  return _weights(query, key, bias, _combined_mask(mask, causal, query.shape[1], key.shape[1]))


def _weights(query, key, bias, mask):
  dtype = jnp.promote_types(jnp.result_type(query, key), jnp.float32)
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key, preferred_element_type=dtype)
  logits = logits * jnp.asarray(query.shape[-1] ** -0.5, dtype)
  if bias is not None:
    logits = logits + bias.astype(dtype)
  if mask is not None:
    logits = jnp.where(mask, logits, -jnp.inf)
  # A row with no finite logit gets max 0, so exp gives exact zeros there instead of NaN; masked
  # entries go through where() and never enter the gradient.
  row_max = lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  unnormalized = jnp.exp(logits - row_max)
  total = jnp.sum(unnormalized, axis=-1, keepdims=True)
  return unnormalized / jnp.where(total > 0, total, 1.0)


def scaled_dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, *,
                                 bias: Optional[jax.Array] = None,
                                 mask: Optional[jax.Array] = None,
                                 causal: bool = False,
                                 dropout_rate: float = 0.0,
                                 dropout_rng: Optional[jax.Array] = None,
                                 deterministic: bool = True,
                                 implementation: Optional[str] = None) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim) + bias, masked) v, one softmax per head.

  Args:
    query: (batch, q_len, heads, head_dim).
    key: (batch, kv_len, heads, head_dim).
    value: same shape as `key`.
    bias: additive float logits bias, broadcastable to (batch, heads, q_len, kv_len).
    mask: bool, same broadcast; True = may attend.
    causal: query i attends keys j <= i + (kv_len - q_len) (queries are the last positions).
    dropout_rate: attention-weight dropout, used when `deterministic` is False.
    dropout_rng: the key for that dropout (required then).
    deterministic: no dropout when True.
    implementation: None or 'reference' for the reference path here. 'xla' or 'cudnn' call
      `jax.nn.dot_product_attention` with that implementation when no dropout is active (with
      dropout the reference path runs, since that function has none). 'cudnn' needs a GPU and
      the dtypes and head sizes cuDNN accepts; its errors are passed through. Fully masked rows
      are zeroed afterwards so every path agrees on them.

  Returns:
    (batch, q_len, heads, head_dim) in query's dtype.
  """
  query, key, value = jnp.asarray(query), jnp.asarray(key), jnp.asarray(value)
  bias = None if bias is None else jnp.asarray(bias)
  mask = None if mask is None else jnp.asarray(mask)
  _check_inputs(query, key, value, bias, mask, dropout_rate, implementation)
  use_dropout = dropout_rate > 0.0 and not deterministic
  if use_dropout and dropout_rng is None:
    raise ValueError('attention dropout (dropout_rate > 0, deterministic=False) needs dropout_rng')
  q_len, kv_len = query.shape[1], key.shape[1]

  if implementation not in (None, 'reference') and not use_dropout:
    return _fused_attention(query, key, value, bias, mask, causal, implementation)

  weights = _weights(query, key, bias, _combined_mask(mask, causal, q_len, kv_len))
  if use_dropout:
    keep = bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)  # jax.random's, faster
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  # Weights go to value's dtype for the product (as jax and Flax do), accumulated in float32.
  acc = jnp.promote_types(value.dtype, jnp.float32)
  out = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(value.dtype), value,
                   preferred_element_type=acc)
  return out.astype(query.dtype)


def _fused_attention(query, key, value, bias, mask, causal, implementation):
  if implementation == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError(f"implementation='cudnn' needs a GPU; the backend is "
                     f"{jax.default_backend()!r} (use 'xla' or None)")
  q_len, kv_len = query.shape[1], key.shape[1]
  # jax's is_causal aligns the triangle top-left; ours aligns it bottom-right. They agree only on
  # square blocks; otherwise the causal part becomes an explicit mask.
  is_causal = causal and q_len == kv_len
  if causal and not is_causal:
    mask = _combined_mask(mask, True, q_len, kv_len)

  def as_4d(t):
    return None if t is None else jnp.expand_dims(t, tuple(range(4 - t.ndim)))

  bias4, mask4 = as_4d(bias), as_4d(mask)
  if implementation == 'cudnn':  # cuDNN takes masks and biases as (., ., q_len, kv_len) biases
    bias4, mask4 = (None if t is None else
                    jnp.broadcast_to(t, (*t.shape[:2], q_len, kv_len)) for t in (bias4, mask4))
  dtype = query.dtype
  out = jax.nn.dot_product_attention(query, key.astype(dtype), value.astype(dtype),
                                     bias=None if bias4 is None else bias4.astype(dtype),
                                     mask=mask4, is_causal=is_causal,
                                     implementation=implementation)
  if mask4 is not None:
    # jax gives a uniform average for a fully masked row; the reference gives zeros.
    if is_causal:
      mask4 = jnp.logical_and(mask4, causal_mask(q_len, kv_len))
    any_key = jnp.any(jnp.broadcast_to(mask4, (*mask4.shape[:3], kv_len)), axis=-1)
    any_key = jnp.broadcast_to(any_key, (query.shape[0], query.shape[2], q_len))
    out = jnp.where(any_key.transpose(0, 2, 1)[..., None], out, 0)
  return out.astype(query.dtype)


def apply_rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (RoPE) of x (..., length, heads, head_dim) at `positions`.

  Channel pairs (i, i + head_dim/2) are rotated by the angle position * base^(-2i/head_dim)
  (the "rotate half" layout), so the dot product of a rotated query at m and a rotated key at n
  depends on m - n only. `positions` broadcasts to x.shape[:-2], e.g. (length,) or
  (batch, length). Computed in float32; returns x's dtype.
  """
  head_dim = x.shape[-1]
  if head_dim % 2:
    raise ValueError(f'rotary embedding needs an even head_dim; got {head_dim}')
  half = head_dim // 2
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq  # (..., length, half)
  sin, cos = jnp.sin(angles)[..., None, :], jnp.cos(angles)[..., None, :]  # heads axis
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def _through_cache(cache, key, value, positions, mask):
  """(keys, values, mask) of a decode step: the new keys (already rotated) and values go in at
  the cache index; the queries, at absolute positions index..index+length-1, see every cached
  key up to their own position. `cache`: the (key, value, index) cache variables, updated."""
  cached_key, cached_value, cache_index = cache
  index = cache_index.value
  cached_key.value = lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
  cached_value.value = lax.dynamic_update_slice(cached_value.value, value, (0, index, 0, 0))
  cache_index.value = index + key.shape[1]
  max_len = cached_key.value.shape[1]
  cache_mask = jnp.arange(max_len)[None, :] <= positions[:, None]  # (length, max_len)
  mask = cache_mask if mask is None else jnp.logical_and(mask, cache_mask)
  return cached_key.value, cached_value.value, mask


class MultiHeadAttention(nn.Module):
  """Self-attention with query/key/value/out projections, optional RoPE and a decode cache.

  Attributes:
    num_heads: number of heads.
    head_dim: size of each head; None = input features // num_heads.
    dropout_rate: attention-weight dropout (rng 'dropout').
    dtype: compute dtype; parameters stay in `param_dtype`.
    use_rotary: rotate queries and keys by their positions (RoPE).
    rotary_base: RoPE's base wavelength.
    decode: keep a key/value cache ('cache' collection) for autoregressive decoding.
    implementation: passed to `scaled_dot_product_attention` (None or 'reference', 'xla',
      'cudnn'), except where `call_implementation` runs the reference instead.
    kernel_init: the query, key and value projections' initializer.
    out_kernel_init: the output projection's.
  """
  num_heads: int
  head_dim: Optional[int] = None
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  use_rotary: bool = False
  rotary_base: float = 10000.0
  decode: bool = False
  implementation: Optional[str] = None
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  out_kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init

  def _head_dim(self, features: int) -> int:
    if self.head_dim is not None:
      return self.head_dim
    if features % self.num_heads:
      raise ValueError(f'features {features} is not divisible by num_heads {self.num_heads}; '
                       'set head_dim explicitly')
    return features // self.num_heads

  @nn.compact
  def __call__(self, x: jax.Array, *, mask: Optional[jax.Array] = None, causal: bool = False,
               deterministic: bool = True) -> jax.Array:
    """x (batch, length, features) -> (batch, length, features).

    In decode mode, once the cache exists, `x` holds the next token(s); they attend to the cached
    keys and themselves, causally, whatever `causal` says (later keys are not there yet).
    """
    if x.ndim != 3:
      raise ValueError(f'x must be (batch, length, features); got shape {x.shape}')
    features = x.shape[-1]
    head_dim = self._head_dim(features)

    def proj(name):
      return nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                             name=name)(x)

    query, key, value = proj('query'), proj('key'), proj('value')
    length = x.shape[1]
    positions = jnp.arange(length)
    use_cache = False
    if self.decode:
      # The init call (full-length input) only creates the cache and runs as without one.
      use_cache = self.has_variable('cache', 'cached_key')
      cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
      cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape, value.dtype)
      cache_index = self.variable('cache', 'cache_index', lambda: jnp.array(0, jnp.int32))
      if use_cache:
        batch, max_len = cached_key.value.shape[:2]
        if (x.shape[0] != batch or length > max_len
            or cached_key.value.shape[2:] != key.shape[2:]):
          raise ValueError(f'decode input {x.shape} does not fit the cache '
                           f'{cached_key.value.shape} (batch, max_len, heads, head_dim)')
        positions = cache_index.value + positions

    if self.use_rotary:
      query = apply_rotary(query, positions, self.rotary_base)
      key = apply_rotary(key, positions, self.rotary_base)

    if use_cache:
      key, value, mask = _through_cache((cached_key, cached_value, cache_index), key, value,
                                        positions, mask)
      causal = False

    use_dropout = self.dropout_rate > 0.0 and not deterministic
    implementation = call_implementation(self.implementation, masked=mask is not None,
                                         decoding=use_cache)
    out = scaled_dot_product_attention(
        query, key, value, mask=mask, causal=causal, dropout_rate=self.dropout_rate,
        dropout_rng=self.make_rng('dropout') if use_dropout else None,
        deterministic=deterministic, implementation=implementation)
    return nn.DenseGeneral(features, axis=(-2, -1), dtype=self.dtype,
                           param_dtype=self.param_dtype, kernel_init=self.out_kernel_init,
                           name='out')(out)
