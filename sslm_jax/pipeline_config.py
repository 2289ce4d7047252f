"""Pipeline configs (`sslm-jax pipeline`, sslm_jax/pipeline.py): a self-supervised run, the
classifiers fine-tuned on its encoder, the same classifier from scratch and a classical baseline.

`pipeline_config(pretrain)` is what every configs/pipeline_*.py starts from: `pretrain` is any
run config (sslm_jax.runs.run_config), `finetune` (`FinetuneConfig`, and the classifier keys of
FINETUNE_OVERRIDES with the optimizer and train sections of a classifier of that model) and
`baseline` (sslm_jax/eval/baselines.py) the rest. The run configs a pipeline derives are ordinary
run configs, checked like any other before any work starts.
"""

import copy
import dataclasses
import os

import ml_collections

from sslm_jax import runs
from sslm_jax.config import (TOP, Checker, ConfigError, Section, check_problems, flatten,
                             key_problems, raise_if)
from sslm_jax.eval.baselines import BaselineConfig
from sslm_jax.models import MODELS
from sslm_jax.tasks.base import TOKENIZER_FILE

REGIMES = ('full', 'linear_probe')
# Keys of the pretraining run config that a pipeline's `finetune` section overrides; optimizer
# and train are whole sections (fine-tuning has its own schedule).
FINETUNE_OVERRIDES = {
    'data': ('label_key', 'train_split', 'eval_split', 'test_split', 'validation_fraction',
             'split_seed'),
    'text': ('seq_len',),
    'objective': ('class_weights', 'label_smoothing'),
    'classifier': ('pooling', 'dropout_rate', 'reinit_top_layers'),
}
_RUN_SECTIONS = ('finetune.optimizer.', 'finetune.train.')  # checked through the derived runs
PRETRAIN_RUN = 'pretrain'
SCRATCH_RUN = 'finetune_scratch'


@dataclasses.dataclass(frozen=True)
class PipelineKeys(Section):
  name: str = 'classification'    # the task's name in report.json

  def check(self, c: Checker) -> None:
    c.nonempty('name')


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(Section):
  """The pipeline's own `finetune` keys (its other keys are the derived runs')."""
  regimes: tuple[str, ...] = ('full',)  # of the pretrained encoder; the first is the report's
  scratch: bool = True            # also train the same model from scratch, same budget
  linear_probe_learning_rate: float = 0.0  # the head-only run's (0 = finetune.optimizer's): a
                                           # linear model usually wants a larger one
  # The scratch run's model.weight_init ('' = the pretraining run's): the initial weights that
  # pretrain best need not be the best start for training a classifier from random weights
  # (README, "Fortunes: initial weights and positions"); the control should be the stronger.
  scratch_weight_init: str = ''
  # Fine-tuning seeds besides the pretraining run's `seed`, which the first run of each kind
  # takes: on a few thousand labelled examples two seeds of one classifier can differ by more
  # than two pretraining objectives do (README, "Fortunes"), so every fine-tuning run (each
  # regime, and scratch) is repeated with `seed` = each of these, in <run>_seed<s>, and the
  # report compares means over all seeds.
  extra_seeds: tuple[int, ...] = ()

  def check(self, c: Checker) -> None:
    c.check(isinstance(self.regimes, (tuple, list)) and 0 < len(self.regimes) ==
            len(set(self.regimes)) and set(self.regimes) <= set(REGIMES), 'regimes',
            f'a non-empty tuple of distinct regimes from {REGIMES}')
    c.number('linear_probe_learning_rate', 0,
             note=', 0 for finetune.optimizer.learning_rate')
    if self.scratch_weight_init:
      model = MODELS.get(c.get('pretrain.model.name'))
      inits = getattr(model, 'WEIGHT_INITS', ())
      c.check(self.scratch_weight_init in inits, 'scratch_weight_init',
              f"'' (the pretraining model's), or one of {inits}" if inits else
              f"'' (model {c.get('pretrain.model.name')!r} has no weight_init)")
    seed = c.get('pretrain.seed')
    # Usable seeds first: set() would raise on an unhashable one instead of naming it.
    c.check(isinstance(self.extra_seeds, (tuple, list)) and
            len(_seeds(self.extra_seeds)) == len(self.extra_seeds) and
            len(set(self.extra_seeds)) == len(self.extra_seeds) and
            seed not in self.extra_seeds, 'extra_seeds',
            f'a tuple of distinct integer seeds >= 0 other than pretrain.seed={seed!r} (the '
            f'first fine-tuning run of each kind takes that one)')
    c.nonempty('finetune.data.test_split', 'the split the pipeline reports (a non-empty name)')
    # Model selection restores the evaluated checkpoint with the best validation macro-F1.
    t = {k: c.get(f'finetune.train.{k}') for k in (
        'eval_every_steps', 'checkpoint_every_steps', 'keep_checkpoints', 'num_epochs',
        'num_steps')}
    c.check(t['eval_every_steps'] == t['checkpoint_every_steps'],
            'finetune.train.eval_every_steps',
            f'finetune.train.checkpoint_every_steps={t["checkpoint_every_steps"]!r} (model '
            f'selection restores the checkpoints that were evaluated)')
    if all(isinstance(v, int) for v in t.values()) and t['num_steps'] == 0 and \
        t['eval_every_steps'] == 0:
      c.check(t['keep_checkpoints'] >= t['num_epochs'], 'finetune.train.keep_checkpoints',
              f'>= finetune.train.num_epochs={t["num_epochs"]}, so model selection may restore '
              f'any evaluated epoch')


SCHEMA = {TOP: (PipelineKeys,), 'finetune': (FinetuneConfig,), 'baseline': (BaselineConfig,)}


def pipeline_config(pretrain: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """A pipeline: a self-supervised run (`pretrain`, any run config; the seed's VAE by default),
  then classifiers on its encoder (`finetune`) beside the same model from scratch and a
  classical baseline.

  Fine-tuning reads the labels of the dataset pretraining read (`pretrain.data`); its run
  config is the pretraining config with `objective.name='classification'`, the keys of
  FINETUNE_OVERRIDES taken from `finetune.<section>`, and `finetune.optimizer` / `finetune.train`
  as its optimizer and train sections.
  """
  pretrain = runs.run_config() if pretrain is None else pretrain
  classifier = runs.run_config(pretrain.model.name, runs.CLASSIFICATION)
  c = ml_collections.ConfigDict({**PipelineKeys.defaults()})
  c.pretrain = pretrain
  f = c.finetune = ml_collections.ConfigDict(FinetuneConfig.defaults())
  for section, keys in FINETUNE_OVERRIDES.items():
    if section in classifier:
      f[section] = ml_collections.ConfigDict({k: classifier[section][k] for k in keys})
  f.data.eval_split = 'validation'   # model selection: the checkpoint best on it
  f.data.test_split = 'test'         # evaluated once, on the selected checkpoint
  f.optimizer = copy.deepcopy(classifier.optimizer)
  f.train = copy.deepcopy(classifier.train)
  f.train.num_epochs = 5
  f.train.keep_checkpoints = 5       # every epoch's, so model selection may restore any
  c.baseline = ml_collections.ConfigDict(BaselineConfig.defaults())
  c.lock()
  return c


def _seeds(values) -> list[int]:
  """The usable seeds among `values` (a config's extra_seeds, checked or not)."""
  if not isinstance(values, (tuple, list)):
    return []
  return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]


def seed_run_name(run: str, seed: int) -> str:
  """The folder of fine-tuning run `run` repeated with another seed (finetune.extra_seeds)."""
  return f'{run}_seed{seed}'


def finetune_run_name(regime: str) -> str:
  return 'finetune_pretrained' if regime == 'full' else f'finetune_pretrained_{regime}'


def pretrain_tokenizer(config: ml_collections.ConfigDict, pretrain_dir: str) -> str:
  """The pretraining run's tokenizer: the one it was given (e.g. by the run it continues), else
  the one it trained on its unlabelled training text and saved in its folder."""
  return config.pretrain.text.tokenizer_path or os.path.join(pretrain_dir, TOKENIZER_FILE)


def finetune_run_config(config: ml_collections.ConfigDict, *, init_from: str,
                        regime: str) -> ml_collections.ConfigDict:
  """The classification run config a pipeline derives (init_from '' = from scratch)."""
  values = config.pretrain.to_dict()
  values['objective']['name'] = runs.CLASSIFICATION
  run = runs.reshape(ml_collections.ConfigDict(values))
  f = config.finetune
  for section, keys in FINETUNE_OVERRIDES.items():
    if section in run:
      for key in keys:
        run[section][key] = f[section][key]
  run.optimizer = copy.deepcopy(f.optimizer)
  run.train = copy.deepcopy(f.train)
  run.data.test_split = ''  # the pipeline evaluates test once, after selecting on validation
  run.classifier.init_from = init_from
  if 'text' in run:
    run.text.num_samples = 0
    if init_from:
      run.text.tokenizer_path = pretrain_tokenizer(config, init_from)
  if regime == 'linear_probe':
    run.optimizer.encoder_learning_rate_multiplier = 0.0
    run.optimizer.learning_rate = f.linear_probe_learning_rate or run.optimizer.learning_rate
  return run


def pipeline_runs(config: ml_collections.ConfigDict, workdir: str, regimes=None) -> dict:
  """{run folder name: run config} of every training run of a pipeline, in order (`regimes`:
  instead of config.finetune.regimes)."""
  pretrain_dir = os.path.join(workdir, PRETRAIN_RUN)
  runs_ = {PRETRAIN_RUN: config.pretrain}
  for regime in config.finetune.regimes if regimes is None else regimes:
    runs_[finetune_run_name(regime)] = finetune_run_config(config, init_from=pretrain_dir,
                                                           regime=regime)
  if config.finetune.scratch:
    scratch = finetune_run_config(config, init_from='', regime='full')
    # Nothing to preserve: every layer of a random encoder at the head's rate.
    scratch.optimizer.encoder_learning_rate_multiplier = 1.0
    scratch.optimizer.layer_decay = 1.0
    if 'text' in scratch:  # the same tokenizer: only weights differ
      scratch.text.tokenizer_path = pretrain_tokenizer(config, pretrain_dir)
    if config.finetune.scratch_weight_init and 'weight_init' in scratch.model:  # else checked
      scratch.model.weight_init = config.finetune.scratch_weight_init
    runs_[SCRATCH_RUN] = scratch
  # Each seed's runs together, after the first seed's: a pipeline stopped part way through still
  # holds pretrained and scratch runs of the same seeds.
  first_seed = [name for name in runs_ if name != PRETRAIN_RUN]
  for seed in _seeds(config.finetune.extra_seeds):
    for name in first_seed:
      again = copy.deepcopy(runs_[name])
      again.seed = seed
      runs_[seed_run_name(name, seed)] = again
  return runs_


def seed_runs(config: ml_collections.ConfigDict, run: str) -> dict:
  """{seed: run folder name} of fine-tuning run `run` over the pretraining run's seed and
  finetune.extra_seeds, in that order."""
  seeds = [config.pretrain.seed] + _seeds(config.finetune.extra_seeds)
  return {seed: run if i == 0 else seed_run_name(run, seed) for i, seed in enumerate(seeds)}


def _finetune_problem(problem: str, run_name: str) -> str:
  """A derived run's problem, named by the pipeline key that set the value when there is one."""
  key = problem.split('=', 1)[0]
  section, _, name = key.partition('.')
  if section in ('optimizer', 'train') or name in FINETUNE_OVERRIDES.get(section, ()):
    return f'finetune.{problem}'
  return f'{problem} (in the {run_name} run the pipeline derives)'


def _key_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Unknown and missing keys outside the runs (their own checks name theirs)."""
  model = config.pretrain.model.get('name') if 'pretrain' in config else None
  if model not in MODELS:
    return [f'pretrain.model.name={model!r} is invalid; allowed: '
            f'{", ".join(map(repr, MODELS))}']
  outside = lambda keys: {k for k in keys if not k.startswith(('pretrain.',) + _RUN_SECTIONS)}  # noqa: E731
  return key_problems(outside(flatten(config.to_dict())),
                      outside(flatten(pipeline_config(config.pretrain).to_dict())))


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every problem of a pipeline config and of the runs it derives, one message each."""
  found = _key_problems(config)
  if found:
    return found
  found = check_problems(flatten(config.to_dict()), SCHEMA)
  pretrain_problems = runs.problems(config.pretrain)
  found += [f'pretrain.{p}' for p in pretrain_problems]
  if config.pretrain.objective.name == runs.CLASSIFICATION:
    found.append("pretrain.objective.name='classification' is invalid; allowed: a "
                 "self-supervised objective of the model (the pipeline adds the classifier)")
  if pretrain_problems and any(p.startswith(('model.name', 'objective.name'))
                               for p in pretrain_problems):
    return found  # the runs cannot be derived
  # The runs it derives, also when some regimes are unknown (their names are reported above).
  regimes = config.finetune.regimes
  known = [r for r in regimes if r in REGIMES] if isinstance(regimes, (tuple, list)) else []
  for name, run in pipeline_runs(config, '/workdir', regimes=known or ['full']).items():
    if name != PRETRAIN_RUN:  # what the finetune section brings; pretrain's are named above
      found += [_finetune_problem(p, name) for p in runs.problems(run)
                if p not in pretrain_problems]
  return found


def validate_pipeline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError listing every problem of a pipeline config and the runs it derives."""
  try:
    found = problems(config)
  except (AttributeError, KeyError) as e:  # a pipeline whose sections are not all there
    raise ConfigError(f'invalid pipeline config: {type(e).__name__}: {e}') from e
  raise_if(found, 'invalid pipeline config')
  return config
