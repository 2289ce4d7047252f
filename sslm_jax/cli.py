"""`sslm-jax train | eval | sample | data | pipeline | compare`: parse, load the config, call the
library.

  sslm-jax train  --config configs/demo.py --workdir runs/demo [--config.train.num_epochs=30]
  sslm-jax pipeline --config configs/pipeline_fortunes.py [--workdir runs/pipeline_fortunes]
  sslm-jax eval   --workdir runs/demo [--step N]
  sslm-jax sample --workdir runs/demo [--step N] [--num 64] [--seed 0] [--out FILE]
  sslm-jax sample --workdir runs/gpt --prompt 'The' [--temperature 0.8] [--top_k 40] [--top_p 1]
  sslm-jax interpolate --workdir runs/text_vae --a 'One sentence.' --b 'Another.' [--steps 5]
  sslm-jax data prepare --name idx_images/fashion_mnist --manual_dir DIR [--data_dir DIR]
  sslm-jax data info    --name idx_images/fashion_mnist [--data_dir DIR]   (a prepared dataset)
  sslm-jax data tokenize --config configs/gpt_fortunes.py [--out DIR] [--workers N] [--splits a,b]
  sslm-jax data info    --token_dir DIR                    (token shards: counts, all checked)
  sslm-jax compare runs/pipeline_fortunes runs/pipeline_fortunes_electra   (one table of results)

Every error a user can cause exits non-zero with one message naming what is wrong and what is
allowed; nothing in the workdir is written over.
"""

import argparse
import json
import logging
import os
import shlex
import sys

from sslm_jax import host_memory  # standard library only: no start-up cost

USAGE_ERROR, RUN_ERROR = 2, 1


_NAME_FLAGS = ('--config.model.name', '--config.objective.name')


def _split_flags(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
  """(--config FILE, the flags that name the model or objective, the rest) of `argv`."""
  groups, i = ([], [], []), 0
  while i < len(argv):
    flag = argv[i].split('=', 1)[0]
    group = 0 if flag == '--config' else 1 if flag in _NAME_FLAGS else 2
    value = argv[i + 1:i + 2] if group < 2 and '=' not in argv[i] else []
    groups[group].extend([argv[i]] + value)
    i += 1 + len(value)
  return groups


def _parse_config(argv: list[str], config=None):
  """(config, workdir) from `argv` as ml_collections' config_flags parses them: --config FILE
  (or the ConfigDict `config`) plus --config.key=value overrides (types checked against the
  config's values)."""
  from absl import flags
  from ml_collections import config_flags
  flag_values = flags.FlagValues()
  if config is None:
    config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py).',
                                    flag_values=flag_values, lock_config=True,
                                    sys_argv=['sslm-jax'] + argv)
  else:
    config_flags.DEFINE_config_dict('config', config, flag_values=flag_values, lock_config=True,
                                    sys_argv=['sslm-jax'] + argv)
  flags.DEFINE_string('workdir', None, 'Run folder.', flag_values=flag_values)
  flag_values(['sslm-jax'] + argv)
  loaded = flag_values.config
  if loaded is not None:
    loaded.to_dict()  # a config file that failed to load raises on first access
  path = config_flags.get_config_filename(flag_values['config']) if config is None else None
  return loaded, flag_values.workdir, path


def _load_config(argv: list[str], command: str = 'train'):
  """--config FILE plus --config.key=value overrides, then validated: (config, workdir). A flag
  that changes the model or the objective reshapes the config to the keys they read before the
  other flags apply. A pipeline's workdir defaults to runs/<config file name>."""
  from sslm_jax import config as config_lib
  from sslm_jax import pipeline_config as pipeline_lib
  from sslm_jax import runs
  file, names, rest = _split_flags(argv)
  try:  # absl, OS, attribute and type errors: each becomes one config error message
    config, workdir, path = _parse_config(file + names + ([] if names else rest))
    if names and config is not None:
      config, workdir, _ = _parse_config(rest, runs.reshape(config))
  except config_lib.ConfigError:
    raise
  except Exception as e:  # noqa: BLE001
    hint = ('; allowed: the keys of this run config, which holds those its model and objective '
            'read (a --config.model.name or --config.objective.name flag reshapes it)'
            if isinstance(e, (AttributeError, KeyError)) else '')
    raise config_lib.ConfigError(f'{type(e).__name__}: {e}{hint}') from e
  if command == 'tokenize':
    if config is None:
      raise config_lib.ConfigError('data tokenize needs --config FILE (the run\'s config: its '
                                   'data.*, text.seq_len, text.* cleaning and tokenizer)')
    return runs.validate(config), None
  if command == 'pipeline':
    if config is None:
      raise config_lib.ConfigError('pipeline needs --config FILE (e.g. '
                                   'configs/pipeline_fortunes.py)')
    if 'pretrain' not in config:
      raise config_lib.ConfigError(f'{path} is not a pipeline config; allowed: one built on '
                                   f'sslm_jax.pipeline_config.pipeline_config() '
                                   f'(configs/pipeline_*.py)')
    workdir = workdir or os.path.join('runs', os.path.splitext(os.path.basename(path))[0])
    return pipeline_lib.validate_pipeline(config), workdir
  if config is None or workdir is None:
    raise config_lib.ConfigError('train needs --config FILE and --workdir DIR')
  return runs.validate(config), workdir


def cmd_train(args, rest: list[str]) -> int:
  from sslm_jax.train import loop
  config, workdir = _load_config(rest)
  summary = loop.train_and_evaluate(config, workdir)
  print(json.dumps(summary, indent=2, sort_keys=True))
  return 0


def cmd_pipeline(args, rest: list[str]) -> int:
  from sslm_jax import pipeline
  config, workdir = _load_config(rest, command='pipeline')
  # Shell-quoted: the report's command reruns as typed (`--config.x="(1,2)"` included).
  report = pipeline.run_pipeline(config, workdir,
                                 command=shlex.join(['sslm-jax', args.command, *rest]))
  print(json.dumps(report['tasks'], indent=2, sort_keys=True))
  print(f'report: {os.path.join(workdir, "report.md")}')
  return 0


def cmd_compare(args, rest) -> int:
  from sslm_jax.eval import report
  print(report.compare(args.workdirs))
  return 0


def cmd_eval(args, rest) -> int:
  from sslm_jax import runs
  run, params, step = runs.restore_params(args.workdir, args.step)
  split = args.split or run.config.data.eval_split
  result = {'step': step, 'split': split, **run.task.evaluate(params, split)}
  print(json.dumps(result, indent=2, sort_keys=True))
  return 0


def cmd_sample(args, rest) -> int:
  from sslm_jax import runs
  from sslm_jax.data.images import DataError
  from sslm_jax.eval import pictures
  from sslm_jax.tasks import GeneratesImages, GeneratesText
  run, params, step = runs.restore_params(args.workdir, args.step)
  if isinstance(run.task, GeneratesText):  # a language model: text to stdout
    texts = run.task.sample_text(params, prompt=args.prompt, num=args.num or 4, seed=args.seed,
                                 temperature=args.temperature, top_k=args.top_k,
                                 top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                 use_cache=not args.no_cache)
    for i, text in enumerate(texts):
      print(f'--- sample {i} (step {step}, seed {args.seed}) ---\n{text}')
    return 0
  if not isinstance(run.task, GeneratesImages):
    raise DataError(f'sample needs a run that generates text or images; {args.workdir!r} is a '
                    f'{run.config.model.name!r} {run.config.objective.name!r} run')
  out = args.out or os.path.join(args.workdir, f'samples_step{step}_seed{args.seed}.png')
  if os.path.exists(out) and not args.overwrite:
    raise FileExistsError(f'{out} exists; pass --overwrite or another --out')
  pictures.save_samples(out, run.task.sample_images(params, args.num or 64, args.seed))
  print(out)
  return 0


def cmd_interpolate(args, rest) -> int:
  """A text VAE's reconstructions of --a and --b and the homotopy between their means."""
  from sslm_jax import runs
  from sslm_jax.data.images import DataError
  from sslm_jax.tasks import Interpolates
  run, params, step = runs.restore_params(args.workdir, args.step)
  if not isinstance(run.task, Interpolates):
    raise DataError(f'interpolate needs a text_vae run; {args.workdir!r} is model.name='
                    f'{run.config.model.name!r}')
  recon_a, recon_b = run.task.reconstruct(params, [args.a, args.b])
  _, texts = run.task.homotopy(params, args.a, args.b, steps=args.steps)
  print(f'--- step {step}: reconstructions (greedy from the posterior mean) ---')
  print(f'a: {args.a}\n=> {recon_a}\nb: {args.b}\n=> {recon_b}')
  print(f'--- homotopy, {args.steps} points from mean(a) to mean(b) ---')
  for i, text in enumerate(texts):
    print(f'{i / (args.steps - 1):.2f}: {text}')
  return 0


def cmd_tokenize(args, rest) -> int:
  from sslm_jax.data import shards
  config, _ = _load_config(rest, command='tokenize')
  out = args.out or config.data.token_dir
  if not out:
    raise FileNotFoundError('data tokenize needs --out DIR (or --config.data.token_dir=DIR)')
  splits = tuple(s for s in args.splits.split(',') if s)
  manifest = shards.tokenize(config, out, splits=splits, workers=args.workers,
                             rows_per_shard=args.rows_per_shard or shards.ROWS_PER_SHARD)
  print(json.dumps(_token_summary(out, manifest), indent=2))
  return 0


def _token_summary(token_dir: str, manifest: dict) -> dict:
  summary = {'token_dir': token_dir, 'seq_len': manifest['seq_len'],
             'tokenizer': manifest['tokenizer'],
             'splits': {s: {k: e[k] for k in ('documents', 'tokens', 'rows', 'chars_per_token')}
                        | {'shards': len(e['shards'])} for s, e in manifest['splits'].items()}}
  for key in ('seconds', 'tokens_per_second'):
    if key in manifest:
      summary[key] = round(manifest[key], 1)
  return summary


def cmd_data(args, rest) -> int:
  from sslm_jax.data import images as image_data
  if args.action == 'tokenize':
    return cmd_tokenize(args, rest)
  if args.action == 'info' and args.token_dir:
    from sslm_jax.data import shards
    manifest = shards.read_manifest(args.token_dir)
    for split, entry in manifest['splits'].items():
      shards.check_shards(args.token_dir, split, entry)
    print(json.dumps(_token_summary(args.token_dir, manifest), indent=2))
    return 0
  if not args.name:
    raise FileNotFoundError(f'data {args.action} needs --name (a tfds dataset)' +
                            (' or --token_dir' if args.action == 'info' else ''))
  if args.action == 'prepare':
    builder = image_data.prepare(args.name, args.data_dir, args.manual_dir)
    print(f'{args.name} prepared in {builder.data_dir}')
  builder = image_data.prepared_builder(args.name, args.data_dir)
  splits = {}
  for split in sorted(builder.info.splits.keys()):
    s = image_data.load_split(args.name, split, data_dir=args.data_dir)
    splits[split] = {'examples': len(s), 'image_shape': list(s.images.shape[1:]),
                     'classes': s.num_classes, 'pixel_mean': float(s.images.mean()),
                     'pixel_std': float(s.images.std())}
  print(json.dumps({'name': args.name, 'splits': splits}, indent=2))
  return 0


def _positive_int(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f'{text!r}: allowed: an integer >= 1')
  return int(text)


def _at_least_two(text: str) -> int:
  if not text.isdigit() or int(text) < 2:
    raise argparse.ArgumentTypeError(f'{text!r}: allowed: an integer >= 2')
  return int(text)


def _non_negative_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not value >= 0:
    raise argparse.ArgumentTypeError(f'{text!r}: allowed: a number >= 0')
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='sslm-jax', description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  train = sub.add_parser('train', help='train (or resume) a run; --config FILE --workdir DIR',
                         add_help=False)
  train.set_defaults(func=cmd_train)
  pipe = sub.add_parser('pipeline', add_help=False,
                        help='pretrain, fine-tune, compare with baselines, report; --config FILE '
                             '[--workdir DIR, default runs/<config name>]')
  pipe.set_defaults(func=cmd_pipeline)
  compare = sub.add_parser('compare', help="one markdown table of several pipelines' test "
                                           'results (their report.json)')
  compare.add_argument('workdirs', nargs='+', help='pipeline folders')
  compare.set_defaults(func=cmd_compare)
  for name, func, help_ in (('eval', cmd_eval, 'evaluate a checkpoint on the test split'),
                            ('sample', cmd_sample, 'prior samples to a PNG, or text from a GPT')):
    p = sub.add_parser(name, help=help_)
    p.add_argument('--workdir', required=True)
    p.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
    p.set_defaults(func=func)
    if name == 'eval':
      p.add_argument('--split', default='', help='default: the run\'s data.eval_split')
    if name == 'sample':
      p.add_argument('--num', type=_positive_int, default=None,
                     help='images (default 64) or texts (default 4)')
      p.add_argument('--seed', type=int, default=0)
      p.add_argument('--out', default='', help='images: the PNG to write')
      p.add_argument('--overwrite', action='store_true')
      p.add_argument('--prompt', default='', help='text: the start of every sample')
      p.add_argument('--temperature', type=_non_negative_float, default=0.8,
                     help='text: 0 = greedy')
      p.add_argument('--top_k', type=int, default=40, help='text: 0 = off')
      p.add_argument('--top_p', type=_non_negative_float, default=1.0, help='text: 1 = off')
      p.add_argument('--max_new_tokens', type=int, default=0, help='text: 0 = up to 96')
      p.add_argument('--no_cache', action='store_true',
                     help='text: recompute the whole prefix each token (slow; for checking)')
  inter = sub.add_parser('interpolate', help='text VAE: reconstruct two sentences and decode '
                                              'points between their latent means')
  inter.add_argument('--workdir', required=True)
  inter.add_argument('--step', type=int, default=None, help='checkpoint step (default: newest)')
  inter.add_argument('--a', required=True, help='the first sentence')
  inter.add_argument('--b', required=True, help='the second sentence')
  inter.add_argument('--steps', type=_at_least_two, default=5,
                     help='points on the line, both ends included (>= 2)')
  inter.set_defaults(func=cmd_interpolate)
  data = sub.add_parser('data', help='prepare or describe a tfds image dataset; tokenize a text '
                                     'dataset once into token shards')
  data.add_argument('action', choices=('prepare', 'info', 'tokenize'))
  data.add_argument('--name', default='', help='e.g. idx_images/fashion_mnist, mnist')
  data.add_argument('--data_dir', default='', help="tfds data dir ('' = tfds' default)")
  data.add_argument('--manual_dir', default='', help='folder of local files (idx_images)')
  data.add_argument('--token_dir', default='', help='info: a folder of token shards')
  data.add_argument('--out', default='', help='tokenize: the folder to write (default: '
                                              'the config\'s data.token_dir)')
  data.add_argument('--workers', type=int, default=0,
                    help='tokenize: processes (0 = one a core)')
  data.add_argument('--splits', default='', help='tokenize: comma-separated splits (default: '
                                                 'the config\'s train, eval and test splits)')
  data.add_argument('--rows_per_shard', type=_positive_int, default=None,
                    help='tokenize: rows a shard file (default 8192)')
  data.set_defaults(func=cmd_data)
  return parser


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and tfds chatter goes through absl
  for noisy in ('jax._src', 'orbax', 'tensorflow_datasets'):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  logging.getLogger(__name__).info('host allocator: %s', host_memory.describe())
  args, rest = build_parser().parse_known_args(argv)
  takes_config = args.command in ('train', 'pipeline') or (
      args.command == 'data' and args.action == 'tokenize')
  if rest and not takes_config:
    print(f'sslm-jax {args.command}: unknown arguments {rest}', file=sys.stderr)
    return USAGE_ERROR
  from sslm_jax.config import ConfigError
  from sslm_jax.data.images import DataError
  from sslm_jax.runs import WorkdirError
  from sslm_jax.train.checkpoint import CheckpointError
  from sslm_jax.train.loop import NonFiniteLossError
  from sslm_jax.train.parallel import ParallelError
  try:
    return args.func(args, rest)
  except (ConfigError, DataError, WorkdirError, CheckpointError, ParallelError,
          FileNotFoundError, FileExistsError, NonFiniteLossError) as e:
    print(f'sslm-jax {args.command}: error: {e}', file=sys.stderr)
    return RUN_ERROR if isinstance(e, NonFiniteLossError) else USAGE_ERROR


def entry() -> None:
  """The `sslm-jax` command: `main` under tcmalloc where installed (see host_memory.py)."""
  host_memory.exec_under_tcmalloc()
  sys.exit(main())


if __name__ == '__main__':
  entry()
