"""Pipeline configs (`sslm-jax pipeline`, sslm_jax/pipeline.py): a self-supervised run, the
classifiers fine-tuned on its encoder, the same classifier from scratch and a classical baseline.

`pipeline_config()` is the reference every configs/pipeline_*.py starts from; the run configs a
pipeline derives are ordinary run configs (sslm_jax/config.py), checked by `validate` like any
other before any work starts.
"""

import copy
import importlib.util
import os

import ml_collections

from sslm_jax.config import (TEXT_MODELS, ConfigError, _all_ints, _flatten, base_config,
                             problems)

REGIMES = ('full', 'linear_probe')
BASELINES = ('auto', 'none')  # auto: TF-IDF + LinearSVC for text, logistic regression on pixels
# Keys of the pretraining run config that a pipeline's `finetune` section overrides; optimizer
# and train are whole sections (fine-tuning has its own schedule).
FINETUNE_OVERRIDES = {
    'data': ('label_key', 'train_split', 'eval_split', 'test_split', 'validation_fraction',
             'split_seed'),
    'text': ('seq_len',),
    'objective': ('class_weights', 'label_smoothing'),
    'classifier': ('pooling', 'dropout_rate'),
}


def pipeline_config() -> ml_collections.ConfigDict:
  """A pipeline: a self-supervised run (`pretrain`, any run config), then classifiers on its
  encoder (`finetune`) beside the same model from scratch and a classical baseline.

  Fine-tuning reads the labels of the dataset pretraining read (`pretrain.data`); its run
  config is the pretraining config with `objective.name='classification'`, the keys of
  FINETUNE_OVERRIDES taken from `finetune.<section>`, and `finetune.optimizer` / `finetune.train`
  as its optimizer and train sections.
  """
  c = ml_collections.ConfigDict()
  c.name = 'classification'          # the task's name in report.json
  c.pretrain = base_config()
  base = base_config()
  f = c.finetune = ml_collections.ConfigDict()
  f.regimes = ('full',)              # of the pretrained encoder; the first is the report's
  f.scratch = True                   # also train the same model from scratch, same budget
  f.linear_probe_learning_rate = 0.0  # the head-only run's (0 = finetune.optimizer's): a
                                      # linear model usually wants a larger one
  for section, keys in FINETUNE_OVERRIDES.items():
    f[section] = ml_collections.ConfigDict({k: base[section][k] for k in keys})
  f.data.eval_split = 'validation'   # model selection: the checkpoint best on it
  f.data.test_split = 'test'         # evaluated once, on the selected checkpoint
  f.optimizer = base.optimizer
  f.optimizer.encoder_learning_rate_multiplier = 1.0
  f.train = base.train
  f.train.num_epochs = 5
  f.train.keep_checkpoints = 5       # every epoch's, so model selection may restore any
  b = c.baseline = ml_collections.ConfigDict()
  b.name = 'auto'                    # 'auto' (needs scikit-learn) or 'none'
  b.c_values = (0.1, 0.3, 1.0, 3.0)  # inverse regularization strengths, chosen on validation
  b.max_iter = 200                   # logistic regression iterations (images)
  b.ngram_max = 2                    # TF-IDF word n-grams 1..ngram_max (text)
  c.lock()
  return c


PRETRAIN_RUN = 'pretrain'
SCRATCH_RUN = 'finetune_scratch'


def finetune_run_name(regime: str) -> str:
  return 'finetune_pretrained' if regime == 'full' else f'finetune_pretrained_{regime}'


def pretrain_tokenizer(config: ml_collections.ConfigDict, pretrain_dir: str) -> str:
  """The pretraining run's tokenizer: the one it was given (e.g. by the run it continues), else
  the one it trained on its unlabelled training text and saved in its folder."""
  return config.pretrain.text.tokenizer_path or os.path.join(pretrain_dir, 'tokenizer.model')


def finetune_run_config(config: ml_collections.ConfigDict, *, init_from: str,
                        regime: str) -> ml_collections.ConfigDict:
  """The classification run config a pipeline derives (init_from '' = from scratch)."""
  run = copy.deepcopy(config.pretrain)
  f = config.finetune
  run.objective.name = 'classification'
  for section, keys in FINETUNE_OVERRIDES.items():
    for key in keys:
      run[section][key] = f[section][key]
  run.optimizer = copy.deepcopy(f.optimizer)
  run.train = copy.deepcopy(f.train)
  run.data.test_split = ''  # the pipeline evaluates test once, after selecting on validation
  run.classifier.init_from = init_from
  run.text.num_samples = 0
  if config.pretrain.model.name in TEXT_MODELS and init_from:
    run.text.tokenizer_path = pretrain_tokenizer(config, init_from)
  if regime == 'linear_probe':
    run.optimizer.encoder_learning_rate_multiplier = 0.0
    run.optimizer.learning_rate = f.linear_probe_learning_rate or run.optimizer.learning_rate
  return run


def pipeline_runs(config: ml_collections.ConfigDict, workdir: str, regimes=None) -> dict:
  """{run folder name: run config} of every training run of a pipeline, in order (`regimes`:
  instead of config.finetune.regimes)."""
  pretrain_dir = os.path.join(workdir, PRETRAIN_RUN)
  runs = {PRETRAIN_RUN: config.pretrain}
  for regime in config.finetune.regimes if regimes is None else regimes:
    runs[finetune_run_name(regime)] = finetune_run_config(config, init_from=pretrain_dir,
                                                          regime=regime)
  if config.finetune.scratch:
    scratch = finetune_run_config(config, init_from='', regime='full')
    scratch.optimizer.encoder_learning_rate_multiplier = 1.0  # nothing to preserve
    if config.pretrain.model.name in TEXT_MODELS:  # the same tokenizer: only weights differ
      scratch.text.tokenizer_path = pretrain_tokenizer(config, pretrain_dir)
    runs[SCRATCH_RUN] = scratch
  return runs


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):  # e.g. sys.modules[module] is None
    return False


def _finetune_problem(problem: str, run_name: str) -> str:
  """A derived run's problem, named by the pipeline key that set the value when there is one."""
  key = problem.split('=', 1)[0]
  section, _, name = key.partition('.')
  if section in ('optimizer', 'train') or name in FINETUNE_OVERRIDES.get(section, ()):
    return f'finetune.{problem}'
  return f'{problem} (in the {run_name} run the pipeline derives)'


def validate_pipeline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError listing every problem of a pipeline config and the runs it derives."""
  found = []
  reference = _flatten(pipeline_config().to_dict())
  given = _flatten(config.to_dict())
  outside_runs = [k for k in set(reference) | set(given)
                  if not k.startswith(('pretrain.', 'finetune.optimizer.', 'finetune.train.'))]
  for key in sorted(set(outside_runs) - set(reference)):
    found.append(f'unknown key {key!r}')
  for key in sorted(set(outside_runs) & set(reference) - set(given)):
    found.append(f'missing key {key!r}')
  if found:
    raise ConfigError('invalid pipeline config:\n  ' + '\n  '.join(found))

  def check(ok: bool, key: str, allowed: str):
    if not ok:
      found.append(f'{key}={given.get(key)!r} is invalid; allowed: {allowed}')

  check(isinstance(config.name, str) and bool(config.name), 'name', 'a non-empty string')
  regimes = config.finetune.regimes
  check(isinstance(regimes, (tuple, list)) and 0 < len(regimes) == len(set(regimes)) and
        set(regimes) <= set(REGIMES), 'finetune.regimes',
        f'a non-empty tuple of distinct regimes from {REGIMES}')
  check(isinstance(config.finetune.scratch, bool), 'finetune.scratch', 'True or False')
  lp = config.finetune.linear_probe_learning_rate
  check(isinstance(lp, float) and lp >= 0, 'finetune.linear_probe_learning_rate',
        "a float > 0, or 0 for finetune.optimizer.learning_rate")
  check(isinstance(config.finetune.data.test_split, str) and bool(config.finetune.data.test_split),
        'finetune.data.test_split', 'the split the pipeline reports (a non-empty name)')
  t = config.finetune.train
  # Model selection restores the evaluated checkpoint with the best validation macro-F1.
  check(t.eval_every_steps == t.checkpoint_every_steps, 'finetune.train.eval_every_steps',
        f'finetune.train.checkpoint_every_steps={t.checkpoint_every_steps!r} (model selection '
        f'restores the checkpoints that were evaluated)')
  if _all_ints(t.num_epochs, t.num_steps, t.keep_checkpoints, t.eval_every_steps) and \
      t.num_steps == 0 and t.eval_every_steps == 0:
    check(t.keep_checkpoints >= t.num_epochs, 'finetune.train.keep_checkpoints',
          f'>= finetune.train.num_epochs={t.num_epochs}, so model selection may restore any '
          f'evaluated epoch')
  b = config.baseline
  check(b.name in BASELINES, 'baseline.name', ', '.join(map(repr, BASELINES)))
  check(isinstance(b.c_values, (tuple, list)) and len(b.c_values) > 0 and
        all(isinstance(v, float) and v > 0 for v in b.c_values), 'baseline.c_values',
        'a non-empty tuple of floats > 0')
  for key in ('baseline.max_iter', 'baseline.ngram_max'):
    check(_all_ints(given.get(key)) and given.get(key) >= 1, key, 'an integer >= 1')
  if b.name != 'none' and not _installed('sklearn'):
    found.append("baseline.name='auto' needs scikit-learn, which is not installed; allowed: "
                 "pip install 'sslm-jax[baselines]', or baseline.name='none'")
  pretrain_problems = problems(config.pretrain)
  found += [f'pretrain.{p}' for p in pretrain_problems]
  if config.pretrain.objective.name == 'classification':
    found.append("pretrain.objective.name='classification' is invalid; allowed: a "
                 "self-supervised objective of the model (the pipeline adds the classifier)")
  # The runs it derives, also when some regimes are unknown (their names are reported above).
  known = [r for r in regimes if r in REGIMES] if isinstance(regimes, (tuple, list)) else []
  for name, run in pipeline_runs(config, '/workdir', regimes=known or ['full']).items():
    if name != PRETRAIN_RUN:  # what the finetune section brings; pretrain's are named above
      found += [_finetune_problem(p, name) for p in problems(run) if p not in pretrain_problems]
  if found:
    raise ConfigError('invalid pipeline config:\n  ' + '\n  '.join(dict.fromkeys(found)))
  return config
