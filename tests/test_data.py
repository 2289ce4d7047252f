import gzip
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import make_idx_dir
from sslm_jax.data import images
from sslm_jax.data.idx import IdxFormatError, read_idx, write_idx


def test_idx_round_trip_plain_and_gz(tmp_path):
  a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  for name in ('a.idx', 'a.idx.gz'):
    write_idx(tmp_path / name, a)
    np.testing.assert_array_equal(read_idx(tmp_path / name), a)


def test_idx_reads_gzip_whatever_its_header(tmp_path):
  # Debian's files carry no file name and a zero mtime in their gzip header: irrelevant here.
  a = np.ones((5, 2, 2), np.uint8)
  raw = bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 2, 0, 0, 0, 2]) + a.tobytes()
  with open(tmp_path / 'x.gz', 'wb') as f:
    f.write(gzip.compress(raw, mtime=0))
  np.testing.assert_array_equal(read_idx(tmp_path / 'x.gz'), a)


def test_idx_errors_name_the_file(tmp_path):
  (tmp_path / 'bad').write_bytes(b'\x01\x02\x03\x04rest')
  with pytest.raises(IdxFormatError, match='bad magic'):
    read_idx(tmp_path / 'bad')
  write_idx(tmp_path / 'short', np.zeros((4, 2), np.uint8))
  (tmp_path / 'short').write_bytes((tmp_path / 'short').read_bytes()[:-3])
  with pytest.raises(IdxFormatError, match='header'):
    read_idx(tmp_path / 'short')


def test_prepared_idx_dataset_reads_like_any_tfds_dataset(idx_dataset):
  data_dir, manual = idx_dataset
  builder = tfds.builder('idx_images/mnist', data_dir=data_dir)
  assert builder.info.splits['train'].num_examples == 256
  assert builder.info.splits['test'].num_examples == 100
  split = images.load_split('idx_images/mnist', 'train', data_dir=data_dir)
  expected = read_idx(os.path.join(manual, 'train-images-idx3-ubyte.gz'))[..., None]
  # tfds stores examples in its own deterministic (hashed-key) order: compare as multisets
  as_rows = lambda a: sorted(r.tobytes() for r in a.reshape(len(a), -1))  # noqa: E731
  assert as_rows(split.images) == as_rows(expected)
  assert split.num_classes == 10 and split.labels.shape == (256,)
  # and without our code: the prepared folder alone
  ds = tfds.builder_from_directory(builder.data_dir).as_data_source(split='test')
  assert len(ds) == 100


def test_plain_idx_files_work_too(tmp_path):
  manual = make_idx_dir(tmp_path / 'plain', num_train=20, num_test=10, gz=False)
  split = images.load_split('idx_images/mnist', 'test', data_dir=str(tmp_path / 'tfds'),
                            manual_dir=str(manual))
  assert len(split) == 10


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  with pytest.raises(images.DataError, match='does not exist'):
    images.prepare('idx_images/mnist', str(tmp_path / 'tfds'), str(tmp_path / 'nowhere'))
  with pytest.raises(images.DataError, match='set data.manual_dir'):
    images.prepare('idx_images/mnist', str(tmp_path / 'tfds'), '')


def test_manual_dir_without_the_files_lists_what_is_there(tmp_path):
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'readme.txt').write_text('x')
  with pytest.raises(images.DataError, match="readme.txt"):
    images.prepare('idx_images/mnist', str(tmp_path / 'tfds'), str(tmp_path / 'm'))


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
  with pytest.raises(images.DataError, match="data.name='no_such_dataset' is not a tfds"):
    images.prepare('no_such_dataset', str(tmp_path))


def test_unexpected_image_shape_and_channels():
  with tfds.testing.mock_data(num_examples=4):
    with pytest.raises(images.DataError, match="data.image_key='image' is not a feature"):
      images.load_split('imdb_reviews', 'train')  # text, no image
    split = images.load_split('mnist', 'train')
  with pytest.raises(images.DataError, match='model.channels=3'):
    images.check_compatible(split, 3, 'mnist:train')


def test_train_batches_are_a_function_of_seed_and_step():
  kw = dict(num_examples=100, batch_size=16, seed=3)
  assert images.steps_per_epoch(100, 16) == 6
  epoch0 = np.concatenate([images.train_indices(s, **kw) for s in range(6)])
  assert len(set(epoch0.tolist())) == 96  # no repeats within an epoch; remainder dropped
  np.testing.assert_array_equal(images.train_indices(4, **kw), images.train_indices(4, **kw))
  assert not np.array_equal(images.train_indices(0, **kw), images.train_indices(6, **kw))
  assert not np.array_equal(images.train_indices(0, **kw),
                            images.train_indices(0, num_examples=100, batch_size=16, seed=4))
  split = images.ImageSplit(np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1),
                            np.arange(100), 0)
  resumed = images.train_batches(split, batch_size=16, seed=3, start_step=4)
  np.testing.assert_array_equal(next(resumed)['label'], images.train_indices(4, **kw))


def test_batch_larger_than_dataset_is_rejected():
  with pytest.raises(images.DataError, match='exceeds'):
    images.steps_per_epoch(10, 64)


def test_eval_batches_keep_every_example_once():
  split = images.ImageSplit(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10), 10)
  batches = list(images.eval_batches(split, 4))
  assert [b['image'].shape[0] for b in batches] == [4, 4, 4]
  assert sum(b['mask'].sum() for b in batches) == 10
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(10))


def test_to_model_input_scales_and_resizes():
  x = np.array([0, 255], np.uint8).reshape(1, 1, 2, 1).repeat(2, axis=1)
  out = np.asarray(images.to_model_input(x, 2))
  np.testing.assert_allclose(out[0, 0, :, 0], [-1.0, 1.0])
  assert images.to_model_input(np.zeros((3, 28, 28, 1), np.uint8), 32).shape == (3, 32, 32, 1)
