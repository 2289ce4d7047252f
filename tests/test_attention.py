"""Attention against a float64 numpy reference and jax's own; masking, precision, dropout, RoPE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslm_jax.models.attention import (MultiHeadAttention, apply_rotary, attention_weights,
                                       call_implementation, choose_attention,
                                       scaled_dot_product_attention)


def _qkv(seed=0, batch=2, q_len=3, kv_len=5, heads=2, head_dim=4, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(batch, q_len, heads, head_dim))
  k = rng.normal(size=(batch, kv_len, heads, head_dim))
  v = rng.normal(size=(batch, kv_len, heads, head_dim))
  return tuple(jnp.asarray(a, dtype) for a in (q, k, v))


def _reference(q, k, v, bias=None, mask=None, causal=False):
  """Naive float64 attention; rows with nothing to attend to are zeros."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, q_len, h, d = q.shape
  kv_len = k.shape[1]
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(d)
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  allowed = np.ones((b, h, q_len, kv_len), bool)
  if mask is not None:
    allowed &= np.asarray(mask)
  if causal:
    allowed &= np.arange(kv_len)[None, :] <= np.arange(q_len)[:, None] + kv_len - q_len
  out = np.zeros((b, q_len, h, d))
  for bi in range(b):
    for hi in range(h):
      for qi in range(q_len):
        keep = allowed[bi, hi, qi]
        if not keep.any():
          continue
        w = np.exp(logits[bi, hi, qi][keep] - logits[bi, hi, qi][keep].max())
        out[bi, qi, hi] = (w / w.sum()) @ v[bi, keep, hi]
  return out


def _mask_and_bias(seed=1, q_len=3, kv_len=5):
  rng = np.random.default_rng(seed)
  mask = rng.random((2, 1, q_len, kv_len)) > 0.3
  mask[..., 0] = True  # no fully masked row here
  bias = rng.normal(size=(1, 2, q_len, kv_len))
  return jnp.asarray(mask), jnp.asarray(bias, jnp.float32)


@pytest.mark.parametrize('use_mask,use_bias,causal,q_len', [
    (False, False, False, 3), (True, False, False, 3), (False, True, False, 3),
    (True, True, False, 3), (False, False, True, 3), (True, True, True, 3),
    (False, False, True, 5), (False, False, True, 1)])
def test_matches_float64_reference(use_mask, use_bias, causal, q_len):
  q, k, v = _qkv(q_len=q_len)
  mask, bias = _mask_and_bias(q_len=q_len)
  mask, bias = (mask if use_mask else None), (bias if use_bias else None)
  out = scaled_dot_product_attention(q, k, v, bias=bias, mask=mask, causal=causal)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _reference(q, k, v, bias, mask, causal), atol=2e-6)


def test_matches_jax_dot_product_attention():
  if not hasattr(jax.nn, 'dot_product_attention'):
    pytest.skip('jax.nn.dot_product_attention is not available')
  q, k, v = _qkv(q_len=5, kv_len=5)
  mask, bias = _mask_and_bias(q_len=5, kv_len=5)
  for kwargs, theirs in [
      (dict(), dict()),
      (dict(mask=mask, bias=bias), dict(mask=mask, bias=bias)),
      (dict(causal=True, bias=bias), dict(is_causal=True, bias=bias))]:
    ours = scaled_dot_product_attention(q, k, v, **kwargs)
    np.testing.assert_allclose(ours, jax.nn.dot_product_attention(q, k, v, **theirs), atol=2e-6)


@pytest.mark.parametrize('q_len', [3, 5, 7])
def test_xla_implementation_agrees_with_reference(q_len):
  q, k, v = _qkv(q_len=q_len, kv_len=5)
  mask, bias = _mask_and_bias(q_len=q_len)
  mask = mask.at[0, 0, 1].set(False)  # one fully masked row
  for kwargs in (dict(causal=True), dict(mask=mask, bias=bias, causal=True), dict(mask=mask)):
    ours = scaled_dot_product_attention(q, k, v, **kwargs)
    fused = scaled_dot_product_attention(q, k, v, implementation='xla', **kwargs)
    np.testing.assert_allclose(fused, ours, atol=2e-6)


def test_fully_masked_rows_are_zero_with_finite_gradients():
  q, k, v = _qkv(q_len=4, kv_len=3)
  mask = np.ones((2, 2, 4, 3), bool)
  mask[0, 1, 2] = False
  mask[1, :, 3] = False
  bias = jnp.zeros((2, 2, 4, 3))

  def loss(q, k, v, bias):
    return jnp.sum(scaled_dot_product_attention(q, k, v, bias=bias, mask=mask, causal=True) ** 2)

  out = scaled_dot_product_attention(q, k, v, bias=bias, mask=mask, causal=True)
  # Causal with 4 queries over 3 keys: query 0 has no key; plus the explicit masked rows.
  assert np.all(np.asarray(out[:, 0]) == 0)
  assert np.all(np.asarray(out[0, 2, 1]) == 0) and np.all(np.asarray(out[1, 3]) == 0)
  assert np.any(np.asarray(out[0, 2, 0]) != 0)
  np.testing.assert_allclose(out, _reference(q, k, v, bias, mask, causal=True), atol=2e-6)
  weights = attention_weights(q, k, mask=mask, causal=True)
  assert np.all(np.asarray(weights[:, :, 0]) == 0)
  for g in jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias):
    assert np.all(np.isfinite(np.asarray(g)))


def test_bfloat16_inputs_get_a_float32_softmax():
  q, k, v = _qkv(q_len=8, kv_len=64, head_dim=16)
  q16, k16, v16 = (a.astype(jnp.bfloat16) for a in (q, k, v))
  weights = attention_weights(q16, k16, causal=True)
  assert weights.dtype == jnp.float32
  # A bf16 softmax would sum to 1 only within ~4e-3.
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
  ref32 = attention_weights(*(a.astype(jnp.float32) for a in (q16, k16)), causal=True)
  np.testing.assert_allclose(weights, ref32, atol=1e-6)
  out = scaled_dot_product_attention(q16, k16, v16, causal=True)
  assert out.dtype == jnp.bfloat16
  ref = scaled_dot_product_attention(*(a.astype(jnp.float32) for a in (q16, k16, v16)),
                                     causal=True)
  np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=2e-2, rtol=2e-2)


def test_dropout_statistics_and_determinism():
  rate = 0.3
  # Values are the identity, so each output row is that row's (dropped) attention weights.
  b, q_len, h, kv_len = 4, 32, 2, 64
  q, k, _ = _qkv(batch=b, q_len=q_len, kv_len=kv_len, heads=h, head_dim=kv_len)
  v = jnp.broadcast_to(jnp.eye(kv_len)[None, :, None, :], (b, kv_len, h, kv_len))
  rng = jax.random.key(0)
  clean = scaled_dot_product_attention(q, k, v)
  same = scaled_dot_product_attention(q, k, v, dropout_rate=rate, dropout_rng=rng,
                                      deterministic=True)
  np.testing.assert_array_equal(same, clean)
  dropped = scaled_dot_product_attention(q, k, v, dropout_rate=rate, dropout_rng=rng,
                                         deterministic=False)
  again = scaled_dot_product_attention(q, k, v, dropout_rate=rate, dropout_rng=rng,
                                       deterministic=False)
  other = scaled_dot_product_attention(q, k, v, dropout_rate=rate,
                                       dropout_rng=jax.random.key(1), deterministic=False)
  np.testing.assert_array_equal(dropped, again)
  assert not np.allclose(dropped, other)
  dropped, clean = np.asarray(dropped), np.asarray(clean)
  kept = dropped != 0
  assert abs(kept.mean() - (1 - rate)) < 0.02  # 16384 draws: std 0.004
  np.testing.assert_allclose(dropped[kept], clean[kept] / (1 - rate), rtol=1e-5)
  with pytest.raises(ValueError, match='dropout_rng'):
    scaled_dot_product_attention(q, k, v, dropout_rate=rate, deterministic=False)


@pytest.mark.parametrize('change,match', [
    (dict(query=jnp.zeros((2, 3, 2))), 'query must be 4-D'),
    (dict(key=jnp.zeros((2, 5, 3, 4)), value=jnp.zeros((2, 5, 3, 4))), 'agree in batch, heads'),
    (dict(value=jnp.zeros((2, 4, 2, 4))), 'same shape'),
    (dict(mask=jnp.ones((2, 2, 3, 5), jnp.float32)), 'mask must be boolean'),
    (dict(mask=jnp.ones((2, 2, 3, 4), bool)), 'mask shape'),
    (dict(bias=jnp.zeros((3, 1, 1, 1))), 'bias shape'),
    (dict(bias=jnp.zeros((1, 1, 2, 3, 5))), 'at most 4 dims'),
    (dict(dropout_rate=1.0), 'dropout_rate'),
    (dict(implementation='flash'), 'implementation must be one of'),
])
def test_validation_errors(change, match):
  q, k, v = _qkv()
  args = {'query': q, 'key': k, 'value': v, **change}
  with pytest.raises(ValueError, match=match):
    scaled_dot_product_attention(args.pop('query'), args.pop('key'), args.pop('value'), **args)


def test_rotary_depends_on_relative_position_only():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32)

  def score(m, n):
    qm = apply_rotary(q, jnp.array([m]), 100.0)
    kn = apply_rotary(k, jnp.array([n]), 100.0)
    return float(jnp.sum(qm * kn))

  for delta in (0, 1, 5):
    scores = [score(n + delta, n) for n in (0, 3, 17, 40)]
    np.testing.assert_allclose(scores, scores[0], rtol=1e-4, atol=1e-5)
  assert abs(score(1, 0) - score(5, 0)) > 1e-3  # it does depend on the difference
  np.testing.assert_allclose(apply_rotary(q, jnp.array([0])), q)  # position 0 is the identity
  np.testing.assert_allclose(jnp.linalg.norm(apply_rotary(q, jnp.array([7]))),
                             jnp.linalg.norm(q), rtol=1e-6)
  with pytest.raises(ValueError, match='even head_dim'):
    apply_rotary(jnp.zeros((1, 1, 1, 3)), jnp.array([0]))


@pytest.mark.parametrize('use_rotary', [False, True])
def test_multi_head_attention_cache_matches_full_causal_pass(use_rotary):
  batch, max_len, features = 2, 6, 8
  x = jax.random.normal(jax.random.key(0), (batch, max_len, features))
  full_module = MultiHeadAttention(num_heads=2, use_rotary=use_rotary)
  params = full_module.init(jax.random.key(1), x, causal=True)['params']
  full = full_module.apply({'params': params}, x, causal=True)

  decoder = MultiHeadAttention(num_heads=2, use_rotary=use_rotary, decode=True)
  cache = decoder.init(jax.random.key(1), jnp.zeros_like(x))['cache']
  assert cache['cached_key'].shape == (batch, max_len, 2, 4)
  # A 2-token chunk, then one token at a time.
  out, state = decoder.apply({'params': params, 'cache': cache}, x[:, :2], mutable=['cache'])
  outs = [out]
  for t in range(2, max_len):
    out, state = decoder.apply({'params': params, 'cache': state['cache']}, x[:, t:t + 1],
                               mutable=['cache'])
    outs.append(out)
  assert int(state['cache']['cache_index']) == max_len
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


# (requested, platform, compute capability, dtype, head_dim, attention dropout) -> the choice.
@pytest.mark.parametrize('args,impl,reason', [
    (('auto', 'gpu', '9.0', 'bfloat16', 64, 0.0), 'cudnn', 'auto: cuDNN flash attention (bfloat16'),
    (('auto', 'gpu', '8.0', 'float16', 128, 0.0), 'cudnn', 'compute capability 8.0'),
    (('auto', 'gpu', '9.0', 'bfloat16', 192, 0.0), 'cudnn', 'head_dim 192'),  # Hopper: to 256
    (('auto', 'cpu', None, 'bfloat16', 64, 0.0), 'reference', "not an NVIDIA GPU (platform 'cpu')"),
    (('auto', 'tpu', None, 'bfloat16', 64, 0.0), 'reference', "platform 'tpu'"),
    (('auto', 'gpu', None, 'bfloat16', 64, 0.0), 'reference', 'not an NVIDIA GPU'),  # ROCm
    (('auto', 'gpu', '7.5', 'bfloat16', 64, 0.0), 'reference', 'compute capability 7.5'),
    (('auto', 'gpu', '9.0', 'float32', 64, 0.0), 'reference', 'dtype float32'),
    (('auto', 'gpu', '9.0', 'bfloat16', 64, 0.1), 'reference', 'attention dropout 0.1'),
    (('auto', 'gpu', '9.0', 'bfloat16', 60, 0.0), 'reference', 'head_dim 60 (cuDNN needs a multiple'),
    (('auto', 'gpu', '8.6', 'bfloat16', 192, 0.0), 'reference', 'at most 128'),
    (('auto', 'cpu', None, 'float32', 12, 0.1), 'reference',
     "platform 'cpu'); dtype float32 (cuDNN flash attention takes bfloat16 or float16); head_dim 12"),
    (('reference', 'gpu', '9.0', 'bfloat16', 64, 0.0), 'reference', 'as configured'),
    (('xla', 'cpu', None, 'float32', 64, 0.0), 'xla', 'as configured'),
    (('cudnn', 'gpu', '9.0', 'bfloat16', 64, 0.0), 'cudnn', 'as configured'),
])
def test_choose_attention_decides_and_says_why(args, impl, reason):
  requested, platform, capability, dtype, head_dim, dropout = args
  choice = choose_attention(requested, dtype=jnp.dtype(dtype), head_dim=head_dim,
                            dropout_rate=dropout, platform=platform,
                            compute_capability=capability)
  assert choice.impl == impl and reason in choice.reason, choice


def test_choose_attention_errors_and_this_device():
  with pytest.raises(ValueError, match="attention_impl='cudnn' cannot run here: not an NVIDIA"):
    choose_attention('cudnn', dtype=jnp.bfloat16, head_dim=64, dropout_rate=0.0,
                     platform='cpu')
  with pytest.raises(ValueError, match="allowed: \\('auto', 'reference', 'xla', 'cudnn'\\)"):
    choose_attention('flash', dtype=jnp.bfloat16, head_dim=64, dropout_rate=0.0)
  if jax.default_backend() != 'gpu':  # this device's facts (a GPU: test_cudnn_* below)
    choice = choose_attention('auto', dtype=jnp.bfloat16, head_dim=64, dropout_rate=0.0)
    assert choice.impl == 'reference' and 'not an NVIDIA GPU' in choice.reason


def test_call_implementation_keeps_cudnn_off_decode_steps_and_masked_calls():
  def call(impl, masked=False, decoding=False):
    return call_implementation(impl, masked=masked, decoding=decoding)
  assert call('cudnn') == 'cudnn'
  assert call('cudnn', masked=True, decoding=True) == 'reference'
  assert call('cudnn', masked=True) == 'reference'
  assert call('xla', masked=True, decoding=True) == 'xla'
  assert call(None, decoding=True) is None


def _out_and_input_grads(impl, q, k, v, **kwargs):
  def attend(q, k, v):
    return scaled_dot_product_attention(q, k, v, implementation=impl, **kwargs)
  out, vjp = jax.vjp(attend, q, k, v)
  return (out, *vjp(jnp.cos(out.astype(jnp.float32)).astype(out.dtype)))


@pytest.mark.gpu
@pytest.mark.parametrize('masks', ['causal', 'padding', 'causal+padding'])
def test_cudnn_equals_the_reference_in_bfloat16(masks):
  """cuDNN flash attention against the reference SDPA on bf16 inputs: outputs and gradients.
  bf16 keeps 8 significant bits (a relative step of 2^-8, 0.4%) and the two sum in different
  orders (flash attention's online softmax, blocked), so they agree to about 1e-2 of values of
  order 1, not bitwise."""
  t = 128
  q, k, v = _qkv(batch=2, q_len=t, kv_len=t, heads=4, head_dim=64, dtype=jnp.bfloat16)
  padding = jnp.arange(t)[None, None, None, :] < jnp.array([t, 100])[:, None, None, None]
  kwargs = {'causal': dict(causal=True), 'padding': dict(mask=padding),
            'causal+padding': dict(causal=True, mask=padding)}[masks]
  ref = jax.jit(lambda q, k, v: _out_and_input_grads(None, q, k, v, **kwargs))(q, k, v)
  fast = jax.jit(lambda q, k, v: _out_and_input_grads('cudnn', q, k, v, **kwargs))(q, k, v)
  for name, a, b in zip(('out', 'd_query', 'd_key', 'd_value'), fast, ref):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               atol=2e-2, rtol=2e-2, err_msg=f'{masks}: {name}')
