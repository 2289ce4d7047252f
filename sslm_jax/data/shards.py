"""Token shards: a text dataset tokenized once into packed rows, read many times (array_record).

`sslm-jax data tokenize --config FILE --out DIR` (`tokenize`) writes

  DIR/tokenizer.model                          the sentencepiece model the rows were made with
  DIR/<split>/tokens-00000-of-00004.array_record  one record a row: seq_len + 1 little-endian
                                               token ids (uint16 when the vocabulary fits, else
                                               int32), written with group_size 1 (random access)
  DIR/manifest.json                            written last, atomically: what a run checks

A split's rows are exactly the memory path's (`text.pack_tokens` of its cleaned, non-empty
documents, `doc eos doc eos ...`, in the dataset's order), so a streamed run trains on the same
rows; the manifest keeps the split's characters and bytes for bits per character.

The job uses the machine's cores (a process pool): documents are tokenized in units of
`DOCS_PER_UNIT` into `DIR/.work/` (each unit file written to a temporary name and renamed), then
the shards are cut from the units, each again written under a temporary name and renamed. An
interrupted job run again with the same settings keeps the finished units and shards; with other
settings it starts over. A run reads nothing without the manifest, which comes last.

A run (`TokenShards`, `check_for_run`) refuses, naming the file and what was expected: a token
folder made with another tokenizer (sha256 of the .model file), sequence length, dataset or text
cleaning; a missing shard, one of another size (truncated) or another content (its first and last
rows' fingerprint); a record of another length.
"""

import collections
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import threading
import time

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from sslm_jax.data import text as text_data
from sslm_jax.data.tfds_utils import DataError, data_source, prepare, read_records
from sslm_jax.data.tokenizer import EOS_ID, Tokenizer, num_bytes, num_chars, train_tokenizer
from sslm_jax.train.writers import write_atomic

log = logging.getLogger(__name__)

FORMAT = 'sslm-jax token shards 1'
MANIFEST = 'manifest.json'
TOKENIZER = 'tokenizer.model'
WORK = '.work'                 # units and plan of an unfinished job
DOCS_PER_UNIT = 2000           # documents a worker tokenizes at once
ROWS_PER_SHARD = 8192          # rows a shard (16 MB at seq_len 1024 in uint16)
MAX_OPEN_SHARDS = 64           # readers a process keeps open: bounds their indexes in memory
WRITE_OPTIONS = 'group_size:1,uncompressed'
READ_OPTIONS = 'readahead_buffer_size:0,max_parallelism:0'  # random access
READ_BUFFER = 32 * 1024        # bytes a reader buffers (riegeli's default, 1 MiB, a reader)


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def settings(config) -> dict:
  """What decides the rows, besides the tokenizer: recorded in the manifest, checked by runs."""
  return {'dataset': config.data.name, 'text_key': config.data.text_key,
          'seq_len': config.text.seq_len, 'cleaning': text_data.cleaning(config.text)}


def token_dtype(vocab_size: int) -> str:
  return 'uint16' if vocab_size <= 2 ** 16 else 'int32'


def read_manifest(token_dir: str) -> dict:
  path = os.path.join(token_dir, MANIFEST)
  if not os.path.exists(path):
    raise DataError(f'{path} not found: {token_dir!r} holds no finished token shards; allowed: '
                    f'a folder written by `sslm-jax data tokenize` (run it again to finish an '
                    f'interrupted one)')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except ValueError as e:
    raise DataError(f'{path} is not readable JSON ({e}); allowed: the manifest `sslm-jax data '
                    f'tokenize` wrote') from e
  if manifest.get('format') != FORMAT:
    raise DataError(f'{path} has format {manifest.get("format")!r}; allowed: {FORMAT!r}')
  return manifest


# --- reading -------------------------------------------------------------------------------

def _fingerprint(first: bytes, last: bytes) -> str:
  return hashlib.sha256(first + last).hexdigest()[:32]


def _shard_fingerprint(path: str) -> str:
  reader = ArrayRecordReader(path, READ_OPTIONS)
  try:
    n = reader.num_records()
    first, last = reader.read([0, n - 1])
  finally:
    reader.close()
  return _fingerprint(first, last)


def check_shards(token_dir: str, split: str, entry: dict) -> None:
  """Every shard of the split is there, of the size and content the manifest says."""
  for shard in entry['shards']:
    path = os.path.join(token_dir, shard['file'])
    expected = (f'{shard["rows"]} rows, {shard["bytes"]} bytes, fingerprint '
                f'{shard["fingerprint"]} ({os.path.join(token_dir, MANIFEST)})')
    if not os.path.exists(path):
      raise DataError(f'token shard {path} of split {split!r} is missing; expected {expected}; '
                      f'allowed: the folder as `sslm-jax data tokenize` wrote it')
    size = os.path.getsize(path)
    if size != shard['bytes']:
      raise DataError(f'token shard {path} has {size} bytes (truncated or replaced); expected '
                      f'{expected}; allowed: run `sslm-jax data tokenize` again')
    try:
      found = _shard_fingerprint(path)
    except Exception as e:  # noqa: BLE001  riegeli reports damage in several ways
      raise DataError(f'token shard {path} is unreadable ({type(e).__name__}: {e}); expected '
                      f'{expected}') from e
    if found != shard['fingerprint']:
      raise DataError(f'token shard {path} holds other rows (fingerprint {found}: another '
                      f'tokenizer, sequence length or corpus); expected {expected}; allowed: '
                      f'the shards written with this manifest')


class TokenShards:
  """The rows of one split of a token folder, a RowSource: `read(indices)` -> {'tokens': int32
  (len(indices), seq_len + 1)}, one batched read per shard touched.

  At most MAX_OPEN_SHARDS shard readers stay open (least recently used closed first), so memory
  does not grow with the number of shards. Picklable for Grain's worker processes (readers are
  opened where they are used).
  """

  def __init__(self, token_dir: str, split: str, *, manifest: dict | None = None):
    manifest = manifest or read_manifest(token_dir)
    if split not in manifest['splits']:
      raise DataError(f'split {split!r} is not in {os.path.join(token_dir, MANIFEST)}; allowed: '
                      f'{sorted(manifest["splits"])} (or tokenize it: `sslm-jax data tokenize`)')
    entry = manifest['splits'][split]
    check_shards(token_dir, split, entry)
    self.split, self.seq_len, self.counts = split, manifest['seq_len'], entry
    self._dtype = np.dtype(manifest['dtype']).newbyteorder('<')
    self._row_bytes = (self.seq_len + 1) * self._dtype.itemsize
    self._paths = [os.path.join(token_dir, s['file']) for s in entry['shards']]
    self._rows_per_shard = manifest['rows_per_shard']
    self._num_rows = entry['rows']
    self._init_readers()

  def _init_readers(self):
    self._lock = threading.Lock()
    self._open = collections.OrderedDict()  # shard -> reader, least recently used first
    self._in_use = collections.Counter()

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ('_lock', '_open', '_in_use')}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_readers()

  def __len__(self) -> int:
    return self._num_rows

  def _acquire(self, shards) -> dict:
    with self._lock:
      readers = {}
      for s in shards:
        reader = self._open.pop(s, None)
        if reader is None:
          try:
            reader = ArrayRecordReader(self._paths[s], READ_OPTIONS,
                                       file_reader_buffer_size=READ_BUFFER)
          except Exception as e:  # noqa: BLE001
            raise DataError(f'cannot open token shard {self._paths[s]} ({e})') from e
        self._open[s] = reader
        self._in_use[s] += 1
        readers[s] = reader
      for s in list(self._open):
        if len(self._open) <= MAX_OPEN_SHARDS:
          break
        if not self._in_use[s]:
          self._open.pop(s).close()
      return readers

  def _release(self, shards) -> None:
    with self._lock:
      for s in shards:
        self._in_use[s] -= 1

  def read(self, indices) -> dict[str, np.ndarray]:
    indices = np.asarray(indices, np.int64)
    if len(indices) and (indices.min() < 0 or indices.max() >= self._num_rows):
      raise IndexError(f'rows {indices.min()}..{indices.max()} of a {self._num_rows}-row split')
    shard, position = np.divmod(indices, self._rows_per_shard)
    records = [b''] * len(indices)
    shards = np.unique(shard).tolist()
    readers = self._acquire(shards)
    try:
      for s in shards:
        where = np.flatnonzero(shard == s)
        for i, record in zip(where, readers[s].read(position[where].tolist())):
          records[i] = record
    finally:
      self._release(shards)
    bad = next((i for i, r in enumerate(records) if len(r) != self._row_bytes), None)
    if bad is not None:
      raise DataError(f'token shard {self._paths[shard[bad]]} record {position[bad]} has '
                      f'{len(records[bad])} bytes; expected {self._row_bytes} (seq_len + 1 = '
                      f'{self.seq_len + 1} tokens of {self._dtype.name})')
    rows = np.frombuffer(b''.join(records), self._dtype).reshape(len(indices), self.seq_len + 1)
    return {'tokens': rows.astype(np.int32)}


def run_splits(data) -> tuple[str, ...]:
  """The splits a run reads (`data` section: train, eval, test), each once, unset ones left out."""
  return tuple(dict.fromkeys(s for s in (data.train_split, data.eval_split, data.test_split)
                             if s))


def check_for_run(config, workdir: str) -> tuple[dict, str]:
  """(manifest, tokenizer path) of `config.data.token_dir`, refused unless the run's settings,
  tokenizer (text.tokenizer_path, or the workdir's from an earlier start) and splits fit."""
  token_dir = config.data.token_dir
  manifest = read_manifest(token_dir)
  where = os.path.join(token_dir, MANIFEST)
  diffs = [f'{k}: made with {manifest.get(k)!r}, this run asks {v!r}'
           for k, v in settings(config).items() if manifest.get(k) != v]
  if diffs:
    raise DataError(f'{where} does not fit this run ({"; ".join(diffs)}); allowed: the settings '
                    f'it was made with, or `sslm-jax data tokenize` into another folder')
  tokenizer_path = os.path.join(token_dir, TOKENIZER)
  expected = manifest['tokenizer']['sha256']
  candidates = [(tokenizer_path, 'its tokenizer'),
                (config.text.tokenizer_path, 'text.tokenizer_path'),
                (os.path.join(workdir, TOKENIZER) if workdir else '', 'the run\'s tokenizer')]
  for path, what in candidates:
    if path and (os.path.exists(path) or what == 'its tokenizer'):
      found = sha256_file(path) if os.path.exists(path) else 'missing'
      if found != expected:
        raise DataError(f'{what} {path} (sha256 {found[:16]}) is not the tokenizer {where} was '
                        f'made with (sha256 {expected[:16]}, vocab '
                        f'{manifest["tokenizer"]["vocab_size"]}); allowed: that tokenizer, or '
                        f'`sslm-jax data tokenize` with this one into another folder')
  for split in run_splits(config.data):
    if split not in manifest['splits']:
      raise DataError(f'split {split!r} is not in {where}; allowed: {sorted(manifest["splits"])}'
                      f' (or `sslm-jax data tokenize --splits ...` with it)')
  return manifest, tokenizer_path


# --- writing (sslm-jax data tokenize) ------------------------------------------------------

_worker = {}  # per worker process: the split sources and the tokenizer


def _init_worker(data_dir: str, text_key: str, cleaning: dict, tokenizer_proto: bytes) -> None:
  _worker.update(data_dir=data_dir, text_key=text_key, cleaning=cleaning, sources={},
                 tokenizer=Tokenizer(tokenizer_proto))


def _documents(split: str, start: int, stop: int) -> list[str]:
  import tensorflow_datasets as tfds
  sources = _worker['sources']
  if split not in sources:
    sources[split] = tfds.builder_from_directory(_worker['data_dir']).as_data_source(split=split)
  examples = read_records(sources[split], range(start, stop))
  key = _worker['text_key']
  texts = text_data.clean_texts([text_data.as_str(e[key]) for e in examples],
                                **_worker['cleaning'])
  return [t for t in texts if t]


def _tokenize_unit(job) -> tuple:
  """One unit of documents -> its token stream `doc eos doc eos ...` in a .npz; (job, counts)."""
  split, start, stop, path, dtype = job
  texts = _documents(split, start, stop)
  ids = _worker['tokenizer'].encode_batch(texts)
  stream = np.fromiter((t for doc in ids for t in (*doc, EOS_ID)), np.int64,
                       sum(map(len, ids)) + len(ids)).astype(dtype)
  counts = np.asarray([len(texts), num_chars(texts), num_bytes(texts), len(stream)])
  with open(path + '.tmp', 'wb') as f:
    np.savez(f, tokens=stream, counts=counts)
  os.replace(path + '.tmp', path)
  return job, counts


def _write_shard(job) -> dict:
  """Rows [first, last) of a split, cut from its units' streams, as one array_record file."""
  path, first, last, seq_len, units, dtype = job  # units: (file, first stream position)
  lo, hi = first * seq_len, last * seq_len + 1  # the stream positions these rows cover
  parts = []
  for unit, start in units:
    tokens = np.load(unit)['tokens']
    parts.append(tokens[max(lo - start, 0):max(min(hi - start, len(tokens)), 0)])
  stream = np.concatenate(parts).astype(np.dtype(dtype).newbyteorder('<'))
  index = np.arange(last - first)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
  return write_shard_file(path, stream[index])


def write_shard_file(path: str, rows: np.ndarray) -> dict:
  """`rows` (little-endian, one record each) as the array_record file `path`, which appears
  only once complete; its manifest entry (rows, bytes, fingerprint)."""
  writer = ArrayRecordWriter(path + '.tmp', WRITE_OPTIONS)
  for row in rows:
    writer.write(row.tobytes())
  writer.close()
  os.replace(path + '.tmp', path)
  return {'rows': len(rows), 'bytes': os.path.getsize(path),
          'fingerprint': _fingerprint(rows[0].tobytes(), rows[-1].tobytes())}


def _run_jobs(fn, jobs, pool, bar, weight) -> None:
  for result in (pool.imap_unordered(fn, jobs) if pool else map(fn, jobs)):
    bar.update(weight(result))


def _train_texts(config) -> list[str]:
  """The cleaned, non-empty documents of the train split (in memory: to train a tokenizer)."""
  d = config.data
  raw = text_data.load_text_split(d.name, d.train_split, data_dir=d.data_dir, text_key=d.text_key)
  texts = [x for x in text_data.clean_texts(raw.texts, **text_data.cleaning(config.text)) if x]
  if not texts:
    raise DataError(f'{d.name}:{d.train_split} has no text after cleaning; allowed: a split '
                    f'with non-empty {d.text_key!r} values')
  return texts


def _tokenizer_for(config, out_dir: str, train_texts) -> Tokenizer:
  """text.tokenizer_path (copied into out_dir), or out_dir's (an interrupted job's), or one
  trained on the train split as a run would train it."""
  t = config.text
  path = os.path.join(out_dir, TOKENIZER)
  if t.tokenizer_path:
    tokenizer = Tokenizer.load(t.tokenizer_path)
    if not os.path.exists(path) or sha256_file(path) != sha256_file(t.tokenizer_path):
      write_atomic(path, tokenizer.model_proto)
    return tokenizer
  if os.path.exists(path):
    return Tokenizer.load(path)
  try:
    return train_tokenizer(train_texts(), vocab_size=t.vocab_size, model_path=path,
                           model_type=t.tokenizer_type)
  except DataError as e:
    raise DataError(f'text.vocab_size={t.vocab_size} / text.tokenizer_type={t.tokenizer_type!r} '
                    f'do not fit {config.data.name}:{config.data.train_split}; allowed: what '
                    f'sentencepiece says: {e}') from e


def tokenize(config, out_dir: str, *, splits: tuple[str, ...] = (), workers: int = 0,
             rows_per_shard: int = ROWS_PER_SHARD, docs_per_unit: int = DOCS_PER_UNIT,
             progress: bool = True) -> dict:
  """Writes the token shards of `splits` (default: the run's train, eval and test splits) of
  `config`'s dataset into `out_dir`; returns the manifest. `workers` processes (0: all cores,
  1: this process). Nothing is left for a run to read unless the job finishes."""
  import tqdm
  started = time.time()
  d = config.data
  splits = tuple(dict.fromkeys(splits or run_splits(d)))
  wanted = settings(config)
  manifest_path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(manifest_path):
    done = read_manifest(out_dir)
    diffs = {k: (done.get(k), v) for k, v in wanted.items() if done.get(k) != v}
    if not diffs and set(splits) <= set(done['splits']) and (
        not config.text.tokenizer_path or
        sha256_file(config.text.tokenizer_path) == done['tokenizer']['sha256']):
      log.info('%s already holds these token shards; nothing to do', out_dir)
      return done
    raise DataError(f'{out_dir} already holds token shards of other settings or splits '
                    f'({manifest_path}: {diffs or sorted(done["splits"])}); allowed: another '
                    f'--out, or delete that folder first')
  builder = prepare(d.name, d.data_dir, d.manual_dir)
  sources = {s: data_source(builder, d.name, s) for s in splits}
  for split, source in sources.items():
    if len(source) == 0:
      raise DataError(f'{d.name}:{split} has no documents; allowed: a split with text')
  created = not os.path.exists(out_dir)
  try:
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = _tokenizer_for(config, out_dir, lambda: _train_texts(config))
    tokenizing = time.time()
    manifest = _tokenize_splits(config, out_dir, builder.data_dir, sources, tokenizer,
                                workers=workers or os.cpu_count() or 1,
                                rows_per_shard=rows_per_shard, docs_per_unit=docs_per_unit,
                                progress=progress, tqdm=tqdm.tqdm)
  except DataError:
    if created:  # nothing written: the folder goes as it came
      shutil.rmtree(out_dir, ignore_errors=True)
    raise
  seconds = time.time() - tokenizing
  tokens = sum(s['tokens'] for s in manifest['splits'].values())
  log.info('tokenized %d tokens in %.1f s (%.0f tokens/s; %.1f s in all, with preparing the '
           'dataset and the tokenizer) into %s', tokens, seconds, tokens / seconds,
           time.time() - started, out_dir)
  manifest['seconds'], manifest['tokens_per_second'] = seconds, tokens / seconds
  return manifest


def _tokenize_splits(config, out_dir, data_dir, sources, tokenizer, *, workers, rows_per_shard,
                     docs_per_unit, progress, tqdm) -> dict:
  dtype = token_dtype(tokenizer.vocab_size)
  tokenizer_sha = sha256_file(os.path.join(out_dir, TOKENIZER))
  plan = {**settings(config), 'tokenizer_sha256': tokenizer_sha, 'dtype': dtype,
          'rows_per_shard': rows_per_shard, 'docs_per_unit': docs_per_unit,
          'documents': {s: len(src) for s, src in sources.items()}}
  units = _work_units(out_dir, plan, sources)
  context = multiprocessing.get_context('spawn')  # never fork a process that may run JAX
  init = (data_dir, config.data.text_key, text_data.cleaning(config.text),
          tokenizer.model_proto)
  pool = context.Pool(workers, _init_worker, init) if workers > 1 else None
  if pool is None:
    _init_worker(*init)
  try:
    todo = [u for us in units.values() for u in us if not os.path.exists(u[3])]
    with tqdm(total=sum(len(s) for s in sources.values()), unit='doc', disable=not progress,
              desc='tokenize') as bar:
      bar.update(sum(u[2] - u[1] for us in units.values() for u in us if u not in todo))
      _run_jobs(_tokenize_unit, todo, pool, bar, lambda r: r[0][2] - r[0][1])
    manifest = {'format': FORMAT, **settings(config),
                'tokenizer': {'file': TOKENIZER, 'sha256': tokenizer_sha,
                              'vocab_size': tokenizer.vocab_size},
                'dtype': dtype, 'rows_per_shard': rows_per_shard, 'splits': {}}
    jobs = []
    for split, split_units in units.items():
      manifest['splits'][split], split_jobs = _split_shards(config, out_dir, split, split_units,
                                                            rows_per_shard, dtype)
      jobs += split_jobs
    with tqdm(total=len(jobs), unit='shard', disable=not progress, desc='write shards') as bar:
      written = {job[0]: entry for job, entry in zip(jobs, _shards_in_order(jobs, pool, bar))}
  finally:
    if pool is not None:
      pool.close()
      pool.join()
  for split, entry in manifest['splits'].items():
    for shard in entry['shards']:
      shard.update(written[os.path.join(out_dir, shard['file'])])
  write_atomic(os.path.join(out_dir, MANIFEST), json.dumps(manifest, indent=2).encode())
  shutil.rmtree(os.path.join(out_dir, WORK))
  return manifest


def _work_units(out_dir: str, plan: dict, sources: dict) -> dict:
  """{split: its units (split, first doc, end doc, unit file, dtype)}, in out_dir/.work: the
  finished units of an interrupted job of the same plan are kept, another plan's dropped."""
  work = os.path.join(out_dir, WORK)
  plan_path = os.path.join(work, 'plan.json')
  if os.path.exists(plan_path):
    with open(plan_path) as f:
      if json.load(f) != plan:
        log.info('%s holds an interrupted job of other settings: starting over', work)
        shutil.rmtree(work)
  if not os.path.exists(plan_path):
    for split in sources:  # shards of an unfinished job of other settings
      shutil.rmtree(os.path.join(out_dir, split), ignore_errors=True)
    os.makedirs(work, exist_ok=True)
    write_atomic(plan_path, json.dumps(plan, indent=2).encode())
  per_unit = plan['docs_per_unit']
  units = {split: [(split, start, min(start + per_unit, len(src)),
                    os.path.join(work, split, f'unit-{start // per_unit:06d}.npz'), plan['dtype'])
                   for start in range(0, len(src), per_unit)]
           for split, src in sources.items()}
  for split in sources:
    os.makedirs(os.path.join(work, split), exist_ok=True)
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
  return units


def _split_shards(config, out_dir: str, split: str, split_units: list, rows_per_shard: int,
                  dtype: str) -> tuple[dict, list]:
  """(the split's manifest entry, the jobs writing its shards) from its tokenized units."""
  seq_len = config.text.seq_len
  unit_counts = np.asarray([np.load(u[3])['counts'] for u in split_units])
  documents, chars, text_bytes, tokens = (int(c) for c in unit_counts.sum(0))
  num_rows = max((tokens - 1) // seq_len, 0)
  if num_rows == 0:
    raise DataError(f'{config.data.name}:{split} gives no row of text.seq_len={seq_len} '
                    f'tokens ({documents} non-empty documents, {tokens} tokens); allowed: a '
                    f'smaller text.seq_len or more text')
  ends = np.cumsum(unit_counts[:, 3])  # where each unit's stream ends
  num_shards = math.ceil(num_rows / rows_per_shard)
  files = [f'{split}/tokens-{j:05d}-of-{num_shards:05d}.array_record' for j in range(num_shards)]
  jobs = []
  for j, file in enumerate(files):
    first, last = j * rows_per_shard, min((j + 1) * rows_per_shard, num_rows)
    lo, hi = first * seq_len, last * seq_len + 1
    overlapping = [(u[3], int(end - n)) for u, end, n in zip(split_units, ends, unit_counts[:, 3])
                   if end > lo and end - n < hi]
    jobs.append((os.path.join(out_dir, file), first, last, seq_len, overlapping, dtype))
  entry = {'documents': documents, 'chars': chars, 'bytes': text_bytes, 'tokens': tokens,
           'rows': num_rows, 'chars_per_token': (chars + documents) / tokens,
           'bytes_per_token': (text_bytes + documents) / tokens,
           'shards': [{'file': f} for f in files]}
  return entry, jobs


def _shards_in_order(jobs, pool, bar) -> list[dict]:
  """The entry of each shard job, in order; finished shards (renamed) are read, not rewritten."""
  def existing(job):
    path, first, last = job[:3]
    return {'rows': last - first, 'bytes': os.path.getsize(path),
            'fingerprint': _shard_fingerprint(path)}
  entries = {i: existing(job) for i, job in enumerate(jobs) if os.path.exists(job[0])}
  bar.update(len(entries))
  todo = [i for i in range(len(jobs)) if i not in entries]
  mapped = pool.imap(_write_shard, [jobs[i] for i in todo]) if pool else map(
      _write_shard, [jobs[i] for i in todo])
  for i, entry in zip(todo, mapped):
    entries[i] = entry
    bar.update(1)
  return [entries[i] for i in range(len(jobs))]
