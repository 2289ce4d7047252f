"""The `train` section: the loop's schedule, batch sizes, and how often it logs, evaluates and
checkpoints (sslm_jax/train/loop.py). The optimizer's section is `optim.OptimizerConfig`, the
device layout's `parallel.ParallelConfig`."""

import dataclasses

from sslm_jax.config import Checker, Section


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
  batch_size: int = 64            # the global batch of a step (all devices and processes)
  num_epochs: int = 30
  num_steps: int = 0              # > 0 overrides num_epochs
  eval_batch_size: int = 1000
  log_every_steps: int = 100
  eval_every_steps: int = 0       # 0 = once an epoch
  checkpoint_every_steps: int = 0  # 0 = once an epoch; always at the end
  keep_checkpoints: int = 3
  async_checkpoints: bool = True
  progress_bar: bool = True
  grad_accum_steps: int = 1       # micro-batches a step; batch_size is the whole step's

  def check(self, c: Checker) -> None:
    for key in ('batch_size', 'eval_batch_size', 'log_every_steps', 'keep_checkpoints'):
      c.integer(key)
    for key in ('num_epochs', 'num_steps', 'eval_every_steps', 'checkpoint_every_steps'):
      c.integer(key, minimum=0)
    if c.valid('num_epochs', 'num_steps'):
      c.check(self.num_epochs > 0 or self.num_steps > 0, 'num_epochs',
              'at least one of train.num_epochs and train.num_steps > 0')
    if c.integer('grad_accum_steps') and c.valid('batch_size'):
      c.check(self.batch_size % self.grad_accum_steps == 0, 'batch_size',
              f'a multiple of train.grad_accum_steps={self.grad_accum_steps}')
