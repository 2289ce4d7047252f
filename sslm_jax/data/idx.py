"""Reading IDX files (the MNIST format: a magic number, the dimensions, then raw data).

Plain or gzip-compressed files are both read; the Debian package `dataset-fashion-mnist` ships
gzip files whose headers differ from upstream's, which does not matter here since only the
decompressed bytes are used.
"""

import gzip
import os

import numpy as np

# Third byte of the magic number -> element type (the IDX spec; big-endian for multi-byte).
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: '>i2', 0x0C: '>i4', 0x0D: '>f4',
               0x0E: '>f8'}


class IdxFormatError(ValueError):
  """The file is not a valid IDX file; the message names the file and the problem."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """The array stored in an IDX file (optionally .gz)."""
  path = os.fspath(path)
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise IdxFormatError(f'{path}: cannot be read ({e})') from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise IdxFormatError(f'{path}: not an IDX file (bad magic number {data[:4].hex()})')
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  ndim = data[3]
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  expected = header + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise IdxFormatError(f'{path}: {len(data)} bytes, but the header {shape} needs {expected}')
  return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder('='))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
  """Writes `array` (uint8) as an IDX file, gzip-compressed when the name ends in .gz."""
  array = np.ascontiguousarray(array, np.uint8)
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(n).to_bytes(4, 'big') for n in array.shape)
  path = os.fspath(path)
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(header + array.tobytes())
