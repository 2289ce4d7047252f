"""Image datasets through tfds: load or stream a split, check it, and serve deterministic batches.

`data.pipeline='memory'` reads a split once through `tfds.data_source` (random access, no
TensorFlow needed for array_record data) into host memory as uint8 (`ImageSplit`; Fashion-MNIST's
60k images are 47 MB). `'grain'` streams it instead (`TfdsImages`): each batch is one batched read
of its records, so host memory does not grow with the dataset. Which examples form the batch of
train step `s` is a pure function of (seed, s) (`sslm_jax.data.loader.train_indices`), so a
resumed run sees exactly the batches of an uninterrupted one.

Batches are numpy uint8 NHWC; `to_model_input` (jittable) resizes and scales them to [-1, 1] on
the device, so the host sends 1 byte a pixel.
"""

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from sslm_jax.data import loader, tfds_utils
from sslm_jax.data.loader import StepBatches, steps_per_epoch, train_indices  # noqa: F401
from sslm_jax.data.tfds_utils import DataError, data_source, prepare, read_records

prepared_builder = tfds_utils.prepared_builder  # callers use images.prepared_builder


@dataclasses.dataclass(frozen=True)
class ImageSplit:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int64, or -1 where the dataset has no label
  num_classes: int

  def __len__(self) -> int:
    return len(self.images)

  @property
  def image_shape(self) -> tuple[int, ...]:
    return self.images.shape[1:]

  def read(self, indices) -> dict[str, np.ndarray]:
    return {'image': self.images[indices], 'label': self.labels[indices]}


def _image_features(builder, name: str, image_key: str, label_key: str):
  """(image shape, number of classes or 0 without a ClassLabel `label_key`), checked."""
  features = builder.info.features
  if image_key not in features:
    raise DataError(f'data.image_key={image_key!r} is not a feature of {name!r}; '
                    f'allowed: {sorted(features.keys())}')
  shape = tuple(features[image_key].shape)
  if len(shape) != 3 or shape[-1] not in (1, 3):
    raise DataError(f'{name!r} feature {image_key!r} has shape {shape}; allowed: images of '
                    f'shape (height, width, 1 or 3)')
  label_feature = features[label_key] if label_key in features else None
  has_label = isinstance(label_feature, tfds.features.ClassLabel)
  return shape, label_feature.num_classes if has_label else 0


def _as_arrays(examples: list, image_key: str, label_key: str, num_classes: int) -> dict:
  images = np.stack([np.asarray(e[image_key], np.uint8) for e in examples])
  labels = np.asarray([e[label_key] for e in examples] if num_classes else [-1] * len(examples),
                      np.int64).reshape(len(examples))
  return {'image': images, 'label': labels}


def load_split(name: str, split: str, *, data_dir: str = '', manual_dir: str = '',
               image_key: str = 'image', label_key: str = 'label') -> ImageSplit:
  """The whole split as uint8 NHWC images and labels (-1 without a ClassLabel `label_key`),
  prepared first if needed."""
  builder = prepare(name, data_dir, manual_dir)
  _, num_classes = _image_features(builder, name, image_key, label_key)
  source = data_source(builder, name, split)
  rows = _as_arrays(read_records(source, range(len(source))), image_key, label_key, num_classes)
  return ImageSplit(rows['image'], rows['label'], num_classes)


class TfdsImages:
  """A streamed image split (a RowSource): each `read` is one batched read of tfds records.

  Picklable (Grain's worker processes): the tfds source is opened again where it is used.
  """

  def __init__(self, name: str, split: str, *, data_dir: str = '', manual_dir: str = '',
               image_key: str = 'image', label_key: str = 'label'):
    builder = prepare(name, data_dir, manual_dir)
    self.image_shape, self.num_classes = _image_features(builder, name, image_key, label_key)
    self._where = (name, split, builder.data_dir, image_key, label_key)
    self._source = data_source(builder, name, split)
    self._length = len(self._source)

  def __len__(self) -> int:
    return self._length

  def __getstate__(self):
    return {**self.__dict__, '_source': None}

  def read(self, indices) -> dict[str, np.ndarray]:
    name, split, data_dir, image_key, label_key = self._where
    if self._source is None:
      self._source = tfds.builder_from_directory(data_dir).as_data_source(split=split)
    if len(indices) == 0:
      return {'image': np.zeros((0,) + self.image_shape, np.uint8),
              'label': np.zeros(0, np.int64)}
    return _as_arrays(read_records(self._source, [int(i) for i in indices]), image_key,
                      label_key, self.num_classes)


def open_split(name: str, split: str, *, stream: bool, **kwargs) -> 'ImageSplit | TfdsImages':
  """The split in host memory (`load_split`), or streamed (`TfdsImages`) when `stream`."""
  return TfdsImages(name, split, **kwargs) if stream else load_split(name, split, **kwargs)


def check_compatible(split, channels: int, where: str) -> None:
  """The model's `channels` must match the images'; an empty split cannot be used."""
  if len(split) == 0:
    raise DataError(f'{where} has no examples')
  if split.image_shape[-1] != channels:
    raise DataError(f'{where} has images of shape {tuple(split.image_shape)} but '
                    f'model.channels={channels}; allowed: model.channels='
                    f'{split.image_shape[-1]} for this dataset')


def to_model_input(images: jax.Array, size: int) -> jax.Array:
  """uint8 NHWC -> float32 in [-1, 1], bilinearly resized to size x size."""
  x = images.astype(jnp.float32) / 127.5 - 1.0
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method='bilinear')
  return x


def train_batches(split, *, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches from `start_step` on: {'image': uint8 NHWC, 'label': int64}."""
  batch_of = StepBatches(split, batch_size, seed)
  step = start_step
  while True:
    yield batch_of(step)
    step += 1


def eval_batches(split, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order; the last batch is padded to `batch_size` (label -1), and
  'mask' is 1.0 exactly on real examples, so one compiled shape serves the whole split."""
  return loader.eval_batches(split, batch_size, mask_key='mask', fill={'label': -1})
