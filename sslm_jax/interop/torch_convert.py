"""Weights of the seed VAE/AE between Flax and the PyTorch reference (benchmarks/pytorch_reference).

Everything is numpy: torch is not needed to convert, and a state_dict of torch tensors is accepted
as input (anything with `.detach()` is converted). The PyTorch module keeps the seed's
`nn.Sequential` layout, so its state_dict names are positional:

  encoder.{2i}              <-> encoder/Conv_i           (ReLU after each, Flatten at the end)
  posterior, code           <-> posterior, code          (the VAE's or the AE's linear head)
  decoder.{2i}              <-> decoder/Dense_i          (ReLU after each of the n_dense)
  decoder.{2n_dense+1+2j}   <-> decoder/ConvTranspose_j  (after the Unflatten; ReLU or Tanh)

Layouts: Conv (kh, kw, in, out) <-> Conv2d weight (out, in, kh, kw); ConvTranspose2x (4, 4, in, out)
<-> ConvTranspose2d weight (in, out, 4, 4), a permutation with no spatial flip (layers.py); Dense
(in, out) <-> Linear weight (out, in). The decoder unflattens channels-first like nn.Unflatten, so
the last dense layer needs no permutation. Biases are the same vectors.
"""

import re
from typing import Any, Mapping

import numpy as np

HEADS = ('posterior', 'code')


def _numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def _sorted_modules(tree: Mapping, prefix: str) -> list[str]:
  names = [n for n in tree if n.startswith(prefix + '_')]
  return sorted(names, key=lambda n: int(n.rsplit('_', 1)[1]))


def flax_to_torch_state_dict(params: Mapping) -> dict[str, np.ndarray]:
  """Flax params of `sslm_jax.models.VAE` (or AutoEncoder) -> the reference's state_dict arrays."""
  params = params.get('params', params)
  unknown = set(params) - {'encoder', 'decoder', *HEADS}
  if unknown:
    raise ValueError(f'unknown Flax modules {sorted(unknown)}; allowed: encoder, decoder, '
                     f'{", ".join(HEADS)}')
  out = {}

  def put(name, module, weight_perm):
    out[f'{name}.weight'] = np.ascontiguousarray(_numpy(module['kernel']).transpose(weight_perm))
    out[f'{name}.bias'] = _numpy(module['bias']).copy()

  for i, conv in enumerate(_sorted_modules(params['encoder'], 'Conv')):
    put(f'encoder.{2 * i}', params['encoder'][conv], (3, 2, 0, 1))
  for head in HEADS:
    if head in params:
      put(head, params[head], (1, 0))
  decoder = params['decoder']
  dense = _sorted_modules(decoder, 'Dense')
  for i, name in enumerate(dense):
    put(f'decoder.{2 * i}', decoder[name], (1, 0))
  for j, name in enumerate(_sorted_modules(decoder, 'ConvTranspose')):
    put(f'decoder.{2 * len(dense) + 1 + 2 * j}', decoder[name], (2, 3, 0, 1))
  return out


def torch_state_dict_to_flax(state_dict: Mapping) -> dict:
  """The reference's state_dict (tensors or arrays) -> Flax params (nested dicts of numpy)."""
  layers: dict[tuple[str, int | None], dict] = {}
  for key, value in state_dict.items():
    match = re.fullmatch(r'(encoder|decoder|posterior|code)(?:\.(\d+))?\.(weight|bias)', key)
    if not match:
      raise ValueError(f'unexpected state_dict key {key!r}; allowed: encoder.<i>.*, '
                       f'decoder.<i>.*, posterior.*, code.* (weight, bias)')
    module, index, kind = match.groups()
    layers.setdefault((module, None if index is None else int(index)), {})[kind] = _numpy(value)

  def convert(layer, weight_perm):
    return {'kernel': np.ascontiguousarray(layer['weight'].transpose(weight_perm)),
            'bias': layer['bias'].copy()}

  params = {'encoder': {}, 'decoder': {}}
  encoder = sorted(i for m, i in layers if m == 'encoder')
  for n, i in enumerate(encoder):
    params['encoder'][f'Conv_{n}'] = convert(layers['encoder', i], (2, 3, 1, 0))
  for head in HEADS:
    if (head, None) in layers:
      params[head] = convert(layers[head, None], (1, 0))
  n_dense = n_up = 0
  for i in sorted(i for m, i in layers if m == 'decoder'):
    layer = layers['decoder', i]
    if layer['weight'].ndim == 2:  # Linear
      params['decoder'][f'Dense_{n_dense}'] = convert(layer, (1, 0))
      n_dense += 1
    else:  # ConvTranspose2d
      params['decoder'][f'ConvTranspose_{n_up}'] = convert(layer, (2, 3, 0, 1))
      n_up += 1
  return params


def save_params_npz(params: Mapping, path: str) -> None:
  """Flax params to an .npz whose keys are the '/'-joined module paths ('encoder/Conv_0/kernel')."""
  flat = {}

  def walk(tree, prefix):
    for name, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, f'{prefix}{name}/')
      else:
        flat[f'{prefix}{name}'] = _numpy(value)
  walk(params.get('params', params), '')
  np.savez(path, **flat)


def load_params_npz(path: str) -> dict:
  """The nested params dict `save_params_npz` wrote."""
  params = {}
  with np.load(path) as data:
    for key in data.files:
      *modules, leaf = key.split('/')
      node = params
      for name in modules:
        node = node.setdefault(name, {})
      node[leaf] = data[key]
  return params
