"""The sentence VAE (`model.name='text_vae'`) as a task: data, ELBO training, bounds, uses.

Data: the documents of any tfds text dataset, cleaned as `config.text` says and tokenized by the
run's sentencepiece model (trained on the training split and saved as <workdir>/tokenizer.model,
as LanguageTask does). One document a row, `bos doc eos` padded to text.seq_len; with
`text_vae.long_documents='drop'` documents longer than that are left out (a sentence VAE), with
'truncate' they are cut (losing their eos). Every row of a split is evaluated, so "per sentence"
means per kept document.

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

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from sslm_jax.data import loader
from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.eval import text_vae as tv_eval
from sslm_jax.models import attention_facts, build_model
from sslm_jax.models.text_vae import TextVAE, generate_from_latent, interpolate
from sslm_jax.objectives import bind_loss, lm
from sslm_jax.objectives import text_vae as tv_obj
from sslm_jax.tasks import language

SUMMARY_KEYS = ('elbo_nll', 'iw_nll', 'kl', 'recon', 'active_units', 'mutual_info', 'lm_nll')

# Compiled once per model (a Flax module hashes by its fields), so eval, sample and interpolate
# on a restored run reuse what training compiled in the same process.
_init = jax.jit(lambda model, rng, tokens: model.init(rng, tokens, jax.random.PRNGKey(0)),
                static_argnums=0)
_eval_stats = jax.jit(tv_obj.text_vae_eval_stats, static_argnames=('model', 'num_samples'))
_encode = jax.jit(lambda model, params, tokens, mask: model.apply(
    {'params': params}, tokens, mask, method=TextVAE.encode), static_argnums=0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sentence_nll(model, kind: str, params, tokens, mask):
  """(NLL of each row's `doc eos` in nats, targets) under a causal LM: a GPT ('gpt') or a
  text_vae decoder without latent ('text_vae')."""
  inputs, targets, weights = tv_obj.decoder_rows(tokens, mask)
  if kind == 'gpt':
    logits = model.apply({'params': params}, inputs)
  else:
    logits = model.apply({'params': params}, inputs, None, method=TextVAE.decode)
  nll, _ = lm.token_nll(logits, targets)
  return (nll * weights).sum(-1), weights.sum(-1)


class TextVAETask:

  def __init__(self, config, workdir: str, *, training: bool):
    self.config = config
    self._training = training
    self._texts, self._rows, self._kept, self._dropped = {}, {}, {}, {}
    self._baseline, self._last = {}, {}
    self._baseline_loaded, self.baseline_step = None, None
    self.tokenizer = language.load_or_train_tokenizer(
        config, workdir, training=training,
        train_texts=lambda: self.texts(config.data.train_split))
    t = self.tokenizer
    self.vocab = lm.Vocab(size=t.vocab_size, pad_id=t.pad_id, bos_id=t.bos_id, eos_id=t.eos_id,
                          mask_id=t.mask_id, first_normal_id=t.first_normal_id)
    self.model = build_model(config.model, vocab_size=t.vocab_size)
    self.settings = tv_obj.Settings.from_config(config.text_vae)
    self.loss_fn = bind_loss(self.model, config.objective, vocab=self.vocab,
                             settings=self.settings)

  # --- data ---
  def texts(self, split: str) -> list[str]:
    """The split's documents, cleaned as config.text says (empty ones left out)."""
    if split not in self._texts:
      d = self.config.data
      raw = text_data.load_text_split(d.name, split, data_dir=d.data_dir,
                                      manual_dir=d.manual_dir, text_key=d.text_key)
      cleaned = [x for x in language.clean_texts(self.config, raw.texts) if x]
      if not cleaned:
        raise DataError(f'{d.name}:{split} has no text after cleaning; allowed: a split with '
                        f'non-empty {d.text_key!r} values')
      self._texts[split] = cleaned
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

  # --- the task interface (sslm_jax.tasks) ---
  def init_params(self, rng):
    length = min(self.config.text.seq_len, self.config.model.max_len)
    tokens = jnp.zeros((1, length), jnp.int32)
    params = _init(self.model, rng, tokens)['params']
    if self.config.text_vae.encoder_init_from and self._training:
      params = {**params, 'encoder': self._pretrained_encoder(params['encoder'])}
    return params

  def _restore(self, workdir: str, key: str):
    from sslm_jax.train import loop  # noqa: PLC0415  the one way to read a run (loop imports tasks)
    from sslm_jax.train.checkpoint import CheckpointError  # noqa: PLC0415
    try:
      return loop.restore_params(workdir)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
      raise DataError(f'text_vae.{key}={workdir!r} is not a readable run ({e}); allowed: the '
                      f'workdir of a finished training run') from e

  def _pretrained_encoder(self, like):
    """The encoder (and posterior head) of the run in text_vae.encoder_init_from."""
    source = self.config.text_vae.encoder_init_from
    run, params, _ = self._restore(source, 'encoder_init_from')
    theirs = getattr(run.task, 'tokenizer', None)
    if run.config.model.name != 'text_vae' or 'encoder' not in params:
      raise DataError(f'text_vae.encoder_init_from={source!r} is a {run.config.model.name!r} '
                      f'run; allowed: a text_vae run with an encoder (e.g. '
                      f'text_vae.autoencoder=True)')
    if theirs is None or theirs.model_proto != self.tokenizer.model_proto:
      raise DataError(f'the tokenizer of this run is not the one text_vae.encoder_init_from='
                      f'{source!r} was trained with; allowed: text.tokenizer_path='
                      f'{os.path.join(source, language.TOKENIZER_FILE)!r}')
    shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)  # noqa: E731
    if shapes(params['encoder']) != shapes(like):
      raise DataError(f'the encoder in text_vae.encoder_init_from={source!r} does not fit this '
                      f'model; allowed: a run with the same model.* encoder settings')
    return params['encoder']

  @property
  def num_train_rows(self) -> int:
    return len(self.rows(self.config.data.train_split)['tokens'])

  def train_batch_fn(self, batch_size: int, seed: int, rows: slice) -> loader.StepBatches:
    """LM batches of whole sentences, each row carrying its step (for the KL schedule)."""
    return loader.StepBatches(loader.MemoryRows(self.rows(self.config.data.train_split)),
                              batch_size, seed, rows=rows, step_key='step')

  def device_transform(self, batch):
    return batch

  def _eval_rng(self):
    return jax.random.fold_in(jax.random.PRNGKey(self.config.seed), language._EVAL_STREAM)

  def split_stats(self, params, split: str, num_samples: int) -> dict[str, np.ndarray]:
    """Per-sentence statistics of every row of the split (`text_vae_eval_stats`)."""
    rng, parts = self._eval_rng(), []
    for i, batch in enumerate(text_data.lm_eval_batches(self.rows(split),
                                                        self.config.train.eval_batch_size)):
      stats = _eval_stats(params, batch, jax.random.fold_in(rng, i), model=self.model,
                          num_samples=num_samples)
      real = int(batch['row_mask'].sum())
      parts.append({k: np.asarray(v)[:real] for k, v in jax.device_get(stats).items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

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
    """(run, params, kind) of text_vae.baseline_workdir, loaded once."""
    if self._baseline_loaded is None:
      source = self.config.text_vae.baseline_workdir
      run, params, self.baseline_step = self._restore(source, 'baseline_workdir')
      name, objective = run.config.model.name, run.config.objective.name
      if name == 'gpt' and objective == 'causal_lm':
        kind = 'gpt'
      elif name == 'text_vae' and run.config.model.latent_conditioning == 'none':
        kind = 'text_vae'
      else:
        raise DataError(f'text_vae.baseline_workdir={source!r} is a {name!r} {objective!r} run; '
                        f"allowed: a causal LM: model.name='gpt' with objective 'causal_lm', or "
                        f"a text_vae run with model.latent_conditioning='none'")
      self._baseline_loaded = (run, params, kind)
    return self._baseline_loaded

  def baseline(self, split: str) -> dict[str, float]:
    """{'lm_nll', 'lm_perplexity'}: the text_vae.baseline_workdir model on the split's rows."""
    if split not in self._baseline:
      source = self.config.text_vae.baseline_workdir
      run, params, kind = self._baseline_run()
      theirs = run.task.tokenizer
      # A GPT's documents follow an end of document in training; the decoder's follow bos.
      start = theirs.eos_id if kind == 'gpt' else theirs.bos_id
      ids = theirs.encode_batch(self.kept_texts(split))
      length = self.config.text.seq_len
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
      nll, targets = [], []
      for batch in text_data.lm_eval_batches({'tokens': tokens, 'mask': mask},
                                             self.config.train.eval_batch_size):
        real = int(batch['row_mask'].sum())
        n, t = jax.device_get(_sentence_nll(run.task.model, kind, params, batch['tokens'],
                                            batch['mask']))
        nll.append(n[:real])
        targets.append(t[:real])
      nll, targets = np.concatenate(nll), np.concatenate(targets)
      self._baseline[split] = {
          'lm_nll': float(nll.mean()),
          'lm_perplexity': math.exp(min(float(nll.sum() / targets.sum()), 80.0))}
    return self._baseline[split]

  # --- uses ---
  def latent_means(self, params, texts: list[str]) -> np.ndarray:
    """(len(texts), latent_dim) posterior means: the sentence features."""
    texts = language.clean_texts(self.config, list(texts))  # as the training text was
    rows = self._token_rows(self.tokenizer.encode_batch(texts))
    means = []
    for batch in text_data.lm_eval_batches(rows, self.config.train.eval_batch_size):
      mean, _ = _encode(self.model, params, batch['tokens'], batch['mask'])
      means.append(np.asarray(mean)[:int(batch['row_mask'].sum())])
    return np.concatenate(means)

  def decode_latents(self, params, z, *, prompt: str = '', seed: int = 0,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     max_new_tokens: int = 0, use_cache: bool = True) -> list[str]:
    """The text each row of z (N, latent_dim) decodes to after `bos prompt` (greedy by
    default), cut at its end of sentence."""
    ids = [self.tokenizer.bos_id] + self.tokenizer.encode(prompt)
    room = self.config.model.max_len - len(ids)
    if room < 1:
      raise DataError(f'the prompt is {len(ids)} tokens; allowed: fewer than model.max_len='
                      f'{self.config.model.max_len}')
    new = min(max_new_tokens or self.config.text.seq_len - 1, room)
    z = np.asarray(z, np.float32)
    # Rows padded to a multiple of 8: a few shapes compile, whatever the number asked for.
    padded = np.zeros((-(-len(z) // 8) * 8, z.shape[1]), np.float32)
    padded[:len(z)] = z
    prompt_ids = jnp.tile(jnp.asarray([ids], jnp.int32), (len(padded), 1))
    out = generate_from_latent(self.model, params, padded, prompt_ids, max_new_tokens=new,
                               rng=jax.random.PRNGKey(seed), temperature=temperature,
                               top_k=top_k, top_p=top_p, use_cache=use_cache,
                               eos_id=self.tokenizer.eos_id)
    texts = []
    for row in jax.device_get(out)[:len(z), 1:].tolist():
      if self.tokenizer.eos_id in row[len(ids) - 1:]:
        row = row[:row.index(self.tokenizer.eos_id, len(ids) - 1)]
      texts.append(self.tokenizer.decode(row))
    return texts

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
    for text, recon in zip(sentences, self.reconstruct(params, sentences)):
      lines.append(f'--- reconstruction (greedy from the posterior mean) ---\n{text}\n=> {recon}')
    _, path = self.homotopy(params, sentences[0], sentences[1], steps=5)
    lines.append('--- homotopy ---\n' + '\n'.join(f'{i / 4:.2f}: {s}' for i, s in
                                                   enumerate(path)))
    out = os.path.join(workdir, 'samples.txt')
    with open(out + '.tmp', 'w') as f:
      f.write('\n'.join(lines) + '\n')
    os.replace(out + '.tmp', out)

  def describe(self) -> dict:
    d, m = self.config.data, self.config.model
    train = self.rows(d.train_split)
    facts = {'train_examples': len(self.texts(d.train_split)),
             'train_rows': len(train['tokens']),
             'train_dropped_long_fraction': self._dropped[d.train_split],
             'vocab_size': self.tokenizer.vocab_size, 'latent_dim': m.latent_dim,
             'encoder_type': m.encoder_type, 'latent_conditioning': m.latent_conditioning,
             **attention_facts(m)}
    if self.config.text_vae.baseline_workdir:
      facts.update(baseline_workdir=self.config.text_vae.baseline_workdir,
                   baseline_step=self.baseline_step)
    test = self._last.get(d.test_split)
    if test is not None:  # the names, unprefixed: nats per sentence on the test split
      facts.update({k: test[k] for k in SUMMARY_KEYS if k in test}, nats_per_sentence_split=
                   d.test_split, test_sentences=test['sentences'])
    return facts
