"""A pipeline's report: report.json (the numbers), report.md (the numbers read as an answer),
confusion_matrix.png and curves.png, written into the pipeline's folder; and one table of the
test results of several pipelines (`compare`, `sslm-jax compare`).

The pipeline names its runs (`RunNames`); report.md is one function a section.
"""

import dataclasses
import json
import os

import numpy as np

from sslm_jax.eval import plots
from sslm_jax.train.writers import write_atomic

# What a pretraining evaluation reports that a reader compares (text, then images).
_PRETRAIN_METRICS = ('loss', 'perplexity', 'accuracy', 'bits_per_char', 'objective', 'mse', 'kl',
                     'elbo_nats', 'generator_perplexity', 'generator_accuracy',
                     'discriminator_accuracy', 'replaced_recall')
# Entries that are not fine-tuning runs (they name a `method`), in the order tables show them;
# the last two are the dataset's, whatever the pretraining.
METHOD_ENTRIES = ('probe_pretrained', 'probe_random', 'baseline', 'majority')
DATASET_ENTRIES = ('baseline', 'majority')
REPORTED = ('accuracy', 'macro_precision', 'macro_recall', 'macro_f1', 'micro_f1',
            'weighted_f1')


@dataclasses.dataclass(frozen=True)
class RunNames:
  """The folders of a pipeline's runs: pretraining, fine-tuning (regime -> folder, the first is
  the report's), from scratch."""
  pretrain: str
  finetune: dict
  scratch: str
  # {first-seed run: {seed: folder}} where fine-tuning ran over several seeds
  # (finetune.extra_seeds; the first seed's folder is the run itself).
  seeds: dict = dataclasses.field(default_factory=dict)

  @property
  def main(self) -> str:
    return next(iter(self.finetune.values()))


def _entries(names: RunNames, results: dict, pretraining: str) -> dict:
  """report.json's entries: pretrained (the first regime), pretrained_<other regime>, scratch,
  then METHOD_ENTRIES; each with the test metrics and how it was obtained (`pretraining`: the
  pretraining run's model / objective)."""
  entries = {}
  for i, (regime, run) in enumerate(names.finetune.items()):
    entries['pretrained' if i == 0 else f'pretrained_{regime}'] = (run, regime)
  if names.scratch in results:
    entries['scratch'] = (names.scratch, 'full')
  out = {}
  for key, (run, regime) in entries.items():
    r = results[run]
    out[key] = {**{k: r['test'][k] for k in REPORTED}, 'run': run, 'regime': regime,
                'pretraining': pretraining if key != 'scratch' else 'none',
                'selected_step': r['selected_step'],
                'validation_macro_f1': r['validation'].get('macro_f1')}
    if len(names.seeds.get(run, {})) > 1:
      out[key].update(_over_seeds(names.seeds[run], results))
  for key in METHOD_ENTRIES:
    if key in results:
      r = results[key]
      out[key] = {**{k: r['test'][k] for k in REPORTED}, 'method': r['method']}
      if key != 'majority':
        out[key].update(c=r['c'], validation_macro_f1=r['validation']['macro_f1'])
      if key == 'probe_pretrained':
        out[key]['pretraining'] = pretraining
  return out


def _over_seeds(folders: dict, results: dict) -> dict:
  """One model fine-tuned with each seed ({seed: run folder}): each seed's selected step and
  scores, and the mean and sample standard deviation over seeds of test macro-F1 (and the mean
  of validation's)."""
  seeds = [{'seed': seed, 'run': run, 'selected_step': results[run]['selected_step'],
            'macro_f1': results[run]['test']['macro_f1'],
            'validation_macro_f1': results[run]['validation'].get('macro_f1')}
           for seed, run in folders.items()]
  test = np.asarray([s['macro_f1'] for s in seeds])
  validation = [s['validation_macro_f1'] for s in seeds]
  return {'seeds': seeds, 'mean_macro_f1': float(test.mean()),
          'std_macro_f1': float(test.std(ddof=1)),
          'mean_validation_macro_f1': (float(np.mean(validation)) if None not in validation
                                       else None)}


def _score(entry: dict) -> float:
  """The test macro-F1 a comparison reads: the mean over fine-tuning seeds where there are
  several."""
  return entry.get('mean_macro_f1', entry['macro_f1'])


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(_fmt(v) for v in row) + ' |' for row in rows]
  return lines + ['']


def _epochs_per_step(summary: dict) -> float:
  steps, epochs = summary.get('steps') or 0, summary.get('epochs') or 0
  return epochs / steps if steps else 0.0


def _curves_picture(path: str, names: RunNames, curves: dict, summaries: dict,
                    eval_splits: dict) -> None:
  pre = curves.get(names.pretrain, [])
  pre_eval = eval_splits[names.pretrain]
  evals = [r for r in pre if r['split'] == pre_eval]
  # An evaluation reports the training objective as 'loss' (text) or 'objective' (images).
  key = 'loss' if evals and 'loss' in evals[0] else 'objective'
  panels = [{'title': 'pretraining loss', 'xlabel': 'step', 'series': {
      'train': ([r['step'] for r in pre if r['split'] == 'train'],
                [r['loss'] for r in pre if r['split'] == 'train']),
      f'{pre_eval} {key}': ([r['step'] for r in evals], [r.get(key, np.nan) for r in evals])}}]
  loss, f1 = {}, {}
  for name, records in curves.items():
    if name == names.pretrain:
      continue
    per_step = _epochs_per_step(summaries.get(name, {}))
    label = name.replace('finetune_', '')
    train = [r for r in records if r['split'] == 'train']
    evals = [r for r in records if r['split'] == eval_splits[name]]
    loss[label] = ([r['step'] * per_step for r in train], [r['loss'] for r in train])
    f1[label] = ([r['step'] * per_step for r in evals], [r['macro_f1'] for r in evals])
  panels.append({'title': 'fine-tuning train loss', 'xlabel': 'epoch', 'series': loss})
  panels.append({'title': 'fine-tuning validation macro-F1', 'xlabel': 'epoch', 'series': f1})
  plots.save_line_charts(path, panels)


def _verdict(entries: dict) -> list[str]:
  lines = []
  pre = entries.get('pretrained')
  if pre is None:
    return lines
  seeds = pre.get('seeds', [])
  mean = f' (means over {len(seeds)} fine-tuning seeds)' if seeds else ''
  for other, what in (('scratch', 'the same model trained from scratch with the same budget'),
                      ('baseline', entries.get('baseline', {}).get('method', ''))):
    if other in entries:
      delta = _score(pre) - _score(entries[other])
      word = 'beats' if delta > 0 else 'does not beat'
      line = (f'- Pretrained-then-fine-tuned ({pre["regime"]}) **{word}** {what}: '
              f'macro-F1 {_score(pre):.3f} vs {_score(entries[other]):.3f} ({delta:+.3f}){mean}')
      if seeds:  # seed by seed: scratch's run of the same seed, the baseline's one fit
        theirs = {s['seed']: s['macro_f1'] for s in entries[other].get('seeds', [])}
        ahead = [s['macro_f1'] > theirs.get(s['seed'], entries[other]['macro_f1'])
                 for s in seeds]
        line += f'; ahead in {sum(ahead)} of {len(ahead)} seeds'
      lines.append(line + '.')
  probe = entries.get('probe_pretrained')
  for other in ('probe_random', 'baseline'):
    if probe and other in entries:
      delta = probe['macro_f1'] - entries[other]['macro_f1']
      lines.append(f'- A linear probe (logistic regression) on the pretrained encoder\'s frozen '
                   f'features **{"beats" if delta > 0 else "does not beat"}** '
                   f'{entries[other]["method"]}: macro-F1 {probe["macro_f1"]:.3f} vs '
                   f'{entries[other]["macro_f1"]:.3f} ({delta:+.3f}).')
  others = [k for k in ('scratch', 'baseline') if k in entries]  # what this pipeline ran
  met = all(_score(pre) > _score(entries[k]) for k in others)
  named = ' and '.join({'scratch': 'scratch', 'baseline': 'the baseline'}[k] for k in others)
  lines.append(f'- Goal (pretrained beats {named or "nothing run beside it"} on test '
               f'macro-F1{mean}): **{"met" if met else "not met"}**.')
  return lines


def _write_md(path: str, lines: list[str]) -> None:
  write_atomic(path, '\n'.join(lines).encode())


def write_report(workdir: str, *, config, names: RunNames, runs: dict, stats: dict,
                 summaries: dict, results: dict, curves: dict, timings: dict,
                 commands: tuple = ()) -> dict:
  """Writes report.md, confusion_matrix.png and curves.png; returns report.json's content.
  `commands`: the pipeline's invocations ({'command', 'started'}), oldest first."""
  entries = _entries(names, results,
                     f'{config.pretrain.model.name} / {config.pretrain.objective.name}')
  test = stats['splits']['test']
  report = {
      'tasks': {config.name: entries},
      'dataset': stats['dataset'], 'num_classes': len(stats['class_names']),
      'test_split': test['name'], 'test_examples': test['examples'],
      'metric_notes': 'macro means over the classes present in the test labels or '
                      'predictions; checkpoints selected on validation macro-F1 only',
      'pretrain': {k: v for k, v in summaries.get(names.pretrain, {}).items()
                   if isinstance(v, (int, float, str))},
      'wall_seconds': {k: v['seconds'] for k, v in timings.items()},
      'commands': list(commands),
  }
  plots.save_confusion_matrix(os.path.join(workdir, 'confusion_matrix.png'),
                              np.asarray(results[names.main]['confusion']), stats['class_names'],
                              title=f'pretrained, {test["name"]}')
  eval_splits = {name: run.data.eval_split for name, run in runs.items()}
  _curves_picture(os.path.join(workdir, 'curves.png'), names, curves, summaries, eval_splits)
  md = (_summary_md(config, stats, entries, commands) + _data_md(stats, runs, summaries, names) +
        _pretraining_md(config.pretrain, summaries.get(names.pretrain, {}),
                        curves.get(names.pretrain, [])) +
        _finetuning_md(names, runs, summaries, results, curves, eval_splits) +
        _per_class_md(stats, names, entries, results) + _timings_md(timings))
  _write_md(os.path.join(workdir, 'report.md'), md)
  return report


def _summary_md(config, stats: dict, entries: dict, commands) -> list[str]:
  pre, test = config.pretrain, stats['splits']['test']
  md = [f'# {config.name}: does self-supervised pretraining help?', '']
  if len(commands) == 1:
    md += [f'Command: `{commands[0]["command"]}`', '']
  elif commands:
    md += ['Commands, in the order they ran (each later one resumed this folder):', '']
    md += [f'{i}. `{c["command"]}` ({c["started"]})' for i, c in enumerate(commands, 1)] + ['']
  md += [f'Dataset `{stats["dataset"]}` ({len(stats["class_names"])} classes, label '
         f'`{stats["label_key"]}`); pretraining: {pre.model.name} / {pre.objective.name}; every '
         f'number below is on the {test["name"]} split ({test["examples"]} examples), evaluated '
         f'once per model after choosing its checkpoint on validation macro-F1.', '']
  md += _verdict(entries) + ['', '## Results (test split)', '']
  rows = []
  for key, e in entries.items():
    how = e.get('method') or f'{e["run"]}, step {e["selected_step"]}' + (
        f' ({e["pretraining"]} pretraining)' if e['pretraining'] != 'none' else '')
    rows.append([key, how] + [e[k] for k in REPORTED] + [e.get('validation_macro_f1')])
  md += _table(['entry', 'how', 'accuracy', 'macro P', 'macro R', 'macro F1', 'micro F1',
                'weighted F1', 'validation macro F1'], rows)
  md += ['Macro means are over the classes present in the test labels or predictions '
         '(scikit-learn\'s default); micro F1 equals accuracy (one label an example).', '']
  return md + _seeds_md(entries)


def _seeds_md(entries: dict) -> list[str]:
  """Test macro-F1 (validation) of each fine-tuning seed, where there are several."""
  over_seeds = {key: e for key, e in entries.items() if 'seeds' in e}
  if not over_seeds:
    return []
  seeds = [s['seed'] for s in next(iter(over_seeds.values()))['seeds']]
  rows = [[key] + [f'{s["macro_f1"]:.3f} ({_fmt(s["validation_macro_f1"])})' for s in e['seeds']]
          + [f'{e["mean_macro_f1"]:.3f} ± {e["std_macro_f1"]:.3f}',
             e['mean_validation_macro_f1']] for key, e in over_seeds.items()]
  md = ['## Fine-tuning seeds (test macro-F1, validation in brackets)', '',
        'Each seed changes the head\'s initial weights (and a scratch run\'s encoder), dropout '
        'and the order of the batches; each run chose its checkpoint on validation alone.', '']
  return md + _table(['entry'] + [f'seed {s}' for s in seeds] +
                     ['mean ± std (test)', 'mean (validation)'], rows)


def _data_md(stats: dict, runs: dict, summaries: dict, names: RunNames) -> list[str]:
  md = ['## Data', '']
  if stats['validation_carved']:
    train_name = stats['splits']['train']['name']
    md += [f'The dataset has no validation split here: validation is a stratified '
           f'{stats["validation_fraction"]:.0%} of each class of `{train_name}` (seed '
           f'{stats["split_seed"]}), removed from training.', '']
  elif stats['dataset'].startswith('text_files/'):
    md += ['Splits are the builder\'s fixed hash split (SHA-256 of each text: 80% train, 10% '
           'validation, 10% test), the same on every machine.', '']
  rows = []
  for role, s in stats['splits'].items():
    counts = np.asarray(s['class_counts'])
    row = [role, s['name'], s['examples'], s['classes_present'], int(counts.min()),
           int(np.median(counts)), int(counts.max()), f'{counts.max() / max(s["examples"], 1):.3f}']
    row += [f'{s["mean_chars"]:.0f} / {s["median_chars"]:.0f} / {s["max_chars"]}'
            if 'mean_chars' in s else 'x'.join(map(str, s.get('image_shape', [])))]
    rows.append(row)
  md += _table(['role', 'split', 'examples', 'classes present', 'min/class', 'median/class',
                'max/class', 'largest class share', 'chars mean / median / max or shape'], rows)
  ft = summaries.get(names.main, {})
  if 'train_truncated_fraction' in ft:
    md += [f'Texts longer than text.seq_len={runs[names.main].text.seq_len} tokens (cut): '
           f'{ft["train_truncated_fraction"]:.1%} of the training split.', '']
  return md


def _pretraining_md(pre_cfg, pre: dict, records: list[dict]) -> list[str]:
  split = pre_cfg.data.eval_split
  md = ['## Pretraining', '']
  md += [f'{pre_cfg.model.name} / {pre_cfg.objective.name}: {pre.get("parameters", "?")} '
         f'parameters, {pre.get("steps", "?")} steps ({_fmt(pre.get("epochs"), 2)} epochs) of '
         f'batch {pre_cfg.train.batch_size}, {pre_cfg.optimizer.name} lr '
         f'{pre_cfg.optimizer.learning_rate}. Final {split} ' +
         ', '.join(f'{k} {_fmt(pre[f"{split}_{k}"], 4)}' for k in _PRETRAIN_METRICS
                   if f'{split}_{k}' in pre) + '.', '']
  evals = [r for r in records if r['split'] == split]
  train = [r for r in records if r['split'] == 'train']
  keys = [k for k in _PRETRAIN_METRICS if evals and k in evals[0]]
  rows = []
  for r in evals:
    before = [t['loss'] for t in train if t['step'] <= r['step']]
    rows.append([r['step'], before[-1] if before else None] + [r.get(k) for k in keys])
  md += _table(['step', 'train loss'] + [f'{split} {k}' for k in keys], rows)
  return md + ['![curves](curves.png)', '']


def _finetuning_md(names: RunNames, runs: dict, summaries: dict, results: dict, curves: dict,
                   eval_splits: dict) -> list[str]:
  fine = [n for n in runs if n != names.pretrain]
  rows = []
  for name in fine:
    c, s = runs[name], summaries.get(name, {})
    rows.append([name, 'yes' if c.classifier.init_from else 'no',
                 c.optimizer.encoder_learning_rate_multiplier, c.optimizer.layer_decay,
                 c.optimizer.learning_rate,
                 c.train.batch_size, s.get('steps'), _fmt(s.get('epochs'), 2),
                 c.objective.class_weights, c.classifier.pooling, results[name]['selected_step']])
  md = ['## Fine-tuning', '']
  md += _table(['run', 'pretrained', 'encoder lr x', 'layer decay', 'lr', 'batch', 'steps',
                'epochs', 'class weights', 'pooling', 'selected step'], rows)
  by_step = {}
  for name in fine:
    for r in curves.get(name, []):
      if r['split'] == eval_splits[name]:
        by_step.setdefault(r['step'], {})[name] = r
  rows = [[step] + [f'{by_step[step][n]["accuracy"]:.3f} / {by_step[step][n]["macro_f1"]:.3f}'
                    if n in by_step[step] else '' for n in fine] for step in sorted(by_step)]
  md += ['Validation accuracy / macro-F1 after each evaluation:', '']
  return md + _table(['step'] + fine, rows)


def _per_class_md(stats: dict, names: RunNames, entries: dict, results: dict) -> list[str]:
  class_names, train_counts = stats['class_names'], stats['splits']['train']['class_counts']
  cols = [k for k in ('pretrained', 'scratch', 'baseline') if k in entries]
  runs_of = {'pretrained': names.main, 'scratch': names.scratch, 'baseline': 'baseline'}
  rows = [[class_names[i], train_counts[i], results[names.main]['support'][i]] +
          [results[runs_of[k]]['per_class_f1'][i] for k in cols] for i in range(len(class_names))]
  md = ['## Per class (test F1)', '']
  md += _table(['class', 'train examples', 'test support'] + [f'F1 {k}' for k in cols], rows)
  return md + ['## Confusion matrix (pretrained, test)', '',
               '![confusion matrix](confusion_matrix.png)', '']


def _timings_md(timings: dict) -> list[str]:
  md = ['## Wall time', '']
  md += _table(['step', 'seconds', 'invocations'],
               [[k, round(v['seconds'], 1), v['invocations']] for k, v in timings.items()])
  return md + ['(`report` is timed after this file is written; timings.json has it.)', '']


def compare(workdirs: list[str]) -> str:
  """A markdown table of every entry of the pipelines' report.json files, one row each (a
  baseline or majority row that another pipeline already gave, same method and score, is left
  out): how each model was pretrained, for how long, and its test scores."""
  header = ['pipeline', 'entry', 'pretraining', 'pretraining steps', 'pretraining s',
            'test accuracy', 'test macro-F1', 'validation macro-F1',
            'test macro-F1 over fine-tuning seeds: mean ± std (seeds)']
  rows, seen = [], set()
  for workdir in workdirs:
    path = os.path.join(workdir, 'report.json')
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path} not found: allowed: the folders of finished pipelines')
    with open(path) as f:
      report = json.load(f)
    pre = report.get('pretrain', {})
    for entries in report['tasks'].values():
      # report.json's keys come back sorted: pretrained ones, scratch, then METHOD_ENTRIES.
      order = lambda k: ('method' in entries[k], k == 'scratch',  # noqa: E731
                         METHOD_ENTRIES.index(k) if k in METHOD_ENTRIES else -1, k)
      for key in sorted(entries, key=order):
        e = entries[key]
        if key in METHOD_ENTRIES and key not in DATASET_ENTRIES:  # a feature probe
          how = f'{e["method"]}' + (f' ({e["pretraining"]})' if 'pretraining' in e else '')
          rows.append([os.path.basename(os.path.normpath(workdir)), key, how,
                       pre.get('steps') if key == 'probe_pretrained' else '', '',
                       e['accuracy'], e['macro_f1'], e.get('validation_macro_f1')])
          continue
        if 'method' in e:
          same = (report['dataset'], e['method'], e['macro_f1'])
          if same in seen:
            continue
          seen.add(same)
          rows.append([os.path.basename(os.path.normpath(workdir)), key, e['method'], '', '',
                       e['accuracy'], e['macro_f1'], e.get('validation_macro_f1')])
          continue
        # report.json before issue 19 has no 'pretraining': every row but scratch was pretrained.
        pretraining = e.get('pretraining', 'none' if key == 'scratch' else 'pretrained')
        pretrained = pretraining != 'none'
        rows.append([os.path.basename(os.path.normpath(workdir)), key,
                     f'{pretraining} ({e["regime"]})' if pretrained else 'none',
                     pre.get('steps') if pretrained else '',
                     round(report['wall_seconds'].get('pretrain', 0)) if pretrained else '',
                     e['accuracy'], e['macro_f1'], e.get('validation_macro_f1'),
                     f'{e["mean_macro_f1"]:.3f} ± {e["std_macro_f1"]:.3f} ({len(e["seeds"])})'
                     if 'seeds' in e else ''])
  return '\n'.join(_table(header, [row + [''] * (len(header) - len(row)) for row in rows]))
