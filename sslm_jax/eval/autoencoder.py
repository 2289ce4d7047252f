"""Evaluation of the image autoencoders: exact split means, reconstructions and samples."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sslm_jax.data import images as image_data
from sslm_jax.objectives import vae as vae_objectives


@functools.partial(jax.jit, static_argnames=('model', 'objective_config', 'input_size'))
def _eval_sums(params, batch, rng, *, model, objective_config, input_size):
  x = image_data.to_model_input(batch['image'], input_size)
  stats = vae_objectives.per_example(model.apply({'params': params}, x, rng), x,
                                     objective_config)
  return {k: jnp.sum(v * batch['mask']) for k, v in stats.items()}


class _Frozen:
  """Hashable view of a config section, so jit can treat it as static."""

  def __init__(self, section):
    self._items = tuple(sorted(section.items()))
    for k, v in self._items:
      setattr(self, k, v)

  def __hash__(self):
    return hash(self._items)

  def __eq__(self, other):
    return isinstance(other, _Frozen) and self._items == other._items


def evaluate(params, split, *, model, objective_config, input_size: int, batch_size: int,
             rng: jax.Array) -> dict[str, float]:
  """Means over every example of `split` (the padded tail is masked out)."""
  frozen = _Frozen(objective_config)
  totals = None
  for i, batch in enumerate(image_data.eval_batches(split, batch_size)):
    sums = _eval_sums(params, batch, jax.random.fold_in(rng, i), model=model,
                      objective_config=frozen, input_size=input_size)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return {k: float(v) / len(split) for k, v in jax.device_get(totals).items()}


def reconstruct(params, images_uint8, *, model, input_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(inputs, reconstructions) in [-1, 1]; the VAE decodes its posterior mean."""
  x = image_data.to_model_input(jnp.asarray(images_uint8), input_size)
  mean, _ = model.apply({'params': params}, x, method='encode')
  return np.asarray(x), np.asarray(model.apply({'params': params}, mean, method='decode'))


def sample(params, num: int, rng: jax.Array, *, model) -> np.ndarray:
  """Decoded draws from the prior N(0, I), in [-1, 1]."""
  z = jax.random.normal(rng, (num, model.latent_dim))
  return np.asarray(model.apply({'params': params}, z, method='decode'))
