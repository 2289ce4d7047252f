"""Classification metrics as vectorized pure functions of (labels, predictions, num_classes).

Everything is computed from the confusion matrix (rows: true class, columns: predicted class),
so a split evaluated in batches gives exactly the metrics of the whole split. Definitions follow
scikit-learn's (tested against it):

- precision_c = tp / (tp + fp), recall_c = tp / (tp + fn), f1_c = 2 tp / (2 tp + fp + fn); a
  zero denominator gives 0 (scikit-learn's `zero_division=0`, its default behaviour).
- macro: the unweighted mean over classes. `present_only=True` (the default, as scikit-learn's
  `labels=None`) averages over the classes that occur in the labels or the predictions, so a
  class absent from a small test split does not count as a zero; False averages over all
  `num_classes`.
- weighted: the mean weighted by each class's support (true count).
- micro: pooled counts; with one label per example, micro precision = recall = F1 = accuracy.

Works on numpy or JAX arrays, inside or outside jit (`num_classes` is static). Counts are
float32: exact up to 2**24 examples a cell.
"""

import functools

import jax
import jax.numpy as jnp

AVERAGES = ('macro', 'micro', 'weighted')


@functools.partial(jax.jit, static_argnames='num_classes')
def confusion_matrix(labels, predictions, num_classes: int, weights=None) -> jnp.ndarray:
  """(num_classes, num_classes) counts; `weights` (e.g. 0 on padded rows) weight each example.
  Labels or predictions outside [0, num_classes) are not counted."""
  labels = jnp.asarray(labels).reshape(-1)
  predictions = jnp.asarray(predictions).reshape(-1)
  w = jnp.ones(labels.shape, jnp.float32) if weights is None else \
      jnp.asarray(weights, jnp.float32).reshape(-1)
  classes = jnp.arange(num_classes)
  true_onehot = (labels[:, None] == classes[None, :]).astype(jnp.float32) * w[:, None]
  pred_onehot = (predictions[:, None] == classes[None, :]).astype(jnp.float32)
  return true_onehot.T @ pred_onehot


def _ratio(num, den):
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames='present_only')
def from_confusion(confusion, present_only: bool = True) -> dict[str, jnp.ndarray]:
  """Accuracy, per-class precision/recall/F1/support, and their macro, micro and weighted means.

  Keys: accuracy; precision, recall, f1, support (per class, arrays); {macro, micro,
  weighted}_{precision, recall, f1}.
  """
  cm = jnp.asarray(confusion, jnp.float32)
  tp = jnp.diagonal(cm)
  support = cm.sum(axis=1)       # true count of each class
  predicted = cm.sum(axis=0)     # predicted count of each class
  total = cm.sum()
  per_class = {'precision': _ratio(tp, predicted), 'recall': _ratio(tp, support),
               'f1': _ratio(2 * tp, support + predicted)}
  counted = (support + predicted > 0) if present_only else jnp.ones_like(tp, bool)
  counted = counted.astype(jnp.float32)
  out = {'accuracy': _ratio(tp.sum(), total), 'support': support, **per_class}
  micro = _ratio(tp.sum(), total)  # = pooled precision = pooled recall (one label an example)
  for name, values in per_class.items():
    out[f'macro_{name}'] = _ratio((values * counted).sum(), counted.sum())
    out[f'weighted_{name}'] = _ratio((values * support).sum(), support.sum())
    out[f'micro_{name}'] = micro
  return out


def classification_metrics(labels, predictions, num_classes: int,
                           present_only: bool = True) -> dict[str, jnp.ndarray]:
  """`from_confusion` of the examples, plus the confusion matrix itself ('confusion')."""
  cm = confusion_matrix(labels, predictions, num_classes)
  return {**from_confusion(cm, present_only), 'confusion': cm}


def summary(metrics: dict) -> dict[str, float]:
  """The scalar metrics as floats (what reports and metrics.jsonl hold)."""
  return {k: float(v) for k, v in metrics.items() if jnp.ndim(v) == 0}
