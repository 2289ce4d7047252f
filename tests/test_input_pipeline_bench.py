"""benchmarks/input_pipeline.py's own parts on a tiny corpus: the token folder it generates reads
back through the library's `TokenShards`, and a loader measurement returns what its table uses."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import input_pipeline  # noqa: E402
from sslm_jax.data import shards  # noqa: E402


def test_the_generated_corpus_reads_back_and_a_loader_run_reports_its_rate(tmp_path):
  token_dir = input_pipeline.make_token_dir(str(tmp_path / 'tokens'), 100, 16)
  source = shards.TokenShards(token_dir, 'train')
  assert len(source) == 100 and source.seq_len == 16
  rows = source.read(np.arange(3))['tokens']
  assert rows.shape == (3, 17) and rows.max() < input_pipeline.VOCAB
  # Called again on the same folder it keeps the corpus (the benchmark reuses a --work_dir).
  manifest = os.path.join(token_dir, shards.MANIFEST)
  written = os.stat(manifest).st_mtime_ns
  assert input_pipeline.make_token_dir(token_dir, 100, 16) == token_dir
  assert os.stat(manifest).st_mtime_ns == written

  result = input_pipeline.child('stream', {'token_dir': token_dir, 'batch': 8, 'steps': 6,
                                           'workers': 0})
  assert result['rows'] == 100 and result['steps'] == 6
  assert result['items_per_s'] > 0 and result['cpu_ms_per_batch'] >= 0
  # The peak covers every resident reading taken (getrusage alone once read 0.1 MB below one).
  assert result['rss_mb_first_batch'] > 0
  assert result['peak_rss_mb'] >= max(result['rss_mb_first_batch'], result['rss_mb_streaming_max'])
