"""Data at scale: token shards written once, streamed through Grain, resumed exactly; bad shards
refused by name; each process reads only its rows; the loop fetches metrics at log steps only.

The corpus is the generated fortune folder of conftest (`corpus`); the tokenizer is trained on it
by `sslm-jax data tokenize` itself, in this process (`workers=1`; the pool is the same code).
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sslm_jax import cli
from sslm_jax.data import images, loader, shards
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.train import checkpoint as ckpt_lib
from sslm_jax.train import loop, parallel
from conftest import sentences
from test_language import text_config

SPLITS = ('train', 'validation', 'test')
SMALL = {'rows_per_shard': 64, 'docs_per_unit': 100}  # several shards and units a split


@pytest.fixture(scope='module')
def token_dir(corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tokens') / 'fortunes')
  shards.tokenize(text_config(corpus), out, workers=1, progress=False, **SMALL)
  return out


def streamed_config(corpus, token_dir, **extra):
  return text_config(corpus, **{'data.pipeline': 'grain', 'data.token_dir': token_dir,
                                'text.num_samples': 0, **extra})


def test_token_shards_hold_the_memory_rows_and_survive_an_interruption(corpus, token_dir,
                                                                        tmp_path, monkeypatch):
  from sslm_jax.tasks import Context
  from sslm_jax.tasks.language import LanguageTask
  tokenizer = os.path.join(token_dir, 'tokenizer.model')
  config = text_config(corpus, **{'text.tokenizer_path': tokenizer})
  memory = LanguageTask(config, Context(str(tmp_path / 'memory'), training=True))
  manifest = shards.read_manifest(token_dir)
  assert len(manifest['splits']['train']['shards']) > 2
  for split in SPLITS:  # the same rows, in the same order, as the memory path tokenizes
    streamed = shards.TokenShards(token_dir, split)
    np.testing.assert_array_equal(streamed.read(np.arange(len(streamed)))['tokens'],
                                  memory.rows(split)['tokens'])
    assert manifest['splits'][split]['chars_per_token'] == memory.rows(split)['chars_per_token']

  # Killed while writing the third shard: no manifest, so nothing a run would read.
  out, written = str(tmp_path / 'again'), []
  write_shard = shards._write_shard  # noqa: SLF001

  def dies_on_the_third(job):
    if len(written) == 2:
      raise KeyboardInterrupt
    written.append(job[0])
    return write_shard(job)
  monkeypatch.setattr(shards, '_write_shard', dies_on_the_third)
  with pytest.raises(KeyboardInterrupt):
    shards.tokenize(text_config(corpus), out, workers=1, progress=False, **SMALL)
  with pytest.raises(DataError, match='manifest.json not found'):
    shards.TokenShards(out, 'train')
  # Run again: the finished units and shards are kept, the rest is written, the rows are equal.
  monkeypatch.setattr(shards, '_write_shard', write_shard)
  units = []
  tokenize_unit = shards._tokenize_unit  # noqa: SLF001
  monkeypatch.setattr(shards, '_tokenize_unit', lambda job: units.append(job) or
                      tokenize_unit(job))
  shards.tokenize(text_config(corpus), out, workers=1, progress=False, **SMALL)
  assert units == [] and not os.path.exists(os.path.join(out, shards.WORK))
  for split in SPLITS:
    a, b = shards.TokenShards(out, split), shards.TokenShards(token_dir, split)
    np.testing.assert_array_equal(a.read(np.arange(len(a)))['tokens'],
                                  b.read(np.arange(len(b)))['tokens'])


def test_bad_token_folders_are_refused_by_name_and_write_nothing(corpus, token_dir, tmp_path,
                                                               capsys):
  data_dir, manual_dir = corpus
  base = ['train', '--config', 'configs/gpt_fortunes.py', '--workdir', str(tmp_path / 'run'),
          f'--config.data.data_dir={data_dir}', f'--config.data.manual_dir={manual_dir}',
          '--config.data.pipeline=grain', '--config.text.seq_len=32', '--config.model.max_len=32']

  def refused(folder, *extra):
    code = cli.main(base + [f'--config.data.token_dir={folder}', *extra])
    assert code == 2 and not (tmp_path / 'run').exists()
    return capsys.readouterr().err

  assert 'seq_len: made with 32, this run asks 64' in refused(
      token_dir, '--config.text.seq_len=64', '--config.model.max_len=64')
  other = tmp_path / 'other.model'
  shards.train_tokenizer(sentences(300, seed=9), vocab_size=320, model_path=str(other))
  err = refused(token_dir, f'--config.text.tokenizer_path={other}')
  assert f'text.tokenizer_path {other}' in err and 'is not the tokenizer' in err
  assert 'no finished token shards' in refused(str(tmp_path / 'nothing'))

  def damaged(name, damage):
    folder = tmp_path / name
    shutil.copytree(token_dir, folder)
    files = shards.read_manifest(str(folder))['splits']['train']['shards']
    damage([str(folder / f['file']) for f in files])
    return refused(str(folder))
  err = damaged('missing', lambda paths: os.remove(paths[1]))
  assert 'tokens-00001-of-' in err and 'is missing; expected' in err
  err = damaged('truncated', lambda paths: os.truncate(paths[0], os.path.getsize(paths[0]) - 7))
  assert 'tokens-00000-of-' in err and 'bytes (truncated or replaced); expected' in err
  err = damaged('swapped', lambda paths: (os.replace(paths[0], paths[0] + '.x'),
                                          os.replace(paths[1], paths[0]),
                                          os.replace(paths[0] + '.x', paths[1])))
  assert 'holds other rows' in err

  # A corpus with no text left after cleaning: refused, and the folder it began is gone.
  (tmp_path / 'empty.txt').write_text('\n'.join(['ab', 'ba', 'abba', 'bab', 'aab'] * 4))
  out = tmp_path / 'empty_tokens'
  code = cli.main(['data', 'tokenize', '--config', 'configs/gpt_fortunes.py', '--out', str(out),
                   '--config.data.name=text_files/plain_lines', '--config.text.remove_symbols=ab',
                   f'--config.data.data_dir={tmp_path / "tfds"}',
                   f'--config.data.manual_dir={tmp_path / "empty.txt"}',
                   f'--config.text.tokenizer_path={token_dir}/tokenizer.model',
                   '--splits=train', '--workers=1'])
  err = capsys.readouterr().err
  assert code == 2 and 'text_files/plain_lines:train gives no row' in err, err
  assert not out.exists()


def test_each_process_reads_only_its_rows_and_together_the_one_process_batch(monkeypatch):
  """parallel.process_slice with a simulated process index and count (it reads them from jax)."""
  read = []

  class Recording(loader.MemoryRows):
    def read(self, indices):
      read.append(np.asarray(indices).tolist())
      return super().read(indices)
  source = Recording({'tokens': np.arange(50 * 3).reshape(50, 3)})
  for order in loader.ORDERS:
    one = loader.StepBatches(source, 16, seed=5, order=order)
    for step in (0, 2, 3, 7):  # across an epoch boundary (3 steps an epoch)
      parts = []
      for index in range(4):
        monkeypatch.setattr(jax, 'process_index', lambda index=index: index)
        monkeypatch.setattr(jax, 'process_count', lambda: 4)
        read.clear()
        parts.append(loader.StepBatches(source, 16, seed=5, order=order,
                                        rows=parallel.process_slice(16))(step)['tokens'])
        assert len(read) == 1 and len(read[0]) == 4  # its 4 rows, in one read
      rows = [tuple(r) for p in parts for r in p.tolist()]
      assert len(set(rows)) == 16  # disjoint
      np.testing.assert_array_equal(np.concatenate(parts), one(step)['tokens'])
  epoch = [loader.train_indices(s, num_examples=50, batch_size=16, seed=5,
                                order='index_shuffle') for s in range(3)]
  assert len(set(np.concatenate(epoch).tolist())) == 48  # a permutation, remainder dropped
  assert not np.array_equal(epoch[0], loader.train_indices(3, num_examples=50, batch_size=16,
                                                           seed=5, order='index_shuffle'))


def test_streamed_images_are_the_images_in_memory(idx_dataset):
  data_dir, _ = idx_dataset
  memory = images.load_split('idx_images/mnist', 'test', data_dir=data_dir)
  streamed = images.open_split('idx_images/mnist', 'test', stream=True, data_dir=data_dir)
  assert len(streamed) == len(memory) and streamed.num_classes == memory.num_classes
  every = [np.concatenate([b[k] for b in images.eval_batches(s, 32)]) for s in (memory, streamed)
           for k in ('image', 'label', 'mask')]
  for a, b in zip(every[:3], every[3:]):
    np.testing.assert_array_equal(a, b)


def test_old_checkpoints_restore_and_new_ones_keep_the_data_position(tmp_path):
  state = {'w': jnp.arange(4.0), 'step': jnp.int32(3)}
  old = ocp.CheckpointManager(str(tmp_path / 'checkpoints'))  # as runs saved before streaming
  old.save(3, args=ocp.args.StandardSave(state))
  old.wait_until_finished()
  old.close()
  feed = loader.StepIterator(loader.StepBatches(loader.MemoryRows(np.zeros((8, 2))), 4, 0),
                             start=0, stop=100)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  restored, step = checkpointer.restore_latest(state)
  assert step == 3 and np.array_equal(restored['w'], state['w'])
  loop.restore_data_position(checkpointer, 3, feed)  # none saved: the step's own position
  assert feed.get_state() == {'step': 3}
  next(feed)
  checkpointer.save(4, {**state, 'step': jnp.int32(4)}, feed)
  checkpointer.close()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  again = loader.StepIterator(feed._batches, start=0, stop=100)  # noqa: SLF001
  assert checkpointer.restore_data(4, again) and again.get_state() == {'step': 4}
  with pytest.raises(ckpt_lib.CheckpointError, match='data position of step 4, not 5'):
    os.rename(tmp_path / 'checkpoints' / '4', tmp_path / 'checkpoints' / '5')
    loop.restore_data_position(ckpt_lib.Checkpointer(str(tmp_path)), 5, again)
  checkpointer.close()
  feed.close()


def test_a_streamed_feed_resumes_from_the_position_saved_with_a_checkpoint(token_dir, tmp_path):
  batches = loader.StepBatches(shards.TokenShards(token_dir, 'train'), 16, seed=3,
                               order='index_shuffle')
  feed = loader.StepIterator(batches, start=0, stop=40, prefetch=3)
  first = [next(feed)['tokens'] for _ in range(30)]  # three epochs and more
  feed.close()
  feed = loader.StepIterator(batches, start=0, stop=40, prefetch=3)  # reads ahead of step 17
  for _ in range(17):
    next(feed)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  checkpointer.save(17, {'step': jnp.int32(17)}, feed)
  checkpointer.close()
  feed.close()
  resumed = loader.StepIterator(batches, start=0, stop=40)  # read ahead, saved at 17 anyway
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path))
  loop.restore_data_position(checkpointer, 17, resumed)
  checkpointer.close()
  for step in range(17, 30):
    np.testing.assert_array_equal(next(resumed)['tokens'], first[step])
  resumed.close()


def test_streamed_gpt_trains_and_never_waits_for_the_newest_step_between_log_steps(
    corpus, token_dir, tmp_path, monkeypatch):
  """Each step also multiplies two 1024^2 matrices (tens of ms on the device, outside the
  gradient), so a step still runs when the host dispatches the next one, unless the host waited
  for it (any host read of its metrics waits: device_get, float, numpy)."""
  config = streamed_config(corpus, token_dir, **{
      'train.num_steps': 12, 'train.log_every_steps': 4, 'train.checkpoint_every_steps': 6,
      'train.eval_every_steps': 12, 'data.test_split': ''})
  make_train_step, step, block = (parallel.step_lib.make_train_step, parallel.Strategy.step,
                                  jax.block_until_ready)
  dispatched, previous_ready, waited_for = [], [], []

  def slow_loss(loss_fn):
    def loss(params, batch, rng):
      value, metrics = loss_fn(params, batch, rng)
      busy = jnp.full((1024, 1024), 1e-3) + jax.lax.stop_gradient(value)
      return value + 0 * jax.lax.stop_gradient(jnp.sum(busy @ busy)), metrics
    return loss

  def counting_step(self, state, batch):
    previous_ready.append(dispatched[-1]['loss'].is_ready() if dispatched else None)
    state, metrics = step(self, state, batch)
    dispatched.append(metrics)
    return state, metrics

  def counting_block(x):
    waited_for.append((len(dispatched), next((i + 1 for i, m in enumerate(dispatched)
                                              if m is x), None)))
    return block(x)
  monkeypatch.setattr(parallel.step_lib, 'make_train_step',
                      lambda loss_fn, *a, **k: make_train_step(slow_loss(loss_fn), *a, **k))
  monkeypatch.setattr(parallel.Strategy, 'step', counting_step)
  monkeypatch.setattr(jax, 'block_until_ready', counting_block)
  summary = loop.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  # The host saw a step's metrics at the log steps (4, 8, 12), before the save at 6 and before
  # evaluating at 12, and waited only for steps MAX_STEPS_AHEAD behind the newest.
  fetch_points = {4, 6, 8}
  assert previous_ready[1:] == [s in fetch_points for s in range(1, 12)], previous_ready
  ahead = loop.MAX_STEPS_AHEAD
  assert [w for w in waited_for if w[1] is not None] == [(s, s - ahead)
                                                         for s in range(ahead + 1, 13)]
  assert summary['data_pipeline'] == 'grain' and summary['validation_perplexity'] < 320
  assert summary['train_rows'] == shards.read_manifest(token_dir)['splits']['train']['rows']
  with open(tmp_path / 'checkpoints' / '12' / 'data' / 'process_0-of-1.json') as f:
    assert json.load(f) == {'step': 12}
  # eval and sampling will load the run's copy of the shards' tokenizer
  assert (tmp_path / 'tokenizer.model').read_bytes() == \
      open(os.path.join(token_dir, 'tokenizer.model'), 'rb').read()
