"""Metrics to `metrics.jsonl` (one JSON object a line) and to TensorBoard event files.

Named `writers` rather than `logging` so that it never shadows the standard library module.
On resume, JSONL records past the restored step are dropped, so the file tells one consistent
history; TensorBoard event files are append-only, so there a resumed step shows twice (the later
point is the one that continued).
"""

import json
import os
import sys
import tempfile

import numpy as np


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch at import
  time when it is installed (the `torch` extra), 2-3 s of every run's start, only to recognize
  torch tensors, which this library never passes it. Where torch is already imported, as is."""
  if 'torch' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # `import torch` raises ImportError while this is set
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']  # a later `import torch` imports it as usual
  return SummaryWriter


def _plain(value):
  value = np.asarray(value)
  return value.item() if value.ndim == 0 else value.tolist()


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps the records with step <= last_step (atomically: a crash leaves old or new file)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = []
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill
      if record.get('step', 0) <= last_step:
        kept.append(json.dumps(record) + '\n')
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    f.writelines(kept)
  os.replace(tmp, path)


class MetricWriter:
  """Writes scalars for a step to JSONL and TensorBoard; `enabled=False` writes nothing (for
  every process but the first in a multi-process run)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._jsonl = open(self.path, 'a') if enabled else None
    self._tb = (_summary_writer_class()(os.path.join(workdir, 'tensorboard')) if enabled
                else None)

  def write(self, step: int, split: str, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: _plain(v) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    for key, value in record.items():
      if key not in ('step', 'split') and isinstance(value, (int, float)):
        self._tb.add_scalar(f'{split}/{key}', value, int(step))
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def write_atomic(path: str, data: bytes) -> None:
  """`data` as the file `path`, which appears only once complete (temp file + rename)."""
  with open(path + '.tmp', 'wb') as f:
    f.write(data)
  os.replace(path + '.tmp', path)


def write_json(path: str, data: dict) -> None:
  """Atomic JSON write (temp file + rename)."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    json.dump(data, f, indent=2, sort_keys=True, default=_plain)
    f.write('\n')
  os.chmod(tmp, 0o644)  # mkstemp makes 0600; a results file is for everyone to read
  os.replace(tmp, path)
