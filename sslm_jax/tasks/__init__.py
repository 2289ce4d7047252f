"""Tasks: the data, model, loss and evaluation of one kind of run, behind one small interface.

The loop (`sslm_jax.train.loop`) trains any task; a task provides:

  task.model, task.loss_fn          the Flax module and `loss(params, batch, rng)`
  task.init_params(rng)             the parameters a run starts from
  task.num_train_rows               training examples (or packed rows) an epoch
  task.train_batches(batch_size, seed, start_step)   numpy batches, a pure function of the step
  task.device_transform(batch)      jittable work done on the device before the step
  task.evaluate(params, split)      exact means over a whole split
  task.draw(params, workdir)        pictures or text samples of the run folder
  task.describe()                   facts for summary.json

Splits are loaded on first use, so `eval` and `sample` never read the training data.
"""

from sslm_jax import config as config_lib


def build_task(config, workdir: str, *, training: bool):
  """The task of `config` (`training`: a tokenizer may be trained and saved in `workdir`)."""
  if config.objective.name == 'classification':
    from sslm_jax.tasks.classification import ClassificationTask
    return ClassificationTask(config, workdir, training=training)
  if config.model.name in config_lib.IMAGE_MODELS:
    from sslm_jax.tasks.images import ContrastiveImageTask, ImageTask
    cls = ContrastiveImageTask if config.objective.name == 'simclr' else ImageTask
    return cls(config, training=training)
  if config.model.name == 'text_vae':
    from sslm_jax.tasks.text_vae import TextVAETask
    return TextVAETask(config, workdir, training=training)
  from sslm_jax.tasks.language import LanguageTask
  return LanguageTask(config, workdir, training=training)
