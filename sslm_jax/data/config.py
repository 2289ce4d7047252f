"""The `data` and `text` sections: what a run reads and how its text is cleaned and tokenized.

`data` is composed of fragments by what the run reads (`sslm_jax.runs.run_config`): `Data`
always, `ImageData` or `TextData` by the model's inputs, `LabelledData` for classifiers. `text`
(`Text`) is there for text models only. The allowed values are the data modules' own.
"""

import dataclasses

from sslm_jax.config import Checker, Section
from sslm_jax.data.loader import PIPELINES
from sslm_jax.data.text import NORMALIZATIONS
from sslm_jax.data.tokenizer import MODEL_TYPES


@dataclasses.dataclass(frozen=True)
class Data(Section):
  """Which tfds dataset and splits a run reads, and how (sslm_jax/data/loader.py)."""
  name: str = 'fashion_mnist'     # any tfds dataset; idx_images/<name>, text_files/<name>: local
  data_dir: str = ''              # '' = tfds' default (~/tensorflow_datasets)
  manual_dir: str = ''            # local files for builders that read a manual dir
  train_split: str = 'train'
  eval_split: str = 'test'        # evaluated during training
  test_split: str = ''            # also evaluated at the end when set (e.g. eval on validation)
  # 'memory' holds the splits in host memory; 'grain' streams them through Grain (images from
  # tfds records; a causal LM's rows from data.token_dir).
  pipeline: str = 'memory'
  num_workers: int = 0            # grain: worker processes reading batches (0: threads only)
  prefetch: int = 4               # batches read ahead by as many threads (2 more on devices)

  def check(self, c: Checker) -> None:
    c.nonempty('name', 'a tfds dataset name')
    for key in ('train_split', 'eval_split'):
      c.nonempty(key)
    c.check(isinstance(self.test_split, str), 'test_split', "a split name, or '' for none")
    c.choice('pipeline', PIPELINES)
    c.integer('num_workers', minimum=0)
    c.integer('prefetch')
    if self.pipeline == 'grain':
      c.check(c.facts.get('streams', False), 'pipeline',
              "'memory' for this run ('grain' streams the images of vae/ae/simclr runs and the "
              "token shards of gpt causal_lm runs)")
    else:
      c.check(self.num_workers == 0, 'num_workers',
              "0 with data.pipeline='memory' (worker processes would copy the in-memory splits)")


@dataclasses.dataclass(frozen=True)
class ImageData(Section):
  image_key: str = 'image'

  def check(self, c: Checker) -> None:
    c.nonempty('image_key')


@dataclasses.dataclass(frozen=True)
class TextData(Section):
  text_key: str = 'text'
  token_dir: str = ''             # grain: the folder `sslm-jax data tokenize` wrote

  def check(self, c: Checker) -> None:
    c.nonempty('text_key')
    c.check(isinstance(self.token_dir, str), 'token_dir', "a folder, or '' for none")
    if c.get('pipeline') == 'grain':
      c.check(bool(self.token_dir), 'token_dir',
              "the folder `sslm-jax data tokenize` wrote, with data.pipeline='grain'")


@dataclasses.dataclass(frozen=True)
class LabelledData(Section):
  """Classification: the labels, and a validation split carved out of the training split."""
  label_key: str = 'label'        # a ClassLabel feature
  validation_fraction: float = 0.0  # > 0 carves data.eval_split out of data.train_split,
  split_seed: int = 0             # stratified by class, with this seed

  def check(self, c: Checker) -> None:
    c.nonempty('label_key')
    if c.number('validation_fraction', 0, 1, high_open=True,
                note=' (0 = data.eval_split is a split of the dataset)') and \
        self.validation_fraction > 0:
      train, evaluated = c.get('train_split'), c.get('eval_split')
      c.check(evaluated != train, 'eval_split',
              f'a name other than data.train_split={train!r} for the split carved out of it')
      c.check(c.get('test_split') not in (train, evaluated), 'test_split',
              'a split other than the training split and the one carved out of it')
    c.integer('split_seed', minimum=0)


@dataclasses.dataclass(frozen=True)
class Text(Section):
  """The `text` section: cleaning (sslm_jax/data/text.py), tokenizer (data/tokenizer.py),
  rows, and the samples a language model writes."""
  seq_len: int = 128
  vocab_size: int = 8000
  tokenizer_type: str = 'unigram'
  tokenizer_path: str = ''        # '' = train one on the train split, saved in the workdir
  normalization: str = 'NFKC'
  remove_symbols: str = ''        # characters deleted by the cleaner
  lowercase: bool = False
  remove_stopwords: bool = False  # the seed's option; off for language modelling
  num_samples: int = 4            # generated samples written at each evaluation
  sample_prompt: str = ''

  def check(self, c: Checker) -> None:
    c.integer('seq_len')
    c.integer('vocab_size', minimum=16)
    c.choice('tokenizer_type', MODEL_TYPES)
    c.choice('normalization', NORMALIZATIONS)
    c.integer('num_samples', minimum=0)
