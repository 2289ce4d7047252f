"""The task interface, and what every task shares.

A task is the data, model, loss and evaluation of one kind of run (`sslm_jax.tasks.TASKS`). The
loop, the CLI and the pipeline use tasks through `Task`, and through the optional capabilities
below, which a task has when it implements them (checked with isinstance): `GeneratesText`,
`GeneratesImages`, `Interpolates`, `Predicts`.

A task never imports the code that runs it: what it needs of other runs (a pretrained encoder,
a baseline model) it asks of `Context.restore`, which `sslm_jax.runs` provides.
"""

import dataclasses
import os
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, runtime_checkable

import jax
import numpy as np

from sslm_jax.config import Checker, Section, differences
from sslm_jax.data.loader import StepBatches
from sslm_jax.data.text import lm_eval_batches
from sslm_jax.data.tfds_utils import DataError
from sslm_jax.data.tokenizer import Tokenizer

EVAL_STREAM = 1_000_003  # fold_in constant: eval noise never coincides with a train step's
TOKENIZER_FILE = 'tokenizer.model'  # a text run's tokenizer in its folder
# Model settings a run may change from the run its parameters come from (they change no
# parameter).
FREE_MODEL_KEYS = ('dropout_rate', 'attention_dropout_rate', 'dtype')

Params = Any
Batch = dict[str, Any]


class Task(Protocol):
  """What the loop needs of a task. Splits are loaded on first use, so `eval` and `sample` never
  read the training data."""
  SECTIONS: ClassVar[dict[str, tuple[type, ...]]]  # config sections it reads besides the basics
  model: Any                   # the Flax module
  loss_fn: Callable            # loss(params, batch, rng) -> (loss, metrics)
  tokenizer: Tokenizer | None  # a text run's (None: images)

  @property
  def num_train_rows(self) -> int:
    """Training examples (or packed rows) an epoch."""

  def init_params(self, rng: jax.Array) -> Params:
    """The parameters a run starts from."""

  def train_batch_fn(self, batch_size: int, seed: int, rows: slice) -> StepBatches:
    """`step -> numpy batch` of one process's `rows` of the step's global batch."""

  def device_transform(self, batch: Batch) -> Batch:
    """Jittable work done on the device before the step (e.g. uint8 images to floats)."""

  def evaluate(self, params: Params, split: str) -> dict[str, float]:
    """Exact means over a whole split."""

  def draw(self, params: Params, workdir: str) -> None:
    """Pictures or text samples of the run folder."""

  def describe(self) -> dict:
    """Facts for summary.json."""


@runtime_checkable
class GeneratesText(Protocol):
  def sample_text(self, params: Params, *, prompt: str, num: int, seed: int,
                  temperature: float = 0.8, top_k: int = 40, top_p: float = 1.0,
                  max_new_tokens: int = 0, use_cache: bool = True) -> list[str]: ...


@runtime_checkable
class GeneratesImages(Protocol):
  def sample_images(self, params: Params, num: int, seed: int) -> np.ndarray: ...


@runtime_checkable
class Interpolates(Protocol):
  def reconstruct(self, params: Params, texts: list[str]) -> list[str]: ...

  def homotopy(self, params: Params, a: str, b: str,
               steps: int = 5) -> tuple[np.ndarray, list[str]]: ...


@runtime_checkable
class Predicts(Protocol):
  num_classes: int

  def predict(self, params: Params,
              split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class Restored(NamedTuple):
  """A run restored from its folder: its config, task (built without training data), the
  parameters of a checkpoint and that checkpoint's step."""
  config: Any
  task: Task
  params: Params
  step: int


RestoreRun = Callable[[str, 'int | None'], Restored]


@dataclasses.dataclass(frozen=True)
class Context:
  """Where a task runs: its folder, whether it trains (else it reads no training data and
  trains no tokenizer), and how to restore another run's folder."""
  workdir: str
  training: bool = True
  restore: RestoreRun | None = None


def eval_key(seed: int) -> jax.Array:
  """The key of a run's evaluation noise: fixed across its evaluations."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_STREAM)


# One compilation per model and input shapes (modules compare by their fields), shared by every
# task in a process: a pipeline's pretraining run and the fine-tuning run that restores it.
init_params = jax.jit(lambda model, rng, *inputs: model.init(rng, *inputs)['params'],
                      static_argnums=0)


def shapes(tree):
  return jax.tree.map(lambda x: (x.shape, x.dtype), tree)


def restore_run(context: Context, workdir: str, step: int | None, *, key: str) -> Restored:
  """The run in `workdir` (the config key `key` names it), or DataError naming the key."""
  try:
    return context.restore(workdir, step)
  except FileNotFoundError as e:
    raise DataError(f'{key}={workdir!r} holds no run ({e}); allowed: the workdir of a training '
                    f'run') from e
  except (ValueError, RuntimeError) as e:
    raise DataError(f'{key}={workdir!r} is not a readable run ({e}); allowed: the workdir of a '
                    f'finished training run') from e


def check_tokenizer(run: Restored, tokenizer: Tokenizer | None, *, key: str,
                    workdir: str) -> None:
  """Text runs must share the tokenizer of the run their parameters come from."""
  theirs = run.task.tokenizer
  if tokenizer is not None and (theirs is None or theirs.model_proto != tokenizer.model_proto):
    raise DataError(f'the tokenizer of this run is not the one {key}={workdir!r} was trained '
                    f'with; allowed: text.tokenizer_path='
                    f'{os.path.join(workdir, TOKENIZER_FILE)!r}')


def check_fits(params: Params, like: Params, *, key: str, workdir: str, allowed: str) -> None:
  if shapes(params) != shapes(like):
    raise DataError(f'the parameters in {key}={workdir!r} do not fit this model; allowed: '
                    f'{allowed}')


@dataclasses.dataclass(frozen=True)
class InitFrom(Section):
  """The `train` key of the tasks whose runs may start from another run's parameters
  (`start_from`; a classifier's encoder: classifier.init_from)."""
  # Workdir of a run of this model (and tokenizer) whose newest parameters this run starts from,
  # e.g. SimCSE continuing an ELECTRA discriminator ('' = its own initialization).
  init_from: str = ''

  def check(self, c: Checker) -> None:
    c.check(isinstance(self.init_from, str), 'init_from', "the workdir of a run, or ''")


def start_from(context: Context, config, init: Callable[[], Params],
               tokenizer: Tokenizer | None) -> Params:
  """`init()`, or when a training run has train.init_from, that run's newest parameters (checked
  to fit this model, its settings and tokenizer: `restore_matching`), `init` then only traced
  for the shapes."""
  if not (context.training and config.train.init_from):
    return init()
  return restore_matching(context, config.train.init_from, None, key='train.init_from',
                          config=config, tokenizer=tokenizer, like=jax.eval_shape(init))[0]


def restore_matching(context: Context, workdir: str, step: int | None, *, key: str, config,
                     tokenizer: Tokenizer | None, like: Params) -> tuple[Params, int]:
  """(params, step) of a run of this model (its settings but FREE_MODEL_KEYS, its tokenizer,
  parameters shaped like `like`), or DataError naming `key`."""
  run = restore_run(context, workdir, step, key=key)
  different = {k: v for k, v in differences(run.config.model, config.model).items()
               if k not in FREE_MODEL_KEYS}
  if different:
    listed = ', '.join(f'model.{k}: {a!r} there vs {b!r} here'
                       for k, (a, b) in different.items())
    raise DataError(f'{key}={workdir!r} holds a model with other settings ({listed}); allowed: '
                    f"the pretraining run's model settings")
  check_tokenizer(run, tokenizer, key=key, workdir=workdir)
  check_fits(run.params, like, key=key, workdir=workdir,
             allowed='a pretraining run of the same model')
  return run.params, run.step


def over_rows(fn: Callable[[Batch], Any], rows, batch_size: int):
  """`fn` of every batch of `rows` (every row once, in order; `data.text.lm_eval_batches`),
  its outputs (arrays with a leading row axis, or a tree of them) of the real rows joined."""
  parts = []
  for batch in lm_eval_batches(rows, batch_size):
    real = int(batch['row_mask'].sum())
    parts.append(jax.tree.map(lambda x, real=real: np.asarray(x)[:real],
                              jax.device_get(fn(batch))))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
