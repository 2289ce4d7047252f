"""Text datasets through tfds: clean text, load a split, and serve deterministic LM batches.

A split is read once through `tfds.data_source` into a list of str (any tfds dataset with a
Text feature: our `text_files/*`, lm1b, imdb_reviews, tiny_shakespeare, ...). Tokenized texts
become fixed-shape int32 rows, either packed (`pack_tokens`: documents joined, for causal LMs) or
one document a row (`pad_tokens`: with a mask, for masked LMs, denoising and classification).

Batches are dicts of numpy arrays taken row-wise from a dict of row arrays (or any
`sslm_jax.data.loader.RowSource`, e.g. streamed token shards), so one batching serves every
objective: the batch of train step `s` is a pure function of (seed, s) (`loader.train_indices`),
so a resumed run sees exactly the batches an uninterrupted one would. Eval batches hold every row
once; the last one is padded with zero rows and `row_mask` (float32) is 1.0 exactly on real
rows.
"""

import dataclasses
import re
import unicodedata
from typing import Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from sslm_jax.data.tfds_utils import DataError, data_source, prepare, read_all

NORMALIZATIONS = ('NFC', 'NFKC', 'NFD', 'NFKD', '')

# A small English stop-word list (function words: articles, pronouns, auxiliaries,
# prepositions, conjunctions); matched case-insensitively as whole words.
ENGLISH_STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further
had has have having he her here hers herself him himself his how i if in into is it its itself
just me more most my myself no nor not of off on once only or other our ours ourselves out over
own same she should so some such than that the their theirs them themselves then there these
they this those through to too under until up very was we were what when where which while who
whom why will with would you your yours yourself yourselves
""".split())

# A word (letters, inner apostrophes) with the spaces before it, which go with a stop word.
_WORD = re.compile(r"[^\S\n]*([^\W\d_]+(?:['\u2019][^\W\d_]+)*)")
_SPACES = re.compile(r'[^\S\n]+')  # whitespace other than the newline
_BLANK_RUNS = re.compile(r'\n{3,}')


# Unicode's control characters (category Cc: U+0000-U+001F, U+007F-U+009F) but tab and newline.
_CONTROL = re.compile('[\x00-\x08\x0b-\x1f\x7f-\x9f]')


def clean_text(text: str, *, normalization: str = 'NFKC', strip_control: bool = True,
               remove_symbols: str = '', lowercase: bool = False,
               remove_stopwords: bool = False, collapse_whitespace: bool = True,
               keep_newlines: bool = True) -> str:
  """The seed's text cleaning, each step optional, in this order.

  1. Unicode `normalization` ('NFKC' folds compatibility forms: ligatures, full-width letters,
     non-breaking spaces; '' for none). Line breaks `\\r\\n` and `\\r` become `\\n`.
  2. `strip_control`: control characters (Unicode Cc: NUL, bell, backspace, escape, C1) go;
     tab and newline stay, as whitespace.
  3. `remove_symbols`: every character of this string is deleted.
  4. `lowercase`.
  5. `remove_stopwords`: whole words of `ENGLISH_STOPWORDS` go (case-insensitive).
  6. `collapse_whitespace`: runs of spaces and tabs become one space, spaces around line breaks
     go, more than one blank line becomes one, the ends are stripped; with
     `keep_newlines=False` all whitespace becomes single spaces (one line of text).
  """
  if normalization not in NORMALIZATIONS:
    raise DataError(f'text normalization={normalization!r}; allowed: {NORMALIZATIONS} '
                    f"('' for none)")
  if normalization:
    text = unicodedata.normalize(normalization, text)
  text = text.replace('\r\n', '\n').replace('\r', '\n')
  if strip_control:
    text = _CONTROL.sub('', text)
  if remove_symbols:
    text = text.translate({ord(ch): None for ch in remove_symbols})
  if lowercase:
    text = text.lower()
  if remove_stopwords:
    text = _WORD.sub(lambda m: '' if m.group(1).lower() in ENGLISH_STOPWORDS else m.group(),
                     text)
  if collapse_whitespace:
    if keep_newlines:
      text = _SPACES.sub(' ', text)
      text = _BLANK_RUNS.sub('\n\n', re.sub(r' ?\n ?', '\n', text)).strip()
    else:
      text = ' '.join(text.split())
  return text


CLEANING_KEYS = ('normalization', 'remove_symbols', 'lowercase', 'remove_stopwords')


def cleaning(text_config) -> dict:
  """The `clean_text` settings of a run's `config.text` (what its documents look like)."""
  return {k: text_config[k] for k in CLEANING_KEYS}


def clean_texts(texts: Sequence[str], **settings) -> list[str]:
  """Each text cleaned with `clean_text(**settings)` (empty results kept: labels stay aligned)."""
  return [clean_text(x, **settings) for x in texts]


@dataclasses.dataclass(frozen=True)
class TextSplit:
  texts: list[str]
  labels: np.ndarray  # (N,) int64, or -1 where the dataset has no label
  label_names: tuple[str, ...]  # () without labels

  def __len__(self) -> int:
    return len(self.texts)


def as_str(value) -> str:
  # Real array_record data gives bytes, tfds.testing.mock_data gives str.
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode('utf-8', errors='replace')
  if isinstance(value, np.ndarray):
    return as_str(value.item())
  return str(value)


def load_text_split(name: str, split: str, *, data_dir: str = '', manual_dir: str = '',
                    text_key: str = 'text', label_key: str = 'label') -> TextSplit:
  """The whole split as str texts and int64 labels, prepared first if needed.

  Without a `label_key` feature (lm1b, tiny_shakespeare) labels are -1; that is an error only
  when `label_key` was changed from 'label' (a typo should not silently drop the labels).
  """
  builder = prepare(name, data_dir, manual_dir)
  features = builder.info.features
  text_features = sorted(k for k, f in features.items() if isinstance(f, tfds.features.Text))
  if text_key not in features or not isinstance(features[text_key], tfds.features.Text):
    raise DataError(f'data.text_key={text_key!r} is not a text feature of {name!r}; '
                    f'allowed: {text_features or "none: this dataset has no text"}')
  label_feature = features[label_key] if label_key in features else None
  if label_feature is None and label_key not in ('', 'label'):
    raise DataError(f'data.label_key={label_key!r} is not a feature of {name!r}; allowed: '
                    f'{sorted(features.keys())}, or label (none when absent)')
  if label_feature is not None and not isinstance(label_feature, tfds.features.ClassLabel):
    raise DataError(f'data.label_key={label_key!r} of {name!r} is not a class label '
                    f'({type(label_feature).__name__}); allowed: a ClassLabel feature')
  examples = read_all(data_source(builder, name, split))
  texts = [as_str(e[text_key]) for e in examples]
  if label_feature is None:
    return TextSplit(texts, np.full(len(texts), -1, np.int64), ())
  labels = np.asarray([int(e[label_key]) for e in examples], np.int64).reshape(len(texts))
  return TextSplit(texts, labels, tuple(label_feature.names))


def pack_tokens(token_lists: Sequence[Sequence[int]], seq_len: int, *, bos_id: int | None,
                eos_id: int | None) -> np.ndarray:
  """Documents as one stream `bos doc eos bos doc eos ...` cut into int32 rows of seq_len + 1.

  Row i is stream[i * seq_len : i * seq_len + seq_len + 1]: consecutive rows share one token
  (the last of a row is the first of the next), so with inputs = row[:-1] and targets = row[1:]
  every token after the first is a target exactly once. The tail that does not fill a row is
  dropped (fewer than seq_len tokens). bos_id or eos_id None: no such separator.
  """
  if seq_len < 1:
    raise DataError(f'seq_len={seq_len}; allowed: >= 1')
  head = [bos_id] if bos_id is not None else []
  tail = [eos_id] if eos_id is not None else []
  parts = [np.asarray(head + list(t) + tail, np.int64) for t in token_lists]
  stream = np.concatenate(parts) if parts else np.zeros(0, np.int64)
  num_rows = max((len(stream) - 1) // seq_len, 0)
  if num_rows == 0:
    return np.zeros((0, seq_len + 1), np.int32)
  index = np.arange(num_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  return stream[index].astype(np.int32)


def pad_tokens(token_lists: Sequence[Sequence[int]], seq_len: int, *, pad_id: int,
               bos_id: int | None = None,
               eos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """One document a row: (tokens int32 (N, seq_len), mask bool (N, seq_len), True on tokens).

  A row is `bos doc eos` (without the ids that are None), cut to its first seq_len tokens (a
  long document loses its end, eos included), then padded with pad_id.
  """
  if seq_len < 1:
    raise DataError(f'seq_len={seq_len}; allowed: >= 1')
  tokens = np.full((len(token_lists), seq_len), pad_id, np.int32)
  mask = np.zeros((len(token_lists), seq_len), bool)
  head = [bos_id] if bos_id is not None else []
  tail = [eos_id] if eos_id is not None else []
  for i, t in enumerate(token_lists):
    row = (head + list(t) + tail)[:seq_len]
    tokens[i, :len(row)] = row
    mask[i, :len(row)] = True
  return tokens, mask


Rows = Mapping[str, np.ndarray] | np.ndarray


def lm_train_batches(rows: Rows, batch_size: int, seed: int,
                     start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches from `start_step` on; the batch of step s is a function of (seed, s).

  Each epoch is a permutation of the rows from `default_rng([seed, epoch])`; the remainder of
  an epoch (len % batch_size rows, a different one each epoch) is dropped.
  """
  from sslm_jax.data import loader  # Grain imports JAX: not for tokenizing worker processes
  batch_of = loader.StepBatches(loader.MemoryRows(rows), batch_size, seed)
  step = start_step
  while True:
    yield batch_of(step)
    step += 1


def lm_eval_batches(rows, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Every row (of arrays, or of a RowSource) once, in order; the last batch is padded with zero
  rows, and 'row_mask' is 1.0 exactly on real rows, so one compiled shape serves the whole
  split."""
  from sslm_jax.data import loader
  return loader.eval_batches(rows, batch_size, mask_key='row_mask')
