"""Image datasets through tfds: load a split, check it, and serve deterministic batches.

A split is read once through `tfds.data_source` (random access, no TensorFlow needed for
array_record data) into host memory as uint8 (Fashion-MNIST's 60k images are 47 MB). Which
examples form the batch of train step `s` is a pure function of (seed, s): the epoch's
permutation comes from `numpy.random.default_rng([seed, epoch])`. A resumed run therefore sees
exactly the batches an uninterrupted one would, with no iterator state to checkpoint.

Batches are numpy uint8 NHWC; `to_model_input` (jittable) resizes and scales them to [-1, 1] on
the device, so the host sends 1 byte a pixel.
"""

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from sslm_jax.data import tfds_utils
from sslm_jax.data.tfds_utils import DataError, data_source, prepare
from sslm_jax.data.tfds_utils import read_all as _read_all

prepared_builder = tfds_utils.prepared_builder  # callers use images.prepared_builder


@dataclasses.dataclass(frozen=True)
class ImageSplit:
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int64, or -1 where the dataset has no label
  num_classes: int

  def __len__(self) -> int:
    return len(self.images)


def load_split(name: str, split: str, *, data_dir: str = '', manual_dir: str = '',
               image_key: str = 'image', label_key: str = 'label') -> ImageSplit:
  """The whole split as uint8 NHWC images and labels (-1 without a ClassLabel `label_key`),
  prepared first if needed."""
  builder = prepare(name, data_dir, manual_dir)
  features = builder.info.features
  if image_key not in features:
    raise DataError(f'data.image_key={image_key!r} is not a feature of {name!r}; '
                    f'allowed: {sorted(features.keys())}')
  shape = tuple(features[image_key].shape)
  if len(shape) != 3 or shape[-1] not in (1, 3):
    raise DataError(f'{name!r} feature {image_key!r} has shape {shape}; allowed: images of '
                    f'shape (height, width, 1 or 3)')
  examples = _read_all(data_source(builder, name, split))
  images = np.stack([np.asarray(e[image_key], np.uint8) for e in examples])
  label_feature = features[label_key] if label_key in features else None
  has_label = isinstance(label_feature, tfds.features.ClassLabel)
  labels = np.asarray([e[label_key] for e in examples] if has_label else [-1] * len(examples),
                      np.int64).reshape(len(examples))
  return ImageSplit(images, labels, label_feature.num_classes if has_label else 0)


def check_compatible(split: ImageSplit, channels: int, where: str) -> None:
  """The model's `channels` must match the images'; an empty split cannot be used."""
  if len(split) == 0:
    raise DataError(f'{where} has no examples')
  if split.images.shape[-1] != channels:
    raise DataError(f'{where} has images of shape {split.images.shape[1:]} but '
                    f'model.channels={channels}; allowed: model.channels='
                    f'{split.images.shape[-1]} for this dataset')


def to_model_input(images: jax.Array, size: int) -> jax.Array:
  """uint8 NHWC -> float32 in [-1, 1], bilinearly resized to size x size."""
  x = images.astype(jnp.float32) / 127.5 - 1.0
  if x.shape[1:3] != (size, size):
    x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method='bilinear')
  return x


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches an epoch; the remainder is dropped (a different one each epoch)."""
  if batch_size > num_examples:
    raise DataError(f'train.batch_size={batch_size} exceeds the {num_examples} training '
                    f'examples; allowed: 1..{num_examples}')
  return num_examples // batch_size


def train_indices(step: int, *, num_examples: int, batch_size: int, seed: int) -> np.ndarray:
  """Indices of the examples in the batch of train step `step` (0-based)."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  epoch, position = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[position * batch_size:(position + 1) * batch_size]


def train_batches(split: ImageSplit, *, batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches from `start_step` on: {'image': uint8 NHWC, 'label': int64}."""
  step = start_step
  while True:
    idx = train_indices(step, num_examples=len(split), batch_size=batch_size, seed=seed)
    yield {'image': split.images[idx], 'label': split.labels[idx]}
    step += 1


def eval_batches(split: ImageSplit, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order; the last batch is padded to `batch_size`, and 'mask' is 1.0
  exactly on real examples, so one compiled shape serves the whole split."""
  n = len(split)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    pad = batch_size - (stop - start)
    images = split.images[start:stop]
    labels = split.labels[start:stop]
    mask = np.ones(stop - start, np.float32)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.full(pad, -1, labels.dtype)])
      mask = np.concatenate([mask, np.zeros(pad, np.float32)])
    yield {'image': images, 'label': labels, 'mask': mask}
