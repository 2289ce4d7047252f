"""Layers shared by the models.

`ConvTranspose2x` is PyTorch's `ConvTranspose2d(k=4, s=2, p=1)`: it doubles the spatial size.
Its kernel is stored as (4, 4, in, out), which is PyTorch's (in, out, 4, 4) weight permuted, with
no spatial flip, so checkpoints convert by a transpose alone. Two exact implementations share that
one parameter (`python benchmarks/conv_transpose_impls.py` times them; benchmarks/README.md, "Where
the JAX step's time went", has the numbers, and the forms measured and not kept):

- 'col2im' (default): one matmul (batch*h*w, in) @ (in, 16*out) gives every tap's contribution,
  then an overlap-add of the 16 taps places them (output row 2i - 1 + k). Forward and gradients
  are all well-shaped matmuls plus cheap pads and slices; several times faster than 'xla' here.
- 'xla': `lax.conv_transpose`. Simple, but its gradient is slow on XLA:CPU.

On a single CPU device with the oneDNN kernels built (sslm_jax/kernels/onednn_conv.py,
`conv_impl='auto'`), oneDNN computes the layer instead: as the adjoint (backward data) of the
stride-2 convolution from the output map to the input, on the same parameter (the model decides:
`sslm_jax.models.conv_vae.conv_impls`).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sslm_jax.kernels import onednn_conv

CONV_TRANSPOSE_IMPLS = ('col2im', 'xla')  # XLA formulations (a model's conv_transpose_impl)


def _conv_transpose_col2im(x: jax.Array, kernel: jax.Array) -> jax.Array:
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  # taps[b, i, j, qy, py, qx, px, o]: contribution of input pixel (i, j) through kernel tap
  # (ky, kx) = (2 qy + py, 2 qx + px), which lands on padded output row 2 (i + qy) + py.
  taps = x.reshape(-1, cin) @ kernel.transpose(2, 0, 1, 3).reshape(cin, 16 * cout)
  taps = taps.reshape(b, h, w, 2, 2, 2, 2, cout)
  out = jnp.zeros((b, h + 1, 2, w + 1, 2, cout), x.dtype)  # padded rows as (block, phase)
  for qy in (0, 1):
    for qx in (0, 1):
      term = taps[:, :, :, qy, :, qx, :, :].transpose(0, 1, 3, 2, 4, 5)  # b, i, py, j, px, o
      out = out + jnp.pad(term, ((0, 0), (qy, 1 - qy), (0, 0), (qx, 1 - qx), (0, 0), (0, 0)))
  return out.reshape(b, 2 * h + 2, 2 * w + 2, cout)[:, 1:2 * h + 1, 1:2 * w + 1]


def conv_transpose_2x(x: jax.Array, kernel: jax.Array, impl: str = 'col2im') -> jax.Array:
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) without bias on NHWC `x`; kernel (4, 4, in, out).

  `impl`: one of CONV_TRANSPOSE_IMPLS, or 'onednn' (sslm_jax/kernels, when built).
  """
  if impl == 'onednn':
    # The adjoint of the stride-2 convolution from the output map back to x, whose HWIO kernel
    # is ours with in and out swapped.
    _, h, w, _ = x.shape
    return onednn_conv.conv_transpose(x, kernel.transpose(0, 1, 3, 2), 2, 1, (2 * h, 2 * w))
  if impl == 'col2im':
    return _conv_transpose_col2im(x, kernel)
  if impl == 'xla':
    # lax wants the forward conv's kernel (HWIO with I = our output); it flips and swaps itself.
    return lax.conv_transpose(x, kernel.transpose(0, 1, 3, 2), strides=(2, 2),
                              padding=((2, 2), (2, 2)),
                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                              transpose_kernel=True)
  raise ValueError(f'conv_transpose_impl={impl!r}; allowed: {CONV_TRANSPOSE_IMPLS}')


def conv_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
  """Flax's convolution init, lecun_normal over the h * w * in taps of an HWIO kernel, drawn as
  the (h * w * in, out) matrix and reshaped.

  The same numbers as `nn.initializers.lecun_normal()(key, shape)`: threefry (partitionable,
  JAX's default) numbers its draws by flat index, so the draw's shape only groups them
  (tests/test_layers.py checks equality). XLA:CPU compiles a 4-D draw several times slower than a
  2-D one, and the draws were most of the time it took to compile the seed model's init.
  """
  fan_in = math.prod(shape[:-1])
  return nn.initializers.lecun_normal()(key, (fan_in, shape[-1]), dtype).reshape(shape)


class ConvTranspose2x(nn.Module):
  """Stride-2 4x4 transposed convolution with bias; see the module docstring.

  `impl`: as `conv_transpose_2x`'s ('onednn' too, which the model picks through its `conv_impl`).
  """
  features: int
  impl: str = 'col2im'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    # Lecun-normal over the 4*4*in taps like Flax's own convolutions; PyTorch initialises
    # differently, which matters only when comparing the two, and then weights are converted.
    kernel = self.param('kernel', conv_kernel_init, (4, 4, cin, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    return conv_transpose_2x(x, kernel, self.impl) + bias
