"""GPT and BERT: causality, padding, parameter layouts, and generation with and without a cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import traverse_util

from sslm_jax.models import MODELS
from sslm_jax.models.generate import filter_logits, generate
from sslm_jax.models.transformer import GPT, BertEncoder

VOCAB, MAX_LEN = 13, 12
TINY = dict(vocab_size=VOCAB, num_layers=2, num_heads=2, embed_dim=16, mlp_dim=32,
            max_len=MAX_LEN)


def _tokens(seed=0, batch=2, length=MAX_LEN):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


@pytest.fixture(scope='module', params=['learned', 'rotary'])
def gpt(request):
  model = GPT(**TINY, positions=request.param)
  params = model.init(jax.random.key(0), _tokens())['params']
  return model, params


def test_gpt_is_causal(gpt):
  model, params = gpt
  tokens = _tokens()
  t = 5
  changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % VOCAB)
  logits = model.apply({'params': params}, tokens)
  logits_changed = model.apply({'params': params}, changed)
  assert logits.shape == (2, MAX_LEN, VOCAB) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits_changed[:, :t + 1], logits[:, :t + 1], atol=1e-6)
  assert not np.allclose(logits_changed[:, t + 1:], logits[:, t + 1:])
  hidden = model.apply({'params': params}, tokens, method=GPT.encode)
  assert hidden.shape == (2, MAX_LEN, TINY['embed_dim'])


def test_gpt_decode_logits_match_full_forward(gpt):
  model, params = gpt
  tokens = _tokens(1)
  full = model.apply({'params': params}, tokens)
  decoder = model.clone(decode=True)
  cache = decoder.init(jax.random.key(0), tokens)['cache']
  step = jax.jit(lambda cache, tok: decoder.apply({'params': params, 'cache': cache}, tok,
                                                  mutable=['cache']))
  logits = []
  for t in range(MAX_LEN):
    out, state = step(cache, tokens[:, t:t + 1])
    cache = state['cache']
    logits.append(out)
  np.testing.assert_allclose(jnp.concatenate(logits, axis=1), full, atol=1e-5)


def test_generation_with_and_without_cache_agree(gpt):
  model, params = gpt
  prompt = _tokens(2, length=4)
  kwargs = dict(max_new_tokens=MAX_LEN - 4, rng=jax.random.key(3))
  cached = generate(model, params, prompt, temperature=0.0, **kwargs)
  uncached = generate(model, params, prompt, temperature=0.0, use_cache=False, **kwargs)
  assert cached.shape == (2, MAX_LEN) and cached.dtype == jnp.int32
  np.testing.assert_array_equal(cached[:, :4], prompt)
  np.testing.assert_array_equal(cached, uncached)


def test_generation_sampling_and_eos():
  model = GPT(**{**TINY, 'num_layers': 1})
  params = model.init(jax.random.key(0), _tokens())['params']
  prompt = _tokens(4, length=3)
  kwargs = dict(max_new_tokens=6, temperature=1.0, top_p=0.9)
  a = generate(model, params, prompt, rng=jax.random.key(1), **kwargs)
  b = generate(model, params, prompt, rng=jax.random.key(1), **kwargs)
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0 and a.max() < VOCAB
  greedy = generate(model, {'params': params}, prompt, max_new_tokens=6, rng=jax.random.key(1),
                    temperature=0.0)
  # top_k=1 leaves only the argmax, whatever the temperature and key.
  top1 = generate(model, params, prompt, max_new_tokens=6, rng=jax.random.key(2), top_k=1)
  np.testing.assert_array_equal(top1, greedy)
  eos = int(greedy[0, 3])  # row 0's first new token
  stopped = generate(model, params, prompt, max_new_tokens=6, rng=jax.random.key(1),
                     temperature=0.0, eos_id=eos)
  assert np.all(np.asarray(stopped[0, 3:]) == eos)


def test_generation_errors():
  model = GPT(**{**TINY, 'num_layers': 1})
  params = model.init(jax.random.key(0), _tokens())['params']
  with pytest.raises(ValueError, match='exceeds the model max_len 12'):
    generate(model, params, _tokens(length=8), max_new_tokens=5, rng=jax.random.key(0))
  with pytest.raises(ValueError, match='at least one token'):
    generate(model, params, jnp.zeros((2, 0), jnp.int32), max_new_tokens=1,
             rng=jax.random.key(0))
  with pytest.raises(ValueError, match='top_p'):
    generate(model, params, _tokens(length=2), max_new_tokens=1, rng=jax.random.key(0),
             top_p=0.0)
  with pytest.raises(ValueError, match='exceeds max_len'):
    model.apply({'params': params}, _tokens(length=MAX_LEN + 1))
  with pytest.raises(TypeError, match='GPT'):
    generate(BertEncoder(**TINY), params, _tokens(length=2), max_new_tokens=1,
             rng=jax.random.key(0))


def test_filter_logits():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  keep = lambda x: np.isfinite(np.asarray(x))[0].tolist()  # noqa: E731
  assert keep(filter_logits(logits, 2, 1.0)) == [True, False, True, False]
  assert keep(filter_logits(logits, 0, 0.7)) == [True, False, True, False]  # 0.5 < 0.7 <= 0.8
  assert keep(filter_logits(logits, 0, 0.5)) == [True, False, False, False]
  assert keep(filter_logits(logits, 0, 0.81)) == [True, False, True, True]
  # top-p acts on the top-k's renormalized probabilities: 0.5 + 0.3 of 0.95 is 0.842.
  assert keep(filter_logits(logits, 3, 0.84)) == [True, False, True, False]
  assert keep(filter_logits(logits, 3, 0.85)) == [True, False, True, True]
  assert keep(filter_logits(logits, 0, 1.0)) == [True] * 4
  assert keep(filter_logits(logits, 9, 1.0)) == [True] * 4


def test_bert_padding_does_not_leak():
  model = BertEncoder(**TINY, positions='rotary')
  tokens = _tokens(5)
  padding = jnp.arange(MAX_LEN)[None, :] < jnp.array([[7], [10]])
  params = model.init(jax.random.key(0), tokens, padding_mask=padding)['params']
  changed = jnp.where(padding, tokens, (tokens + 3) % VOCAB)
  out = model.apply({'params': params}, tokens, padding_mask=padding)
  out_changed = model.apply({'params': params}, changed, padding_mask=padding)
  assert out.shape == (2, MAX_LEN, VOCAB) and out.dtype == jnp.float32
  real = np.asarray(padding)
  np.testing.assert_allclose(np.asarray(out_changed)[real], np.asarray(out)[real], atol=1e-6)
  # Without the mask the padded tokens do reach the real positions, and it is bidirectional.
  unmasked = model.apply({'params': params}, tokens)
  unmasked_changed = model.apply({'params': params}, changed)
  assert not np.allclose(np.asarray(unmasked_changed)[real], np.asarray(unmasked)[real])
  hidden = model.apply({'params': params}, tokens, padding_mask=padding,
                       method=BertEncoder.encode)
  assert hidden.shape == (2, MAX_LEN, TINY['embed_dim'])


def test_tied_and_untied_parameters():
  tokens = _tokens(length=4)
  shapes = lambda model: jax.tree.map(  # noqa: E731
      jnp.shape, jax.eval_shape(model.init, jax.random.key(0), tokens)['params'])
  tied, untied = shapes(GPT(**TINY)), shapes(GPT(**TINY, tie_embeddings=False))
  assert 'lm_head' not in tied and tied['embed']['embedding'] == (VOCAB, 16)
  assert untied['lm_head'] == {'kernel': (16, VOCAB), 'bias': (VOCAB,)}
  assert set(untied) - set(tied) == {'lm_head'}
  assert tied['position_embed']['embedding'] == (MAX_LEN, 16)
  assert 'position_embed' not in shapes(GPT(**TINY, positions='rotary'))
  bert_tied = shapes(BertEncoder(**TINY))
  bert_untied = shapes(BertEncoder(**TINY, tie_embeddings=False))
  assert bert_tied['mlm_bias'] == (VOCAB,) and 'lm_head' not in bert_tied
  assert 'mlm_bias' not in bert_untied and bert_untied['lm_head']['kernel'] == (16, VOCAB)


def test_dropout_uses_the_dropout_rng():
  model = GPT(**TINY, dropout_rate=0.5, attention_dropout_rate=0.5)
  tokens = _tokens()
  params = model.init(jax.random.key(0), tokens)['params']
  eval_a = model.apply({'params': params}, tokens)
  np.testing.assert_array_equal(eval_a, model.apply({'params': params}, tokens))
  train = lambda seed: model.apply({'params': params}, tokens, deterministic=False,  # noqa: E731
                                   rngs={'dropout': jax.random.key(seed)})
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2)) and not np.allclose(train(1), eval_a)
  with pytest.raises(Exception, match='dropout'):
    model.apply({'params': params}, tokens, deterministic=False)


def test_xla_attention_computes_the_reference_model():
  """attention_impl='xla' (jax.nn.dot_product_attention's XLA path) in float32 on any backend
  gives the reference model's logits (BERT with padding: the masked path; the causal one is
  tests/test_attention.py's), to float32 rounding of a different formulation."""
  tokens = _tokens(7)
  padding = jnp.arange(MAX_LEN)[None, :] < jnp.array([[7], [MAX_LEN]])
  model = BertEncoder(**{**TINY, 'num_layers': 1}, attention_impl='reference')
  params = model.init(jax.random.key(0), tokens, padding_mask=padding)
  xla = model.clone(attention_impl='xla').apply(params, tokens, padding_mask=padding)
  np.testing.assert_allclose(xla, model.apply(params, tokens, padding_mask=padding), atol=1e-5)


@pytest.mark.gpu
def test_auto_attention_takes_cudnn_in_bfloat16_and_decoding_still_works():
  """On an NVIDIA GPU 'auto' runs cuDNN for a bf16 GPT (head_dim 64): its logits are the
  reference model's within bf16 rounding (8 significant bits and different summation orders:
  3% of the logits' norm), and cached generation (whose decode steps run the reference) gives
  exactly the reference model's tokens."""
  from sslm_jax.models.attention import choose_attention
  choice = choose_attention('auto', dtype=jnp.bfloat16, head_dim=64, dropout_rate=0.0)
  assert choice.impl == 'cudnn', choice.reason
  fields = dict(TINY, embed_dim=128, mlp_dim=256, max_len=64, dtype=jnp.bfloat16)
  model = GPT(**fields)  # attention_impl='auto'
  reference = GPT(**fields, attention_impl='reference')
  tokens = _tokens(4, length=64)
  params = reference.init(jax.random.key(0), tokens)['params']
  fast = np.asarray(jax.jit(model.apply)({'params': params}, tokens), np.float64)
  slow = np.asarray(jax.jit(reference.apply)({'params': params}, tokens), np.float64)
  assert np.linalg.norm(fast - slow) < 3e-2 * np.linalg.norm(slow)
  prompt = tokens[:, :8]
  kwargs = dict(max_new_tokens=16, rng=jax.random.key(3), temperature=0.0)
  np.testing.assert_array_equal(generate(model, params, prompt, **kwargs),
                                generate(reference, params, prompt, **kwargs))


@pytest.mark.parametrize('family', ['gpt', 'bert', 'electra', 'text_vae'])
def test_gpt2_weight_init_scales_every_dense_kernel(family):
  """'gpt2': every dense kernel of the Transformer stacks N(0, 0.02), the two residual output
  projections of a block N(0, 0.02 / sqrt(2 * num_layers)); the rest as 'lecun' (the default)."""
  fields = dict(num_layers=4, num_heads=4, embed_dim=64, mlp_dim=256, max_len=MAX_LEN)
  args = (jax.random.key(1),) if family == 'text_vae' else ()

  def flat_params(**extra):
    model = MODELS[family](**fields, **extra).build(vocab_size=VOCAB)
    return traverse_util.flatten_dict(model.init(jax.random.key(0), _tokens(), *args)['params'])

  gpt2, lecun = flat_params(weight_init='gpt2'), flat_params()
  assert gpt2.keys() == lecun.keys()
  own_init = ('latent_to_embedding', 'latent_to_prefix', 'posterior')  # the text VAE's latents
  scaled = 0
  for path, kernel in gpt2.items():
    if path[-1] != 'kernel' or path[-2] in own_init:
      np.testing.assert_array_equal(kernel, lecun[path], err_msg=str(path))
      continue
    # The text VAE's posterior encoder is a stack of its own depth.
    layers = MODELS[family]().encoder_layers if path[0] == 'encoder' else fields['num_layers']
    std = 0.02 / np.sqrt(2 * layers) if path[-2] in ('out', 'mlp_out') else 0.02
    # A sample standard deviation of n >= 64 N(0, s) draws is within 30% of s (n = 64: about
    # 3.4 of its standard errors, s / sqrt(2n)); Flax's LeCun init of these layers is >= 0.0625,
    # and 1 / sqrt(num_layers) in place of 1 / sqrt(2 num_layers) would be 41% too large.
    assert abs(float(np.std(kernel)) - std) < 0.3 * std, (path, float(np.std(kernel)), std)
    scaled += 1
  assert scaled >= 24


@pytest.mark.parametrize('family', ['gpt', 'bert', 'electra'])
def test_embed_norm_layer_normalizes_the_summed_embeddings(family):
  """embed_norm=True: the embeddings go through one LayerNorm (ELECTRA's generator reads the
  discriminator's), so the residual stream starts at unit scale; off, they stay N(0, 0.02)."""
  fields = dict(num_layers=2, num_heads=2, embed_dim=64, mlp_dim=128, max_len=MAX_LEN,
                positions='learned')
  tokens = _tokens()

  def embeddings(**extra):
    model = MODELS[family](**fields, **extra).build(vocab_size=VOCAB)
    params = model.init(jax.random.key(0), tokens)['params']
    flat = traverse_util.flatten_dict(params)
    x = model.apply({'params': params}, tokens,
                    method=lambda m, t: (m.discriminator if family == 'electra' else m)
                    .embed_inputs(t))
    return flat, np.asarray(x)

  plain_params, plain = embeddings()
  normed_params, normed = embeddings(embed_norm=True)
  added = set(normed_params) - set(plain_params)
  prefix = ('discriminator',) if family == 'electra' else ()
  assert added == {prefix + ('embedding_norm', 'scale'), prefix + ('embedding_norm', 'bias')}
  assert all(np.array_equal(normed_params[k], plain_params[k]) for k in plain_params)
  # LayerNorm at its initial scale 1 and bias 0: each token's 64 features have mean 0 and
  # variance 1 (up to its epsilon of 1e-6 against a variance near 8e-4: 0.1%).
  np.testing.assert_allclose(normed.mean(-1), 0, atol=1e-5)
  np.testing.assert_allclose(normed.std(-1), 1, rtol=2e-3)
  np.testing.assert_allclose(plain.std(), 0.02 * np.sqrt(2), rtol=0.2)  # token + position
  # And the same normalization of those very embeddings.
  mean, std = plain.mean(-1, keepdims=True), plain.std(-1, keepdims=True)
  np.testing.assert_allclose(normed, (plain - mean) / np.sqrt(std**2 + 1e-6), atol=1e-4)


def test_the_text_vae_refuses_embed_norm():
  from sslm_jax import runs
  from sslm_jax.config import ConfigError
  from configs import text_vae_fortunes
  config = text_vae_fortunes.get_config()
  config.model.embed_norm = True
  with pytest.raises(ConfigError, match=r"model.embed_norm=True is invalid; allowed: False"):
    runs.validate(config)
