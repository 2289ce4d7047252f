"""sslm_jax.models.dropout: jax.random.bernoulli's and flax Dropout's masks, bit for bit."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslm_jax.models.dropout import Dropout, bernoulli


@pytest.mark.parametrize('shape', [(7,), (3, 5, 11), (2, 4, 16, 16)])
def test_bernoulli_is_jax_random_bernoulli(shape):
  # A typed key, a derived one and a raw uint32[2] key; one compilation for all.
  keys = (jax.random.key(3), jax.random.fold_in(jax.random.key(5), 7), jax.random.PRNGKey(4))
  probs = (0.9, 0.1, 1e-3)

  def both(keys):
    return [(bernoulli(k, p, shape), jax.random.bernoulli(k, p, shape))
            for k, p in zip(keys, probs)]
  for ours, expected in jax.jit(both)(keys):
    np.testing.assert_array_equal(ours, expected)


def test_bernoulli_falls_back_where_it_cannot_match():
  key = jax.random.key(0, impl='rbg')
  np.testing.assert_array_equal(bernoulli(key, 0.7, (4, 5)),
                                jax.random.bernoulli(key, 0.7, (4, 5)))
  p = jnp.full((4, 5), 0.3)
  key = jax.random.key(1)
  np.testing.assert_array_equal(bernoulli(key, p, (4, 5)), jax.random.bernoulli(key, p, (4, 5)))


class _TwoDropouts(nn.Module):
  """Two auto-named dropouts, the first shared along axis 1: names, rng stream, broadcast."""
  cls: type

  @nn.compact
  def __call__(self, x, deterministic):
    x = self.cls(0.25, broadcast_dims=(1,))(x, deterministic=deterministic)
    return self.cls(0.5)(x * 2.0, deterministic=deterministic)


def test_dropout_module_matches_flax():
  x = jax.random.normal(jax.random.key(0), (4, 6, 8))
  rngs = {'dropout': jax.random.key(1)}

  @jax.jit
  def run(x):
    def out(cls, x):
      return _TwoDropouts(cls).apply({}, x, False, rngs=rngs)
    # Gradients flow through the kept entries only, scaled by 1 / keep_prob, as flax's.
    return [(out(cls, x), jax.grad(lambda x: out(cls, x).sum())(x))
            for cls in (Dropout, nn.Dropout)]
  (ours, grad), (flax, grad_flax) = run(x)
  np.testing.assert_array_equal(ours, flax)
  np.testing.assert_array_equal(grad, grad_flax)
  assert 0.2 < float(jnp.mean(ours == 0)) < 0.9
  np.testing.assert_array_equal(_TwoDropouts(Dropout).apply({}, x, True), x * 2.0)
