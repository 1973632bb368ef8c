"""The one image preprocessing used everywhere: ingestion, the demo and inference.

A picture becomes uint8[size, size, 3] RGB by resizing the whole picture to a
square (no crop, aspect ratio not kept) with bicubic filtering, as the public
SEVLM code's Resize((224, 224)) does. Normalisation (CLIP or ImageNet
constants) happens later, in the model's input code.
"""

import numpy as np
from PIL import Image


def resize_square(image: Image.Image, size: int) -> np.ndarray:
  """uint8[size, size, 3] RGB of a PIL image."""
  if image.mode != "RGB":
    image = image.convert("RGB")
  if image.size != (size, size):
    image = image.resize((size, size), Image.BICUBIC)
  return np.asarray(image, np.uint8)


def load_image(path, size: int) -> np.ndarray:
  """uint8[size, size, 3] RGB of an image file; raises the decoder's error if unreadable."""
  with Image.open(path) as im:
    im.load()  # decode fully here so truncated files fail now, not later
    return resize_square(im, size)
