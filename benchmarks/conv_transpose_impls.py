"""Times the implementations of the decoder's stride-2 transposed convolution, layer by layer.

For each of the seed decoder's three `ConvTranspose2d(k=4, s=2, p=1)` layers (at batch 64 by
default): forward plus the gradients with respect to input and kernel, jitted, median of 20 runs,
with the largest difference from `lax.conv_transpose` ('xla'). This is how 'col2im' was chosen
as XLA's formulation (sslm_jax/models/layers.py); 'onednn' (sslm_jax/kernels, the default on one
CPU device where built) is timed beside them when it is built.

  python benchmarks/conv_transpose_impls.py [--batch 64]
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import table_head  # noqa: E402
from sslm_jax.kernels import onednn_conv  # noqa: E402
from sslm_jax.models.layers import CONV_TRANSPOSE_IMPLS, conv_transpose_2x  # noqa: E402

SEED_LAYERS = ((4, 64, 128), (8, 128, 64), (16, 64, 1))  # (input side, in, out)


def median_ms(fn, *args, runs=20):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=64)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  impls = CONV_TRANSPOSE_IMPLS + (('onednn',) if onednn_conv.resolve('auto') == 'onednn' else ())
  totals = dict.fromkeys(impls, 0.0)
  print('\n'.join(table_head(['layer', *(f'{impl} ms' for impl in impls), 'max diff'])))
  for side, cin, cout in SEED_LAYERS:
    x = jnp.asarray(rng.normal(size=(args.batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(4, 4, cin, cout)), jnp.float32)
    reference = conv_transpose_2x(x, w, 'xla')
    cells, diff = [], 0.0
    for impl in impls:
      loss = lambda x, w, impl=impl: jnp.sum(conv_transpose_2x(x, w, impl) ** 2)  # noqa: E731
      ms = median_ms(jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), x, w)
      totals[impl] += ms
      cells.append(f'{ms:.1f}')
      diff = max(diff, float(jnp.max(jnp.abs(conv_transpose_2x(x, w, impl) - reference))))
    print(f'| {side}x{side}x{cin} -> {2 * side}x{2 * side}x{cout} | ' + ' | '.join(cells) +
          f' | {diff:.1e} |')
  print('| all three | ' + ' | '.join(f'{totals[i]:.1f}' for i in impls) + ' | |')


if __name__ == '__main__':
  main()
