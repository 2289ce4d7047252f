"""Tasks: the data, model, loss and evaluation of one kind of run, behind the `Task` protocol
(sslm_jax/tasks/base.py, with the optional capabilities `GeneratesText`, `GeneratesImages`,
`Interpolates` and `Predicts`).

`TASKS` lists them: an objective names the task that runs it (`sslm_jax.objectives.OBJECTIVES`),
and a task's `SECTIONS` are the config keys it reads beyond the model's, the objective's and
every run's (`sslm_jax.runs.run_config` composes them).
"""

from sslm_jax.objectives import OBJECTIVES
from sslm_jax.tasks.base import (Context, GeneratesImages, GeneratesText, Interpolates,  # noqa: F401
                                 Predicts, Restored, Task)
from sslm_jax.tasks.classification import ClassificationTask
from sslm_jax.tasks.contrastive_images import ContrastiveImageTask
from sslm_jax.tasks.images import ImageTask
from sslm_jax.tasks.language import LanguageTask
from sslm_jax.tasks.text_vae import TextVAETask

TASKS: dict[str, type] = {
    'images': ImageTask,
    'contrastive_images': ContrastiveImageTask,
    'language': LanguageTask,
    'text_vae': TextVAETask,
    'classification': ClassificationTask,
}


def build_task(config, context: Context) -> Task:
  """The task that runs `config`'s objective."""
  return TASKS[OBJECTIVES[config.objective.name].task](config, context)
