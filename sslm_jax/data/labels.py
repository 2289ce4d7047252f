"""Labels of a dataset: its class names, and a stratified split for datasets without a
validation split."""

import numpy as np
import tensorflow_datasets as tfds

from sslm_jax.data.tfds_utils import DataError, prepare


def class_names(name: str, label_key: str, *, data_dir: str = '',
                manual_dir: str = '') -> tuple[str, ...]:
  """The names of the ClassLabel feature `label_key` (prepared first if needed), from the
  dataset's metadata alone (no split is read)."""
  features = prepare(name, data_dir, manual_dir).info.features
  feature = features[label_key] if label_key in features else None
  if not isinstance(feature, tfds.features.ClassLabel):
    labels = sorted(k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel))
    raise DataError(f'data.label_key={label_key!r} is not a class label of {name!r}; allowed: '
                    f'{labels or "none: this dataset has no ClassLabel feature"}')
  if feature.num_classes < 2:
    raise DataError(f'{name!r} has {feature.num_classes} class in {label_key!r}; allowed: a '
                    f'dataset of at least 2 classes')
  return tuple(feature.names)


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(kept, held out) sorted indices: round(fraction * count) examples of each class, drawn by
  `numpy.random.default_rng([seed, class])`, are held out (so a class of one example stays in
  training, and each class's draw is independent of the others)."""
  labels = np.asarray(labels)
  held = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    n = int(round(fraction * len(members)))
    held.append(np.random.default_rng([seed, int(c)]).permutation(members)[:n])
  held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  kept = np.setdiff1d(np.arange(len(labels)), held)
  return kept, held
