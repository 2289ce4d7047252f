"""Language-model pretraining (GPT causal LM or denoising, BERT masked LM, ELECTRA replaced-token
detection, SimCSE) as a task.

Text comes from any tfds text dataset (or the `text_files` builders for local files), is cleaned
as `config.text` says, and tokenized by a sentencepiece model trained on the training split at
the start of the run and saved as `<workdir>/tokenizer.model`, so eval and sampling reproduce it.
That is `data.pipeline='memory'`, which tokenizes the splits at every start and holds them in
host memory. With `data.pipeline='grain'` a causal LM streams the rows of `data.token_dir`
instead (`sslm-jax data tokenize`, `sslm_jax.data.shards`): the same rows, tokenized once, with
their tokenizer, which the run checks and copies to `<workdir>/tokenizer.model`.

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

import jax
import jax.numpy as jnp

from sslm_jax.data import loader, shards
from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.data.tokenizer import Tokenizer, num_bytes, num_chars
from sslm_jax.models import backend_facts, build_model
from sslm_jax.models.generate import generate
from sslm_jax.objectives import bind_loss, contrastive, electra, lm
from sslm_jax.tasks import text
from sslm_jax.tasks.base import (TOKENIZER_FILE, Context, InitFrom, eval_key, init_params,
                                 start_from)
from sslm_jax.train.writers import write_atomic


def _lm_means(totals: dict, objective, facts: dict) -> dict:
  result = lm.summarize(totals, chars_per_token=facts['chars_per_token'],
                        bytes_per_token=facts['bytes_per_token'])
  if objective.name != 'causal_lm':  # MLM and denoising predict part of the text only
    del result['bits_per_char'], result['bits_per_byte']
  return result


def _electra_means(totals: dict, objective, facts: dict) -> dict:
  del facts
  return {k: float(v) for k, v in electra.summarize(totals,
                                                    objective.discriminator_weight).items()}


def _simcse_means(totals: dict, objective, facts: dict) -> dict:
  del objective, facts
  return contrastive.eval_means(totals, 'rows')


# objective -> (the sums of one eval batch, jittable; a split's means from their totals, the
# objective's section and the split's facts). Language models: lm.lm_eval_sums, _lm_means.
_EVALUATIONS = {
    'electra': (electra.electra_eval_sums, _electra_means),
    'simcse': (contrastive.simcse_eval_sums, _simcse_means),
}


class LanguageTask:
  SECTIONS = {'train': (InitFrom,)}

  def __init__(self, config, context: Context):
    self.config, self.context = config, context
    workdir, training = context.workdir, context.training
    self._texts, self._rows, self._sources = {}, {}, {}
    self._manifest = None
    if config.data.pipeline == 'grain':
      self._manifest, path = shards.check_for_run(config, workdir)
      self.tokenizer = Tokenizer.load(path)
      if training:  # every shard checked before anything is written
        for split in shards.run_splits(config.data):
          self.source(split)
      if training and jax.process_index() == 0:  # eval and sampling load the workdir's
        os.makedirs(workdir, exist_ok=True)
        write_atomic(os.path.join(workdir, TOKENIZER_FILE), self.tokenizer.model_proto)
    else:
      self.tokenizer = text.load_or_train_tokenizer(
          config, workdir, training=training,
          train_texts=lambda: self.texts(config.data.train_split))
    self.vocab = text.vocab(self.tokenizer)
    self.model = build_model(config.model, vocab_size=self.tokenizer.vocab_size)
    self.loss_fn = bind_loss(self.model, config.objective, vocab=self.vocab)
    eval_sums, self._eval_means = _EVALUATIONS.get(config.objective.name,
                                                   (lm.lm_eval_sums, _lm_means))
    self._eval_sums = jax.jit(functools.partial(eval_sums, model=self.model,
                                                config=config.objective, vocab=self.vocab))

  # --- data ---
  def texts(self, split: str) -> list[str]:
    """The split's documents, cleaned as config.text says."""
    if split not in self._texts:
      self._texts[split] = text.documents(self.config, split)
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

  def source(self, split: str) -> loader.RowSource:
    """The split's model rows ({'tokens'} or {'tokens', 'mask'}), in memory or streamed."""
    if split not in self._sources:
      if self._manifest is not None:
        self._sources[split] = shards.TokenShards(self.config.data.token_dir, split,
                                                  manifest=self._manifest)
      else:
        self._sources[split] = loader.MemoryRows(
            {k: v for k, v in self.rows(split).items() if k in ('tokens', 'mask')})
    return self._sources[split]

  def split_facts(self, split: str) -> dict:
    """Documents, characters and bytes a token of the split (for bits per character)."""
    if self._manifest is not None:
      return self._manifest['splits'][split]
    rows = self.rows(split)
    return {'documents': len(self.texts(split)), 'chars_per_token': rows['chars_per_token'],
            'bytes_per_token': rows['bytes_per_token']}

  # --- the task interface (sslm_jax.tasks) ---
  def init_params(self, rng):
    length = min(self.config.text.seq_len, self.config.model.max_len)
    return start_from(self.context, self.config,
                      lambda: init_params(self.model, rng, jnp.zeros((1, length), jnp.int32)),
                      self.tokenizer)

  @property
  def num_train_rows(self) -> int:
    return len(self.source(self.config.data.train_split))

  def train_batch_fn(self, batch_size: int, seed: int, rows: slice) -> loader.StepBatches:
    streamed = self._manifest is not None
    return loader.StepBatches(self.source(self.config.data.train_split), batch_size, seed,
                              order='index_shuffle' if streamed else 'permutation', rows=rows)

  def device_transform(self, batch):
    return batch

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Exact means over every row of the split. The objective's noise (MLM's masks, ELECTRA's
    masks and samples, SimCSE's dropout views) is fixed across evaluations; SimCSE's negatives
    are the other rows of each batch of train.eval_batch_size."""
    c = self.config
    rng = eval_key(c.seed)
    totals = None
    for i, batch in enumerate(text_data.lm_eval_batches(self.source(split),
                                                        c.train.eval_batch_size)):
      sums = self._eval_sums(params, batch, jax.random.fold_in(rng, i))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = {k: float(v) for k, v in jax.device_get(totals).items()}
    return self._eval_means(totals, c.objective, self.split_facts(split))

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
    write_atomic(os.path.join(workdir, 'samples.txt'),
                 ''.join(f'--- sample {i} (prompt {t.sample_prompt!r}) ---\n{s}\n'
                         for i, s in enumerate(samples)).encode())

  def describe(self) -> dict:
    d = self.config.data
    facts, rows = self.split_facts(d.train_split), self.num_train_rows
    return {'train_examples': facts['documents'], 'train_rows': rows,
            'train_tokens': rows * (self.config.text.seq_len +
                                    (self.config.objective.name == 'causal_lm')),
            'chars_per_token': facts['chars_per_token'],
            'vocab_size': self.tokenizer.vocab_size, 'data_pipeline': d.pipeline,
            **backend_facts(self.config.model)}
