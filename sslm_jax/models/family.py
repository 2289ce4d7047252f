"""What a model family is: its `model` config section, which builds its module.

A family's section subclasses `ModelConfig` in the family's own file: its fields are the
`model.*` keys (besides `name`) and the module's fields of the same names, its `check` their
rules, and its class variables say what else depends on the family: the module it builds, its
inputs ('image' or 'text': which data and text sections a run reads), the self-supervised
objectives that train it (any family can also be classified: objective 'classification'), what a
classifier on it reads and the poolings it may use. `sslm_jax.models.MODELS` lists the families,
one line each.
"""

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from sslm_jax.config import Checker, Section

DTYPES = ('float32', 'bfloat16')  # compute dtypes; parameters and optimizer state stay float32


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
  """Base of a family's `model` section."""
  MODULE: ClassVar[type[nn.Module]]
  INPUTS: ClassVar[str]                   # 'image' or 'text'
  OBJECTIVES: ClassVar[tuple[str, ...]]   # self-supervised objectives (sslm_jax.objectives)
  POOLINGS: ClassVar[tuple[str, ...]] = ('mean',)  # a classifier's (sslm_jax.models.heads)
  # What a classifier reads: 'code' (`encode(inputs)` -> (code, _)) or 'tokens' (the per-token
  # hidden states of `encode`, pooled by classifier.pooling).
  FEATURES: ClassVar[str] = 'code'

  dtype: str = 'float32'  # compute dtype; parameters and optimizer state stay float32

  def check(self, c: Checker) -> None:
    c.choice('dtype', DTYPES)

  def module_fields(self) -> dict:
    """The module's fields: the section's own, with the dtype as a jnp.dtype."""
    return {**dataclasses.asdict(self), 'dtype': jnp.dtype(self.dtype)}

  def build(self, vocab_size: int = 0) -> nn.Module:
    """The family's module (`vocab_size`: the tokenizer's, for text)."""
    del vocab_size
    return self.MODULE(**self.module_fields())

  def backend_facts(self) -> dict:
    """What computes the model's heavy operations, for summary.json (see the families)."""
    return {}
