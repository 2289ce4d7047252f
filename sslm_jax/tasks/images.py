"""The image autoencoders (seed VAE, AE) and SimCLR as tasks: tfds images in, pictures out.

`train.init_from` starts the parameters from another run of the same model.
"""

import functools
import os

import jax
import jax.numpy as jnp

from sslm_jax.data import images as image_data
from sslm_jax.eval import autoencoder as ae_eval
from sslm_jax.eval import pictures
from sslm_jax.kernels import onednn_conv
from sslm_jax.models import build_model
from sslm_jax.objectives import bind_loss, contrastive
from sslm_jax.tasks import warm_start

EVAL_STREAM = 1_000_003  # fold_in constant: eval noise never coincides with a train step's


# One compilation per model (modules compare by their fields), shared by every task of it in a
# process: a pipeline's pretraining run and the fine-tuning run that restores it.
@functools.partial(jax.jit, static_argnums=0)
def _init(model, rng, images):
  return model.init(rng, images, rng)['params']


class ImageTask:

  def __init__(self, config, *, training: bool = True):
    self.config = config
    self._training = training
    self.model = build_model(config.model)
    self.loss_fn = bind_loss(self.model, config.objective)
    self._splits = {}

  def split(self, name: str) -> image_data.ImageSplit:
    if name not in self._splits:
      d = self.config.data
      data = image_data.load_split(d.name, name, data_dir=d.data_dir, manual_dir=d.manual_dir,
                                   image_key=d.image_key)
      image_data.check_compatible(data, self.config.model.channels, f'{d.name}:{name}')
      self._splits[name] = data
    return self._splits[name]

  def init_params(self, rng):
    m = self.config.model
    dummy = jnp.zeros((1, m.input_size, m.input_size, m.channels), jnp.float32)
    params = _init(self.model, rng, dummy)
    if self._training and self.config.train.init_from:
      params, _ = warm_start.restore_matching(self.config.train.init_from, None,
                                              key='train.init_from', config=self.config,
                                              tokenizer=None, like=params)
    return params

  @functools.cached_property
  def num_train_rows(self) -> int:
    return len(self.split(self.config.data.train_split))

  def train_batches(self, batch_size: int, seed: int, start_step: int):
    return image_data.train_batches(self.split(self.config.data.train_split),
                                    batch_size=batch_size, seed=seed, start_step=start_step)

  def device_transform(self, batch):
    return {'image': image_data.to_model_input(batch['image'], self.config.model.input_size)}

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Means over the whole split, with noise fixed across evaluations of the run."""
    c = self.config
    return ae_eval.evaluate(params, self.split(split), model=self.model,
                            objective_config=c.objective, input_size=c.model.input_size,
                            batch_size=c.train.eval_batch_size,
                            rng=jax.random.fold_in(jax.random.PRNGKey(c.seed), EVAL_STREAM))

  def draw(self, params, workdir: str) -> None:
    """reconstructions.png (eval split) and samples.png (prior draws)."""
    c = self.config
    eval_split = self.split(c.data.eval_split)
    n = min(c.train.num_pictures, len(eval_split))
    originals, recon = ae_eval.reconstruct(params, eval_split.images[:n], model=self.model,
                                           input_size=c.model.input_size)
    pictures.save_reconstructions(os.path.join(workdir, 'reconstructions.png'), originals, recon)
    pictures.save_samples(os.path.join(workdir, 'samples.png'),
                          ae_eval.sample(params, n, jax.random.PRNGKey(c.seed), model=self.model))

  def describe(self) -> dict:
    d = self.config.data
    m = self.config.model
    return {'train_examples': len(self.split(d.train_split)),
            'test_examples': len(self.split(d.eval_split)),
            'convolutions': onednn_conv.resolve(m.conv_impl, m.dtype)}  # who computed them


@functools.partial(jax.jit, static_argnames=('model', 'input_size', 'temperature',
                                             'crop_min_scale'))
def _simclr_eval_sums(params, batch, rng, *, model, input_size, temperature, crop_min_scale):
  images = image_data.to_model_input(batch['image'], input_size)
  loss, correct = contrastive.simclr_terms(params, images, batch['mask'], rng, model=model,
                                           temperature=temperature,
                                           crop_min_scale=crop_min_scale)
  return {'loss_sum': loss.sum(), 'correct_sum': correct.sum(), 'views': 2 * batch['mask'].sum()}


_augment = jax.jit(contrastive.augment, static_argnames='min_scale')


class ContrastiveImageTask(ImageTask):
  """SimCLR on the seed encoder: NT-Xent on augmented views, evaluated on batches of
  train.eval_batch_size (the other views of a batch are the negatives), views fixed across
  evaluations; views.png shows the pairs."""

  def _settings(self) -> dict:
    o, c = self.config.objective, self.config
    return {'model': self.model, 'input_size': c.model.input_size,
            'temperature': o.temperature, 'crop_min_scale': o.crop_min_scale}

  def evaluate(self, params, split: str) -> dict[str, float]:
    c = self.config
    rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), EVAL_STREAM)
    totals = None
    for i, batch in enumerate(image_data.eval_batches(self.split(split),
                                                      c.train.eval_batch_size)):
      sums = _simclr_eval_sums(params, batch, jax.random.fold_in(rng, i), **self._settings())
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    return {'loss': float(totals['loss_sum'] / totals['views']),
            'accuracy': float(totals['correct_sum'] / totals['views'])}

  def draw(self, params, workdir: str) -> None:
    """views.png: rows of eval images' first views with their second views underneath."""
    del params
    c = self.config
    images = self.split(c.data.eval_split).images[:c.train.num_pictures]
    x = image_data.to_model_input(jnp.asarray(images), c.model.input_size)
    rng_1, rng_2 = jax.random.split(jax.random.PRNGKey(c.seed))
    views = [_augment(x, r, min_scale=c.objective.crop_min_scale) for r in (rng_1, rng_2)]
    pictures.save_reconstructions(os.path.join(workdir, 'views.png'), *views)
