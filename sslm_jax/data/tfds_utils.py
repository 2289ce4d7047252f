"""tfds plumbing shared by image and text data: find a builder, prepare it, read a split.

Everything is read as array_record through `as_data_source` (random access, no TensorFlow).
Failures become `DataError`, whose message names what is wrong and what is allowed.
"""

import importlib
import os

import tensorflow_datasets as tfds

importlib.import_module('sslm_jax.data.builders')  # registers idx_images, text_files with tfds

# Builders of ours that read only local files: preparing them needs a manual dir. Name prefix ->
# where such files come from.
_LOCAL_BUILDERS = {
    'idx_images': ('local IDX files', 'apt-get install dataset-fashion-mnist, then '
                   '--config.data.manual_dir=/usr/share/datasets/fashion-mnist'),
    'text_files': ('local text files', 'for text_files/fortunes: apt-get install fortunes, then '
                   '--config.data.manual_dir=/usr/share/games/fortunes; for text_files/plain '
                   'or plain_lines: a text file, or a folder of them'),
}


class DataError(ValueError):
  """Data that cannot be used as asked; the message says what is wrong and what is allowed."""


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  try:
    # array_record: the random-access format `as_data_source` reads without TensorFlow.
    return tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    raise DataError(f'data.name={name!r} is not a tfds dataset. Allowed: any registered tfds '
                    f'name (e.g. mnist, fashion_mnist, imdb_reviews, lm1b), '
                    f'idx_images/<config> (configs: fashion_mnist, mnist) for local IDX files, '
                    f'or text_files/<config> (configs: fortunes, plain, plain_lines) for local '
                    f'text files. tfds said: {str(e).splitlines()[0]}') from e


def prepared_builder(name: str, data_dir: str = '') -> tfds.core.DatasetBuilder:
  """The builder of an already prepared dataset; DataError (nothing prepared) otherwise."""
  builder = _builder(name, data_dir)
  if not builder.is_prepared():
    raise DataError(f'{name!r} is not prepared in {builder.data_dir}; run '
                    f'`sslm-jax data prepare --name {name} ...` first')
  return builder


def _check_manual_dir(name: str, manual_dir: str) -> None:
  # text_files/plain* also reads a single file; everything else needs a folder.
  takes_a_file = name.startswith('text_files/plain')
  if os.path.isdir(manual_dir) or (takes_a_file and os.path.isfile(manual_dir)):
    return
  allowed = 'a text file or a folder of them' if takes_a_file else (
      "a folder holding the dataset's local files")
  raise DataError(f'data.manual_dir={manual_dir!r} does not exist or is not a '
                  f'{"file or folder" if takes_a_file else "folder"}; allowed: {allowed}')


def _check_same_source(builder: tfds.core.DatasetBuilder, name: str, manual_dir: str) -> None:
  # Builders of ours record their source folder; another one would be silently ignored.
  metadata = builder.info.metadata
  source = metadata.get('source') if isinstance(metadata, dict) else None
  if name.startswith('text_files') and source and os.path.realpath(manual_dir) != source:
    raise DataError(f'{name!r} in {builder.data_dir} was prepared from {source!r}, not from '
                    f'data.manual_dir={manual_dir!r}; allowed: that manual_dir, none (use what '
                    f'is prepared), or another data.data_dir for other files')


def prepare(name: str, data_dir: str = '', manual_dir: str = '') -> tfds.core.DatasetBuilder:
  """Downloads (stock datasets) or reads local files (manual dir) into a prepared tfds dataset."""
  if manual_dir:
    _check_manual_dir(name, manual_dir)
  builder = _builder(name, data_dir)
  if builder.is_prepared() and manual_dir:
    _check_same_source(builder, name, manual_dir)
  if not builder.is_prepared():
    prefix = name.split('/')[0]
    if prefix in _LOCAL_BUILDERS and not manual_dir:
      what, how = _LOCAL_BUILDERS[prefix]
      raise DataError(f'{name} reads {what}: set data.manual_dir ({how})')
    config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    try:
      builder.download_and_prepare(download_config=config)
    # tfds raises AssertionError for a missing or empty manual dir.
    except (FileNotFoundError, ValueError, OSError, AssertionError) as e:
      raise DataError(f'cannot prepare {name!r}: {type(e).__name__}: {e}') from e
  return builder


def read_records(source, indices) -> list:
  """Records `indices` of a tfds data source, in one batched read (benchmarks/README.md: far
  faster than one by one)."""
  try:
    return source.__getitems__(indices)
  except (TypeError, AttributeError):  # tfds.testing.mock_data's source reads one at a time
    return [source[i] for i in indices]


def read_all(source) -> list:
  """Every record of a tfds data source."""
  return read_records(source, range(len(source)))


def data_source(builder: tfds.core.DatasetBuilder, name: str, split: str):
  """`builder.as_data_source(split)`; DataError naming the splits there are otherwise."""
  try:
    return builder.as_data_source(split=split)
  except (KeyError, ValueError, NotImplementedError) as e:
    raise DataError(f'split {split!r} of {name!r} cannot be read ({e}); allowed: '
                    f'{sorted(builder.info.splits.keys())}') from e
