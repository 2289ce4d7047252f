"""Layers shared by the models.

`ConvTranspose2x` is PyTorch's `ConvTranspose2d(k=4, s=2, p=1)`: it doubles the spatial size.
Its kernel is stored as (4, 4, in, out), which is PyTorch's (in, out, 4, 4) weight permuted, with
no spatial flip, so checkpoints convert by a transpose alone. Two exact implementations share that
one parameter:

- 'xla': `lax.conv_transpose`. Simple, but on CPU its gradient is slow (the decoder's
  transposed-conv gradient was 263 ms of a 309 ms seed train step at batch 64).
- 'subpixel' (default): each output pixel (2m + r) of a stride-2 4-tap transposed convolution
  draws on input pixels m-1, m, m+1 through kernel taps fixed by the phase r. So the layer is one
  3x3 stride-1 convolution to 4x the channels (one group per output phase), followed by
  depth-to-space. The 3x3 kernel is gathered from the 4x4 one inside the function, so gradients
  flow back to the same parameter and the two implementations are interchangeable.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_TRANSPOSE_IMPLS = ('subpixel', 'xla')

# For output phase r (0 or 1) and input offset d = -1, 0, +1 (index d + 1), the tap of the 4-tap
# kernel that connects them; 4 points at an appended zero tap (no connection). Derived from
# y = 2 * i - padding + k with padding 1: y = 2m + r, i = m + d  =>  k = r + 1 - 2d.
_PHASE_TAPS = np.array([[3, 1, 4],
                        [4, 2, 0]])


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
  """(4, 4, in, out) transposed-conv kernel -> (3, 3, in, 4 * out) conv kernel, phases (ry, rx)."""
  _, _, cin, cout = kernel.shape
  padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap 4 is zero
  # gathered[ry, ty, rx, tx] = padded[_PHASE_TAPS[ry, ty], _PHASE_TAPS[rx, tx]]
  gathered = padded[_PHASE_TAPS[:, :, None, None], _PHASE_TAPS[None, None, :, :]]
  # -> (ty, tx, in, ry, rx, out)
  return gathered.transpose(1, 3, 4, 0, 2, 5).reshape(3, 3, cin, 4 * cout)


def conv_transpose_2x(x: jax.Array, kernel: jax.Array, impl: str = 'subpixel') -> jax.Array:
  """PyTorch ConvTranspose2d(k=4, s=2, p=1) without bias on NHWC `x`; kernel (4, 4, in, out)."""
  if impl == 'xla':
    # lax wants the forward conv's kernel (HWIO with I = our output); it flips and swaps itself.
    return lax.conv_transpose(x, kernel.transpose(0, 1, 3, 2), strides=(2, 2),
                              padding=((2, 2), (2, 2)),
                              dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                              transpose_kernel=True)
  if impl == 'subpixel':
    b, h, w, _ = x.shape
    cout = kernel.shape[-1]
    y = lax.conv_general_dilated(x, subpixel_kernel(kernel), window_strides=(1, 1),
                                 padding=((1, 1), (1, 1)),
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y.reshape(b, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, cout)
  raise ValueError(f'conv_transpose_impl={impl!r}; allowed: {CONV_TRANSPOSE_IMPLS}')


class ConvTranspose2x(nn.Module):
  """Stride-2 4x4 transposed convolution with bias; see the module docstring."""
  features: int
  impl: str = 'subpixel'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    # Lecun-normal over the 4*4*in taps like Flax's own convolutions; PyTorch initialises
    # differently, which matters only when comparing the two, and then weights are converted.
    kernel = self.param('kernel', nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                        (4, 4, cin, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
    return conv_transpose_2x(x, kernel, self.impl) + bias
