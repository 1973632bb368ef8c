"""Images keep their pixels through every door: 16-bit pictures, transparency, huge JPEGs."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sevlm_jax.data import images as images_lib
from sevlm_jax.data import prepare
from sevlm_jax.data import records

SIZE = 32
GREY = images_lib.BACKGROUND_RGB


def ramp16(size: int = SIZE) -> np.ndarray:
  """uint16 [size, size]: 0..65535 left to right, the same on every row."""
  return np.tile(np.linspace(0, 65535, size).round().astype(np.uint16), (size, 1))


def png16_bytes(values: np.ndarray, colour_type: int) -> bytes:
  """A 16-bit PNG (colour type 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA) written by hand: Pillow saves
  16-bit grey only."""
  height, width = values.shape[:2]
  rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(height))

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
          + chunk(b"IEND", b""))


def tiff16_rgb_bytes(values: np.ndarray) -> bytes:
  """An uncompressed 16-bit RGB TIFF written by hand: Pillow saves 8-bit RGB only."""
  height, width, _ = values.shape
  pixels = values.astype("<u2").tobytes()
  entries = [(256, width), (257, height), (258, None), (259, 1), (262, 2), (273, None), (277, 3),
             (278, height), (279, len(pixels)), (284, 1)]
  ifd_at = 8
  bits_at = ifd_at + 2 + 12 * len(entries) + 4
  pixels_at = bits_at + 6
  out = b"II*\0" + struct.pack("<IH", ifd_at, len(entries))
  for tag, value in entries:
    if tag == 258:  # BitsPerSample: three values, stored after the directory
      out += struct.pack("<HHII", tag, 3, 3, bits_at)
    elif tag in (273, 279):  # StripOffsets, StripByteCounts: LONG
      out += struct.pack("<HHII", tag, 4, 1, pixels_at if tag == 273 else value)
    else:
      out += struct.pack("<HHIHH", tag, 3, 1, value, 0)
  return out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels


def saved(image: Image.Image, fmt: str, **options) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, fmt, **options)
  return buffer.getvalue()


def every_door(data: bytes, tmp_path, name: str = "picture") -> dict[str, np.ndarray]:
  """uint8 [SIZE, SIZE, 3] of one file's bytes as each door reads it: ingestion's worker, predict
  with a path, predict with the PIL image a caller opened, the page's upload."""
  path = tmp_path / name
  path.write_bytes(data)
  _, ingested, _, error = images_lib.load_image_job(("id", str(tmp_path), name, SIZE, "bicubic"))
  assert error is None
  return {"ingestion": ingested,
          "predict path": images_lib.to_pixels(str(path), SIZE, "image 0"),
          "predict PIL": images_lib.to_pixels(Image.open(path), SIZE, "image 0"),
          "page": images_lib.resize_square(images_lib.open_image(data, images_lib.MAX_PIXELS), SIZE)}


# ----------------------------------------------------------------------------- 16-bit pictures

SIXTEEN_BIT_FILES = {
    "PNG I;16": lambda r: saved(Image.fromarray(r), "PNG"),
    "TIFF I;16": lambda r: saved(Image.fromarray(r), "TIFF"),
    "TIFF I;16B": lambda r: saved(Image.frombytes("I;16B", r.shape[::-1], r.astype(">u2").tobytes()),
                                  "TIFF"),
    "TIFF I": lambda r: saved(Image.fromarray(r.astype(np.int32)), "TIFF"),
    "PNG 16-bit RGB": lambda r: png16_bytes(np.stack([r] * 3, -1), 2),
    "TIFF 16-bit RGB": lambda r: tiff16_rgb_bytes(np.stack([r] * 3, -1)),
}


@pytest.mark.parametrize("kind", list(SIXTEEN_BIT_FILES))
def test_a_16_bit_ramp_keeps_its_range_through_every_door(kind, tmp_path):
  ramp = ramp16()
  expected = np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, -1)  # the high byte
  for door, pixels in every_door(SIXTEEN_BIT_FILES[kind](ramp), tmp_path).items():
    np.testing.assert_array_equal(pixels, expected, err_msg=f"{kind} through {door}")
  assert 127 <= expected.mean() <= 128 and expected[:, 0].max() == 0 and expected[:, -1].min() == 255


def test_16_bit_arrays_are_scaled_not_clipped():
  ramp = ramp16()
  pixels = images_lib.to_pixels(np.stack([ramp] * 3, -1), SIZE, "image 0")
  np.testing.assert_array_equal(pixels[..., 0], ramp >> 8)
  assert images_lib.sixteen_to_eight_bits(np.array([-5, 0, 255, 256, 65535, 70000])).tolist() == [
      0, 0, 0, 1, 255, 255]


def test_the_scale_is_the_modes_range_not_the_pictures():
  dark = (ramp16() // 4).astype(np.uint16)  # 0..16383: a dark picture stays dark
  pixels = images_lib.load_image(io.BytesIO(saved(Image.fromarray(dark), "PNG")), SIZE)
  assert pixels.max() == 63


# ----------------------------------------------------------------------------- transparency

def half_transparent(colour, alpha_right: int = 255) -> np.ndarray:
  """uint8 RGBA [SIZE, SIZE, 4]: `colour` everywhere, alpha 0 on the left half."""
  rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
  rgba[..., :3] = colour
  rgba[:, SIZE // 2:, 3] = alpha_right
  return rgba


def blended(colour, alpha: int) -> np.ndarray:
  return np.round((np.asarray(colour) * alpha + np.asarray(GREY) * (255 - alpha)) / 255)


def assert_halves(pixels: np.ndarray, left, right, where: str) -> None:
  """The left half (away from the resize's seam) is `left`, the right half `right`, within 1."""
  for half, colour in ((pixels[:, :SIZE // 2 - 2], left), (pixels[:, SIZE // 2 + 2:], right)):
    np.testing.assert_allclose(half, np.broadcast_to(colour, half.shape), atol=1, err_msg=where)


def test_colours_hidden_under_transparent_pixels_stay_hidden(tmp_path):
  red = (255, 0, 0)
  for alpha in (255, 128):
    data = saved(Image.fromarray(half_transparent(red, alpha)), "PNG")
    for door, pixels in every_door(data, tmp_path).items():
      assert_halves(pixels, GREY, blended(red, alpha), f"RGBA, alpha {alpha}, through {door}")


def test_grey_with_alpha(tmp_path):
  la = np.zeros((SIZE, SIZE, 2), np.uint8)
  la[..., 0] = 255
  la[:, SIZE // 2:, 1] = 255
  for door, pixels in every_door(saved(Image.fromarray(la, "LA"), "PNG"), tmp_path).items():
    assert_halves(pixels, GREY, (255, 255, 255), f"LA through {door}")
  sixteen = np.stack([np.full((SIZE, SIZE), 65535, np.uint16), la[..., 1].astype(np.uint16) * 257],
                     -1)
  for door, pixels in every_door(png16_bytes(sixteen, 4), tmp_path).items():
    assert_halves(pixels, GREY, (255, 255, 255), f"16-bit LA through {door}")


def test_palette_and_colour_key_transparency(tmp_path):
  palette = Image.new("P", (SIZE, SIZE), 1)
  palette.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)  # 0: green, transparent; 1: red
  palette.paste(0, (0, 0, SIZE // 2, SIZE))
  for fmt in ("PNG", "GIF"):
    for door, pixels in every_door(saved(palette, fmt, transparency=0), tmp_path).items():
      assert_halves(pixels, GREY, (255, 0, 0), f"P {fmt} through {door}")
  rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
  rgb[:, :SIZE // 2] = (0, 0, 255)  # blue is the transparent colour
  rgb[:, SIZE // 2:] = (255, 255, 0)
  data = saved(Image.fromarray(rgb), "PNG", transparency=(0, 0, 255))
  for door, pixels in every_door(data, tmp_path).items():
    assert_halves(pixels, GREY, (255, 255, 0), f"RGB with a transparent colour through {door}")


def test_opaque_pictures_are_unchanged(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
  for door, pixels in every_door(saved(Image.fromarray(rgb), "PNG"), tmp_path).items():
    np.testing.assert_array_equal(pixels, rgb, err_msg=door)


# ----------------------------------------------------------------------------- huge JPEGs

def painting_like(height: int, width: int) -> np.ndarray:
  """uint8 RGB: smooth colour fields with some brush-stroke texture."""
  rng = np.random.default_rng(1)
  y, x = np.mgrid[0:height, 0:width] / max(height, width)
  rgb = np.stack([np.sin(9 * x + 4 * y), np.cos(7 * y - 3 * x), np.sin(13 * x * y)], -1)
  coarse = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
  strokes = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32) / 255
  return np.clip(255 * (0.35 + 0.3 * rgb + 0.3 * strokes), 0, 255).astype(np.uint8)


def test_a_jpeg_over_the_cap_is_decoded_at_the_scale_its_size_needs(tmp_path, monkeypatch):
  path = tmp_path / "large.jpg"
  Image.fromarray(painting_like(900, 1300)).save(path, quality=92)
  cap = 1300 * 900 - 1
  drafted = images_lib.open_image(path, cap, draft_size=SIZE)
  assert drafted.size == (163, 113)  # 1/8 scale, still at least SIZE on both sides
  assert images_lib.open_image(path, cap, draft_size=200).size == (325, 225)  # 1/8 would be < 200
  assert images_lib.open_image(path).size == (1300, 900)
  # Under the cap it is decoded whole: the resize filter alone makes the pixels.
  assert images_lib.open_image(path, cap + 1, draft_size=SIZE).size == (1300, 900)
  np.testing.assert_array_equal(images_lib.load_image(path, SIZE),
                                images_lib.resize_square(images_lib.open_image(path), SIZE))
  monkeypatch.setattr(images_lib, "MAX_PIXELS", cap)
  full = images_lib.resize_square(images_lib.open_image(path), SIZE)
  pixels = images_lib.load_image(path, SIZE)
  difference = np.abs(pixels.astype(int) - full.astype(int))
  assert difference.mean() < 1.5 and difference.max() <= 10  # measured: 0.93 and 6


def test_the_pixel_cap_spares_jpegs_that_draft_under_it(tmp_path, monkeypatch):
  monkeypatch.setattr(images_lib, "MAX_PIXELS", 100 * 100)
  picture = Image.fromarray(painting_like(400, 400))
  picture.save(tmp_path / "big.jpg", quality=90)
  picture.save(tmp_path / "big.png")
  assert images_lib.load_image(tmp_path / "big.jpg", SIZE).shape == (SIZE, SIZE, 3)  # 50 x 50 decoded
  with pytest.raises(images_lib.ImageTooLarge, match=r"400 x 400 pixels \(limit 10,000\)"):
    images_lib.load_image(tmp_path / "big.png", SIZE)
  with pytest.raises(images_lib.ImageTooLarge):  # a size a JPEG cannot be reduced to
    images_lib.load_image(tmp_path / "big.jpg", 120)
  with pytest.raises(images_lib.InputError, match=r"^image 3: .*big.png: image too large: 400 x 400"):
    images_lib.to_pixels(str(tmp_path / "big.png"), SIZE, "image 3")


def test_ingestion_keeps_the_pixels_and_reports_what_is_over_the_cap(tmp_path, monkeypatch):
  monkeypatch.setattr(images_lib, "MAX_PIXELS", 100 * 100)
  folder = tmp_path / "wikiart" / "Style"
  folder.mkdir(parents=True)
  files = {"ramp": SIXTEEN_BIT_FILES["PNG I;16"](ramp16()),  # named .jpg, as any file may be
           "cutout": saved(Image.fromarray(half_transparent((255, 0, 0))), "PNG"),
           "large": saved(Image.fromarray(painting_like(400, 400)), "JPEG", quality=90),
           "poster": saved(Image.fromarray(painting_like(400, 400)), "PNG")}
  rows = ["art_style,painting,emotion,utterance,repetition"]
  for name, data in files.items():
    (folder / f"{name}.jpg").write_bytes(data)
    rows += [f"Style,{name},awe,a {name} of a picture,2", f"Style,{name},fear,another {name} here,2"]
  (tmp_path / "artemis.csv").write_text("\n".join(rows) + "\n")
  out, report = prepare.prepare_ready(tmp_path / "artemis.csv", tmp_path / "wikiart",
                                      tmp_path / "ready", image_size=SIZE, workers=0,
                                      text_preprocessing="raw", split_loads=(1.0, 0.0, 0.0),
                                      progress=False, log=lambda *a: None)
  kept = {r["painting"]: r["image"] for s in records.SPLITS for r in records.load_split(out, s)}
  assert set(kept) == {"ramp", "cutout", "large"}
  np.testing.assert_array_equal(kept["ramp"][..., 0], ramp16() >> 8)
  assert_halves(kept["cutout"], GREY, (255, 0, 0), "ingested cutout")
  (refused,) = report["skipped"]["unreadable_image"]["items"]
  assert refused["image_id"] == "Style/poster" and "400 x 400 pixels" in refused["error"]
