"""The one image preprocessing used everywhere, and the three doors images come in by.

A picture becomes uint8[size, size, 3] RGB by resizing the whole picture to a
square (no crop, aspect ratio not kept), as the public SEVLM code's
Resize((224, 224)) does, with bicubic filtering by default (the filter CLIP's
own preprocessing uses, so the pretrained ViT sees what it was trained on) or
bilinear (data.resize_filter="bilinear": torchvision's Resize default, which
the public code uses; for PIL images torchvision calls PIL's resize, so this is
the same computation). Normalisation (CLIP or ImageNet constants) happens
later, in the model's input code. Before the square resize,
data.prescale_max_side > 0 makes the copy with that longer side (`prescale`:
ArtEmis's 600-pixel copies of WikiArt, which the public code reads), at
ingestion and prediction alike.

Doors: ingestion (`load_all`: image files of a data set, decoded in worker processes),
prediction (`to_pixels`: paths, PIL images or arrays) and the demo page (`open_image` on
uploaded bytes). All of them decode with `open_image` and make 8-bit RGB with `to_rgb`, so a
picture gives the model the same pixels whatever door it came in by:
- 16-bit pictures (Pillow modes I;16, I;16L, I;16B, I;16N, and I, Pillow's container for 16-bit
  data) are scaled from their mode's full range, 0..65535, to 0..255 by keeping the high byte, as
  Pillow itself reduces 16-bit RGB(A) PNG and TIFF files, so grey and colour files agree. Not
  from each picture's own minimum and maximum: that would stretch a dark or low-contrast picture
  into a bright, contrasty one and change how it looks, which is what the model is asked about.
- transparent pixels (RGBA, LA, PA, premultiplied modes, P or L or RGB with a transparent colour)
  are composited on mid-grey, BACKGROUND_RGB. Dropping alpha would show the model colours the
  picture hides; mid-grey is neither the light of white nor the dark of black, both of which
  carry emotion, and it sits close to CLIP's normalisation mean, so transparent areas feed the
  model inputs near zero.
- at most MAX_PIXELS are decoded, judged from the header before decoding. A JPEG over the cap,
  decoded to a known size (ingestion, paths given to predict), is decoded at its 1/2, 1/4 or 1/8
  scale that still covers that size (Pillow's draft mode), so a 100-megapixel JPEG costs a few
  megapixels of memory; other formats over the cap are refused (a report entry at ingestion).
  A picture under the cap is decoded whole, as the public code decodes it, so the resize filter
  alone makes its pixels.
"""

import io
import multiprocessing
import os
import unicodedata
from typing import Any

import numpy as np
from PIL import Image

from sevlm_jax.errors import InputError


MAX_PIXELS = 40_000_000  # the most pixels decoded for one picture (decompression bombs, memory)
BACKGROUND_RGB = (128, 128, 128)  # under transparent pixels (see the module's docstring)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageTooLarge(InputError):
  """A picture with more pixels than allowed, refused before it is decoded."""


def open_image(source: str | os.PathLike | bytes, max_pixels: int | None = None,
               draft_size: int | None = None) -> Image.Image:
  """The decoded 8-bit RGB picture (to_rgb) of an image file or of its bytes.

  draft_size: the picture will be resized to draft_size x draft_size, so a JPEG with more than
  max_pixels is decoded at a reduced scale no smaller than that on either side. More than
  max_pixels to decode (read from the header, so nothing is decoded) raises ImageTooLarge, and
  so does PIL's own decompression-bomb guard; anything unreadable raises the decoder's error.
  """
  try:
    im = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
  except Image.DecompressionBombError as e:  # PIL's own guard, far above any sane limit
    limit = f"limit {max_pixels:,} pixels" if max_pixels else "PIL's decompression-bomb limit"
    raise ImageTooLarge(f"image too large ({limit}): {e}") from None
  with im:
    width, height = im.size
    if draft_size and max_pixels and width * height > max_pixels:
      im.draft(None, (draft_size, draft_size))  # JPEG only; other formats ignore it
      width, height = im.size
    if max_pixels and width * height > max_pixels:
      raise ImageTooLarge(f"image too large: {width} x {height} pixels (limit {max_pixels:,})")
    im.load()  # decode fully here so truncated files fail now, not later
    return to_rgb(im)


def to_rgb(image: Image.Image) -> Image.Image:
  """A new 8-bit RGB image of a PIL image of any mode: 16-bit scaled from 0..65535, transparent
  pixels composited on BACKGROUND_RGB."""
  if image.mode in SIXTEEN_BIT_MODES:
    return Image.fromarray(sixteen_to_eight_bits(np.asarray(image))).convert("RGB")
  if image.mode in ALPHA_MODES or "transparency" in image.info:
    background = Image.new("RGBA", image.size, BACKGROUND_RGB + (255,))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
  return image.convert("RGB")


def sixteen_to_eight_bits(values: np.ndarray) -> np.ndarray:
  """uint8 high bytes of integers in 0..65535 (clipped there)."""
  return (np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)


RESIZE_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
# Filters of the optional first step, the copy with its longer side prescale_max_side (the
# 600-pixel copies of WikiArt that ArtEmis and the public code read; see `prescale`).
PRESCALE_FILTERS = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def prescale(image: Image.Image, max_side: int, prescale_filter: str = "lanczos") -> Image.Image:
  """The picture with its longer side max_side and the same aspect ratio (the shorter side
  rounded, at least 1 pixel), resized with prescale_filter (PRESCALE_FILTERS); max_side 0, or a
  picture no larger than that, is returned as it is: a copy is never enlarged, as the name of
  ArtEmis's folder, rescaled_max_size_to_600px_same_aspect_ratio, and PIL's thumbnail() say.

  This makes in memory the 600-pixel copies of WikiArt that the public code reads instead of the
  originals. Neither it nor ArtEmis publishes the script that made them: lanczos is the default
  because ArtEmis's own code resizes with Image.LANCZOS wherever it resizes (its image
  transforms, feature extraction and figures). The copies were JPEG files; their re-encoding is
  not imitated (its quality is unknown), see the README."""
  if prescale_filter not in PRESCALE_FILTERS:
    raise ValueError(f"prescale_filter must be one of {tuple(PRESCALE_FILTERS)}, "
                     f"got {prescale_filter!r}")
  width, height = image.size
  longest = max(width, height)
  if max_side <= 0 or longest <= max_side:
    return image
  scale = max_side / longest
  size = (max_side, max(1, round(height * scale))) if width >= height else (
      max(1, round(width * scale)), max_side)
  return image.resize(size, PRESCALE_FILTERS[prescale_filter])


def resize_square(image: Image.Image, size: int, resize_filter: str = "bicubic",
                  prescale_max_side: int = 0, prescale_filter: str = "lanczos") -> np.ndarray:
  """uint8[size, size, 3] RGB of a PIL image, resized with resize_filter (RESIZE_FILTERS), after
  `prescale` to prescale_max_side when that is > 0."""
  if resize_filter not in RESIZE_FILTERS:
    raise ValueError(f"resize_filter must be one of {tuple(RESIZE_FILTERS)}, got {resize_filter!r}")
  if image.mode != "RGB" or "transparency" in image.info:
    image = to_rgb(image)
  image = prescale(image, prescale_max_side, prescale_filter)
  if image.size != (size, size):
    image = image.resize((size, size), RESIZE_FILTERS[resize_filter])
  return np.asarray(image, np.uint8)


def load_image(path, size: int, resize_filter: str = "bicubic", prescale_max_side: int = 0,
               prescale_filter: str = "lanczos") -> np.ndarray:
  """uint8[size, size, 3] RGB of an image file (at most MAX_PIXELS decoded: a JPEG over them at
  the smallest scale that covers size, or prescale_max_side when it is larger); raises
  ImageTooLarge or the decoder's error."""
  draft_size = max(size, prescale_max_side)
  return resize_square(open_image(path, MAX_PIXELS, draft_size=draft_size), size, resize_filter,
                       prescale_max_side, prescale_filter)


def to_pixels(image: Any, size: int, where: str, resize_filter: str = "bicubic",
              prescale_max_side: int = 0, prescale_filter: str = "lanczos") -> np.ndarray:
  """uint8[size, size, 3] of a file path, a PIL image or an RGB array (uint8, uint16 scaled from
  0..65535, or floats in [0, 1] or [0, 255]); InputError naming `where` otherwise. The picture is
  first `prescale`d when prescale_max_side > 0 (as the run's training images were)."""
  prescaled = {"prescale_max_side": prescale_max_side, "prescale_filter": prescale_filter}
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    if not os.path.exists(path):
      raise InputError(f"{where}: image file {path} does not exist")
    try:
      return load_image(path, size, resize_filter, **prescaled)
    except ImageTooLarge as e:
      raise InputError(f"{where}: {path}: {e}") from e
    except Exception as e:  # any decoder failure
      raise InputError(f"{where}: {path} is not a readable image ({e.__class__.__name__}: {e})") from e
  if isinstance(image, Image.Image):
    return resize_square(image, size, resize_filter, **prescaled)
  array = np.asarray(image)
  if array.ndim != 3 or array.shape[-1] != 3:
    raise InputError(f"{where}: expected an RGB array of shape [H, W, 3], got {array.shape}")
  if array.dtype == np.uint16:
    array = sixteen_to_eight_bits(array)
  elif array.dtype != np.uint8:
    if np.issubdtype(array.dtype, np.floating) and array.min() >= 0 and array.max() <= 1:
      array = np.round(array * 255)
    array = np.clip(array, 0, 255).astype(np.uint8)
  return resize_square(Image.fromarray(array), size, resize_filter, **prescaled)


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
  """Worker: (image_id, images_dir, image_rel, size, resize_filter[, prescale_max_side,
  prescale_filter]) -> (image_id, image|None, form, tried|error)."""
  image_id, images_dir, rel, image_size, resize_filter, *prescaled = job
  variants = name_variants(rel)
  for cand, form in variants:
    path = os.path.join(images_dir, cand)
    if os.path.isfile(path):
      try:
        return image_id, load_image(path, image_size, resize_filter, *prescaled), form, None
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
