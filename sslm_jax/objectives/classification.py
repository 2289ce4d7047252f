"""Classification objective as pure functions: cross-entropy with optional class weights and
label smoothing.

Batches (from `sslm_jax.tasks.classification`): `label` (batch,) int, and the model's input:
`tokens` (batch, length) int32 with `mask` (batch, length) True on real tokens, or `image`
(batch, H, W, C) float in [-1, 1]. An optional `row_mask` (batch,) float is 0 on padded rows.

With class weights w the loss is sum_i w[y_i] l_i / sum_i w[y_i] (a weighted mean, as PyTorch's
`CrossEntropyLoss(weight=w)`), so its scale does not depend on the weights' scale.

`ClassificationConfig` is the objective section; the classifier's own keys are the classifier
task's (`sslm_jax.tasks.classification`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sslm_jax.config import Checker, Section

CLASS_WEIGHTS = ('none', 'balanced')


@dataclasses.dataclass(frozen=True)
class ClassificationConfig(Section):
  class_weights: str = 'none'     # 'balanced' = n / (classes * class count)
  label_smoothing: float = 0.0

  def check(self, c: Checker) -> None:
    c.choice('class_weights', CLASS_WEIGHTS)
    c.number('label_smoothing', 0, 1, high_open=True)


def balanced_class_weights(labels, num_classes: int) -> np.ndarray:
  """scikit-learn's 'balanced' weights n / (num_classes * count_c); 0 for a class without
  examples (it never occurs in the loss)."""
  counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes)[:num_classes]
  present = max(int((counts > 0).sum()), 1)
  return np.where(counts > 0, counts.sum() / (present * np.maximum(counts, 1)),
                  0.0).astype(np.float32)


def model_inputs(batch) -> tuple[jax.Array, jax.Array | None]:
  """(inputs, padding mask or None) of a classification batch."""
  if 'tokens' in batch:
    return batch['tokens'], batch.get('mask')
  return batch['image'], None


def logits_of(params, batch, rng, *, model, train: bool) -> jax.Array:
  """(batch, num_classes) float32 logits; dropout draws from `rng` when training."""
  inputs, mask = model_inputs(batch)
  logits = model.apply({'params': params}, inputs, mask, deterministic=not train,
                       rngs={'dropout': rng} if train else None)
  return logits.astype(jnp.float32)


def cross_entropy(logits, labels, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy (nats) against one-hot labels smoothed towards uniform."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  if label_smoothing:
    nll = (1 - label_smoothing) * nll - label_smoothing * log_p.mean(axis=-1)
  return nll


def classification_loss(params, batch, rng, *, model, config, class_weights=None):
  """The training loss (see the module docstring) and metrics: accuracy, cross_entropy."""
  logits = logits_of(params, batch, rng, model=model, train=True)
  labels = batch['label']
  rows = batch.get('row_mask', jnp.ones(labels.shape, jnp.float32))
  weights = rows if class_weights is None else rows * jnp.asarray(class_weights)[labels]
  nll = cross_entropy(logits, labels, config.label_smoothing)
  loss = (weights * nll).sum() / jnp.maximum(weights.sum(), 1e-12)
  plain = cross_entropy(logits, labels)
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  n = jnp.maximum(rows.sum(), 1.0)
  return loss, {'accuracy': (correct * rows).sum() / n, 'cross_entropy': (plain * rows).sum() / n}


def predictions_and_nll(params, batch, *, model) -> tuple[jax.Array, jax.Array]:
  """Evaluation: each row's predicted class and cross-entropy (no dropout, no weights)."""
  logits = logits_of(params, batch, None, model=model, train=False)
  return jnp.argmax(logits, axis=-1), cross_entropy(logits, batch['label'])
