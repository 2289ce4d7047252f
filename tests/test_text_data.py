import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from sslm_jax.data import text
from sslm_jax.data.builders import text_files
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.data.tokenizer import Tokenizer, train_tokenizer
from conftest import make_fortunes, sentences

DEBIAN_FORTUNES = '/usr/share/games/fortunes'
@pytest.fixture(scope='module')
def fortunes(tmp_path_factory):
  """(builder, manual_dir) of a prepared text_files/fortunes from a generated folder."""
  root = tmp_path_factory.mktemp('fortunes')
  manual = make_fortunes(root / 'manual')
  builder = text.prepare('text_files/fortunes', str(root / 'tfds'), str(manual))
  return builder, str(manual)


# --- cleaning


def test_clean_text_normalizes_and_strips_control_characters():
  assert text.clean_text('ﬁne ＡＢＣ\u00a0x') == 'fine ABC x'  # NFKC: ligature, full width, nbsp
  assert text.clean_text('ﬁne', normalization='') == 'ﬁne'
  assert text.clean_text('a\x07b\x1b[0mc\x00\r\nd\te') == 'ab[0mc\nd e'  # tab kept as space
  assert text.clean_text('a\x07b', strip_control=False) == 'a\x07b'
  with pytest.raises(DataError, match="allowed: .*'NFKC'"):
    text.clean_text('x', normalization='nfkc')


def test_clean_text_symbols_case_stopwords_whitespace():
  assert text.clean_text('Hello, world! (yes)', remove_symbols=',!()') == 'Hello world yes'
  assert text.clean_text('The Cat is ON the mat.', lowercase=True) == 'the cat is on the mat.'
  assert text.clean_text("The cat isn't on the mat, it's here.",
                         remove_stopwords=True) == "cat isn't mat, it's."
  assert text.clean_text('  a   b \n\n\n\n c  \n') == 'a b\n\nc'
  assert text.clean_text('a\n\nb  c', keep_newlines=False) == 'a b c'
  assert text.clean_text(' a  b ', collapse_whitespace=False) == ' a  b '


# --- the text_files builder


def test_fortune_files_parse_into_cookies():
  raw = 'first\nline\n%\n\n%\n  indented\n  art\n%\n%DCL-not-a-separator\n%\n'
  assert text_files.fortune_cookies(raw) == ['first\nline', '  indented\n  art',
                                             '%DCL-not-a-separator']
  assert text_files.render_overstrikes("*___\b\b\bnot* Ren'\be I\bI") == '*not* René I'


def test_fortunes_builder_splits_labels_and_ids(fortunes):
  builder, manual = fortunes
  info = builder.info
  assert info.features['label'].names == ['computers', 'love', 'zippy']
  sizes = {k: v.num_examples for k, v in info.splits.items()}
  assert set(sizes) == {'train', 'validation', 'test'} and sum(sizes.values()) == 68
  assert sizes['train'] > sizes['validation'] and sizes['train'] > sizes['test']
  seen = {}
  for split in sizes:
    for example in builder.as_data_source(split=split):
      t, example_id = example['text'].decode(), example['id'].decode()
      assert text_files.split_of(t) == split  # the split is a function of the text alone
      category, n = example_id.split('/')
      assert info.features['label'].names[example['label']] == category
      seen[example_id] = t
  assert len(seen) == 68 and {'computers/39', 'love/24', 'zippy/2'} <= set(seen)
  assert seen['zippy/0'].startswith(open(os.path.join(manual, 'zippy')).read().split('\n')[0])
  assert info.metadata['source'] == os.path.realpath(manual)


def test_fortunes_split_does_not_depend_on_the_machine_or_folder(fortunes, tmp_path):
  builder, manual = fortunes
  copy = shutil.copytree(manual, tmp_path / 'copy', symlinks=True)
  again = text.prepare('text_files/fortunes', str(tmp_path / 'tfds'), str(copy))
  for split in ('train', 'validation', 'test'):
    ids = lambda b: sorted(e['id'] for e in b.as_data_source(split=split))  # noqa: E731
    assert ids(again) == ids(builder)
  assert text_files.split_of('Some text.') == 'train'  # pinned: SHA-256 does not change


def test_prepared_fortunes_read_without_our_code(fortunes):
  builder, _ = fortunes
  same = tfds.builder('text_files/fortunes', data_dir=os.path.dirname(
      os.path.dirname(os.path.dirname(builder.data_dir))), file_format='array_record')
  assert same.is_prepared()
  alone = tfds.builder_from_directory(builder.data_dir)
  assert alone.info.features['label'].names == ['computers', 'love', 'zippy']
  source = alone.as_data_source(split='test')
  assert len(source) == builder.info.splits['test'].num_examples
  assert isinstance(source[0]['text'], bytes)


def test_load_text_split_gives_str_and_labels(fortunes):
  builder, manual = fortunes
  data_dir = str(builder.data_path.parent.parent.parent)
  split = text.load_text_split('text_files/fortunes', 'train', data_dir=data_dir)
  assert len(split) == builder.info.splits['train'].num_examples
  assert all(isinstance(t, str) and t for t in split.texts)
  assert split.labels.dtype == np.int64 and set(split.labels) <= {0, 1, 2}
  assert split.label_names == ('computers', 'love', 'zippy')
  with pytest.raises(DataError, match="allowed: .*'validation'"):
    text.load_text_split('text_files/fortunes', 'dev', data_dir=data_dir)
  with pytest.raises(DataError, match="data.text_key='body'.*allowed: \\['id', 'text'\\]"):
    text.load_text_split('text_files/fortunes', 'train', data_dir=data_dir, text_key='body')
  with pytest.raises(DataError, match='was prepared from'):  # another folder, same data_dir
    text.load_text_split('text_files/fortunes', 'train', data_dir=data_dir,
                         manual_dir=os.path.dirname(manual))


def test_missing_or_empty_manual_dir_is_a_clear_error(tmp_path):
  with pytest.raises(DataError, match='set data.manual_dir.*apt-get install fortunes'):
    text.prepare('text_files/fortunes', str(tmp_path / 'tfds'), '')
  with pytest.raises(DataError, match='does not exist'):
    text.prepare('text_files/fortunes', str(tmp_path / 'tfds'), str(tmp_path / 'nowhere'))
  (tmp_path / 'm').mkdir()
  (tmp_path / 'm' / 'x.dat').write_bytes(b'\x00')
  with pytest.raises(DataError, match=r"no fortune files.*\['x.dat'\]"):
    text.prepare('text_files/fortunes', str(tmp_path / 'tfds'), str(tmp_path / 'm'))
  assert not os.path.exists(tmp_path / 'tfds' / 'text_files' / 'fortunes' / '1.0.0')


def test_plain_folder_per_class(tmp_path):
  texts = sentences(60, seed=2)
  for i, t in enumerate(texts):
    folder = tmp_path / 'manual' / ('pos' if i % 3 else 'neg') / ('deep' if i % 2 else '')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{i:03d}.txt').write_text(f'{t}\n\nSecond paragraph {i}.\n')
  (tmp_path / 'manual' / 'pos' / 'notes.md').write_text('not a .txt file')
  split = {s: text.load_text_split('text_files/plain', s, data_dir=str(tmp_path / 'tfds'),
                                   manual_dir=str(tmp_path / 'manual'))
           for s in ('train', 'validation', 'test')}
  assert sum(len(s) for s in split.values()) == 60
  assert split['train'].label_names == ('neg', 'pos')
  by_text = {t: n for s in split.values() for t, n in zip(s.texts, s.labels)}
  assert by_text[f'{texts[3]}\n\nSecond paragraph 3.'] == 0  # one file, one example
  assert by_text[f'{texts[4]}\n\nSecond paragraph 4.'] == 1


def test_plain_single_file_paragraphs_and_lines(tmp_path):
  path = tmp_path / 'book.txt'
  paras = [' '.join(sentences(3, seed=i)).replace('. ', '.\n', 1) for i in range(30)]
  path.write_text('\n\n\n'.join(paras) + '\n')  # 30 paragraphs of 2 lines
  split = text.load_text_split('text_files/plain', 'train', data_dir=str(tmp_path / 'tfds'),
                               manual_dir=str(path))
  assert split.label_names == ('text',) and set(split.labels) == {0}
  builder = tfds.builder('text_files/plain', data_dir=str(tmp_path / 'tfds'))
  assert sum(s.num_examples for s in builder.info.splits.values()) == 30
  assert text_files.paragraphs('\n a\nb\n \n\nc\n') == [(2, ' a\nb'), (6, 'c')]
  lines = text.prepare('text_files/plain_lines', str(tmp_path / 'tfds'), str(path))
  assert sum(s.num_examples for s in lines.info.splits.values()) == 60
  with pytest.raises(DataError, match='is not a folder'):
    text.prepare('text_files/fortunes', str(tmp_path / 'tfds2'), str(path))


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FORTUNES), reason='apt-get install fortunes')
def test_debian_fortunes_parse():
  names = [n for n in sorted(os.listdir(DEBIAN_FORTUNES)) if not n.endswith(('.dat', '.u8'))
           and os.path.isfile(os.path.join(DEBIAN_FORTUNES, n))]
  cookies = text_files.fortune_cookies(text_files.read_text(
      os.path.join(DEBIAN_FORTUNES, names[0])))
  assert len(names) > 10 and len(cookies) > 1 and all('\b' not in c for c in cookies)


def test_stock_text_datasets_by_name():
  with tfds.testing.mock_data(num_examples=5):
    imdb = text.load_text_split('imdb_reviews', 'train')
    assert len(imdb) == 5 and isinstance(imdb.texts[0], str) and imdb.label_names == ('neg', 'pos')
    lm1b = text.load_text_split('lm1b', 'test')
    assert lm1b.label_names == () and (lm1b.labels == -1).all()
    assert isinstance(text.load_text_split('tiny_shakespeare', 'train').texts[0], str)
    with pytest.raises(DataError, match="data.label_key='topic'"):
      text.load_text_split('lm1b', 'test', label_key='topic')
    with pytest.raises(DataError, match="data.text_key='image' is not a text feature"):
      text.load_text_split('mnist', 'train', text_key='image')


# --- tokenizer


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'tok.model')
  return train_tokenizer(sentences(800), vocab_size=400, model_path=path), path


def test_tokenizer_round_trip_and_special_ids(tokenizer):
  tok, path = tokenizer
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == 400 and tok.id_to_piece(4) == '[MASK]'
  for s in sentences(20, seed=9) + [text.clean_text('Über  ﬁne\tcafé — 🙂\n\n  poem\n  art')]:
    ids = tok.encode(s)
    assert tok.decode(ids) == s and tok.unk_id not in ids
  ids = tok.encode('ka lo')
  assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id, tok.pad_id]) == 'ka lo'
  assert tok.encode_batch(['ka', 'lo']) == [tok.encode('ka'), tok.encode('lo')]
  assert Tokenizer.load(path).encode('mi ne ru') == tok.encode('mi ne ru')
  with pytest.raises(DataError, match='cannot load the tokenizer'):
    Tokenizer.load(path + '.missing')


def test_tokenizer_training_is_deterministic(tokenizer, tmp_path):
  tok, path = tokenizer
  again = train_tokenizer(sentences(800), vocab_size=400, model_path=str(tmp_path / 'b.model'))
  assert again.model_proto == tok.model_proto == open(path, 'rb').read()
  long_text = ' '.join(sentences(600, seed=5))  # one line far above max_sentence_length
  assert len(long_text) > 4192
  bpe = train_tokenizer([long_text], vocab_size=350, model_type='bpe',
                        model_path=str(tmp_path / 'c.model'))
  assert bpe.decode(bpe.encode(long_text[:500])) == long_text[:500]
  with pytest.raises(DataError, match='vocab_size=100000'):
    train_tokenizer(sentences(50), vocab_size=100000, model_path=str(tmp_path / 'd.model'))


# --- batches


def test_pack_tokens_keeps_every_token_once_as_a_target():
  docs = [list(range(10, 10 + n)) for n in (5, 0, 7, 3, 11)]
  rows = text.pack_tokens(docs, 4, bos_id=2, eos_id=3)
  stream = [t for d in docs for t in [2] + d + [3]]  # 36 tokens
  assert rows.shape == (8, 5) and rows.dtype == np.int32  # (36 - 1) // 4 rows
  np.testing.assert_array_equal(rows[1:, 0], rows[:-1, -1])  # rows overlap by one token
  targets = rows[:, 1:].reshape(-1).tolist()
  assert targets == stream[1:1 + len(targets)]  # each token a target once, in order
  assert len(stream) - 1 - len(targets) < 4  # only a tail shorter than a row is dropped
  assert text.pack_tokens([[5, 6]], 4, bos_id=None, eos_id=None).shape == (0, 5)


def test_pad_tokens_truncates_and_masks():
  tokens, mask = text.pad_tokens([[7, 8], [], list(range(10, 20))], 5, pad_id=0, bos_id=2,
                                 eos_id=3)
  np.testing.assert_array_equal(tokens, [[2, 7, 8, 3, 0], [2, 3, 0, 0, 0], [2, 10, 11, 12, 13]])
  np.testing.assert_array_equal(mask.sum(1), [4, 2, 5])
  assert tokens.dtype == np.int32 and mask.dtype == bool
  np.testing.assert_array_equal(mask, tokens != 0)


def test_train_batches_are_a_function_of_seed_and_step():
  rows = {'tokens': np.arange(50 * 3).reshape(50, 3), 'label': np.arange(50)}
  full = text.lm_train_batches(rows, 8, seed=7)
  first = [next(full) for _ in range(20)]  # 3 epochs of 6 steps, and more
  resumed = text.lm_train_batches(rows, 8, seed=7, start_step=13)
  for step in range(13, 20):
    batch = next(resumed)
    assert set(batch) == {'tokens', 'label'}
    for k in batch:
      np.testing.assert_array_equal(batch[k], first[step][k])
  np.testing.assert_array_equal(first[0]['tokens'][:, 0] // 3, first[0]['label'])
  epoch = np.concatenate([b['label'] for b in first[:6]])
  assert len(set(epoch.tolist())) == 48  # no repeats within an epoch; remainder dropped
  other = next(text.lm_train_batches(rows, 8, seed=8))
  assert not np.array_equal(other['label'], first[0]['label'])
  with pytest.raises(DataError, match='exceeds'):
    next(text.lm_train_batches(rows, 64, seed=0))
  with pytest.raises(DataError, match='share their first dimension'):
    next(text.lm_train_batches({'a': np.zeros(3), 'b': np.zeros(4)}, 1, seed=0))


def test_eval_batches_cover_each_row_once():
  tokens, mask = text.pad_tokens([[i] * (i % 4) for i in range(10)], 4, pad_id=0)
  batches = list(text.lm_eval_batches({'tokens': tokens, 'mask': mask}, 4))
  assert [b['tokens'].shape for b in batches] == [(4, 4)] * 3
  assert sum(b['row_mask'].sum() for b in batches) == 10
  real = np.concatenate([b['tokens'][b['row_mask'] > 0] for b in batches])
  np.testing.assert_array_equal(real, tokens)
  assert not batches[-1]['mask'][2:].any()  # padding rows hold no tokens
  packed = text.pack_tokens([list(range(30))], 4, bos_id=None, eos_id=None)
  assert sum(b['row_mask'].sum() for b in text.lm_eval_batches(packed, 3)) == len(packed)
