"""What the text tasks share: a split's documents cleaned as `config.text` says, the run's
tokenizer (loaded, or trained on the training split and saved in the workdir), and what an
objective must know of it."""

import os
from typing import Callable

import jax

from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.data.tokenizer import Tokenizer, train_tokenizer
from sslm_jax.objectives.lm import Vocab
from sslm_jax.tasks.base import TOKENIZER_FILE


def clean_texts(config, texts: list[str]) -> list[str]:
  """Each text cleaned as `config.text` says (empty results kept, so labels stay aligned)."""
  return text_data.clean_texts(texts, **text_data.cleaning(config.text))


def documents(config, split: str) -> list[str]:
  """The split's documents, cleaned as config.text says, empty ones left out."""
  d = config.data
  raw = text_data.load_text_split(d.name, split, data_dir=d.data_dir, manual_dir=d.manual_dir,
                                  text_key=d.text_key)
  cleaned = [x for x in clean_texts(config, raw.texts) if x]
  if not cleaned:
    raise DataError(f'{d.name}:{split} has no text after cleaning; allowed: a split with '
                    f'non-empty {d.text_key!r} values')
  return cleaned


def load_or_train_tokenizer(config, workdir: str, *, training: bool,
                            train_texts: Callable[[], list[str]]) -> Tokenizer:
  """text.tokenizer_path, else <workdir>/tokenizer.model, else (training) one trained on
  `train_texts()` and saved there."""
  t = config.text
  path = t.tokenizer_path or os.path.join(workdir, TOKENIZER_FILE)
  if os.path.exists(path):
    return Tokenizer.load(path)
  if t.tokenizer_path:
    raise DataError(f'text.tokenizer_path={path!r} does not exist; allowed: a sentencepiece '
                    f".model file, or '' to train one on the training split")
  if not training:
    raise DataError(f'{path} not found: the run in {workdir!r} saves its tokenizer when '
                    f'training starts; allowed: the workdir of a text run')
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:  # every process trains the same model; one writes it
    path = os.path.join(workdir, f'.{TOKENIZER_FILE}.process{jax.process_index()}')
  try:
    return train_tokenizer(train_texts(), vocab_size=t.vocab_size, model_path=path,
                           model_type=t.tokenizer_type)
  except DataError as e:  # e.g. a vocabulary larger than the text supports
    raise DataError(f'text.vocab_size={t.vocab_size} / text.tokenizer_type='
                    f'{t.tokenizer_type!r} do not fit {config.data.name}:'
                    f'{config.data.train_split}; allowed: what sentencepiece says: {e}') from e


def vocab(tokenizer: Tokenizer) -> Vocab:
  """What an objective must know of the tokenizer: its size and special ids."""
  t = tokenizer
  return Vocab(size=t.vocab_size, pad_id=t.pad_id, bos_id=t.bos_id, eos_id=t.eos_id,
               mask_id=t.mask_id, first_normal_id=t.first_normal_id)


def prompt_ids(tokenizer: Tokenizer, first_id: int, prompt: str, max_len: int,
               max_new_tokens: int) -> tuple[list[int], int]:
  """(`first_id` then the ids of `prompt`, the tokens to generate after them: max_new_tokens,
  at most what model.max_len leaves), or DataError when the prompt leaves no room."""
  ids = [first_id] + tokenizer.encode(prompt)
  room = max_len - len(ids)
  if room < 1:
    raise DataError(f'the prompt is {len(ids)} tokens; allowed: fewer than model.max_len='
                    f'{max_len}')
  return ids, min(max_new_tokens, room)


def continuations(tokenizer: Tokenizer, rows, prompt_len: int) -> list[str]:
  """The text of each generated row after its first token, cut at its first end of text after
  the prompt."""
  eos, texts = tokenizer.eos_id, []
  for row in jax.device_get(rows)[:, 1:].tolist():
    if eos in row[prompt_len - 1:]:
      row = row[:row.index(eos, prompt_len - 1)]
    texts.append(tokenizer.decode(row))
  return texts
