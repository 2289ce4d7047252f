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

The GPT (`sslm_jax.models.GPT` <-> benchmarks/pytorch_reference/gpt.py) keeps the Flax names:

  embed/embedding                 <-> embed.weight (vocab, embed_dim); also the tied output layer
  position_embed/embedding        <-> position_embed (max_len, embed_dim); absent with RoPE
  blocks_i/{attention_norm, mlp_norm}, final_norm: scale, bias <-> LayerNorm weight, bias
  blocks_i/attention/{query, key, value}: kernel (d, heads, head_dim), bias (heads, head_dim)
                                  <-> blocks.i.attention.*: Linear weight (heads*head_dim, d)
  blocks_i/attention/out: kernel (heads, head_dim, d) <-> Linear weight (d, heads*head_dim)
  blocks_i/{mlp_in, mlp_out}, lm_head (untied only): Dense <-> Linear
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


_GPT_LAYER_NORMS = ('attention_norm', 'mlp_norm')
_GPT_PROJECTIONS = ('query', 'key', 'value')


def flax_gpt_params_to_torch(params: Mapping) -> dict[str, np.ndarray]:
  """Flax params of `sslm_jax.models.GPT` -> the state_dict arrays of the PyTorch reference GPT."""
  params = params.get('params', params)
  blocks = _sorted_modules(params, 'blocks')
  unknown = set(params) - {'embed', 'position_embed', 'final_norm', 'lm_head', *blocks}
  if unknown or 'embed' not in params:
    raise ValueError(f'not the params of a GPT: unknown modules {sorted(unknown)}; allowed: '
                     'embed, position_embed, blocks_<i>, final_norm, lm_head')
  out = {'embed.weight': _numpy(params['embed']['embedding']).copy()}
  if 'position_embed' in params:
    out['position_embed'] = _numpy(params['position_embed']['embedding']).copy()

  def norm(name, module):
    out[f'{name}.weight'] = _numpy(module['scale']).copy()
    out[f'{name}.bias'] = _numpy(module['bias']).copy()

  def linear(name, module):  # any DenseGeneral: kernel (in..., out...) -> (out, in) flattened
    kernel, bias = _numpy(module['kernel']), _numpy(module['bias'])
    n_in = kernel.size // bias.size
    out[f'{name}.weight'] = np.ascontiguousarray(kernel.reshape(n_in, bias.size).T)
    out[f'{name}.bias'] = bias.reshape(-1).copy()

  for i, block_name in enumerate(blocks):
    block = params[block_name]
    for name in _GPT_LAYER_NORMS:
      norm(f'blocks.{i}.{name}', block[name])
    for name in (*_GPT_PROJECTIONS, 'out'):
      linear(f'blocks.{i}.attention.{name}', block['attention'][name])
    for name in ('mlp_in', 'mlp_out'):
      linear(f'blocks.{i}.{name}', block[name])
  norm('final_norm', params['final_norm'])
  if 'lm_head' in params:
    linear('lm_head', params['lm_head'])
  return out


def torch_gpt_state_dict_to_flax(state_dict: Mapping, num_heads: int) -> dict:
  """The reference GPT's state_dict (tensors or arrays) -> Flax params of `sslm_jax.models.GPT`.

  `num_heads` restores the (heads, head_dim) axes that the PyTorch Linear layers flatten.
  """
  sd = {k: _numpy(v) for k, v in state_dict.items()}
  params: dict = {'embed': {'embedding': sd.pop('embed.weight').copy()}}
  if 'position_embed' in sd:
    params['position_embed'] = {'embedding': sd.pop('position_embed').copy()}

  def norm(name):
    return {'scale': sd.pop(f'{name}.weight').copy(), 'bias': sd.pop(f'{name}.bias').copy()}

  def linear(name):  # Linear (out, in) -> kernel (in, out)
    return {'kernel': np.ascontiguousarray(sd.pop(f'{name}.weight').T),
            'bias': sd.pop(f'{name}.bias').copy()}

  indices = sorted({int(m.group(1)) for k in sd if (m := re.match(r'blocks\.(\d+)\.', k))})
  for i in indices:
    prefix = f'blocks.{i}'
    block = {name: norm(f'{prefix}.{name}') for name in _GPT_LAYER_NORMS}
    attention = {}
    for name in _GPT_PROJECTIONS:
      layer = linear(f'{prefix}.attention.{name}')
      d, width = layer['kernel'].shape
      if width % num_heads:
        raise ValueError(f'{prefix}.attention.{name} width {width} is not divisible by '
                         f'num_heads={num_heads}')
      heads = (num_heads, width // num_heads)
      attention[name] = {'kernel': layer['kernel'].reshape(d, *heads),
                         'bias': layer['bias'].reshape(heads)}
    layer = linear(f'{prefix}.attention.out')
    width, d = layer['kernel'].shape
    attention['out'] = {'kernel': layer['kernel'].reshape(num_heads, width // num_heads, d),
                        'bias': layer['bias']}
    block['attention'] = attention
    for name in ('mlp_in', 'mlp_out'):
      block[name] = linear(f'{prefix}.{name}')
    params[f'blocks_{i}'] = block
  params['final_norm'] = norm('final_norm')
  if 'lm_head.weight' in sd:
    params['lm_head'] = linear('lm_head')
  if sd:
    raise ValueError(f'unexpected state_dict keys {sorted(sd)} for the reference GPT')
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
