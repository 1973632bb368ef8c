r"""How much the 600-pixel step (data.prescale_max_side) and its filter move the model's inputs.

For every picture given, the final image_size x image_size input (the official variant's
bilinear square resize) is made from the original directly and through a copy with longer side
600 made with each filter, as sevlm_jax/data/images.py makes them, and also through copies
re-encoded as JPEG (the copies ArtEmis distributes are JPEG files; how they were encoded is not
published). Printed: the mean and the largest absolute difference per pixel and channel, on the
0..255 scale and in CLIP-normalised units (divided by 255 x CLIP's per-channel std), over the
pictures larger than 600 pixels (the step leaves smaller ones as they are).

No network: give image files or folders. The README's figures came from 29 pictures:
  photographs bundled in scikit-image's wheel (skimage/data: astronaut, chelsea, coffee, rocket,
  motorcycle_left/right, hubble_deep_field, ihc, retina; 300 to 1411 pixels):
      pip download --no-deps --only-binary :all: scikit-image -d /tmp/w && unzip /tmp/w/*.whl 'skimage/data/*'
  digital artwork of Debian's gnome-backgrounds 43.1 (the .webp renders, 4096 x 4096 and 256 x
  256) and desktop-base 12.0.6 (the plymouth backgrounds of lines, moonlight and spacefun,
  1920 x 1080 to 2048 x 1542, and futureprototype's grub-4x3.png, 640 x 480):
      apt-get download gnome-backgrounds desktop-base && dpkg-deb -x gnome-backgrounds_*.deb x ...

  python benchmarks/prescale_filters.py /tmp/pictures
"""

import argparse
import io
import pathlib
import sys

import numpy as np
from PIL import Image

from sevlm_jax.data import images as images_lib

CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def picture_paths(inputs: list[str]) -> list[pathlib.Path]:
  paths = []
  for name in inputs:
    path = pathlib.Path(name)
    paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES) if path.is_dir() else [path]
  return paths


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=quality)
  return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def thumbnail(image: Image.Image, max_side: int) -> Image.Image:
  """PIL's Image.thumbnail with its defaults (bicubic, reducing_gap 2: a box reduction first)."""
  copy = image.copy()
  copy.thumbnail((max_side, max_side))
  return copy


def inputs_of(image: Image.Image, size: int, resize_filter: str, max_side: int) -> dict:
  """Name -> uint8[size, size, 3] of each way of making the final input."""
  def square(img):
    return images_lib.resize_square(img, size, resize_filter).astype(np.float64)
  copies = {f"{name} copy": images_lib.prescale(image, max_side, name)
            for name in images_lib.PRESCALE_FILTERS}
  copies["PIL thumbnail() copy"] = thumbnail(image, max_side)
  for quality in (75, 95):
    copies[f"lanczos copy, JPEG q{quality}"] = jpeg_round_trip(copies["lanczos copy"], quality)
  return {"original": square(image), **{name: square(copy) for name, copy in copies.items()}}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("inputs", nargs="+", help="image files or folders")
  parser.add_argument("--max_side", type=int, default=600)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--resize_filter", default="bilinear", choices=tuple(images_lib.RESIZE_FILTERS))
  args = parser.parse_args(argv)
  pairs = [("lanczos copy", "original"), ("bicubic copy", "lanczos copy"),
           ("bilinear copy", "lanczos copy"), ("PIL thumbnail() copy", "lanczos copy"),
           ("lanczos copy, JPEG q95", "lanczos copy"), ("lanczos copy, JPEG q75", "lanczos copy")]
  diffs = {pair: [] for pair in pairs}
  sizes, larger = [], 0
  for path in picture_paths(args.inputs):
    image = images_lib.open_image(path, images_lib.MAX_PIXELS)
    sizes.append(image.size)
    if max(image.size) <= args.max_side:
      continue
    larger += 1
    made = inputs_of(image, args.size, args.resize_filter, args.max_side)
    for a, b in pairs:
      diffs[(a, b)].append(np.abs(made[a] - made[b]))
  if not larger:
    sys.exit(f"none of the {len(sizes)} pictures has a side over {args.max_side} pixels")
  sides = sorted(max(s) for s in sizes)
  print(f"{len(sizes)} pictures, longer side {sides[0]} to {sides[-1]} pixels; {larger} larger than "
        f"{args.max_side} (the others pass unchanged). Final input {args.size} x {args.size}, "
        f"{args.resize_filter}.")
  print(f"{'inputs compared':<50} {'mean |d|':>9} {'max |d|':>8} {'mean |d| CLIP':>14} "
        f"{'max |d| CLIP':>13} {'worst picture mean':>19}")
  for (a, b), per_picture in diffs.items():
    stacked = np.stack(per_picture)  # [pictures, size, size, 3]
    clip = stacked / (255 * CLIP_STD)
    worst = max(d.mean() for d in per_picture)
    print(f"{a + ' vs ' + b:<50} {stacked.mean():9.3f} {stacked.max():8.0f} {clip.mean():14.4f} "
          f"{clip.max():13.3f} {worst:19.3f}")


if __name__ == "__main__":
  main()
