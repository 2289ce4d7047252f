"""Flax Linen modules only: no losses, no optimizers.

`MODELS` lists the model families, one line each: `model.name` -> the family's `model` section
(a `sslm_jax.models.family.ModelConfig` in the family's own file), which holds its keys and
their rules and builds its module.
"""

from sslm_jax.models import conv_vae, electra, heads, text_vae, transformer
from sslm_jax.models.conv_vae import VAE, AutoEncoder, reparameterize  # noqa: F401
from sslm_jax.models.family import ModelConfig
from sslm_jax.models.transformer import GPT, BertEncoder  # noqa: F401

MODELS: dict[str, type[ModelConfig]] = {
    'vae': conv_vae.VAEConfig,
    'ae': conv_vae.AEConfig,
    'simclr': conv_vae.SimCLRConfig,
    'gpt': transformer.GPTConfig,
    'bert': transformer.BertConfig,
    'electra': electra.ElectraConfig,
    'text_vae': text_vae.TextVAEConfig,
}


def family(section) -> ModelConfig:
  """The `model` config section (a ConfigDict with `name`) as its family's dataclass."""
  if section.name not in MODELS:
    raise ValueError(f'model.name={section.name!r}; allowed: {tuple(MODELS)}')
  return MODELS[section.name].of(section)


def build_model(section, vocab_size: int = 0):
  """The module a `model` config section describes (`vocab_size`: the tokenizer's, for text)."""
  return family(section).build(vocab_size)


def backend_facts(section) -> dict:
  """What computes the model's heavy operations, and why, for summary.json."""
  return family(section).backend_facts()


def build_classifier(encoder, *, num_classes: int, features: str = 'code', pooling: str = 'mean',
                     dropout_rate: float = 0.0, freeze_encoder: bool = False):
  """A linear classifier on `encoder` (a module `build_model` made): `sslm_jax.models.heads`.

  `features`: what it reads, its family's `FEATURES` ('tokens': per-token hidden states pooled
  by `pooling`; 'code': the code of `encode`).
  """
  if features == 'tokens':
    return heads.TextClassifier(encoder, num_classes, dropout_rate, freeze_encoder,
                                pooling=pooling)
  return heads.ImageClassifier(encoder, num_classes, dropout_rate, freeze_encoder)
