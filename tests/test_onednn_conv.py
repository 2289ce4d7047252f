"""The oneDNN convolutions (sslm_jax/kernels) against XLA's, and when the library uses them.

Kernel tests skip, naming what is missing, where the kernels are not built (`make test` builds
them when g++ and libdnnl-dev can be installed).
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from conftest import config_with, rel_err
from sslm_jax.config import ConfigError
from sslm_jax.kernels import onednn_conv
from sslm_jax.models import VAE
from sslm_jax.runs import validate

needs_kernels = pytest.mark.skipif(onednn_conv.unavailable_reason() is not None,
                                   reason=str(onednn_conv.unavailable_reason()))
RTOL = 1e-5


def xla_conv(x, w, stride, pad):
  return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def normal(key, shape):
  return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


# (batch, (height, width), in, out, (kernel h, w), stride, pad): the seed's layers (one input
# channel first), a 3x3 'same' convolution, a valid one, and non-square maps and kernels, one
# with a stride-2 remainder (height 9).
CASES = [(3, (32, 32), 1, 8, (4, 4), 2, 1), (2, (16, 16), 5, 7, (4, 4), 2, 1),
         (2, (9, 9), 3, 4, (3, 3), 1, 1), (2, (4, 4), 6, 8, (4, 4), 1, 0),
         (2, (9, 12), 3, 5, (4, 3), 2, 1), (1, (6, 11), 2, 3, (2, 5), 1, 2)]


@needs_kernels
@pytest.mark.parametrize('n,side,cin,cout,k,stride,pad', CASES)
def test_conv_and_its_gradients_match_xla(n, side, cin, cout, k, stride, pad):
  x, w = normal(0, (n, *side, cin)), normal(1, (*k, cin, cout))
  out = jax.jit(onednn_conv.conv, static_argnums=(2, 3))(x, w, stride, pad)
  want = xla_conv(x, w, stride, pad)
  assert out.shape == want.shape and rel_err(out, want) < RTOL
  g = normal(2, want.shape)
  grads = jax.grad(lambda x, w: jnp.sum(onednn_conv.conv(x, w, stride, pad) * g), (0, 1))(x, w)
  wants = jax.grad(lambda x, w: jnp.sum(xla_conv(x, w, stride, pad) * g), (0, 1))(x, w)
  for got, want in zip(grads, wants):
    assert rel_err(got, want) < RTOL


@needs_kernels
@pytest.mark.parametrize('n,side,cin,cout,k,stride,pad', CASES)
def test_conv_transpose_is_the_adjoint_with_matching_gradients(n, side, cin, cout, k, stride, pad):
  x, w = normal(0, (n, *side, cin)), normal(1, (*k, cin, cout))
  y = normal(2, xla_conv(x, w, stride, pad).shape)

  def xla_transpose(y, w):
    return jax.vjp(lambda x: xla_conv(x, w, stride, pad), x)[1](y)[0]

  out = onednn_conv.conv_transpose(y, w, stride, pad, side)
  assert rel_err(out, xla_transpose(y, w)) < RTOL
  g = normal(3, x.shape)
  grads = jax.grad(lambda y, w: jnp.sum(
      onednn_conv.conv_transpose(y, w, stride, pad, side) * g), (0, 1))(y, w)
  wants = jax.grad(lambda y, w: jnp.sum(xla_transpose(y, w) * g), (0, 1))(y, w)
  for got, want in zip(grads, wants):
    assert rel_err(got, want) < RTOL


@needs_kernels
def test_vae_with_onednn_convolutions_is_the_same_model():
  x = jax.random.uniform(jax.random.PRNGKey(3), (4, 32, 32, 1), minval=-1, maxval=1)
  rng = jax.random.PRNGKey(4)
  widths = dict(latent_dim=4, encoder_features=(8, 16, 16), encoder_out_features=16,
                decoder_hidden=(16,), decoder_base_features=8, decoder_features=(8, 8))
  fast, plain = VAE(conv_impl='onednn', **widths), VAE(conv_impl='xla', **widths)
  params = plain.init(rng, x, rng)
  assert jax.tree.structure(fast.init(rng, x, rng)) == jax.tree.structure(params)

  @functools.partial(jax.jit, static_argnums=0)
  def loss_and_grads(model, params):
    return jax.value_and_grad(lambda p: jnp.mean(model.apply(p, x, rng)['recon'] ** 2))(params)

  (fast_loss, fast_grads), (loss, grads) = (loss_and_grads(m, params) for m in (fast, plain))
  assert abs(float(fast_loss) / float(loss) - 1) < RTOL
  errors = jax.tree.map(rel_err, fast_grads, grads)
  assert max(jax.tree.leaves(errors)) < RTOL, errors
  assert 'sslm_onednn_conv' in str(jax.make_jaxpr(lambda p: fast.apply(p, x, rng))(params))


@needs_kernels
def test_flax_conv_adapter_uses_lax_for_what_the_kernels_do_not_cover():
  x, w = normal(0, (2, 8, 8, 3)), normal(1, (3, 3, 3, 4))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ('NHWC', 'HWIO', 'NHWC'))

  def jaxpr(strides, padding, dilation):
    return str(jax.make_jaxpr(lambda x, w: onednn_conv.conv_general_dilated(
        x, w, strides, padding, (1, 1), dilation, dn))(x, w))

  for strides, padding, dilation in [((1, 1), 'SAME', (1, 1)), ((1, 2), ((1, 1), (1, 1)), (1, 1)),
                                     ((1, 1), ((1, 1), (1, 1)), (2, 2)),
                                     ((1, 1), ((0, 1), (0, 1)), (1, 1)),
                                     ((1, 1), ((-1, -1), (-1, -1)), (1, 1))]:
    assert 'ffi_call' not in jaxpr(strides, padding, dilation)
    args = (x, w, strides, padding, (1, 1), dilation, dn)
    np.testing.assert_allclose(onednn_conv.conv_general_dilated(*args),
                               lax.conv_general_dilated(*args), rtol=1e-6)
  assert 'sslm_onednn_conv_forward' in jaxpr((1, 1), ((1, 1), (1, 1)), (1, 1))
  x1, w1 = normal(0, (2, 8, 3)), normal(1, (3, 3, 4))  # 1-D: lax's
  dn1 = lax.conv_dimension_numbers(x1.shape, w1.shape, ('NHC', 'HIO', 'NHC'))
  np.testing.assert_allclose(
      onednn_conv.conv_general_dilated(x1, w1, (1,), ((1, 1),), (1,), (1,), dn1),
      lax.conv_general_dilated(x1, w1, (1,), ((1, 1),), (1,), (1,), dn1), rtol=1e-6)


@needs_kernels
def test_a_fresh_process_can_call_the_kernels_directly():
  code = ('import jax.numpy as jnp; from sslm_jax.kernels import onednn_conv; '
          'print(onednn_conv.conv(jnp.ones((1, 4, 4, 1)), jnp.ones((2, 2, 1, 1)), 2, 0).sum())')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.split()[-1] == '16.0', out.stderr[-2000:]


@needs_kernels
def test_vmap_runs_example_by_example():
  x, w = normal(0, (3, 2, 8, 8, 2)), normal(1, (4, 4, 2, 3))
  got = jax.vmap(lambda x: onednn_conv.conv(x, w, 2, 1))(x)
  np.testing.assert_allclose(got, jax.vmap(lambda x: xla_conv(x, w, 2, 1))(x), rtol=1e-5,
                             atol=1e-5)


def test_auto_uses_xla_where_the_kernels_cannot_run(monkeypatch):
  assert onednn_conv.resolve('xla') == 'xla'
  assert onednn_conv.resolve('auto', jnp.bfloat16) == 'xla'
  with pytest.raises(ValueError, match='bfloat16'):
    onednn_conv.resolve('onednn', jnp.bfloat16)
  with pytest.raises(ValueError, match="allowed: \\('auto', 'xla', 'onednn'\\)"):
    onednn_conv.resolve('cudnn')
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  if onednn_conv.unavailable_reason() is None:  # built: the backend is what says no
    assert onednn_conv.resolve('auto') == 'xla'
    with pytest.raises(ValueError, match='the default backend is gpu, not cpu'):
      onednn_conv.resolve('onednn')
  monkeypatch.undo()
  monkeypatch.setattr(onednn_conv, '_load', lambda: 'not built (test)')
  assert onednn_conv.resolve('auto') == 'xla'
  with pytest.raises(ValueError, match=r"conv_impl='onednn' cannot run here: not built \(test\)"):
    onednn_conv.resolve('onednn')
  # The model follows: same parameters, XLA's convolutions.
  x = jnp.zeros((1, 32, 32, 1))
  jaxpr = jax.make_jaxpr(lambda x: VAE().init(jax.random.PRNGKey(0), x, jax.random.PRNGKey(1)))(x)
  assert 'ffi_call' not in str(jaxpr)


def test_config_names_the_choices_and_what_is_missing(monkeypatch):
  with pytest.raises(ConfigError, match="model.conv_impl='cudnn' is invalid"):
    validate(config_with({'model.conv_impl': 'cudnn'}))
  monkeypatch.setattr(onednn_conv, 'unavailable_reason', lambda: 'not built (test)')
  with pytest.raises(ConfigError, match=r"model.conv_impl='onednn'.*not built \(test\)"):
    validate(config_with({'model.conv_impl': 'onednn'}))
  validate(config_with({'model.conv_impl': 'auto'}))
