"""Classification with a (pretrained) encoder as a task: labelled text or images in, metrics out.

Data: any tfds dataset with a ClassLabel feature `data.label_key` beside a text
(`data.text_key`) or image (`data.image_key`) feature: text_files/fortunes (43 categories),
text_files/plain (one folder per class), imdb_reviews, idx_images/fashion_mnist, mnist, ...

Splits: `data.train_split` is trained on and `data.eval_split` evaluated during training. With
`data.validation_fraction` > 0 the eval split is carved out of the training split instead:
round(fraction * count) examples of each class, drawn with `data.split_seed`
(`sslm_jax.data.labels.stratified_split`), which then leave the training split.

Text is cleaned as `config.text` says and tokenized by `text.tokenizer_path` (a pipeline passes
its pretraining run's), else by a tokenizer trained on the training split and saved in the
workdir, as LanguageTask does. One text a row, as the model saw text in pretraining: `bos text
eos` for BERT, `eos text eos` for GPT (its documents always follow an end of document), cut to
`text.seq_len` tokens, padded. Texts empty after cleaning are dropped with their labels.

Parameters are `{'encoder': ..., 'head': ...}` (`sslm_jax.models.heads`). With
`classifier.init_from` the encoder starts as that pretraining run's checkpoint, bit for bit.
"""

import dataclasses
import functools
import os

import jax
import numpy as np

from sslm_jax.config import Checker, Section
from sslm_jax.data import config as data_config
from sslm_jax.data import images as image_data
from sslm_jax.data import labels as label_data
from sslm_jax.data import loader
from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.eval import metrics as metrics_lib
from sslm_jax.eval import plots
from sslm_jax.models import MODELS, build_classifier, build_model
from sslm_jax.models.transformer import block_index
from sslm_jax.objectives import bind_loss, classification
from sslm_jax.tasks import text
from sslm_jax.tasks.base import Context, init_params, over_rows, restore_matching

EVAL_METRICS = ('loss', 'accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'micro_f1',
                'weighted_f1')


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(Section):
  """The `classifier` section: a linear head on the model's encoder (sslm_jax/models/heads.py)."""
  init_from: str = ''             # workdir of a pretraining run of this model ('' = scratch)
  init_step: int = 0              # its checkpoint (0 = the newest)
  pooling: str = 'mean'           # text: 'mean', 'last', 'cls' (bert); images: the mean code
  dropout_rate: float = 0.0       # on the pooled features
  # With init_from: the top N Transformer blocks, and the final norm after them, start from
  # random weights instead of the pretrained ones (the layers most specific to the pretraining
  # task; Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning").
  reinit_top_layers: int = 0

  def check(self, c: Checker) -> None:
    c.check(isinstance(self.init_from, str), 'init_from',
            "the workdir of a pretraining run, or '' to start from scratch")
    c.integer('init_step', minimum=0)
    name = c.get('model.name')
    allowed = MODELS[name].POOLINGS if name in MODELS else ()
    c.check(self.pooling in allowed, 'pooling',
            f'{", ".join(map(repr, allowed))} for model {name!r}' +
            (" ('cls' reads the first position, which a causal model sees alone)"
             if name == 'gpt' else ''))
    c.number('dropout_rate', 0, 1, high_open=True)
    if c.integer('reinit_top_layers', minimum=0) and self.reinit_top_layers:
      layers = c.get('model.num_layers')
      c.check(isinstance(layers, int) and self.reinit_top_layers <= layers, 'reinit_top_layers',
              f'0 for model {name!r} (it has no Transformer blocks)' if layers is None else
              f'at most model.num_layers={layers}')


@dataclasses.dataclass(frozen=True)
class EncoderRate(Section):
  """A classifier's key of the `optimizer` section (sslm_jax/train/optim.py reads it)."""
  # The encoder's learning rate is learning_rate * this; 0 = linear probe (encoder frozen: no
  # updates, no gradients, no dropout).
  encoder_learning_rate_multiplier: float = 1.0
  # Layer-wise decay (ELECTRA's fine-tuning): block i of L learns at layer_decay ** (L - i)
  # times the encoder's rate, the embeddings at layer_decay ** (L + 1); 1 = every layer alike.
  layer_decay: float = 1.0

  def check(self, c: Checker) -> None:
    c.number('encoder_learning_rate_multiplier', 0, note=' (0 = frozen encoder)')
    if c.number('layer_decay', 0, 1, low_open=True, note=' (1 = no decay)') and \
        self.layer_decay != 1.0:
      name = c.get('model.name')
      c.check(c.get('model.num_layers') is not None, 'layer_decay',
              f'1.0 for model {name!r} (it has no Transformer blocks to decay over)')


@dataclasses.dataclass(frozen=True)
class LabelledSplit:
  inputs: list | np.ndarray  # cleaned texts (list of str) or uint8 NHWC images
  labels: np.ndarray         # (N,) int64 in [0, number of classes)

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, index: np.ndarray) -> 'LabelledSplit':
    if isinstance(self.inputs, np.ndarray):
      return LabelledSplit(self.inputs[index], self.labels[index])
    return LabelledSplit([self.inputs[i] for i in index], self.labels[index])


def reinit_top_blocks(pretrained: dict, fresh: dict, count: int) -> dict:
  """`pretrained` with, in every stack of Transformer blocks (keys `blocks_0` .. `blocks_{n-1}`
  of one dict), the top `count` blocks and the stack's `final_norm` taken from `fresh`."""
  if count == 0 or not isinstance(pretrained, dict):
    return pretrained
  out = {k: reinit_top_blocks(v, fresh[k], count) for k, v in pretrained.items()}
  blocks = sorted(i for i in map(block_index, pretrained) if i is not None)
  if blocks:
    for i in blocks[-count:]:
      out[f'blocks_{i}'] = fresh[f'blocks_{i}']
    if 'final_norm' in pretrained:
      out['final_norm'] = fresh['final_norm']
  return out


def is_text(config) -> bool:
  return MODELS[config.model.name].INPUTS == 'text'


def _read_split(config, split: str) -> LabelledSplit:
  d = config.data
  where = f'{d.name}:{split}'
  if is_text(config):
    raw = text_data.load_text_split(d.name, split, data_dir=d.data_dir, manual_dir=d.manual_dir,
                                    text_key=d.text_key, label_key=d.label_key)
    texts, labels = text.clean_texts(config, raw.texts), raw.labels
    keep = np.asarray([bool(t) for t in texts], bool)
    data = LabelledSplit([t for t, k in zip(texts, keep) if k], labels[keep])
  else:
    raw = image_data.load_split(d.name, split, data_dir=d.data_dir, manual_dir=d.manual_dir,
                                image_key=d.image_key, label_key=d.label_key)
    image_data.check_compatible(raw, config.model.channels, where)
    data = LabelledSplit(raw.images, raw.labels)
  if len(data) == 0:
    raise DataError(f'{where} has no examples (after cleaning); allowed: a split with examples')
  if (data.labels < 0).any():
    raise DataError(f'{where} has no class label {d.label_key!r}; allowed: a dataset with a '
                    f'ClassLabel feature named by data.label_key')
  return data


def load_labelled(config, split: str, cache: dict | None = None) -> LabelledSplit:
  """A split as the classifier sees it (carved out of the training split when
  data.validation_fraction > 0: see the module docstring)."""
  cache = {} if cache is None else cache
  d = config.data
  carved = d.validation_fraction > 0 and split in (d.train_split, d.eval_split)
  source = d.train_split if carved else split
  if source not in cache:
    cache[source] = _read_split(config, source)
  data = cache[source]
  if not carved:
    return data
  kept, held = label_data.stratified_split(data.labels, d.validation_fraction, d.split_seed)
  part = data.take(kept if split == d.train_split else held)
  if len(part) == 0:
    raise DataError(f'data.validation_fraction={d.validation_fraction} leaves {split!r} of '
                    f'{d.name}:{d.train_split} empty; allowed: a fraction that leaves examples')
  return part


def _device_transform(batch, input_size: int):
  if 'image' not in batch:
    return batch
  return {**batch, 'image': image_data.to_model_input(batch['image'], input_size)}


# Compiled once per model (modules compare by their fields): the runs of a pipeline and their
# evaluations share it.
@functools.partial(jax.jit, static_argnames=('model', 'input_size'))
def _eval_batch(params, batch, *, model, input_size):
  return classification.predictions_and_nll(params, _device_transform(batch, input_size),
                                            model=model)


@functools.partial(jax.jit, static_argnames=('model', 'input_size'))
def _features_batch(params, batch, *, model, input_size):
  inputs, mask = classification.model_inputs(_device_transform(batch, input_size))
  return model.apply({'params': params}, inputs, mask, method='features')


class ClassificationTask:
  SECTIONS = {'classifier': (ClassifierConfig,), 'data': (data_config.LabelledData,),
              'optimizer': (EncoderRate,)}

  def __init__(self, config, context: Context, cache: dict | None = None):
    """`cache`: splits as read from disk (`load_labelled`), shared with other tasks."""
    self.config, self.context = config, context
    self.input_size = config.model.get('input_size')  # images are resized to it (None: text)
    self._cache = {} if cache is None else cache
    self._splits, self._rows, self._confusions = {}, {}, {}
    self.truncated_fraction = {}
    d = config.data
    self.label_names = label_data.class_names(d.name, d.label_key, data_dir=d.data_dir,
                                              manual_dir=d.manual_dir)
    self.num_classes = len(self.label_names)
    vocab_size, self.tokenizer = 0, None
    if is_text(config):
      self.tokenizer = text.load_or_train_tokenizer(
          config, context.workdir, training=context.training,
          train_texts=lambda: self.split(d.train_split).inputs)
      vocab_size = self.tokenizer.vocab_size
    self.encoder = build_model(config.model, vocab_size=vocab_size)
    c = config.classifier
    self.frozen_encoder = config.optimizer.encoder_learning_rate_multiplier == 0
    self.model = build_classifier(self.encoder, num_classes=self.num_classes,
                                  features=MODELS[config.model.name].FEATURES, pooling=c.pooling,
                                  dropout_rate=c.dropout_rate, freeze_encoder=self.frozen_encoder)
    self.loaded_step = None  # the pretraining checkpoint the encoder started from

  # --- data ---
  def split(self, name: str) -> LabelledSplit:
    if name not in self._splits:
      self._splits[name] = load_labelled(self.config, name, self._cache)
    return self._splits[name]

  def rows(self, split: str) -> dict:
    """Model rows of a split: tokens and mask (text) or uint8 images, and labels."""
    if split not in self._rows:
      data = self.split(split)
      if self.tokenizer is None:
        rows = {'image': data.inputs}
      else:
        t, seq_len = self.tokenizer, self.config.text.seq_len
        ids = t.encode_batch(data.inputs)
        first = t.eos_id if self.config.model.name == 'gpt' else t.bos_id
        tokens, mask = text_data.pad_tokens(ids, seq_len, pad_id=t.pad_id, bos_id=first,
                                            eos_id=t.eos_id)
        self.truncated_fraction[split] = float(np.mean([len(x) + 2 > seq_len for x in ids]))
        rows = {'tokens': tokens, 'mask': mask}
      rows['label'] = data.labels.astype(np.int32)
      self._rows[split] = rows
    return self._rows[split]

  # --- the task interface (sslm_jax.tasks) ---
  @functools.cached_property
  def loss_fn(self):
    weights = None
    if self.config.objective.class_weights == 'balanced':
      weights = classification.balanced_class_weights(
          self.split(self.config.data.train_split).labels, self.num_classes)
    return bind_loss(self.model, self.config.objective, class_weights=weights)

  def init_params(self, rng):
    m = self.config.model
    if self.tokenizer is None:
      dummy = (np.zeros((1, m.input_size, m.input_size, m.channels), np.float32),)
    else:
      length = min(self.config.text.seq_len, m.max_len)
      dummy = (np.zeros((1, length), np.int32), np.ones((1, length), bool))
    if not self.context.training:
      # Eval and model selection restore the run's own checkpoint: shapes are all they need,
      # and tracing them skips compiling the initializers (seconds for a conv net on a CPU).
      return jax.eval_shape(self.model.init, rng, *dummy)['params']
    # The initial values do not depend on freezing: one compilation serves every regime.
    params = init_params(self.model.clone(freeze_encoder=False), rng, *dummy)
    c = self.config.classifier
    if c.init_from:
      pretrained = self._pretrained_encoder(params['encoder'])
      params = {**params, 'encoder': reinit_top_blocks(pretrained, params['encoder'],
                                                       c.reinit_top_layers)}
    return params

  def _pretrained_encoder(self, like):
    c = self.config.classifier
    params, self.loaded_step = restore_matching(
        self.context, c.init_from, c.init_step or None, key='classifier.init_from',
        config=self.config, tokenizer=self.tokenizer, like=like)
    return params

  @property
  def num_train_rows(self) -> int:
    return len(self.split(self.config.data.train_split))

  def train_batch_fn(self, batch_size: int, seed: int, rows: slice) -> loader.StepBatches:
    return loader.StepBatches(loader.MemoryRows(self.rows(self.config.data.train_split)),
                              batch_size, seed, rows=rows)

  def device_transform(self, batch):
    return _device_transform(batch, self.input_size)

  def predict(self, params, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, predicted classes, cross-entropy) of every example of the split, in order."""
    rows = self.rows(split)
    predictions, nll = over_rows(
        lambda b: _eval_batch(params, b, model=self.model, input_size=self.input_size), rows,
        self.config.train.eval_batch_size)
    return rows['label'], predictions, nll

  def features(self, params, split: str) -> np.ndarray:
    """(examples, features) float32: what the head reads for every example of the split, in
    order (the encoder frozen, no dropout)."""
    return over_rows(lambda b: _features_batch(params, b, model=self.model,
                                               input_size=self.input_size),
                     self.rows(split), self.config.train.eval_batch_size)

  def evaluate(self, params, split: str) -> dict[str, float]:
    """Exact metrics over the whole split (macro means over the classes present)."""
    labels, predictions, nll = self.predict(params, split)
    confusion = metrics_lib.confusion_matrix(labels, predictions, self.num_classes)
    self._confusions[split] = np.asarray(confusion)
    result = metrics_lib.summary(metrics_lib.from_confusion(confusion))
    result['loss'] = float(nll.mean())
    return {k: result[k] for k in EVAL_METRICS}

  def draw(self, params, workdir: str) -> None:
    """confusion_matrix.png of the latest evaluation of data.eval_split."""
    del params
    split = self.config.data.eval_split
    if split in self._confusions:
      plots.save_confusion_matrix(os.path.join(workdir, 'confusion_matrix.png'),
                                  self._confusions[split], self.label_names,
                                  title=f'{self.config.data.name}:{split}')

  def describe(self) -> dict:
    d = self.config.data
    facts = {'train_examples': self.num_train_rows,
             f'{d.eval_split}_examples': len(self.split(d.eval_split)),
             'num_classes': self.num_classes, 'init_from': self.config.classifier.init_from,
             'frozen_encoder': self.frozen_encoder}
    if self.loaded_step is not None:
      facts['init_step'] = self.loaded_step
    if d.train_split in self.truncated_fraction:
      facts['train_truncated_fraction'] = self.truncated_fraction[d.train_split]
    return facts
