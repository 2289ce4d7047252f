"""Image grids as PNG files (Pillow): reconstructions next to their inputs, prior samples."""

import math

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float NHWC -> uint8 NHWC."""
  x = (np.clip(np.asarray(images, np.float32), -1.0, 1.0) + 1.0) * 127.5
  return np.round(x).astype(np.uint8)


def grid(images, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """NHWC images in [-1, 1] tiled row by row into one (H', W', C) uint8 picture."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    top, left = pad + r * (h + pad), pad + col * (w + pad)
    canvas[top:top + h, left:left + w] = images[i]
  return canvas


def save_png(path: str, picture: np.ndarray, scale: int = 2) -> None:
  mode = 'L' if picture.shape[-1] == 1 else 'RGB'
  img = Image.fromarray(picture[..., 0] if mode == 'L' else picture, mode)
  img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def save_reconstructions(path: str, originals, reconstructions, columns: int = 8) -> None:
  """Rows alternate: `columns` inputs, then their reconstructions underneath."""
  originals, reconstructions = np.asarray(originals), np.asarray(reconstructions)
  n = (len(originals) // columns) * columns or len(originals)
  rows = []
  for start in range(0, n, columns):
    rows += [originals[start:start + columns], reconstructions[start:start + columns]]
  save_png(path, grid(np.concatenate(rows), columns=min(columns, n)))


def save_samples(path: str, samples) -> None:
  save_png(path, grid(samples))
