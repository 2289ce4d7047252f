"""The image autoencoders (seed VAE, AE) as a task: tfds images in, pictures out.

`train.init_from` starts the parameters from another run of the same model.
"""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sslm_jax.config import Checker, Section
from sslm_jax.data import images as image_data
from sslm_jax.data import loader
from sslm_jax.eval import autoencoder as ae_eval
from sslm_jax.eval import pictures
from sslm_jax.models import backend_facts, build_model
from sslm_jax.objectives import bind_loss
from sslm_jax.tasks.base import Context, InitFrom, eval_key, init_params, start_from


@dataclasses.dataclass(frozen=True)
class Pictures(Section):
  """The image task's key of the `train` section."""
  num_pictures: int = 64          # pictures drawn at each evaluation (reconstructions and prior
                                  # samples; SimCLR's views)

  def check(self, c: Checker) -> None:
    c.integer('num_pictures')


class ImageInputs:
  """What every image task shares: its images (in host memory or streamed), the model its
  `model` section builds, bound to its objective's loss, and its initial parameters."""
  SECTIONS = {'train': (Pictures, InitFrom)}
  tokenizer = None

  def __init__(self, config, context: Context):
    self.config, self.context = config, context
    self.model = build_model(config.model)
    self.loss_fn = bind_loss(self.model, config.objective)
    self._splits = {}

  def split(self, name: str) -> 'image_data.ImageSplit | image_data.TfdsImages':
    """The split in host memory, or streamed (data.pipeline='grain')."""
    if name not in self._splits:
      d = self.config.data
      data = image_data.open_split(d.name, name, stream=d.pipeline == 'grain',
                                   data_dir=d.data_dir, manual_dir=d.manual_dir,
                                   image_key=d.image_key)
      image_data.check_compatible(data, self.config.model.channels, f'{d.name}:{name}')
      self._splits[name] = data
    return self._splits[name]

  def init_params(self, rng):
    m = self.config.model
    dummy = jnp.zeros((1, m.input_size, m.input_size, m.channels), jnp.float32)
    return start_from(self.context, self.config,
                      lambda: init_params(self.model, rng, dummy, rng), None)

  @functools.cached_property
  def num_train_rows(self) -> int:
    return len(self.split(self.config.data.train_split))

  def train_batch_fn(self, batch_size: int, seed: int, rows: slice) -> loader.StepBatches:
    streamed = self.config.data.pipeline == 'grain'
    return loader.StepBatches(self.split(self.config.data.train_split), batch_size, seed,
                              order='index_shuffle' if streamed else 'permutation', rows=rows)

  def device_transform(self, batch):
    return {'image': image_data.to_model_input(batch['image'], self.config.model.input_size)}

  def describe(self) -> dict:
    d = self.config.data
    return {'train_examples': len(self.split(d.train_split)),
            'test_examples': len(self.split(d.eval_split)),
            **backend_facts(self.config.model),  # who computed the convolutions
            'data_pipeline': d.pipeline}


class ImageTask(ImageInputs):
  """The autoencoders: exact means of their objective, reconstructions and prior samples."""

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Means over the whole split, with noise fixed across evaluations of the run."""
    c = self.config
    return ae_eval.evaluate(params, self.split(split), model=self.model,
                            objective_config=c.objective, input_size=c.model.input_size,
                            batch_size=c.train.eval_batch_size, rng=eval_key(c.seed))

  def sample_images(self, params, num: int, seed: int) -> np.ndarray:
    """`num` decoded draws from the prior, in [-1, 1]."""
    return ae_eval.sample(params, num, jax.random.PRNGKey(seed), model=self.model)

  def draw(self, params, workdir: str) -> None:
    """reconstructions.png (eval split) and samples.png (prior draws)."""
    c = self.config
    eval_split = self.split(c.data.eval_split)
    n = min(c.train.num_pictures, len(eval_split))
    originals, recon = ae_eval.reconstruct(params, eval_split.read(range(n))['image'],
                                           model=self.model, input_size=c.model.input_size)
    pictures.save_reconstructions(os.path.join(workdir, 'reconstructions.png'), originals, recon)
    pictures.save_samples(os.path.join(workdir, 'samples.png'),
                          self.sample_images(params, n, c.seed))
