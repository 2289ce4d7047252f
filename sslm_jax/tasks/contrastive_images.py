"""SimCLR on the seed encoder as a task: NT-Xent between two augmented views of each image.

Evaluation: exact means over a split in batches of train.eval_batch_size (the other views of a
batch are an anchor's negatives), with views fixed across the run's evaluations; accuracy is the
fraction of views whose partner scores highest. views.png shows pairs of views of eval images.
"""

import functools
import os

import jax
import jax.numpy as jnp

from sslm_jax.data import images as image_data
from sslm_jax.eval import pictures
from sslm_jax.objectives import contrastive
from sslm_jax.tasks.base import eval_key
from sslm_jax.tasks.images import ImageInputs


@functools.partial(jax.jit, static_argnames=('model', 'input_size', 'temperature', 'views'))
def _eval_sums(params, batch, rng, *, model, input_size, temperature, views):
  images = image_data.to_model_input(batch['image'], input_size)
  loss, correct = contrastive.simclr_terms(params, images, batch['mask'], rng, model=model,
                                           temperature=temperature, views=views)
  return {'loss_sum': loss.sum(), 'correct_sum': correct.sum(), 'views': 2 * batch['mask'].sum()}


_augment = jax.jit(contrastive.augment, static_argnames='views')


class ContrastiveImageTask(ImageInputs):

  def evaluate(self, params, split: str) -> dict[str, float]:
    c, o = self.config, self.config.objective
    rng, totals = eval_key(c.seed), None
    for i, batch in enumerate(image_data.eval_batches(self.split(split),
                                                      c.train.eval_batch_size)):
      sums = _eval_sums(params, batch, jax.random.fold_in(rng, i), model=self.model,
                        input_size=c.model.input_size, temperature=o.temperature,
                        views=contrastive.Views.of(o))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    return contrastive.eval_means(jax.device_get(totals), 'views')

  def draw(self, params, workdir: str) -> None:
    """views.png: eval images' first views, their second views underneath."""
    del params
    c = self.config
    eval_split = self.split(c.data.eval_split)
    images = eval_split.read(range(min(c.train.num_pictures, len(eval_split))))['image']
    x = image_data.to_model_input(jnp.asarray(images), c.model.input_size)
    rng_1, rng_2 = jax.random.split(jax.random.PRNGKey(c.seed))
    how = contrastive.Views.of(c.objective)
    views = [_augment(x, r, how) for r in (rng_1, rng_2)]
    pictures.save_reconstructions(os.path.join(workdir, 'views.png'), *views)
