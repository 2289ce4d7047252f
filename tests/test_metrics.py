"""Classification metrics against scikit-learn on random inputs (skipped without scikit-learn)."""

import numpy as np
import pytest

from sslm_jax.eval import metrics

skm = pytest.importorskip('sklearn.metrics',
                          reason="scikit-learn is a test extra: pip install -e '.[test]'")


def random_case(seed: int, num_classes: int, n: int):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n)
  # Mostly right, some classes never predicted or absent: the zero-division corners.
  predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, num_classes, n))
  predictions[predictions == num_classes - 1] = 0
  labels[labels == num_classes - 2] = 1
  return labels, predictions


@pytest.mark.parametrize('seed,num_classes,n', [(0, 2, 50), (1, 5, 200), (2, 12, 300),
                                                (3, 43, 1000), (4, 7, 7)])
def test_metrics_match_sklearn(seed, num_classes, n):
  labels, predictions = random_case(seed, num_classes, n)
  ours = metrics.classification_metrics(labels, predictions, num_classes)
  np.testing.assert_array_equal(
      ours['confusion'], skm.confusion_matrix(labels, predictions, labels=range(num_classes)))
  assert float(ours['accuracy']) == pytest.approx(skm.accuracy_score(labels, predictions))
  p, r, f, s = skm.precision_recall_fscore_support(labels, predictions,
                                                   labels=range(num_classes), zero_division=0)
  np.testing.assert_allclose(ours['precision'], p, atol=1e-6)
  np.testing.assert_allclose(ours['recall'], r, atol=1e-6)
  np.testing.assert_allclose(ours['f1'], f, atol=1e-6)
  np.testing.assert_array_equal(ours['support'], s)
  for average in metrics.AVERAGES:
    # present_only=True is scikit-learn's labels=None: the classes seen in labels or predictions
    p, r, f, _ = skm.precision_recall_fscore_support(labels, predictions, average=average,
                                                     zero_division=0)
    assert float(ours[f'{average}_precision']) == pytest.approx(p, abs=1e-6)
    assert float(ours[f'{average}_recall']) == pytest.approx(r, abs=1e-6)
    assert float(ours[f'{average}_f1']) == pytest.approx(f, abs=1e-6)
  every = metrics.classification_metrics(labels, predictions, num_classes, present_only=False)
  f_all = skm.f1_score(labels, predictions, labels=range(num_classes), average='macro',
                       zero_division=0)
  assert float(every['macro_f1']) == pytest.approx(f_all, abs=1e-6)


def test_batched_confusion_with_padding_is_the_whole_split():
  labels, predictions = random_case(5, 6, 103)
  whole = metrics.confusion_matrix(labels, predictions, 6)
  total = 0
  for start in range(0, 103, 32):  # padded batches of 32, as evaluation sees them
    lab, pred = labels[start:start + 32], predictions[start:start + 32]
    pad = 32 - len(lab)
    weights = np.r_[np.ones(len(lab)), np.zeros(pad)]
    total = total + metrics.confusion_matrix(np.r_[lab, np.zeros(pad, int)],
                                             np.r_[pred, np.zeros(pad, int)], 6, weights)
  np.testing.assert_array_equal(total, whole)
  assert metrics.summary(metrics.from_confusion(total)) == \
      metrics.summary(metrics.from_confusion(whole))
