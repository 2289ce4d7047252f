"""Classical baselines on the classifier's own splits (scikit-learn, an optional dependency:
`pip install 'sslm-jax[baselines]'`).

- text: TF-IDF of word 1..ngram_max-grams (sublinear term frequency) + a linear SVM (LinearSVC),
- images: multinomial logistic regression on the raw pixels scaled to [0, 1];
- encoder features (`fit_on_features`, a pipeline's `baseline.probe_features`): the same
  logistic regression on standardized features of a frozen encoder.

The regularization C is the value of `c_values` with the best macro-F1 on the validation split
(never the test split); the test split is predicted once, by that model.
"""

import dataclasses
import importlib.util
import time

import numpy as np

from sslm_jax.config import Checker, Section
from sslm_jax.eval import metrics as metrics_lib

INSTALL_HINT = "pip install 'sslm-jax[baselines]' (scikit-learn), or set baseline.name='none'"
BASELINES = ('auto', 'none')  # auto: TF-IDF + LinearSVC for text, logistic regression on pixels


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # e.g. sys.modules[module] is None
    return False


@dataclasses.dataclass(frozen=True)
class BaselineConfig(Section):
  """A pipeline's `baseline` section."""
  name: str = 'auto'              # 'auto' (needs scikit-learn) or 'none'
  c_values: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)  # inverse regularization strengths,
                                                      # chosen on validation
  max_iter: int = 200             # logistic regression iterations (images)
  ngram_max: int = 2              # TF-IDF word n-grams 1..ngram_max (text)
  # Also a linear probe by logistic regression (`fit_on_features`, same C values) on the frozen
  # features the classifier's head reads: of the pretrained encoder, and of the same encoder
  # at its random initialization (the control: what the architecture alone gives).
  probe_features: bool = False

  def check(self, c: Checker) -> None:
    if c.choice('name', BASELINES) and self.name != 'none':
      c.check(_installed('sklearn'), 'name',
              "'auto' only with scikit-learn, which is not installed: it needs scikit-learn: "
              "pip install 'sslm-jax[baselines]', or set baseline.name='none'")
    if self.probe_features is True:
      c.check(_installed('sklearn'), 'probe_features',
              "True only with scikit-learn, which is not installed: pip install "
              "'sslm-jax[baselines]', or set baseline.probe_features=False")
    c.check(isinstance(self.c_values, (tuple, list)) and len(self.c_values) > 0 and
            all(isinstance(v, float) and v > 0 for v in self.c_values), 'c_values',
            'a non-empty tuple of floats > 0')
    c.integer('max_iter')
    c.integer('ngram_max')


def describe(is_text: bool, ngram_max: int = 2) -> str:
  if is_text:
    return f'TF-IDF (word 1-{ngram_max}-grams, sublinear tf) + LinearSVC'
  return 'logistic regression on raw pixels'


def _features(is_text: bool, train, others, ngram_max: int):
  if is_text:
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, ngram_max))
    return vectorizer.fit_transform(train), [vectorizer.transform(x) for x in others]
  flat = lambda x: np.asarray(x, np.float32).reshape(len(x), -1) / 255.0  # noqa: E731
  return flat(train), [flat(x) for x in others]


def _model(is_text: bool, c: float, class_weight, max_iter: int, seed: int):
  if is_text:
    from sklearn.svm import LinearSVC  # noqa: PLC0415
    return LinearSVC(C=c, class_weight=class_weight, random_state=seed)
  from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
  return LogisticRegression(C=c, class_weight=class_weight, max_iter=max_iter)


def _require_sklearn() -> None:
  try:
    import sklearn  # noqa: F401, PLC0415  pylint: disable=unused-import
  except ImportError as e:
    raise ImportError(f'the baseline needs scikit-learn: {INSTALL_HINT}') from e


def _select(make_model, x_train, y_train, x_val, y_val, x_test, *, c_values, num_classes: int,
            method: str, started: float) -> dict:
  """Fits `make_model(c)` for each C; the best on validation macro-F1 predicts test."""
  scores, models = {}, {}
  for c in c_values:
    model = make_model(float(c)).fit(x_train, y_train)
    scores[float(c)] = float(metrics_lib.classification_metrics(
        y_val, model.predict(x_val), num_classes)['macro_f1'])
    models[float(c)] = model
  best = max(scores, key=lambda c: (scores[c], -c))  # ties: the stronger regularization
  return {'method': method, 'c': best, 'validation_macro_f1': scores,
          'validation_predictions': models[best].predict(x_val).astype(np.int64),
          'test_predictions': models[best].predict(x_test).astype(np.int64),
          'fit_seconds': time.time() - started}


def fit_and_predict(is_text: bool, train, validation, test, *, num_classes: int,
                    c_values=(1.0,), class_weight: str | None = None, max_iter: int = 200,
                    ngram_max: int = 2, seed: int = 0) -> dict:
  """`train`, `validation`, `test`: (inputs, labels) pairs (texts or uint8 images).

  Returns {'method', 'c', 'validation_macro_f1' (by C), 'validation_predictions',
  'test_predictions', 'fit_seconds'}.
  """
  _require_sklearn()
  started = time.time()
  x_train, (x_val, x_test) = _features(is_text, train[0], (validation[0], test[0]), ngram_max)
  return _select(lambda c: _model(is_text, c, class_weight, max_iter, seed), x_train, train[1],
                 x_val, validation[1], x_test, c_values=c_values, num_classes=num_classes,
                 method=describe(is_text, ngram_max), started=started)


def fit_on_features(train, validation, test, *, method: str, num_classes: int,
                    c_values=(1.0,), class_weight: str | None = None,
                    max_iter: int = 200) -> dict:
  """A linear probe by the image baseline's classifier: `train`, `validation`, `test` are
  (features (N, F), labels) of a frozen encoder; each feature is standardized by its mean and
  deviation on `train` (encoders' features differ in scale by orders of magnitude, pixels do
  not), then multinomial logistic regression (at most `max_iter` L-BFGS iterations), C chosen
  on validation. Returns as `fit_and_predict`."""
  _require_sklearn()
  from sklearn.pipeline import make_pipeline  # noqa: PLC0415
  from sklearn.preprocessing import StandardScaler  # noqa: PLC0415
  started = time.time()
  make = lambda c: make_pipeline(StandardScaler(),  # noqa: E731
                                 _model(False, c, class_weight, max_iter, seed=0))
  return _select(make, train[0], train[1], validation[0], validation[1], test[0],
                 c_values=c_values, num_classes=num_classes, method=method, started=started)
