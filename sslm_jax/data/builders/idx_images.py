"""A tfds dataset of images in IDX files from a manual dir: MNIST and Fashion-MNIST offline.

Why a builder of our own rather than tfds' stock `fashion_mnist` builder with the Debian files in
its manual dir: Debian re-wrote the gzip headers, so the files fail tfds' registered checksums
(restoring the headers byte for byte works, but ties us to one packaging of one dataset). This
builder reads the decompressed IDX data, so any packaging of MNIST, Fashion-MNIST or another IDX
pair works; it stores images as uint8 `Tensor` features in array_record files, which needs no
TensorFlow to write or to read (`tfds.data_source`). Once prepared, `tfds.builder` /
`tfds.data_source('idx_images/fashion_mnist', data_dir=...)` read it like any other dataset.
"""

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from sslm_jax.data.idx import read_idx

_FILES = {  # split -> (images, labels), as upstream names them
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


@dataclasses.dataclass
class IdxImagesConfig(tfds.core.BuilderConfig):
  image_shape: tuple[int, int, int] = (28, 28, 1)
  class_names: tuple[str, ...] = ()


def find_idx_file(manual_dir: str, stem: str) -> str:
  """`stem` or `stem.gz` in `manual_dir`; a clear error listing what is there otherwise."""
  for name in (stem, stem + '.gz'):
    path = os.path.join(manual_dir, name)
    if os.path.exists(path):
      return path
  present = sorted(os.listdir(manual_dir)) if os.path.isdir(manual_dir) else []
  raise FileNotFoundError(
      f'{stem}[.gz] not found in manual dir {manual_dir!r} (it holds: {present or "nothing"}); '
      f'expected the four IDX files {[f for pair in _FILES.values() for f in pair]}')


class IdxImages(tfds.core.GeneratorBasedBuilder):
  """Images and labels from IDX files (train-*, t10k-*) in a manual dir."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      IdxImagesConfig(name='fashion_mnist', description='Fashion-MNIST (Zalando), 28x28 gray.',
                      class_names=FASHION_MNIST_CLASSES),
      IdxImagesConfig(name='mnist', description='MNIST digits, 28x28 gray.',
                      class_names=tuple(str(i) for i in range(10))),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, '
      't10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; plain or .gz) in the manual dir. '
      'On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` puts Fashion-MNIST in '
      '/usr/share/datasets/fashion-mnist. Keep one manual dir per dataset: MNIST and '
      'Fashion-MNIST use the same file names.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=self.builder_config.image_shape,
                                          dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=self.builder_config.class_names),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    return {split: self._generate_examples(find_idx_file(manual_dir, images),
                                           find_idx_file(manual_dir, labels))
            for split, (images, labels) in _FILES.items()}

  def _generate_examples(self, images_path, labels_path):
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim == 3:
      images = images[..., None]
    shape = tuple(self.builder_config.image_shape)
    if images.shape[1:] != shape or len(images) != len(labels):
      raise ValueError(f'{images_path}: images of shape {images.shape[1:]} and {len(images)} '
                       f'images for {len(labels)} labels; config {self.builder_config.name!r} '
                       f'expects {shape} and one label per image')
    for i in range(len(images)):
      yield i, {'image': images[i], 'label': int(labels[i])}
