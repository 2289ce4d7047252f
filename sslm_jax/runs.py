"""A run: its config, its folder and its setup.

A run config holds the keys its run reads and no other: `run_config(model, objective)` composes
the sections of the model family (`sslm_jax.models.MODELS`), of the objective
(`sslm_jax.objectives.OBJECTIVES`), of the task that runs it (its `SECTIONS`), the data and text
sections its inputs need (sslm_jax/data/config.py) and the sections of every run: `seed`,
`optimizer` (sslm_jax/train/optim.py), `train` (train/config.py), `parallel`
(train/parallel.py). Each key is defined, with its default and rules, in exactly one of those
files; `validate` runs all their checks and reports every problem at once.

A run folder holds its config as config.json (`record_config`); `saved_config` reads it back,
also a folder written before run configs held only their own keys (then every key the run does
not read must hold a value a config could have had there by default). `check_workdir` refuses
to continue a run with settings that change what it computes. `setup` builds the task, optimizer
and initial state; `restore_params` a checkpoint's parameters, for eval, sampling and the tasks
that start from another run (given to them as `Context.restore`: tasks never import this).
"""

import dataclasses
import functools
import os

import jax
import ml_collections
import optax

from sslm_jax import config as config_lib
from sslm_jax.config import TOP, Checker, ConfigError, Section
from sslm_jax.data import config as data_config
from sslm_jax.data.loader import steps_per_epoch
from sslm_jax.models import MODELS
from sslm_jax.objectives import OBJECTIVES
from sslm_jax.tasks import TASKS, Context, Restored, Task, build_task
from sslm_jax.train import checkpoint as ckpt_lib
from sslm_jax.train import optim
from sslm_jax.train.config import TrainConfig
from sslm_jax.train.parallel import ParallelConfig
from sslm_jax.train.state import TrainState, create_train_state
from sslm_jax.train.writers import write_atomic

CLASSIFICATION = 'classification'  # an objective every model family can be trained by
# What pipelines before run configs held only their own keys wrote into keys a run does not
# read (a classifier's text.num_samples, whatever its inputs).
_LEGACY_UNUSED = {'text.num_samples': (0,)}


@dataclasses.dataclass(frozen=True)
class RunKeys(Section):
  """A run's top-level keys."""
  seed: int = 0  # the initial parameters and all randomness are functions of it

  def check(self, c: Checker) -> None:
    c.integer('seed', minimum=0)


@dataclasses.dataclass(frozen=True)
class Name(Section):
  """The key that selects a model family or an objective (checked by `problems`)."""
  name: str = ''


def objectives_of(model: str) -> tuple[str, ...]:
  """The objectives a model family can be trained by."""
  return MODELS[model].OBJECTIVES + (CLASSIFICATION,)


def schema(model: str, objective: str) -> config_lib.Schema:
  """The sections, and the dataclasses of each, of a run of `model` trained by `objective`.

  The objective's section comes before the model's: its rules on model keys are the stricter.
  """
  family, task = MODELS[model], TASKS[OBJECTIVES[objective].task]
  text = family.INPUTS == 'text'
  sections = {TOP: (RunKeys,), 'objective': (Name, OBJECTIVES[objective].config),
              'model': (Name, family),
              'data': (data_config.Data, data_config.TextData if text else data_config.ImageData),
              **({'text': (data_config.Text,)} if text else {}),
              'optimizer': (optim.OptimizerConfig,), 'train': (TrainConfig,),
              'parallel': (ParallelConfig,)}
  for section, fragments in task.SECTIONS.items():
    sections[section] = sections.get(section, ()) + fragments
  return sections


def run_config(model: str = 'vae', objective: str | None = None) -> ml_collections.ConfigDict:
  """The locked config of a run of `model` trained by `objective` (default: the family's first
  self-supervised objective), with every key at its default. The seed's hyper-parameters
  (seed-reference.md) are the defaults: batch 64, Adam 1e-3, 30 epochs, latent 32."""
  if model not in MODELS:
    raise ConfigError(f'model={model!r}; allowed: {", ".join(map(repr, MODELS))}')
  objective = objective or MODELS[model].OBJECTIVES[0]
  if objective not in objectives_of(model):
    raise ConfigError(f'objective={objective!r} for model {model!r}; allowed: '
                      f'{", ".join(map(repr, objectives_of(model)))}')
  return config_lib.compose(schema(model, objective),
                            **{'model.name': model, 'objective.name': objective})


def _name_problems(model, objective) -> list[str]:
  if model is None or objective is None:
    return [f'missing key {k!r}' for k, v in (('model.name', model), ('objective.name', objective))
            if v is None]
  if model not in MODELS:
    return [f'model.name={model!r} is invalid; allowed: {", ".join(map(repr, MODELS))}']
  if objective not in objectives_of(model):
    return [f'objective.name={objective!r} is invalid; allowed: '
            f'{", ".join(map(repr, objectives_of(model)))}']
  return []


def problems(config: ml_collections.ConfigDict) -> list[str]:
  """Every problem of a run config, one message each (empty when it is usable)."""
  model, objective = (config[s].get('name') if s in config else None
                      for s in ('model', 'objective'))
  found = _name_problems(model, objective)
  if found:  # the other keys depend on these
    return found
  found = config_lib.problems(config, schema(model, objective),
                              facts={'streams': OBJECTIVES[objective].streams})
  if any(p.startswith(('unknown key', 'missing key')) for p in found):
    found.append(f'(a run config holds the keys its model and objective read: start from '
                 f'sslm_jax.runs.run_config({model!r}, {objective!r}), or reshape(config) '
                 f'after changing their names)')
  return found


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError listing every problem; returns the config when it is usable."""
  config_lib.raise_if(problems(config))
  return config


def reshape(config: ml_collections.ConfigDict, model: str | None = None,
            objective: str | None = None) -> ml_collections.ConfigDict:
  """`config` as a run of `model` trained by `objective` (default: the names it holds): the
  keys both read keep their values, the others get their defaults. E.g. a BERT config made from
  a GPT's, or `config` after `--config.objective.name=elbo`."""
  values = config.to_dict()
  values['model']['name'] = model = model or values['model']['name']
  values['objective']['name'] = objective = objective or values['objective']['name']
  config_lib.raise_if(_name_problems(model, objective))
  return config_lib.conform(values, schema(model, objective))[0]


@functools.cache
def _all_defaults() -> dict[str, frozenset]:
  """{dotted key: the defaults it has in any run config}."""
  out = {}
  for model in MODELS:
    for objective in objectives_of(model):
      for key, (_, default) in config_lib.schema_keys(schema(model, objective)).items():
        out.setdefault(key, set()).add(default)
  return {k: frozenset(v) for k, v in out.items()}


def legacy_default(key: str, value) -> bool:
  """Whether `value` is one a run config holds at `key` by default, or one the code before run
  configs held only their own keys wrote there into runs that do not read it (so such a key of
  an old config.json may be dropped)."""
  value = tuple(value) if isinstance(value, list) else value
  return value in _all_defaults().get(key, ()) or value in _LEGACY_UNUSED.get(key, ())


def from_json(text: str) -> ml_collections.ConfigDict:
  """The run config saved in `text` (config.json): the keys its run reads, at the saved values.

  A config.json of the old union config (every key of every run) loads too: a key this run does
  not read must hold a value the old config had there by default; anything else is an error.
  """
  values = config_lib.json_values(text)
  model, objective = (values.get(s, {}).get('name') for s in ('model', 'objective'))
  config_lib.raise_if(_name_problems(model, objective), 'unreadable run config')
  config, dropped = config_lib.conform(values, schema(model, objective))
  defaults = _all_defaults()
  unread = {k: v for k, v in dropped.items() if not legacy_default(k, v)}
  config_lib.raise_if([f'{k}={v!r} is invalid; allowed: absent, or a default '
                       f'({", ".join(map(repr, sorted(defaults.get(k, ()), key=repr))) or "none"}):'
                       f' a {model} {objective} run does not read it' for k, v in unread.items()],
                      'unreadable run config')
  return config


# --- the run folder ---------------------------------------------------------------------------

class WorkdirError(ValueError):
  """The workdir holds something this run must not write over."""


# What a resumed run may change: schedule length, the learning rate (the usual answer to a
# divergence), reporting, and where the data lives.
RESUMABLE_CHANGES = ('optimizer.learning_rate', 'train.num_epochs', 'train.num_steps',
                     'train.log_every_steps', 'train.eval_every_steps',
                     'train.checkpoint_every_steps',
                     'train.keep_checkpoints', 'train.async_checkpoints', 'train.num_pictures',
                     'train.progress_bar', 'train.eval_batch_size', 'data.data_dir',
                     'data.manual_dir', 'data.token_dir', 'data.num_workers', 'data.prefetch',
                     # Where and how the same computation runs: a resumed job may get another
                     # coordinator, other process ids or devices (checkpoints are unplaced).
                     'parallel.mode', 'parallel.mesh_data', 'parallel.mesh_fsdp',
                     'parallel.coordinator_address', 'parallel.num_processes',
                     'parallel.process_id')
# A text VAE's evaluation only: importance samples of its bound, the baseline reported beside it.
RESUMABLE_CHANGES += ('text_vae.iw_samples', 'text_vae.eval_iw_samples',
                      'text_vae.baseline_workdir')
_LENGTH_KEYS = ('train.num_epochs', 'train.num_steps')


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config.json of the run in `workdir`, or None when there is none yet."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return from_json(f.read())
  except (ValueError, TypeError, AttributeError) as e:
    raise WorkdirError(f'{path} is not a readable run config ({type(e).__name__}: {e}); '
                       f'allowed: the config.json a run wrote, or another workdir') from e


def check_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to continue a run in `workdir` with settings that would change what it computes.

  Allowed: RESUMABLE_CHANGES, except that the schedule's length may change only with a constant
  learning rate (a decaying schedule is a function of the total number of steps).
  """
  saved = saved_config(workdir)
  if saved is None:
    return
  allowed = set(RESUMABLE_CHANGES)
  if config.optimizer.schedule != 'constant':
    allowed -= set(_LENGTH_KEYS)
  changed = {k: v for k, v in config_lib.differences(saved, config).items() if k not in allowed}
  if changed:
    lines = ', '.join(f'{k}: saved {a!r} vs asked {b!r}' for k, (a, b) in changed.items())
    kind = 'a different model' if any(k.startswith('model.') for k in changed) else \
        'a run with different settings'
    raise WorkdirError(f'workdir {workdir!r} holds {kind} ({lines}); allowed: the same config '
                       f'(changes allowed on resume: {", ".join(sorted(allowed))}), or a new '
                       f'workdir')


def record_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """config.json of the run, written once the run is known to start (atomically)."""
  if jax.process_index() == 0:
    write_atomic(os.path.join(workdir, 'config.json'), config_lib.to_json(config).encode())


# --- setup and restoring ----------------------------------------------------------------------

@dataclasses.dataclass
class Run:
  """What a job needs besides the config: built once by `setup`, shared by train/eval/sample."""
  config: ml_collections.ConfigDict
  workdir: str
  task: Task
  steps_per_epoch: int  # 0 without training data (eval, sample)
  total_steps: int
  tx: optax.GradientTransformation
  init_state: TrainState


def setup(config: ml_collections.ConfigDict, workdir: str, *, training: bool = True) -> Run:
  """Builds the task, optimizer and initial state; validates everything first.

  `training=False` (eval, sample) reads no training data and trains no tokenizer.
  """
  validate(config)
  task = build_task(config, Context(workdir, training, restore=restore))
  per_epoch, total = 0, 0
  if training:
    per_epoch = steps_per_epoch(task.num_train_rows, config.train.batch_size)
    total = config.train.num_steps or config.train.num_epochs * per_epoch
  tx = optim.make_optimizer(config.optimizer, max(total, 1))
  state = create_train_state(initial_params(task, config), tx, _seed_keys(config.seed)[1])
  return Run(config, workdir, task, per_epoch, total, tx, state)


def _seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(the initial parameters' key, the training key): both a function of config.seed alone."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  return init_rng, train_rng


def initial_params(task: Task, config: ml_collections.ConfigDict):
  """A run's parameters at step 0."""
  return task.init_params(_seed_keys(config.seed)[0])


def restore_params(workdir: str, step: int | None = None) -> tuple[Run, dict, int]:
  """(run, params, step) of a checkpoint of the finished or running job in `workdir` (the newest
  by default), for eval, sampling and fine-tuning; the run is set up without training data."""
  config = saved_config(workdir)
  if config is None:
    raise FileNotFoundError(f'{os.path.join(workdir, "config.json")} not found: the workdir '
                            f'must be the folder of a training run')
  run = setup(config, workdir, training=False)
  checkpointer = ckpt_lib.Checkpointer(workdir, read_only=True)
  try:
    steps = checkpointer.steps()
    if not steps:
      raise ckpt_lib.CheckpointError(f'no checkpoint in {checkpointer.directory}')
    step = steps[-1] if step is None else step
    if step not in steps:
      raise ckpt_lib.CheckpointError(f'step {step} is not a checkpoint; allowed: {steps}')
    try:
      state = checkpointer.restore(step, run.init_state)
    except Exception as e:  # noqa: BLE001
      raise ckpt_lib.CheckpointError(f'checkpoint {step} in {checkpointer.directory} is '
                                     f'unreadable: {type(e).__name__}: {e}') from e
  finally:
    checkpointer.close()
  return run, state.params, step


def restore(workdir: str, step: int | None = None) -> Restored:
  """`restore_params` as the tasks see it (`Context.restore`)."""
  run, params, step = restore_params(workdir, step)
  return Restored(run.config, run.task, params, step)
