import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslm_jax.kernels import onednn_conv
from sslm_jax.models.layers import conv_kernel_init, conv_transpose_2x

IMPLS = ['xla', 'col2im', pytest.param('onednn', marks=pytest.mark.skipif(
    onednn_conv.unavailable_reason() is not None, reason=str(onednn_conv.unavailable_reason())))]


def torch_conv_transpose_reference(x, w):
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) by its definition: y[2i - 1 + k] += x[i] w[k]."""
  b, h, wd, _ = x.shape
  y = np.zeros((b, 2 * h + 2, 2 * wd + 2, w.shape[-1]))
  for i in range(h):
    for j in range(wd):
      for ky in range(4):
        for kx in range(4):
          y[:, 2 * i + ky, 2 * j + kx] += x[:, i, j] @ w[ky, kx]
  return y[:, 1:2 * h + 1, 1:2 * wd + 1]


@pytest.mark.parametrize('impl', IMPLS)
def test_conv_transpose_matches_definition(impl):
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(2, 4, 5, 3)), rng.normal(size=(4, 4, 3, 6))
  out = conv_transpose_2x(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32), impl)
  np.testing.assert_allclose(np.asarray(out), torch_conv_transpose_reference(x, w), atol=1e-4)


@pytest.mark.parametrize('impl', IMPLS[1:])
def test_impls_have_same_gradients(impl):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(4, 4, 3, 5)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(2, 8, 8, 5)), jnp.float32)
  def grads(name):  # against lax.conv_transpose's ('xla')
    return jax.grad(lambda x, w: jnp.sum((conv_transpose_2x(x, w, name) - target) ** 2),
                    argnums=(0, 1))(x, w)

  for a, b in zip(grads('xla'), grads(impl)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_unknown_impl_is_rejected():
  with pytest.raises(ValueError, match='allowed'):
    conv_transpose_2x(jnp.zeros((1, 2, 2, 1)), jnp.zeros((4, 4, 1, 1)), 'fft')


def test_conv_kernel_init_draws_flax_lecun_normal_exactly():
  # Drawn as a matrix and reshaped, it must still be Flax's own init, number for number: the
  # parameters of a given seed do not change with the faster draw. (One shape: the 4-D draw
  # compared against is the slow compile this init avoids.)
  key, shape = jax.random.PRNGKey(7), (3, 5, 2, 4)
  np.testing.assert_array_equal(conv_kernel_init(key, shape),
                                nn.initializers.lecun_normal()(key, shape))
