"""Dropout whose masks are `jax.random.bernoulli`'s, bit for bit, computed faster on CPU.

On CPU, JAX lowers its threefry hash as a rolled 5-iteration loop (to keep compile times down),
each iteration a separate pass over the whole array. `bernoulli` here computes the very same
hash unrolled, which XLA fuses into one elementwise kernel, several times faster (benchmarks/
README.md, "Where the JAX GPT step's time goes"). It returns exactly the mask
`jax.random.bernoulli(key, p, shape)` would: same key, same bits, same comparison. Where that
equality is not guaranteed (a key that is not threefry2x32, `jax_threefry_partitionable` or
`jax_enable_x64` not at their defaults, 2^32 elements or more, p an array) it calls
`jax.random.bernoulli` itself. tests/test_dropout.py checks the equality on the installed JAX.

`Dropout` is `flax.linen.Dropout` drawing its mask this way: same name, fields, rng stream and
outputs.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Threefry-2x32 (Salmon et al. 2011) as jax/_src/random/threefry2x32.py: 20 rounds, a key
# injection after every 4.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, bits: int):
  return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(x, np.uint32(32 - bits))


def _threefry_bits(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint32 `jax.random.bits(key, shape)` of a threefry2x32 key in partitionable mode: the
  hash of the counter pair (0, flat index), its two output words xor-ed."""
  k1, k2 = key_data[0], key_data[1]
  ks = (k1, k2, k1 ^ k2 ^ _KEY_PARITY)
  x0 = jnp.broadcast_to(ks[0], shape)  # the high counter word is 0 below 2^32 elements
  x1 = lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape) + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, r)
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
  return x0 ^ x1


def _exact(key, p, shape) -> bool:
  # With x64 on, jax draws float64 uniforms for a Python float p: other bits.
  return (isinstance(p, (int, float, np.floating)) and not jax.config.jax_enable_x64
          and jax.config.jax_threefry_partitionable
          and str(jax.random.key_impl(key)) == 'threefry2x32'
          and 0 < int(np.prod(shape)) < 2**32)


def bernoulli(key: jax.Array, p: float, shape) -> jax.Array:
  """`jax.random.bernoulli(key, p, shape)`, the same bits, as one fused kernel."""
  shape = tuple(int(d) for d in shape)
  if not _exact(key, p, shape):
    return jax.random.bernoulli(key, p, shape)
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  bits = _threefry_bits(jnp.asarray(data, jnp.uint32), shape)
  # jax.random.uniform's float32 in [0, 1): 23 random mantissa bits under exponent 0, minus 1.
  one_to_two = lax.bitcast_convert_type(
      lax.shift_right_logical(bits, np.uint32(9)) | np.uint32(0x3F800000), jnp.float32)
  return one_to_two - np.float32(1.0) < np.float32(p)


class Dropout(nn.Dropout):
  """`flax.linen.Dropout` with its mask from `bernoulli` above (identical outputs)."""

  @nn.compact
  def __call__(self, inputs, deterministic=None, rng=None):
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # as flax: no NaN gradients
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    broadcast_shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      broadcast_shape[dim] = 1
    mask = jnp.broadcast_to(bernoulli(rng, keep_prob, broadcast_shape), inputs.shape)
    return lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))
