"""The seed's pipeline in one call: data, self-supervised pretraining, fine-tuning, evaluation.

`run_pipeline(config, workdir)` (config: `sslm_jax.pipeline_config.pipeline_config(pretrain)`)
runs, in order:

  data                      the labelled splits and their statistics (data_stats.json)
  pretrain                  the self-supervised run               -> <workdir>/pretrain
  finetune_pretrained[_R]   a classifier on the pretrained encoder, per regime R
  finetune_scratch          the same classifier from random weights, same budget
  <run>_seed<s>             each of those again with seed s, per finetune.extra_seeds
  <run>: select and test    the checkpoint best on validation macro-F1, evaluated on test once
  baseline                  TF-IDF + LinearSVC (text) / logistic regression on pixels (images)
  feature probes            (baseline.probe_features) logistic regression on the frozen
                            features of the pretrained encoder and of a random one
  report                    report.md, report.json, confusion_matrix.png, curves.png

Training runs go through `loop.train_and_evaluate`, which resumes from their checkpoints and
returns at once when a run is complete; the baseline keeps its result in
`baseline/result.json`, the feature probes theirs in `feature_probes/result.json`. Rerunning the
same command therefore continues where it stopped. Every config (the pipeline's and each run
it derives, and each run folder's saved settings) is checked before any work starts. The test
split is never used to choose anything.

`timings.json` adds up the wall time of each step over every invocation; `commands.json` keeps
each invocation's command line, in order, and the report shows them all (a resumed folder's
results came from every one of them, not from the last alone).
"""

import contextlib
import copy
import json
import logging
import os
import time

import numpy as np

from sslm_jax import config as config_lib
from sslm_jax import pipeline_config as pipeline_lib
from sslm_jax import runs as runs_lib
from sslm_jax.data import labels as label_data
from sslm_jax.eval import baselines, report as report_lib
from sslm_jax.eval import metrics as metrics_lib
from sslm_jax.tasks import Context
from sslm_jax.tasks import classification as cls_task
from sslm_jax.train import checkpoint as ckpt_lib
from sslm_jax.train import loop, writers

log = logging.getLogger(__name__)


class _Timings:
  """Seconds spent in each step, added up over invocations, in <workdir>/timings.json."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'timings.json')
    self.steps = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.steps = json.load(f)

  def add(self, name: str, seconds: float) -> None:
    entry = self.steps.setdefault(name, {'seconds': 0.0, 'invocations': 0})
    entry['seconds'] += seconds
    entry['invocations'] += 1
    writers.write_json(self.path, self.steps)

  @contextlib.contextmanager
  def step(self, name: str):
    """Times the block, also when it fails (that time was spent too)."""
    log.info('pipeline step: %s', name)
    started = time.time()
    try:
      yield
    finally:
      self.add(name, time.time() - started)


def read_metrics(workdir: str) -> list[dict]:
  """The records of a run's metrics.jsonl (lines cut short by a kill skipped)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:
          continue
  return records


def data_statistics(run_config, cache: dict) -> dict:
  """Examples and class counts of each split the classifier uses (text: characters too)."""
  d = run_config.data
  names = label_data.class_names(d.name, d.label_key, data_dir=d.data_dir,
                                          manual_dir=d.manual_dir)
  stats = {'dataset': d.name, 'label_key': d.label_key, 'class_names': list(names),
           'validation_carved': d.validation_fraction > 0,
           'validation_fraction': d.validation_fraction, 'split_seed': d.split_seed, 'splits': {}}
  for role, split in (('train', d.train_split), ('validation', d.eval_split),
                      ('test', d.test_split)):
    data = cls_task.load_labelled(run_config, split, cache)
    counts = np.bincount(data.labels, minlength=len(names))
    entry = {'name': split, 'examples': len(data), 'class_counts': counts.tolist(),
             'classes_present': int((counts > 0).sum())}
    if cls_task.is_text(run_config):
      chars = np.asarray([len(t) for t in data.inputs])
      entry.update(mean_chars=float(chars.mean()), median_chars=float(np.median(chars)),
                   max_chars=int(chars.max()))
    else:
      entry['image_shape'] = list(data.inputs.shape[1:])
    stats['splits'][role] = entry
  return stats


def select_and_test(run_dir: str, test_split: str) -> dict:
  """Restores the run's checkpoint with the best validation macro-F1 (ties: the earliest) among
  those kept, and evaluates it on `test_split`; written to <run_dir>/test_result.json."""
  saved = runs_lib.saved_config(run_dir)
  eval_split = saved.data.eval_split
  scores = {r['step']: r for r in read_metrics(run_dir) if r.get('split') == eval_split}
  checkpointer = ckpt_lib.Checkpointer(run_dir, read_only=True)
  try:
    steps = checkpointer.steps()
  finally:
    checkpointer.close()
  candidates = [s for s in steps if s in scores] or steps[-1:]
  best = max(candidates, key=lambda s: (scores.get(s, {}).get('macro_f1', -1.0), -s))
  run, params, step = runs_lib.restore_params(run_dir, best)
  labels, predictions, _ = run.task.predict(params, test_split)
  result = {'selected_step': step, 'candidate_steps': candidates,
            'validation': {k: v for k, v in scores.get(step, {}).items()
                           if k in cls_task.EVAL_METRICS},
            'test_split': test_split, **_scores(labels, predictions, run.task.num_classes)}
  writers.write_json(os.path.join(run_dir, 'test_result.json'), result)
  return result


def _scores(labels, predictions, num_classes: int) -> dict:
  m = metrics_lib.classification_metrics(labels, predictions, num_classes)
  return {'test': metrics_lib.summary(m), 'per_class_f1': np.asarray(m['f1']).tolist(),
          'support': np.asarray(m['support']).astype(int).tolist(),
          'confusion': np.asarray(m['confusion']).astype(int).tolist()}


def run_baseline(config, run_config, out_dir: str, cache: dict) -> dict:
  """The classical baseline on the classifier's splits; reused when its settings are unchanged."""
  d = run_config.data
  settings = _baseline_settings(config, run_config)
  result = _saved_result(os.path.join(out_dir, 'result.json'), settings)
  if result is not None:
    return result
  splits = [cls_task.load_labelled(run_config, s, cache)
            for s in (d.train_split, d.eval_split, d.test_split)]
  num_classes = len(label_data.class_names(d.name, d.label_key, data_dir=d.data_dir))
  b = config.baseline
  fitted = baselines.fit_and_predict(
      cls_task.is_text(run_config), *[(s.inputs, s.labels) for s in splits],
      num_classes=num_classes, c_values=b.c_values, max_iter=b.max_iter, ngram_max=b.ngram_max,
      class_weight=_class_weight(run_config), seed=run_config.seed)
  result = {'settings': settings, **_fitted_result(fitted, splits[1].labels, splits[2].labels,
                                                  num_classes, d.test_split)}
  os.makedirs(out_dir, exist_ok=True)
  writers.write_json(os.path.join(out_dir, 'result.json'), result)
  return result


def _class_weight(run_config) -> str | None:
  """scikit-learn's class_weight for the fine-tuning objective's class weights."""
  return 'balanced' if run_config.objective.class_weights == 'balanced' else None


def _baseline_settings(config, run_config) -> dict:
  """What a fit on the classifier's splits depends on, as it comes back from disk."""
  d = run_config.data
  settings = {'baseline': config.baseline.to_dict(), 'data': d.to_dict(),
              'text': run_config.text.to_dict() if 'text' in run_config else {},
              'class_weights': run_config.objective.class_weights}
  return json.loads(json.dumps(settings))  # tuples as lists


def _saved_result(path: str, settings: dict) -> dict | None:
  """The result saved at `path` when it was made with `settings`, else None."""
  if os.path.exists(path):
    with open(path) as f:
      result = json.load(f)
    if _same_settings(result.get('settings'), settings):
      log.info('%s is up to date', path)
      return result
  return None


PROBES = {'probe_pretrained': 'the pretrained encoder', 'probe_random': 'the same encoder at '
          'random initialization'}


def run_feature_probes(config, run_config, pretrain_dir: str, out_dir: str, cache: dict) -> dict:
  """Logistic regression (the baseline's C values) on the frozen features the classifier's head
  reads (`run_config`: a fine-tuning run's, with the pipeline's test split): of the encoder
  pretrained in `pretrain_dir` (its newest checkpoint), and of the same encoder as the scratch
  run starts it. Kept in <out_dir>/result.json and reused while the settings and that checkpoint
  are the same."""
  d, b = run_config.data, config.baseline
  checkpointer = ckpt_lib.Checkpointer(pretrain_dir, read_only=True)
  try:
    pretrained_step = checkpointer.steps()[-1]
  finally:
    checkpointer.close()
  settings = {**_baseline_settings(config, run_config), 'pretrained_step': pretrained_step,
              'model': json.loads(json.dumps(run_config.model.to_dict()))}
  path = os.path.join(out_dir, 'result.json')
  saved = _saved_result(path, settings)
  if saved is not None:
    return saved['probes']
  results = {}
  for name, init_from in (('probe_pretrained', pretrain_dir), ('probe_random', '')):
    probe_config = copy.deepcopy(run_config)
    probe_config.classifier.init_from = init_from
    task = cls_task.ClassificationTask(probe_config, Context('', True, runs_lib.restore),
                                       cache=cache)
    params = runs_lib.initial_params(task, probe_config)
    splits = [(task.features(params, s), task.rows(s)['label'])
              for s in (d.train_split, d.eval_split, d.test_split)]
    fitted = baselines.fit_on_features(
        *splits, method=f'logistic regression on the frozen features of {PROBES[name]}',
        num_classes=task.num_classes, c_values=b.c_values,
        class_weight=_class_weight(run_config), max_iter=b.max_iter)
    results[name] = _fitted_result(fitted, splits[1][1], splits[2][1], task.num_classes,
                                   d.test_split)
  os.makedirs(out_dir, exist_ok=True)
  writers.write_json(path, {'settings': settings, 'probes': results})
  return results


def _fitted_result(fitted: dict, validation_labels, test_labels, num_classes: int,
                   test_split: str) -> dict:
  validation = metrics_lib.summary(metrics_lib.classification_metrics(
      validation_labels, fitted['validation_predictions'], num_classes))
  return {'method': fitted['method'], 'c': fitted['c'],
          'validation_macro_f1_by_c': {str(k): v for k, v in
                                       fitted['validation_macro_f1'].items()},
          'validation': validation, 'fit_seconds': fitted['fit_seconds'],
          'test_split': test_split,
          **_scores(test_labels, fitted['test_predictions'], num_classes)}


def _same_settings(saved, settings: dict) -> bool:
  """Whether a baseline's saved settings are `settings`; those saved when run configs held every
  key of every run may hold more, at values any run config has by default."""
  if not isinstance(saved, dict):
    return False
  ours = config_lib.flatten({k: v for k, v in settings.items() if k != 'baseline'})
  theirs = config_lib.flatten({k: v for k, v in saved.items() if k != 'baseline'})
  extra = {k: v for k, v in theirs.items() if k not in ours}
  def fitting(baseline):  # whether probes run beside the baseline changes neither's result
    return {k: v for k, v in (baseline or {}).items() if k != 'probe_features'}
  return (fitting(saved.get('baseline')) == fitting(settings['baseline']) and
          all(theirs.get(k) == v for k, v in ours.items()) and
          all(runs_lib.legacy_default(k, v) for k, v in extra.items()))


def record_command(workdir: str, command: str) -> list[dict]:
  """Appends `command` (when given) with its UTC start time to <workdir>/commands.json; returns
  every invocation recorded there, oldest first."""
  path = os.path.join(workdir, 'commands.json')
  commands = []
  if os.path.exists(path):
    with open(path) as f:
      commands = json.load(f)
  if command:
    commands.append({'command': command,
                     'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})
    writers.write_json(path, commands)
  return commands


def majority_baseline(run_config, cache: dict, num_classes: int) -> dict:
  """Every test example predicted as the most frequent training class."""
  d = run_config.data
  train = cls_task.load_labelled(run_config, d.train_split, cache)
  test = cls_task.load_labelled(run_config, d.test_split, cache)
  majority = int(np.bincount(train.labels, minlength=num_classes).argmax())
  return {'method': 'majority class of the training split', 'class': majority,
          **_scores(test.labels, np.full(len(test), majority), num_classes)}


def run_pipeline(config, workdir: str, *, command: str = '') -> dict:
  """Runs (or resumes) every step; returns report.json's content."""
  pipeline_lib.validate_pipeline(config)
  workdir = os.path.abspath(workdir)
  runs = pipeline_lib.pipeline_runs(config, workdir)
  for name, run_config in runs.items():  # every saved run must fit before anything starts
    runs_lib.check_workdir(run_config, os.path.join(workdir, name))
  finetunes = [name for name in runs if name != pipeline_lib.PRETRAIN_RUN]
  # The splits every fine-tuning run reads; the test split only the pipeline reads.
  test_split = config.finetune.data.test_split
  labelled = copy.deepcopy(runs[finetunes[0]])
  labelled.data.test_split = test_split
  cache = {}

  started = time.time()
  stats = data_statistics(labelled, cache)  # unusable data stops here, before any write
  os.makedirs(workdir, exist_ok=True)
  writers.write_json(os.path.join(workdir, 'pipeline_config.json'), config.to_dict())
  writers.write_json(os.path.join(workdir, 'data_stats.json'), stats)
  commands = record_command(workdir, command)
  timings = _Timings(workdir)
  timings.add('data', time.time() - started)
  summaries, results = {}, {}
  with timings.step(pipeline_lib.PRETRAIN_RUN):
    summaries[pipeline_lib.PRETRAIN_RUN] = loop.train_and_evaluate(
        config.pretrain, os.path.join(workdir, pipeline_lib.PRETRAIN_RUN))
  for name in finetunes:
    run_dir = os.path.join(workdir, name)
    with timings.step(name):
      summaries[name] = loop.train_and_evaluate(runs[name], run_dir)
    with timings.step(f'{name}: select and test'):
      results[name] = select_and_test(run_dir, test_split)
  num_classes = len(stats['class_names'])
  results['majority'] = majority_baseline(labelled, cache, num_classes)
  if config.baseline.name != 'none':
    with timings.step('baseline'):
      results['baseline'] = run_baseline(config, labelled, os.path.join(workdir, 'baseline'),
                                         cache)
  if config.baseline.probe_features:
    with timings.step('feature probes'):
      results.update(run_feature_probes(
          config, labelled, os.path.join(workdir, pipeline_lib.PRETRAIN_RUN),
          os.path.join(workdir, 'feature_probes'), cache))
  with timings.step('report'):
    finetune = {r: pipeline_lib.finetune_run_name(r) for r in config.finetune.regimes}
    first_seed = [run for run in (*finetune.values(), pipeline_lib.SCRATCH_RUN) if run in runs]
    names = report_lib.RunNames(
        pipeline_lib.PRETRAIN_RUN, finetune, pipeline_lib.SCRATCH_RUN,
        seeds={run: pipeline_lib.seed_runs(config, run) for run in first_seed})
    report = report_lib.write_report(
        workdir, config=config, names=names, runs=runs, stats=stats, summaries=summaries,
        results=results, curves={name: read_metrics(os.path.join(workdir, name)) for name in runs},
        timings=timings.steps, commands=commands)
    writers.write_json(os.path.join(workdir, 'report.json'), report)
  return report
