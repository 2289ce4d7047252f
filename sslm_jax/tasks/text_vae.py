"""The sentence VAE (`model.name='text_vae'`) as a task: data, ELBO training, bounds, uses.

The text VAE in one map (each concept in one place):
  model       sslm_jax/models/text_vae.py      encoder, latent-conditioned decoder, its section
  objective   sslm_jax/objectives/text_vae.py  the remedied ELBO, per-sentence eval statistics,
                                               a causal LM's sentence NLL; `Settings` (the
                                               `text_vae` section's training keys)
  metrics     sslm_jax/eval/text_vae.py        active units, mutual information, split summary
  task        this file                        rows, evaluation, the baseline, warm start,
                                               sampling and homotopies; `TextVAERunConfig`
                                               (the `text_vae` section's other keys)

Data: the documents of any tfds text dataset, cleaned as `config.text` says and tokenized by the
run's sentencepiece model (`sslm_jax.tasks.text`). One document a row, `bos doc eos` padded to
text.seq_len; with `text_vae.long_documents='drop'` documents longer than that are left out (a
sentence VAE), with 'truncate' they are cut (losing their eos). Every row of a split is
evaluated, so "per sentence" means per kept document.

The KL weight needs the step inside the loss: `train_batch_fn` adds it to every row
(`batch['step']`), so the one train step serves this objective unchanged.

Evaluation (exact over a split, fixed noise): the ELBO, its reconstruction and KL terms and the
importance-weighted bound with `text_vae.iw_samples` samples on data.test_split
(`eval_iw_samples` on other splits), all in nats per sentence; perplexities from both bounds;
active units; mutual information. With `text_vae.baseline_workdir` (a causal LM run: a GPT
`causal_lm` run, or a text_vae run with `model.latent_conditioning='none'`), that model's exact
NLL of the same sentences is reported beside them as `lm_nll`: a GPT reads `eos doc eos` (its
documents follow an end of document in training), the text_vae decoder `bos doc eos`; either way
the NLL of `doc eos`, so the nats per sentence compare even across tokenizers.

Uses: `sample_text` (prior samples; `sslm-jax sample`), `reconstruct`, `homotopy` (`sslm-jax
interpolate`), `latent_means` (features; also what a classifier on this model reads).
"""

import dataclasses
import itertools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from sslm_jax.config import Checker, Section
from sslm_jax.data import loader
from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.eval import text_vae as tv_eval
from sslm_jax.models import backend_facts, build_model
from sslm_jax.models.text_vae import TextVAE, generate_from_latent, interpolate
from sslm_jax.objectives import bind_loss
from sslm_jax.objectives import text_vae as tv_obj
from sslm_jax.tasks import text
from sslm_jax.tasks.base import (Context, check_fits, check_tokenizer, eval_key, init_params,
                                 over_rows, restore_run)
from sslm_jax.train.writers import write_atomic

LONG_DOCUMENTS = ('drop', 'truncate')
SUMMARY_KEYS = ('elbo_nll', 'iw_nll', 'kl', 'recon', 'active_units', 'mutual_info', 'lm_nll')


@dataclasses.dataclass(frozen=True)
class TextVAERunConfig(Section):
  """The `text_vae` section's keys of rows, evaluation, the baseline and the warm start (its
  training keys are `sslm_jax.objectives.text_vae.Settings`)."""
  encoder_init_from: str = ''     # workdir of a text_vae run whose encoder this one starts from
  long_documents: str = 'drop'    # documents over text.seq_len tokens: 'drop' or 'truncate'
  iw_samples: int = 100           # importance samples for the bound on data.test_split
  eval_iw_samples: int = 10       # ... on the other splits evaluated
  baseline_workdir: str = ''      # a causal LM run evaluated on the same sentences (lm_nll)

  def check(self, c: Checker) -> None:
    for key in ('encoder_init_from', 'baseline_workdir'):
      c.check(isinstance(c.get(key), str), key, "the workdir of a run, or '' for none")
    c.choice('long_documents', LONG_DOCUMENTS)
    c.integer('iw_samples')
    c.integer('eval_iw_samples')
    c.check(not (c.get('model.latent_conditioning') == 'none' and
                 (c.get('autoencoder') or self.encoder_init_from)),
            'model.latent_conditioning', "'embedding', 'prefix' or 'both' with "
            'text_vae.autoencoder or text_vae.encoder_init_from (they need an encoder)')


# Compiled once per model (a Flax module hashes by its fields), so eval, sample and interpolate
# on a restored run reuse what training compiled in the same process.
_eval_stats = jax.jit(tv_obj.text_vae_eval_stats, static_argnames=('model', 'num_samples'))
_encode = jax.jit(lambda model, params, tokens, mask: model.apply(
    {'params': params}, tokens, mask, method=TextVAE.encode), static_argnums=0)
_sentence_nll = jax.jit(tv_obj.sentence_nll, static_argnames=('model', 'kind'))


class TextVAETask:
  SECTIONS = {'text_vae': (tv_obj.Settings, TextVAERunConfig)}

  def __init__(self, config, context: Context):
    self.config, self.context = config, context
    self._texts, self._rows, self._kept, self._dropped = {}, {}, {}, {}
    self._baseline, self._last = {}, {}
    self._baseline_loaded, self.baseline_step = None, None
    self.tokenizer = text.load_or_train_tokenizer(
        config, context.workdir, training=context.training,
        train_texts=lambda: self.texts(config.data.train_split))
    self.vocab = text.vocab(self.tokenizer)
    self.model = build_model(config.model, vocab_size=self.tokenizer.vocab_size)
    self.loss_fn = bind_loss(self.model, config.objective, vocab=self.vocab,
                             settings=tv_obj.Settings.of(config.text_vae))

  # --- data ---
  def texts(self, split: str) -> list[str]:
    """The split's documents, cleaned as config.text says (empty ones left out)."""
    if split not in self._texts:
      self._texts[split] = text.documents(self.config, split)
    return self._texts[split]

  def _token_rows(self, ids: list[list[int]]) -> dict:
    t = self.tokenizer
    tokens, mask = text_data.pad_tokens(ids, self.config.text.seq_len, pad_id=t.pad_id,
                                        bos_id=t.bos_id, eos_id=t.eos_id)
    return {'tokens': tokens, 'mask': mask}

  def rows(self, split: str) -> dict:
    """{'tokens', 'mask'} of the split's kept documents (see the module docstring)."""
    if split not in self._rows:
      texts = self.texts(split)
      ids = self.tokenizer.encode_batch(texts)
      seq_len = self.config.text.seq_len
      keep = [self.config.text_vae.long_documents == 'truncate' or len(x) + 2 <= seq_len
              for x in ids]
      if not any(keep):
        raise DataError(f'no document of {self.config.data.name}:{split} fits text.seq_len='
                        f'{seq_len} tokens with bos and eos; allowed: a larger text.seq_len, or '
                        f"text_vae.long_documents='truncate'")
      self._kept[split] = [x for x, k in zip(texts, keep) if k]
      self._dropped[split] = 1.0 - sum(keep) / len(keep)
      self._rows[split] = self._token_rows([x for x, k in zip(ids, keep) if k])
    return self._rows[split]

  def kept_texts(self, split: str) -> list[str]:
    """The documents of the split's rows, in row order."""
    self.rows(split)
    return self._kept[split]

  # --- the task interface (sslm_jax.tasks.Task) ---
  def init_params(self, rng):
    length = min(self.config.text.seq_len, self.config.model.max_len)
    params = init_params(self.model, rng, jnp.zeros((1, length), jnp.int32),
                         jax.random.PRNGKey(0))
    if self.config.text_vae.encoder_init_from and self.context.training:
      params = {**params, 'encoder': self._pretrained_encoder(params['encoder'])}
    return params

  def _pretrained_encoder(self, like):
    """The encoder (and posterior head) of the run in text_vae.encoder_init_from."""
    key, source = 'text_vae.encoder_init_from', self.config.text_vae.encoder_init_from
    run = restore_run(self.context, source, None, key=key)
    if run.config.model.name != 'text_vae' or 'encoder' not in run.params:
      raise DataError(f'{key}={source!r} is a {run.config.model.name!r} run; allowed: a '
                      f'text_vae run with an encoder (e.g. text_vae.autoencoder=True)')
    check_tokenizer(run, self.tokenizer, key=key, workdir=source)
    check_fits(run.params['encoder'], like, key=key, workdir=source,
               allowed='a run with the same model.* encoder settings')
    return run.params['encoder']

  @property
  def num_train_rows(self) -> int:
    return len(self.rows(self.config.data.train_split)['tokens'])

  def train_batch_fn(self, batch_size: int, seed: int, rows: slice) -> loader.StepBatches:
    """LM batches of whole sentences, each row carrying its step (for the KL schedule)."""
    return loader.StepBatches(loader.MemoryRows(self.rows(self.config.data.train_split)),
                              batch_size, seed, rows=rows, step_key='step')

  def device_transform(self, batch):
    return batch

  def split_stats(self, params, split: str, num_samples: int) -> dict[str, np.ndarray]:
    """Per-sentence statistics of every row of the split (`text_vae_eval_stats`)."""
    rng, calls = eval_key(self.config.seed), itertools.count()  # the batch's index

    def stats(batch):
      return _eval_stats(params, batch, jax.random.fold_in(rng, next(calls)), model=self.model,
                         num_samples=num_samples)
    return over_rows(stats, self.rows(split), self.config.train.eval_batch_size)

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Bounds and latent statistics over the whole split (module docstring), nats/sentence."""
    c = self.config.text_vae
    k = c.iw_samples if split == self.config.data.test_split else c.eval_iw_samples
    if self.config.model.latent_conditioning == 'none':
      k = 1  # the posterior is the prior and z is unused: one sample gives the exact NLL
    result = tv_eval.summarize(self.split_stats(params, split, k), seed=self.config.seed)
    result['iw_samples'] = k
    if c.baseline_workdir:
      result.update(self.baseline(split))
      result['iw_gap_to_lm'] = result['iw_nll'] / result['lm_nll'] - 1.0
    self._last[split] = result
    return result

  # --- the causal LM baseline ---
  def _baseline_run(self):
    """(run, kind) of text_vae.baseline_workdir, loaded once."""
    if self._baseline_loaded is None:
      key, source = 'text_vae.baseline_workdir', self.config.text_vae.baseline_workdir
      run = restore_run(self.context, source, None, key=key)
      self.baseline_step = run.step
      name, objective = run.config.model.name, run.config.objective.name
      if name == 'gpt' and objective == 'causal_lm':
        kind = 'gpt'
      elif name == 'text_vae' and run.config.model.latent_conditioning == 'none':
        kind = 'text_vae'
      else:
        raise DataError(f'{key}={source!r} is a {name!r} {objective!r} run; allowed: a causal '
                        f"LM: model.name='gpt' with objective 'causal_lm', or a text_vae run "
                        f"with model.latent_conditioning='none'")
      self._baseline_loaded = (run, kind)
    return self._baseline_loaded

  def _baseline_rows(self, split: str, run, kind: str) -> dict:
    """The split's kept sentences as the baseline reads them (its tokenizer, its start)."""
    theirs = run.task.tokenizer
    # A GPT's documents follow an end of document in training; the decoder's follow bos.
    start = theirs.eos_id if kind == 'gpt' else theirs.bos_id
    ids = theirs.encode_batch(self.kept_texts(split))
    length = self.config.text.seq_len
    source = self.config.text_vae.baseline_workdir
    if theirs.model_proto != self.tokenizer.model_proto:
      # Whole documents only: a cut one would differ between tokenizers.
      if self.config.text_vae.long_documents != 'drop':
        raise DataError(f"text_vae.baseline_workdir={source!r} has another tokenizer; allowed "
                        f"with it: text_vae.long_documents='drop' (whole sentences only)")
      length = max(map(len, ids)) + 2
    if length - 1 > run.config.model.max_len:
      raise DataError(f'text_vae.baseline_workdir={source!r} reads at most model.max_len='
                      f'{run.config.model.max_len} tokens; a sentence here needs {length - 1}')
    tokens, mask = text_data.pad_tokens(ids, length, pad_id=theirs.pad_id, bos_id=start,
                                        eos_id=theirs.eos_id)
    return {'tokens': tokens, 'mask': mask}

  def baseline(self, split: str) -> dict[str, float]:
    """{'lm_nll', 'lm_perplexity'}: the text_vae.baseline_workdir model on the split's rows."""
    if split not in self._baseline:
      run, kind = self._baseline_run()
      nll, targets = over_rows(
          lambda b: _sentence_nll(run.params, b['tokens'], b['mask'], model=run.task.model,
                                  kind=kind),
          self._baseline_rows(split, run, kind), self.config.train.eval_batch_size)
      self._baseline[split] = {
          'lm_nll': float(nll.mean()),
          'lm_perplexity': math.exp(min(float(nll.sum() / targets.sum()), 80.0))}
    return self._baseline[split]

  # --- uses ---
  def latent_means(self, params, texts: list[str]) -> np.ndarray:
    """(len(texts), latent_dim) posterior means: the sentence features."""
    texts = text.clean_texts(self.config, list(texts))  # as the training text was
    rows = self._token_rows(self.tokenizer.encode_batch(texts))
    return over_rows(lambda b: _encode(self.model, params, b['tokens'], b['mask'])[0], rows,
                     self.config.train.eval_batch_size)

  def decode_latents(self, params, z, *, prompt: str = '', seed: int = 0,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     max_new_tokens: int = 0, use_cache: bool = True) -> list[str]:
    """The text each row of z (N, latent_dim) decodes to after `bos prompt` (greedy by
    default), cut at its end of sentence."""
    ids, new = text.prompt_ids(self.tokenizer, self.tokenizer.bos_id, prompt,
                               self.config.model.max_len,
                               max_new_tokens or self.config.text.seq_len - 1)
    z = np.asarray(z, np.float32)
    # Rows padded to a multiple of 8: a few shapes compile, whatever the number asked for.
    padded = np.zeros((-(-len(z) // 8) * 8, z.shape[1]), np.float32)
    padded[:len(z)] = z
    prompt_ids = jnp.tile(jnp.asarray([ids], jnp.int32), (len(padded), 1))
    out = generate_from_latent(self.model, params, padded, prompt_ids, max_new_tokens=new,
                               rng=jax.random.PRNGKey(seed), temperature=temperature,
                               top_k=top_k, top_p=top_p, use_cache=use_cache,
                               eos_id=self.tokenizer.eos_id)
    return text.continuations(self.tokenizer, out[:len(z)], len(ids))

  def sample_text(self, params, *, prompt: str, num: int, seed: int, temperature: float = 0.8,
                  top_k: int = 40, top_p: float = 1.0, max_new_tokens: int = 0,
                  use_cache: bool = True) -> list[str]:
    """`num` sentences from the prior: z ~ N(0, I) (key `seed`), decoded after `prompt`."""
    z = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                          (num, self.config.model.latent_dim))
    return self.decode_latents(params, z, prompt=prompt, seed=seed, temperature=temperature,
                               top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                               use_cache=use_cache)

  def reconstruct(self, params, texts: list[str]) -> list[str]:
    """Each text decoded greedily from its posterior mean."""
    return self.decode_latents(params, self.latent_means(params, texts))

  def homotopy(self, params, a: str, b: str, steps: int = 5) -> tuple[np.ndarray, list[str]]:
    """(latents (steps, latent_dim), texts): greedy decodings along the line from a's posterior
    mean to b's (Bowman et al. 2016); the endpoints are the two means."""
    means = self.latent_means(params, [a, b])
    z = np.asarray(interpolate(means[0], means[1], steps))
    return z, self.decode_latents(params, z)

  def draw(self, params, workdir: str) -> None:
    """samples.txt: greedy prior samples, reconstructions and one homotopy of eval sentences."""
    t = self.config.text
    if t.num_samples == 0:
      return
    lines = [f'--- sample {i} (z ~ N(0, I), greedy) ---\n{s}'
             for i, s in enumerate(self.sample_text(params, prompt=t.sample_prompt,
                                                    num=t.num_samples, seed=self.config.seed,
                                                    temperature=0.0, top_k=0))]
    sentences = self.kept_texts(self.config.data.eval_split)[:max(t.num_samples, 2)]
    for original, recon in zip(sentences, self.reconstruct(params, sentences)):
      lines.append(f'--- reconstruction (greedy from the posterior mean) ---\n{original}\n'
                   f'=> {recon}')
    _, path = self.homotopy(params, sentences[0], sentences[1], steps=5)
    lines.append('--- homotopy ---\n' + '\n'.join(f'{i / 4:.2f}: {s}' for i, s in
                                                   enumerate(path)))
    write_atomic(os.path.join(workdir, 'samples.txt'), ('\n'.join(lines) + '\n').encode())

  def describe(self) -> dict:
    d, m = self.config.data, self.config.model
    train = self.rows(d.train_split)
    facts = {'train_examples': len(self.texts(d.train_split)),
             'train_rows': len(train['tokens']),
             'train_dropped_long_fraction': self._dropped[d.train_split],
             'vocab_size': self.tokenizer.vocab_size, 'latent_dim': m.latent_dim,
             'encoder_type': m.encoder_type, 'latent_conditioning': m.latent_conditioning,
             **backend_facts(m)}
    if self.config.text_vae.baseline_workdir:
      facts.update(baseline_workdir=self.config.text_vae.baseline_workdir,
                   baseline_step=self.baseline_step)
    test = self._last.get(d.test_split)
    if test is not None:  # the names, unprefixed: nats per sentence on the test split
      facts.update({k: test[k] for k in SUMMARY_KEYS if k in test}, nats_per_sentence_split=
                   d.test_split, test_sentences=test['sentences'])
    return facts
