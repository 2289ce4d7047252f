"""A tfds dataset of local text files: Debian's fortune cookies, or any plain text offline.

Configs (the manual dir is passed as `DownloadConfig(manual_dir=...)`, as for idx_images):

- `fortunes`: a folder of fortune files (Debian: `apt-get install fortunes`, then
  `/usr/share/games/fortunes`). Each file is a category (the label; `*.dat` indexes, `*.u8`
  links, hidden files and subfolders such as `off/` are ignored), each block between lines
  holding only `%` is one example, id `<category>/<n>` (n-th non-empty cookie, from 0). Debian's
  fortunes (43 categories, 2.5 M characters) gives 15,217 cookies (2 to 1,251 a category):
  train 12,239 / validation 1,502 / test 1,476.
- `plain`: a folder holding class subfolders: one example per `*.txt` file, labelled by its
  subfolder (files are found at any depth inside it), id `<class>/<path>`. A flat folder of
  `*.txt` files, or one text file of any name: one example per paragraph (lines separated by
  blank lines), single class `text`, id `<file>:<line of the paragraph's first line>`.
- `plain_lines`: as `plain`, but one example per non-empty line in both layouts
  (id `<path>:<line>`).

Split, fixed by example and independent of file order or machine: the first 8 bytes of
SHA-256 of the example's text (UTF-8, as stored) as a fraction of 2**64 put it in train (< 0.8),
validation (< 0.9) or test. Hashing the text rather than the id keeps identical texts in one
split (83 fortune cookies appear twice, 79 of them in two categories), and a cookie keeps its
split when cookies are added before it in a later release. A split no example falls in (a
corpus of a few examples) is left out.

Text is decoded as UTF-8 (bytes that are not become U+FFFD), with `\\r\\n` turned into `\\n`,
backspace overstrikes rendered as a terminal shows them (`_\\bx` and `x\\bx` are `x`;
`'\\be` is `é`), leading blank lines and trailing whitespace removed; no other cleaning (that is
`sslm_jax.data.text.clean_text`'s job). Features: `text` (Text), `label` (ClassLabel, sorted
category or subfolder names), `id` (Text). Labels are defined by the folder, so they are set
while preparing; the prepared dataset records them like any ClassLabel, and its metadata
records the source path (`info.metadata['source']`).

One data_dir holds one prepared dataset per config: prepare another corpus with `plain` into
another data_dir.
"""

import dataclasses
import hashlib
import os
import re
import unicodedata

import tensorflow_datasets as tfds

SPLITS = (('train', 0.8), ('validation', 0.9), ('test', 1.0))  # split, cumulative fraction

# An overstruck accent over a letter means the accented letter.
_ACCENTS = {"'": '\u0301', '`': '\u0300', '^': '\u0302', '"': '\u0308', '~': '\u0303',
            ',': '\u0327'}


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
  layout: str = 'plain'  # 'fortunes' or 'plain'
  unit: str = 'paragraph'  # plain text without classes: 'paragraph' or 'line'


def split_of(text: str) -> str:
  """The split an example belongs to, from its text alone."""
  h = int.from_bytes(hashlib.sha256(text.encode('utf-8')).digest()[:8], 'big') / 2.0**64
  return next(name for name, upto in SPLITS if h < upto)


def render_overstrikes(text: str) -> str:
  """Text as a terminal shows it: each backspace moves back one column, and the next character
  merges with the one there (`_` is an underline, a repeat is bold, an accent accents)."""
  if '\b' not in text:
    return text
  out, cursor = [], 0
  for ch in text:
    if ch == '\b':
      cursor = max(cursor - 1, 0)
      continue
    if cursor < len(out):
      old = out[cursor]
      if ch == '_' or ch == old:
        ch = old
      elif old in _ACCENTS and ch.isalpha():
        ch = unicodedata.normalize('NFC', ch + _ACCENTS[old])
      elif ch in _ACCENTS and old.isalpha():
        ch = unicodedata.normalize('NFC', old + _ACCENTS[ch])
      out[cursor] = ch
    else:
      out.append(ch)
    cursor += 1
  return ''.join(out)


def _tidy(text: str) -> str:
  """Leading blank lines and trailing whitespace removed; indentation kept (ASCII art)."""
  return re.sub(r'\A(?:[ \t]*\n)+', '', text.rstrip())


def read_text(path: str) -> str:
  with open(path, 'rb') as f:
    text = f.read().decode('utf-8', errors='replace')
  return render_overstrikes(text.replace('\r\n', '\n'))


def fortune_cookies(text: str) -> list[str]:
  """The non-empty blocks of a fortune file (blocks end at a line holding only `%`)."""
  blocks, current = [], []
  for line in text.split('\n'):
    if line.rstrip() == '%':
      blocks.append('\n'.join(current))
      current = []
    else:
      current.append(line)
  blocks.append('\n'.join(current))
  return [t for t in map(_tidy, blocks) if t]


def paragraphs(text: str) -> list[tuple[int, str]]:
  """(1-based line number of its first line, paragraph) for each run of non-blank lines."""
  out, current, first = [], [], 0
  for i, line in enumerate(text.split('\n') + ['']):
    if line.strip():
      if not current:
        first = i + 1
      current.append(line.rstrip())
    elif current:
      out.append((first, '\n'.join(current)))
      current = []
  return out


def lines(text: str) -> list[tuple[int, str]]:
  """(1-based line number, line) for each line that is not blank."""
  return [(i + 1, line.rstrip()) for i, line in enumerate(text.split('\n')) if line.strip()]


def _visible(names):
  return sorted(n for n in names if not n.startswith('.'))


def _txt_files(folder: str) -> list[str]:
  """Paths of the `*.txt` files under `folder` (any depth), in a fixed order."""
  found = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = _visible(dirs)
    found += [os.path.join(root, f) for f in _visible(files) if f.lower().endswith('.txt')]
  return sorted(found)


def _listing(path: str) -> str:
  return str(_visible(os.listdir(path))[:20] or 'nothing')


class TextFiles(tfds.core.GeneratorBasedBuilder):
  """Labelled text from local files in a manual dir: fortune cookies or plain text."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      TextFilesConfig(name='fortunes', layout='fortunes',
                      description='Fortune cookies; each fortune file is a category.'),
      TextFilesConfig(name='plain', layout='plain', unit='paragraph',
                      description='Text files: one per example in class subfolders, else one '
                                  'paragraph per example.'),
      TextFilesConfig(name='plain_lines', layout='plain', unit='line',
                      description='Text files: one non-empty line per example.'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'fortunes: a folder of fortune files, e.g. Debian\'s /usr/share/games/fortunes '
      '(apt-get install fortunes). plain, plain_lines: one text file, a folder of *.txt files, '
      'or a folder of class subfolders holding *.txt files.')

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'text': tfds.features.Text(),
            'label': tfds.features.ClassLabel(),  # names come from the folder (prepare time)
            'id': tfds.features.Text(),
        }),
        supervised_keys=('text', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _manual_path(self, dl_manager) -> str:
    try:
      return os.fspath(dl_manager.manual_dir)
    except NotADirectoryError:  # plain text from one file: tfds only checks folders
      return os.fspath(dl_manager._manual_dir)  # pylint: disable=protected-access

  def _split_generators(self, dl_manager):
    source = self._manual_path(dl_manager)
    if self.builder_config.layout == 'fortunes':
      names, examples = self._fortunes(source)
    else:
      names, examples = self._plain(source)
    if not examples:
      raise FileNotFoundError(f'no text found in manual dir {source!r}; expected '
                              f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    self.info.features['label'].names = names
    self.info.metadata.update(source=os.path.realpath(source), num_examples=len(examples))
    by_split = {name: [] for name, _ in SPLITS}
    for example_id, text, label in examples:
      by_split[split_of(text)].append((example_id, text, label))
    # tfds cannot write an empty split: a tiny corpus may lack validation or test.
    return {name: self._generate_examples(items) for name, items in by_split.items() if items}

  def _fortunes(self, folder):
    if not os.path.isdir(folder):
      raise NotADirectoryError(f'text_files/fortunes needs a folder of fortune files, not '
                               f'{folder!r}')
    categories = [n for n in _visible(os.listdir(folder))
                  if not n.endswith(('.dat', '.u8')) and os.path.isfile(os.path.join(folder, n))]
    if not categories:
      raise FileNotFoundError(f'no fortune files in manual dir {folder!r} (it holds: '
                              f'{_listing(folder)}); expected files of cookies separated by '
                              f'lines holding `%`, e.g. /usr/share/games/fortunes')
    examples = []
    for label, name in enumerate(categories):
      cookies = fortune_cookies(read_text(os.path.join(folder, name)))
      examples += [(f'{name}/{i}', text, label) for i, text in enumerate(cookies)]
    return categories, examples

  def _plain(self, source):
    units = lines if self.builder_config.unit == 'line' else paragraphs
    if os.path.isfile(source):
      name = os.path.basename(source)
      return ['text'], [(f'{name}:{n}', t, 0) for n, t in units(read_text(source))]
    subfolders = [n for n in _visible(os.listdir(source))
                  if os.path.isdir(os.path.join(source, n))]
    top_files = [f for f in _visible(os.listdir(source)) if f.lower().endswith('.txt')
                 and os.path.isfile(os.path.join(source, f))]
    if subfolders and top_files:
      raise ValueError(f'manual dir {source!r} holds both class subfolders {subfolders[:5]} and '
                       f'.txt files {top_files[:5]}; allowed: only subfolders (one class each) '
                       f'or only .txt files (unlabelled)')
    examples = []
    if not subfolders:
      for f in top_files:
        examples += [(f'{f}:{n}', t, 0) for n, t in units(read_text(os.path.join(source, f)))]
      if not top_files:
        raise FileNotFoundError(f'no .txt files or class subfolders in manual dir {source!r} '
                                f'(it holds: {_listing(source)})')
      return ['text'], examples
    for label, name in enumerate(subfolders):
      for path in _txt_files(os.path.join(source, name)):
        rel = os.path.relpath(path, source).replace(os.sep, '/')
        text = read_text(path)
        if self.builder_config.unit == 'line':
          examples += [(f'{rel}:{n}', t, label) for n, t in lines(text)]
        elif _tidy(text):
          examples.append((rel, _tidy(text), label))
    return subfolders, examples

  def _generate_examples(self, items):
    for example_id, text, label in items:
      yield example_id, {'text': text, 'label': label, 'id': example_id}
