"""Orbax checkpoints of the train state and the data position: keep the newest N, resume from
the newest intact one.

A step's folder holds two items, written together: `state/` (the train state) and `data/` (the
data iterator's position, through Grain's Orbax handler: one small JSON file a process). Orbax
writes the step into a temporary folder and renames it when complete, so a process killed
mid-save leaves the previous steps as they were (the leftover `*.orbax-checkpoint-tmp*` folder
is ignored, then cleaned by the next save of that step). Folders of older runs hold the state
alone under `default/`; they restore as before (the data position is then the step's).

A finished checkpoint that later fails to restore (truncated or corrupted files) is moved, not
deleted, to `<workdir>/quarantine/` and the next newest is tried; the move keeps a later save of
the same step number possible.
"""

import logging
import os
import shutil
import time

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was required; the message says what was tried."""


def abstract_like(tree):
  """Shapes, dtypes and shardings of `tree`, the target Orbax restores into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


STATE, DATA = 'state', 'data'  # the items of a step's folder
OLD_STATE = 'default'          # the state of a folder written before the data position was kept


class Checkpointer:
  """The checkpoints of one run folder."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.quarantine_dir = os.path.abspath(os.path.join(workdir, 'quarantine'))
    self._options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(keep),
        enable_async_checkpointing=async_save,
        read_only=read_only,
        create=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=self._options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler()})

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data=None) -> None:
    """Starts saving `state` (and the position of `data`, a Grain iterator) as `step`,
    asynchronously when enabled. The device-to-host copy is done before this returns, so the
    caller may donate `state` to the next step."""
    items = {STATE: ocp.args.StandardSave(state)}
    if data is not None:
      items[DATA] = grain.checkpoint.CheckpointSave(data)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore(self, step: int, target):
    """The train state of `step`, laid out like `target` (arrays or ShapeDtypeStructs); with
    `target=None`, the arrays as saved."""
    abstract = None if target is None else abstract_like(target)
    old = os.path.join(self._step_dir(step), OLD_STATE)
    if os.path.isdir(old):
      return ocp.StandardCheckpointer().restore(old, abstract)
    return self._manager.restore(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract)}))[STATE]

  def restore_data(self, step: int, iterator) -> bool:
    """Sets `iterator` (a Grain iterator) to the data position saved with `step`; False, with
    the iterator untouched, where there is none for this process (a folder of an older run, or
    one saved by another number of processes)."""
    index, count = jax.process_index(), jax.process_count()
    saved = os.path.join(self._step_dir(step), DATA, f'process_{index}-of-{count}.json')
    if not os.path.exists(saved):
      return False
    self._manager.restore(step, args=ocp.args.Composite(
        **{DATA: grain.checkpoint.CheckpointRestore(iterator)}))
    return True

  def restore_latest(self, target):
    """(state, step) from the newest checkpoint that restores, or (None, None) if there are none.

    Newer checkpoints that fail to restore are reported and moved to the quarantine folder once
    an older one has restored (never deleted). If none restores, nothing is moved and
    CheckpointError says why: starting over would silently throw the run away.
    """
    failures = []
    for step in reversed(self.steps()):
      try:
        state = self.restore(step, target)
      except Exception as e:  # noqa: BLE001  Orbax/TensorStore raise many kinds on bad files
        if 'tree structures do not match' in str(e):
          # Intact, but saved by another configuration (e.g. another optimizer): a user error,
          # not damage; leave every checkpoint where it is.
          raise CheckpointError(
              f'checkpoint {step} in {self.directory} holds a state of another structure than '
              f'this config builds (was the model or optimizer config changed?); allowed: the '
              f'config the run was started with, or a new workdir') from e
        first_line = str(e).splitlines()[0][:200] if str(e) else ''
        failures.append((step, f'{type(e).__name__}: {first_line}'))
        continue
      for bad_step, reason in failures:
        moved_to = self._quarantine(bad_step)
        log.warning('checkpoint %d in %s is unreadable (%s); moved to %s; resuming from %d',
                    bad_step, self.directory, reason, moved_to, step)
      return state, step
    if failures:
      raise CheckpointError(f'no checkpoint in {self.directory} restores; nothing was moved: ' +
                            '; '.join(f'step {s}: {r}' for s, r in failures))
    return None, None

  def _quarantine(self, step: int) -> str:
    self._manager.wait_until_finished()
    os.makedirs(self.quarantine_dir, exist_ok=True)
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.quarantine_dir, f'{step}-{int(time.time())}')
    shutil.move(source, target)
    self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
