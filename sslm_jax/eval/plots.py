"""Charts drawn with Pillow (no plotting library): a confusion matrix and line charts."""

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127))


def _font(size: int):
  return ImageFont.load_default(size=size)


def _save(image: Image.Image, path: str) -> None:
  tmp = f'{path}.tmp.png'
  image.save(tmp)
  os.replace(tmp, path)


def save_confusion_matrix(path: str, confusion, names, title: str = '') -> None:
  """Rows: true class, columns: predicted class; each row shaded by its share of the class
  (recall on the diagonal), with the count written in cells that have any."""
  cm = np.asarray(confusion, np.float64)
  k = len(cm)
  cell = 22 if k <= 20 else 15
  font, small = _font(12), _font(max(7, cell // 2))
  names = [str(n)[:18] for n in names]
  margin = 10 + max(int(font.getlength(n)) for n in names)
  top = 30 + margin
  heading = (title + ': ' if title else '') + 'rows true, columns predicted'
  width = max(margin + k * cell + 20, int(font.getlength(heading)) + 20)
  height = top + k * cell + 30
  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((10, 8), heading, fill='black', font=font)
  shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
  for i in range(k):
    draw.text((margin - 6, top + i * cell + cell / 2), names[i], fill='black', font=font,
              anchor='rm')
    column_label = Image.new('RGBA', (margin, cell), (255, 255, 255, 0))
    ImageDraw.Draw(column_label).text((margin - 6, cell / 2), names[i], fill='black', font=font,
                                      anchor='rm')
    image.paste(column_label.rotate(90, expand=True), (margin + i * cell, 30),
                column_label.rotate(90, expand=True))
    for j in range(k):
      v = shares[i, j]
      shade = (int(255 - 225 * v), int(255 - 160 * v), int(255 - 60 * v))
      box = (margin + j * cell, top + i * cell, margin + (j + 1) * cell - 1,
             top + (i + 1) * cell - 1)
      draw.rectangle(box, fill=shade, outline=(230, 230, 230))
      if cm[i, j] and cell >= 15:
        draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), f'{int(cm[i, j])}',
                  fill='white' if v > 0.5 else 'black', font=small, anchor='mm')
  _save(image, path)


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
  if high <= low:
    high = low + 1.0
  step = 10 ** math.floor(math.log10((high - low) / n))
  for m in (1, 2, 5, 10):
    if (high - low) / (step * m) <= n:
      step *= m
      break
  first = math.ceil(low / step) * step
  return [first + i * step for i in range(int((high - first) / step) + 1)]


def save_line_charts(path: str, panels: list[dict], panel_size=(420, 300)) -> None:
  """Panels side by side; each is {'title', 'xlabel', 'series': {name: (xs, ys)}}."""
  w, h = panel_size
  image = Image.new('RGB', (w * max(len(panels), 1), h), 'white')
  draw = ImageDraw.Draw(image)
  font = _font(11)
  for p, panel in enumerate(panels):
    x0, left, right, top, bottom = p * w, p * w + 55, (p + 1) * w - 15, 28, h - 40
    draw.text((x0 + w / 2, 8), panel.get('title', ''), fill='black', font=_font(13), anchor='mt')
    series = {k: (np.asarray(xs, float), np.asarray(ys, float))
              for k, (xs, ys) in panel['series'].items() if len(xs)}
    if not series:
      continue
    all_x = np.concatenate([xs for xs, _ in series.values()])
    all_y = np.concatenate([ys[np.isfinite(ys)] for _, ys in series.values()])
    x_lo, x_hi = float(all_x.min()), float(all_x.max())
    y_lo, y_hi = float(all_y.min()), float(all_y.max())
    pad = 0.05 * (y_hi - y_lo or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def to_px(x, y):
      return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
              bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))
    draw.rectangle((left, top, right, bottom), outline='black')
    for y in _ticks(y_lo, y_hi):
      py = to_px(x_lo, y)[1]
      draw.line((left, py, right, py), fill=(235, 235, 235))
      draw.text((left - 4, py), f'{y:.3g}', fill='black', font=font, anchor='rm')
    for x in _ticks(x_lo, x_hi):
      px = to_px(x, y_lo)[0]
      draw.text((px, bottom + 4), f'{x:.4g}', fill='black', font=font, anchor='mt')
    draw.text(((left + right) / 2, h - 14), panel.get('xlabel', ''), fill='black', font=font,
              anchor='mm')
    for s, (name, (xs, ys)) in enumerate(series.items()):
      color = COLORS[s % len(COLORS)]
      points = [to_px(x, y) for x, y in zip(xs, ys) if np.isfinite(y)]
      if len(points) > 1:
        draw.line(points, fill=color, width=2)
      for px, py in points if len(points) < 40 else []:
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)
      draw.text((left + 8, top + 6 + 13 * s), name, fill=color, font=font)
  _save(image, path)
