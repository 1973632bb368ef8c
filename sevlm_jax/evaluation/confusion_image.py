"""The confusion matrix as a picture for the metric writers (TensorBoard, W&B): one row per
dominant emotion, one column per predicted emotion and one for "none" (no emotion named), each cell
shaded by its share of the row and labelled with its count. Drawn with PIL (no plotting library)."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 34  # pixels per cell
MARGIN = 96  # room for the row labels (left) and the rotated column labels (top)
_INK = (20, 20, 20)


def _column_labels(names, font) -> Image.Image:
  """The column names, one per line, turned a quarter left: each reads upwards from the matrix
  (PIL draws no vertical text)."""
  strip = Image.new("RGB", (MARGIN, CELL * len(names)), "white")
  draw = ImageDraw.Draw(strip)
  for j, name in enumerate(names):
    draw.text((6, j * CELL + CELL // 2), name, fill=_INK, font=font, anchor="lm")
  return strip.rotate(90, expand=True)


def draw(counts_RxC, row_names, column_names) -> np.ndarray:
  """uint8 HxWx3 of a count matrix (rows: true class, columns: predicted)."""
  counts_RxC = np.asarray(counts_RxC, np.int64)
  rows, cols = counts_RxC.shape
  if (rows, cols) != (len(row_names), len(column_names)):
    raise ValueError(f"a {rows}x{cols} matrix with {len(row_names)} row and {len(column_names)} "
                     "column names")
  totals_R = np.maximum(counts_RxC.sum(axis=1, keepdims=True), 1)
  share_RxC = counts_RxC / totals_R
  font = ImageFont.load_default()
  image = Image.new("RGB", (MARGIN + CELL * cols, MARGIN + CELL * rows), "white")
  draw_ = ImageDraw.Draw(image)
  for i in range(rows):
    y = MARGIN + i * CELL
    draw_.text((MARGIN - 6, y + CELL // 2), row_names[i], fill=_INK, font=font, anchor="rm")
    for j in range(cols):
      x = MARGIN + j * CELL
      shade = int(255 - 200 * share_RxC[i, j])  # white (none of the row) to deep blue (all)
      draw_.rectangle([x, y, x + CELL - 1, y + CELL - 1], fill=(shade, shade, 255),
                      outline=(200, 200, 200))
      ink = "white" if share_RxC[i, j] > 0.5 else _INK
      draw_.text((x + CELL // 2, y + CELL // 2), str(counts_RxC[i, j]), fill=ink, font=font,
                 anchor="mm")
  labels = _column_labels(column_names, font)
  image.paste(labels.crop((0, 0, CELL * cols, MARGIN)), (MARGIN, 0))
  draw_.text((4, MARGIN - 18), "rows: true", fill=_INK, font=font)
  draw_.text((4, MARGIN - 6), "columns: predicted", fill=_INK, font=font, anchor="ls")
  return np.asarray(image, np.uint8)
