"""SentencePiece subword tokenizers: train one from texts in memory, encode, decode.

Fixed special ids, whatever the model: pad 0, unk 1, bos 2, eos 3, `[MASK]` 4 (for masked LMs),
newline 5; ids from `FIRST_NORMAL_ID` (5) on are text. Training settings, and why:

- `normalization_rule_name='identity'`, `remove_extra_whitespaces=False`: the text is cleaned
  before (`sslm_jax.data.text.clean_text`), so the tokenizer must not change it:
  `decode(encode(s)) == s` for every string s (with `byte_fallback`, any character the vocabulary
  lacks becomes its UTF-8 bytes, never unk).
- The newline is a piece of its own (a user-defined symbol), so pieces never cross lines and
  training reads texts line by line: a long text (tiny_shakespeare is one example of 1 MB) never
  exceeds SentencePiece's `max_sentence_length`, which is raised to the longest line anyway
  (SentencePiece skips longer sentences silently).
- `num_threads=1`: the same texts then give byte-identical models; with more threads the
  model depends on the thread count (measured on the 15,217 fortunes: 1, 4 and 16 threads gave
  three different models). One thread is fast enough for a run's training split (benchmarks/
  README.md, "Input pipeline").

The literal text `[MASK]` encodes as the mask id.
"""

import io
import os
from typing import Iterable, Sequence

import sentencepiece as spm

from sslm_jax.data.tfds_utils import DataError
from sslm_jax.train.writers import write_atomic

PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, NEWLINE_ID = 0, 1, 2, 3, 4, 5
MASK_PIECE = '[MASK]'
FIRST_NORMAL_ID = NEWLINE_ID  # ids below are special; the newline is text
MODEL_TYPES = ('unigram', 'bpe')


class Tokenizer:
  """A trained SentencePiece model with the fixed special ids above."""

  def __init__(self, model_proto: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self._proto = model_proto
    found = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id(),
             self._sp.piece_to_id(MASK_PIECE), self._sp.piece_to_id('\n'))
    if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, NEWLINE_ID):
      raise DataError(f'tokenizer has special ids (pad, unk, bos, eos, [MASK], newline) = '
                      f'{found}; allowed: a model from train_tokenizer, with '
                      f'{(PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, NEWLINE_ID)}')

  @classmethod
  def load(cls, path: str) -> 'Tokenizer':
    try:
      with open(path, 'rb') as f:
        proto = f.read()
      return cls(proto)
    except (OSError, RuntimeError) as e:
      raise DataError(f'cannot load the tokenizer {path!r} ({e}); allowed: a .model file '
                      f'written by train_tokenizer') from e

  @property
  def model_proto(self) -> bytes:
    """The serialized model (what `load` reads), e.g. to keep it with a checkpoint."""
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._sp.vocab_size()

  pad_id = property(lambda self: PAD_ID)
  unk_id = property(lambda self: UNK_ID)
  bos_id = property(lambda self: BOS_ID)
  eos_id = property(lambda self: EOS_ID)
  mask_id = property(lambda self: MASK_ID)
  first_normal_id = property(lambda self: FIRST_NORMAL_ID)

  def encode(self, text: str) -> list[int]:
    """Ids of `text`, without bos or eos."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids`; pad, bos and eos are skipped, [MASK] shows as `[MASK]`."""
    return self._sp.decode([int(i) for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))


def _training_lines(texts: Iterable[str]) -> list[str]:
  # Newline is its own piece, so a text is the sequence of its lines: train on lines.
  return [line for text in texts for line in text.split('\n') if line]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, model_path: str,
                    model_type: str = 'unigram', character_coverage: float = 1.0,
                    byte_fallback: bool = True, num_threads: int = 1) -> Tokenizer:
  """Trains a SentencePiece model on `texts`, writes it to `model_path` (atomically) and
  returns it. Same texts and settings, same model bytes (with num_threads=1)."""
  if model_type not in MODEL_TYPES:
    raise DataError(f'tokenizer model_type={model_type!r}; allowed: {MODEL_TYPES}')
  lines = _training_lines(texts)
  if not lines:
    raise DataError('no text to train the tokenizer on; allowed: texts with some characters')
  longest = max(len(line.encode('utf-8')) for line in lines)
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=writer, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        user_defined_symbols=[MASK_PIECE, '\n'], normalization_rule_name='identity',
        remove_extra_whitespaces=False, byte_fallback=byte_fallback,
        allow_whitespace_only_pieces=True, max_sentence_length=max(4192, longest),
        input_sentence_size=0, num_threads=num_threads, minloglevel=2)
  except RuntimeError as e:  # e.g. a vocabulary larger than the text supports
    raise DataError(f'cannot train a tokenizer of vocab_size={vocab_size} ({model_type}) on '
                    f'{len(lines)} lines: {e}') from e
  tokenizer = Tokenizer(writer.getvalue())
  folder = os.path.dirname(os.path.abspath(model_path))
  os.makedirs(folder, exist_ok=True)
  write_atomic(model_path, tokenizer.model_proto)
  return tokenizer


def num_chars(texts: Iterable[str]) -> int:
  """Characters (code points) in `texts`: bits per character = nats / (ln 2 * this)."""
  return sum(len(t) for t in texts)


def num_bytes(texts: Iterable[str]) -> int:
  """UTF-8 bytes in `texts`, for bits per byte."""
  return sum(len(t.encode('utf-8')) for t in texts)
