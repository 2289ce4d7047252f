"""Language-model pretraining (GPT causal LM or denoising, BERT masked LM, ELECTRA replaced-token
detection, SimCSE) as a task.

Text comes from any tfds text dataset (or the `text_files` builders for local files), is cleaned
as `config.text` says, and tokenized by a sentencepiece model trained on the training split at
the start of the run and saved as `<workdir>/tokenizer.model`, so eval and sampling reproduce it.

Rows: causal LM packs the documents into one stream (`doc eos doc eos ...`) cut into rows of
seq_len + 1; the other objectives keep one document a row (`bos doc eos`, padded or truncated to
seq_len).

`train.init_from` starts the parameters from another run of the same model (and tokenizer), e.g.
SimCSE continuing an ELECTRA discriminator.

Bits per character: a causal LM's total information divided by the split's characters, with the
end of each document counted as one character (it is one predicted token, like a newline).
"""

import functools
import os
from typing import Callable

import jax
import jax.numpy as jnp

from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.data.tokenizer import Tokenizer, num_bytes, num_chars, train_tokenizer
from sslm_jax.models import build_model
from sslm_jax.models.generate import generate
from sslm_jax.objectives import bind_loss, contrastive, electra, lm
from sslm_jax.tasks import warm_start
from sslm_jax.tasks.warm_start import TOKENIZER_FILE

_EVAL_STREAM = 1_000_003  # fold_in constant: eval noise never coincides with a train step's


def clean_texts(config, texts: list[str]) -> list[str]:
  """Each text cleaned as `config.text` says (empty results kept, so labels stay aligned)."""
  t = config.text
  return [text_data.clean_text(x, normalization=t.normalization, remove_symbols=t.remove_symbols,
                               lowercase=t.lowercase, remove_stopwords=t.remove_stopwords)
          for x in texts]


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


# One compilation per model (modules compare by their fields), shared by every task of it in a
# process: a pipeline's pretraining run and the fine-tuning run that restores it.
@functools.partial(jax.jit, static_argnums=0)
def _init(model, rng, tokens):
  return model.init(rng, tokens)['params']


def _simcse_eval_sums(params, batch, rng, *, model, config, vocab):
  """InfoNCE sums of one batch (padded rows are neither anchors nor negatives)."""
  del vocab
  loss, correct = contrastive.simcse_terms(params, batch, rng, model=model, config=config)
  return {'loss_sum': loss.sum(), 'correct_sum': correct.sum(), 'rows': batch['row_mask'].sum()}


class LanguageTask:

  def __init__(self, config, workdir: str, *, training: bool):
    self.config = config
    self._training = training
    self._texts, self._rows = {}, {}
    self.tokenizer = self._load_or_train_tokenizer(workdir, training)
    t = self.tokenizer
    self.vocab = lm.Vocab(size=t.vocab_size, pad_id=t.pad_id, bos_id=t.bos_id, eos_id=t.eos_id,
                          mask_id=t.mask_id, first_normal_id=t.first_normal_id)
    self.model = build_model(config.model, vocab_size=t.vocab_size)
    self.loss_fn = bind_loss(self.model, config.objective, vocab=self.vocab)
    eval_sums = {'electra': electra.electra_eval_sums,
                 'simcse': _simcse_eval_sums}.get(config.objective.name, lm.lm_eval_sums)
    self._eval_sums = jax.jit(functools.partial(eval_sums, model=self.model,
                                                config=config.objective, vocab=self.vocab))

  # --- data ---
  def texts(self, split: str) -> list[str]:
    """The split's documents, cleaned as config.text says."""
    if split not in self._texts:
      d = self.config.data
      raw = text_data.load_text_split(d.name, split, data_dir=d.data_dir,
                                      manual_dir=d.manual_dir, text_key=d.text_key)
      cleaned = [x for x in clean_texts(self.config, raw.texts) if x]
      if not cleaned:
        raise DataError(f'{d.name}:{split} has no text after cleaning; allowed: a split with '
                        f'non-empty {d.text_key!r} values')
      self._texts[split] = cleaned
    return self._texts[split]

  def rows(self, split: str) -> dict:
    """Model rows of a split (see the module docstring)."""
    if split not in self._rows:
      ids = self.tokenizer.encode_batch(self.texts(split))
      seq_len, t = self.config.text.seq_len, self.tokenizer
      if self.config.objective.name == 'causal_lm':
        rows = {'tokens': text_data.pack_tokens(ids, seq_len, bos_id=None, eos_id=t.eos_id)}
      else:
        tokens, mask = text_data.pad_tokens(ids, seq_len, pad_id=t.pad_id, bos_id=t.bos_id,
                                            eos_id=t.eos_id)
        rows = {'tokens': tokens, 'mask': mask}
      if len(rows['tokens']) == 0:
        raise DataError(f'{self.config.data.name}:{split} gives no row of text.seq_len='
                        f'{seq_len} tokens; allowed: a smaller text.seq_len or more text')
      num_docs = len(ids)
      tokens = sum(map(len, ids)) + num_docs  # the end of a document is one token and one char
      rows['chars_per_token'] = (num_chars(self.texts(split)) + num_docs) / tokens
      rows['bytes_per_token'] = (num_bytes(self.texts(split)) + num_docs) / tokens
      self._rows[split] = rows
    return self._rows[split]

  def _load_or_train_tokenizer(self, workdir: str, training: bool) -> Tokenizer:
    return load_or_train_tokenizer(self.config, workdir, training=training,
                                   train_texts=lambda: self.texts(self.config.data.train_split))

  # --- the task interface (sslm_jax.tasks) ---
  def init_params(self, rng):
    length = min(self.config.text.seq_len, self.config.model.max_len)
    params = _init(self.model, rng, jnp.zeros((1, length), jnp.int32))
    if self._training and self.config.train.init_from:
      params, _ = warm_start.restore_matching(self.config.train.init_from, None,
                                              key='train.init_from', config=self.config,
                                              tokenizer=self.tokenizer, like=params)
    return params

  @property
  def num_train_rows(self) -> int:
    return len(self.rows(self.config.data.train_split)['tokens'])

  def _model_rows(self, split: str) -> dict:
    return {k: v for k, v in self.rows(split).items() if k in ('tokens', 'mask')}

  def train_batches(self, batch_size: int, seed: int, start_step: int):
    return text_data.lm_train_batches(self._model_rows(self.config.data.train_split),
                                      batch_size, seed, start_step)

  def device_transform(self, batch):
    return batch

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Exact means over every row of the split. The objective's noise (MLM's masks, ELECTRA's
    masks and samples, SimCSE's dropout views) is fixed across evaluations; SimCSE's negatives
    are the other rows of each batch of train.eval_batch_size."""
    c = self.config
    rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), _EVAL_STREAM)
    totals = None
    for i, batch in enumerate(text_data.lm_eval_batches(self._model_rows(split),
                                                        c.train.eval_batch_size)):
      sums = self._eval_sums(params, batch, jax.random.fold_in(rng, i))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    if c.objective.name == 'electra':
      return {k: float(v) for k, v in electra.summarize(
          totals, c.objective.discriminator_weight).items()}
    if c.objective.name == 'simcse':
      return {'loss': totals['loss_sum'] / totals['rows'],
              'accuracy': totals['correct_sum'] / totals['rows']}
    rows = self.rows(split)
    result = lm.summarize(totals, chars_per_token=rows['chars_per_token'],
                          bytes_per_token=rows['bytes_per_token'])
    if c.objective.name != 'causal_lm':  # MLM and denoising predict part of the text only
      del result['bits_per_char'], result['bits_per_byte']
    return result

  def sample_text(self, params, *, prompt: str, num: int, seed: int, temperature: float = 0.8,
                  top_k: int = 40, top_p: float = 1.0, max_new_tokens: int = 0,
                  use_cache: bool = True) -> list[str]:
    """`num` continuations of `prompt` (GPT only), each cut at its end of document."""
    if self.config.model.name != 'gpt':
      raise DataError(f'sampling text needs a GPT run; this run is model.name='
                      f'{self.config.model.name!r}')
    # A document starts after an end of document in the packed training stream.
    ids = [self.tokenizer.eos_id] + self.tokenizer.encode(prompt)
    room = self.config.model.max_len - len(ids)
    if room < 1:
      raise DataError(f'the prompt is {len(ids)} tokens; allowed: fewer than model.max_len='
                      f'{self.config.model.max_len}')
    new = min(max_new_tokens or 96, room)
    prompt_ids = jnp.tile(jnp.asarray([ids], jnp.int32), (num, 1))
    out = generate(self.model, params, prompt_ids, max_new_tokens=new,
                   rng=jax.random.PRNGKey(seed), temperature=temperature, top_k=top_k,
                   top_p=top_p, use_cache=use_cache, eos_id=self.tokenizer.eos_id)
    texts = []
    for row in jax.device_get(out)[:, 1:].tolist():
      if self.tokenizer.eos_id in row[len(ids) - 1:]:
        row = row[:row.index(self.tokenizer.eos_id, len(ids) - 1)]
      texts.append(self.tokenizer.decode(row))
    return texts

  def draw(self, params, workdir: str) -> None:
    """samples.txt: a few sampled continuations of text.sample_prompt (causal LM runs)."""
    t = self.config.text
    if self.config.objective.name != 'causal_lm' or t.num_samples == 0:
      return
    samples = self.sample_text(params, prompt=t.sample_prompt, num=t.num_samples,
                               seed=self.config.seed)
    path = os.path.join(workdir, 'samples.txt')
    with open(path + '.tmp', 'w') as f:
      f.write(''.join(f'--- sample {i} (prompt {t.sample_prompt!r}) ---\n{s}\n'
                      for i, s in enumerate(samples)))
    os.replace(path + '.tmp', path)

  def describe(self) -> dict:
    d = self.config.data
    train = self.rows(d.train_split)
    return {'train_examples': len(self.texts(d.train_split)),
            'train_rows': len(train['tokens']),
            'train_tokens': int(train['tokens'].size),
            'chars_per_token': train['chars_per_token'],
            'vocab_size': self.tokenizer.vocab_size}
