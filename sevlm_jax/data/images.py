"""The one image preprocessing used everywhere, and the three doors images come in by.

A picture becomes uint8[size, size, 3] RGB by resizing the whole picture to a
square (no crop, aspect ratio not kept), as the public SEVLM code's
Resize((224, 224)) does, with bicubic filtering by default (the filter CLIP's
own preprocessing uses, so the pretrained ViT sees what it was trained on) or
bilinear (data.resize_filter="bilinear": torchvision's Resize default, which
the public code uses; for PIL images torchvision calls PIL's resize, so this is
the same computation). Normalisation (CLIP or ImageNet constants) happens
later, in the model's input code.

Doors: ingestion (`load_all`: image files of a data set, decoded in worker processes),
prediction (`to_pixels`: paths, PIL images or arrays) and the demo page (`open_image` on
uploaded bytes). All of them decode with `open_image`.
"""

import io
import multiprocessing
import os
import unicodedata
from typing import Any

import numpy as np
from PIL import Image

from sevlm_jax.errors import InputError


class ImageTooLarge(InputError):
  """A picture with more pixels than allowed, refused before it is decoded."""


def open_image(source: str | os.PathLike | bytes, max_pixels: int | None = None) -> Image.Image:
  """The decoded RGB picture of an image file or of its bytes.

  More than max_pixels (read from the header, so nothing is decoded) raises ImageTooLarge, and so
  does PIL's own decompression-bomb guard; anything unreadable raises the decoder's error.
  """
  try:
    im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
  except Image.DecompressionBombError as e:  # PIL's own guard, far above any sane limit
    limit = f"limit {max_pixels:,} pixels" if max_pixels else "PIL's decompression-bomb limit"
    raise ImageTooLarge(f"image too large ({limit}): {e}") from None
  with im:
    width, height = im.size
    if max_pixels and width * height > max_pixels:
      raise ImageTooLarge(f"image too large: {width} x {height} pixels (limit {max_pixels:,})")
    im.load()  # decode fully here so truncated files fail now, not later
    return im.convert("RGB")


RESIZE_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def resize_square(image: Image.Image, size: int, resize_filter: str = "bicubic") -> np.ndarray:
  """uint8[size, size, 3] RGB of a PIL image, resized with resize_filter (RESIZE_FILTERS)."""
  if resize_filter not in RESIZE_FILTERS:
    raise ValueError(f"resize_filter must be one of {tuple(RESIZE_FILTERS)}, got {resize_filter!r}")
  if image.mode != "RGB":
    image = image.convert("RGB")
  if image.size != (size, size):
    image = image.resize((size, size), RESIZE_FILTERS[resize_filter])
  return np.asarray(image, np.uint8)


def load_image(path, size: int, resize_filter: str = "bicubic") -> np.ndarray:
  """uint8[size, size, 3] RGB of an image file; raises the decoder's error if unreadable."""
  return resize_square(open_image(path), size, resize_filter)


def to_pixels(image: Any, size: int, where: str, resize_filter: str = "bicubic") -> np.ndarray:
  """uint8[size, size, 3] of a file path, a PIL image or an RGB array (uint8, or floats in [0, 1]
  or [0, 255]); InputError naming `where` otherwise."""
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    if not os.path.exists(path):
      raise InputError(f"{where}: image file {path} does not exist")
    try:
      return load_image(path, size, resize_filter)
    except Exception as e:  # any decoder failure
      raise InputError(f"{where}: {path} is not a readable image ({e.__class__.__name__}: {e})") from e
  if isinstance(image, Image.Image):
    return resize_square(image, size, resize_filter)
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise InputError(f"{where}: expected an RGB array of shape [H, W, 3], got {array.shape}")
  if array.dtype != np.uint8:
    if np.issubdtype(array.dtype, np.floating) and array.min() >= 0 and array.max() <= 1:
      array = np.round(array * 255)
    array = np.clip(array, 0, 255).astype(np.uint8)
  return resize_square(Image.fromarray(array), size, resize_filter)


# ----------------------------------------------------------------------------- a data set's files

def name_variants(rel: str) -> list[tuple[str, str | None]]:
  """(candidate path, normal form used or None) for a relative image path."""
  out, seen = [], set()
  parts = rel.split("/")
  head, tail = "/".join(parts[:-1]), parts[-1]
  forms = [(rel, None), (unicodedata.normalize("NFC", rel), "NFC"), (unicodedata.normalize("NFD", rel), "NFD")]
  for a in ("NFC", "NFD"):  # folder and file name stored in different forms
    for b in ("NFC", "NFD"):
      if a != b and head:
        forms.append((unicodedata.normalize(a, head) + "/" + unicodedata.normalize(b, tail), f"{a} folder, {b} file"))
  for cand, form in forms:
    if cand not in seen:
      seen.add(cand)
      out.append((cand, form))
  return out


def load_image_job(job):
  """Worker: (image_id, images_dir, image_rel, size, resize_filter) -> (image_id, image|None, form,
  tried|error)."""
  image_id, images_dir, rel, image_size, resize_filter = job
  variants = name_variants(rel)
  for cand, form in variants:
    path = os.path.join(images_dir, cand)
    if os.path.isfile(path):
      try:
        return image_id, load_image(path, image_size, resize_filter), form, None
      except Exception as e:  # any decoder failure means "unreadable", reported per painting
        return image_id, None, form, f"{type(e).__name__}: {e}"
  return image_id, None, None, None


def load_all(jobs, workers: int, window: int):
  """Yield load_image_job results in job order, at most `window` images in flight."""
  if workers <= 0:
    for job in jobs:
      yield load_image_job(job)
    return
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    for start in range(0, len(jobs), window):
      yield from pool.imap(load_image_job, jobs[start:start + window], chunksize=8)
