"""2-D convolutions on XLA:CPU through oneDNN (the library PyTorch's CPU convolutions use).

XLA:CPU runs convolutions and their gradients with Eigen kernels; on the seed VAE's stride-2 4x4
layers those took up to twice oneDNN's time (benchmarks/README.md, "Where the JAX step's time
went"). `onednn_conv.cc` exposes oneDNN's
forward, backward-data and backward-weights convolutions as XLA FFI handlers; this file builds
it, registers it and gives JAX functions with their gradients:

- `conv(x, w, stride, pad)`: NHWC `x`, HWIO `w`, symmetric stride and zero padding, as
  `lax.conv_general_dilated(x, w, (stride,) * 2, ((pad, pad),) * 2, ('NHWC', 'HWIO', 'NHWC'))`.
- `conv_transpose(y, w, stride, pad, spatial)`: the linear adjoint of `conv` in x (what
  PyTorch's ConvTranspose2d computes), with `w` in the forward convolution's HWIO layout.

Both have first derivatives (`custom_vjp`); their backward passes call the kernels directly, so
a second derivative through them is an error (use `conv_impl='xla'` for that).

The kernels are an optional part of the package: `python -m sslm_jax.kernels.onednn_conv`
compiles them (g++ and Debian/Ubuntu's `libdnnl-dev`; `make install` tries). Without them,
`conv_impl='auto'` (the default) uses XLA's own convolutions, which compute the same function.
'auto' also uses XLA for anything but float32 on a single CPU device: the custom calls have no
sharding rule, and GPUs and TPUs have their own fast convolutions.
"""

import ctypes
import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

CONV_IMPLS = ('auto', 'xla', 'onednn')  # a model's model.conv_impl
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
LIBRARY = os.path.join(os.path.dirname(SOURCE), '_onednn_conv.so')
_TARGETS = {'forward': 'SslmOnednnConvForward', 'backward_data': 'SslmOnednnConvBackwardData',
            'backward_weights': 'SslmOnednnConvBackwardWeights'}


def build(output: str = LIBRARY) -> str:
  """Compiles onednn_conv.cc into `output`; raises CalledProcessError with g++'s message."""
  command = ['g++', '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{jax.ffi.include_dir()}',
             SOURCE, '-o', output, '-ldnnl']
  subprocess.run(command, check=True, capture_output=True, text=True)
  return output


@functools.cache
def _load() -> str | None:
  """Loads and registers the kernels once; returns why they are unavailable, or None."""
  if not os.path.exists(LIBRARY):
    return (f'{LIBRARY} is not built: install g++ and libdnnl-dev (Debian/Ubuntu), then run '
            '`python -m sslm_jax.kernels.onednn_conv`')
  try:
    library = ctypes.CDLL(LIBRARY)
  except OSError as e:  # e.g. libdnnl.so.2 removed since the build
    return f'{LIBRARY} does not load: {e}'
  for name, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f'sslm_onednn_conv_{name}',
                                jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  return None


def unavailable_reason() -> str | None:
  """None when the kernels are built and loaded; otherwise what is missing and how to fix it."""
  return _load()


@dataclasses.dataclass(frozen=True)
class ConvChoice:
  """Who computes a model's convolutions ('onednn' or 'xla') and why."""
  impl: str
  reason: str


def cannot_run(dtype=jnp.float32) -> str | None:
  """Why the oneDNN kernels cannot run a model's convolutions here; None when they can."""
  reason = unavailable_reason()
  if reason is None and jax.default_backend() != 'cpu':
    reason = f'the default backend is {jax.default_backend()}, not cpu'
  if reason is None and jax.device_count() != 1:
    reason = f'{jax.device_count()} devices: the oneDNN calls have no sharding rule'
  if reason is None and jnp.dtype(dtype) != jnp.float32:
    reason = f'compute dtype {jnp.dtype(dtype).name}: the oneDNN kernels are float32'
  return reason


def choose(requested: str, dtype=jnp.float32) -> ConvChoice:
  """The one decision of who computes a model's convolutions (`model.conv_impl`), and why.

  'xla' is taken as asked; 'onednn' must be possible (else ValueError naming why); 'auto' takes
  oneDNN on a single CPU device for float32 when the kernels are built, and XLA's otherwise.
  """
  if requested not in CONV_IMPLS:
    raise ValueError(f'conv_impl={requested!r}; allowed: {CONV_IMPLS}')
  if requested == 'xla':
    return ConvChoice('xla', 'as configured')
  reason = cannot_run(dtype)
  if requested == 'onednn':
    if reason is not None:
      raise ValueError(f"conv_impl='onednn' cannot run here: {reason}; use 'auto' or 'xla'")
    return ConvChoice('onednn', 'as configured')
  if reason is not None:
    return ConvChoice('xla', f"auto: XLA's convolutions: {reason}")
  return ConvChoice('onednn', 'auto: oneDNN kernels (one CPU device, float32)')


def resolve(impl: str, dtype=jnp.float32) -> str:
  """'onednn' or 'xla' for a `conv_impl` setting (`choose`'s impl)."""
  return choose(impl, dtype).impl


def _call(name: str, shape, *args, stride: int, pad: int) -> jax.Array:
  reason = _load()
  if reason is not None:
    raise RuntimeError(f'the oneDNN convolutions cannot run: {reason}')
  return jax.ffi.ffi_call(f'sslm_onednn_conv_{name}', jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(*args, stride=np.int64(stride),
                                                    pad=np.int64(pad))


def _out_spatial(size: int, kernel: int, stride: int, pad: int) -> int:
  return (size + 2 * pad - kernel) // stride + 1


def _forward(x, w, stride, pad):
  n, h, wd, _ = x.shape
  kh, kw, _, oc = w.shape
  shape = (n, _out_spatial(h, kh, stride, pad), _out_spatial(wd, kw, stride, pad), oc)
  return _call('forward', shape, x, w, stride=stride, pad=pad)


def _backward_data(g, w, stride, pad, spatial):
  return _call('backward_data', (g.shape[0], *spatial, w.shape[2]), g, w, stride=stride, pad=pad)


def _backward_weights(x, g, w_shape, stride, pad):
  return _call('backward_weights', w_shape, x, g, stride=stride, pad=pad)


def _check(x, w):
  if x.ndim != 4 or w.ndim != 4:
    raise ValueError(f'NHWC input and HWIO weights; got shapes {x.shape} and {w.shape}')
  if x.dtype != jnp.float32 or w.dtype != jnp.float32:
    raise ValueError(f'oneDNN convolutions are float32; got {x.dtype} and {w.dtype}')


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, w: jax.Array, stride: int = 1, pad: int = 0) -> jax.Array:
  """Cross-correlation of NHWC `x` with HWIO `w` (as lax.conv_general_dilated)."""
  _check(x, w)
  return _forward(x, w, stride, pad)


def _conv_fwd(x, w, stride, pad):
  return conv(x, w, stride, pad), (x, w)


def _conv_bwd(stride, pad, residuals, g):
  x, w = residuals
  return (_backward_data(g, w, stride, pad, x.shape[1:3]),
          _backward_weights(x, g, w.shape, stride, pad))


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(y: jax.Array, w: jax.Array, stride: int, pad: int,
                   spatial: tuple[int, int]) -> jax.Array:
  """The adjoint of `conv(., w, stride, pad)` applied to `y`: an NHWC map of size `spatial`."""
  _check(y, w)
  return _backward_data(y, w, stride, pad, tuple(spatial))


def _conv_transpose_fwd(y, w, stride, pad, spatial):
  return conv_transpose(y, w, stride, pad, spatial), (y, w)


def _conv_transpose_bwd(stride, pad, spatial, residuals, g):
  y, w = residuals
  return _forward(g, w, stride, pad), _backward_weights(g, y, w.shape, stride, pad)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
  """`lax.conv_general_dilated` for `flax.linen.Conv(conv_general_dilated=...)`: the oneDNN `conv`
  for what it covers (2-D NHWC/HWIO, equal strides, equal symmetric padding, no dilation or
  groups, float32), lax for the rest."""
  pad = _same_symmetric_pad(padding)
  covered = (lhs.ndim == rhs.ndim == 4 and dimension_numbers == jax.lax.conv_dimension_numbers(
                 lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC'))
             and len(set(window_strides)) == 1 and pad is not None
             and set(lhs_dilation or (1,)) == {1} and set(rhs_dilation or (1,)) == {1}
             and feature_group_count == 1 and lhs.dtype == rhs.dtype == jnp.float32
             and kwargs.get('batch_group_count', 1) == 1
             and kwargs.get('preferred_element_type') in (None, jnp.float32))
  if not covered:
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        **kwargs)
  return conv(lhs, rhs, window_strides[0], pad)


def _same_symmetric_pad(padding) -> int | None:
  """p when every spatial dimension is padded (p, p); None otherwise (or for 'SAME' strings)."""
  if isinstance(padding, str):
    return None
  pairs = {tuple(pair) for pair in padding}
  if len(pairs) != 1:
    return None
  low, high = pairs.pop()
  return low if low == high >= 0 else None


def main():
  try:
    print(build())
  except FileNotFoundError:
    sys.exit('g++ not found: install it (Debian/Ubuntu: apt-get install g++ libdnnl-dev)')
  except subprocess.CalledProcessError as e:
    sys.exit(f'building the oneDNN kernels failed (is libdnnl-dev installed?):\n{e.stderr}')


if __name__ == '__main__':
  main()
