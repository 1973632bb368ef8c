"""data.prescale_max_side: the 600-pixel copies of WikiArt made in memory, or read as they are."""

import json

import numpy as np
import pytest
from PIL import Image

from sevlm_jax import errors
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import sources
from helpers import load_config

SIZE = 16
MAX_SIDE = 60  # the 600 of the official variant, scaled down with the pictures


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
  """RGB with detail at every scale, so that any resize changes it."""
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size, expected", [
    ((120, 80), (60, 40)), ((80, 120), (40, 60)), ((121, 79), (60, 39)),
    ((601, 3), (60, 1))])  # 3 * 60 / 601 = 0.3: at least one pixel
def test_the_longer_side_becomes_max_side_with_the_aspect_ratio_kept(size, expected):
  assert images_lib.prescale(picture(*size), MAX_SIDE).size == expected


@pytest.mark.parametrize("size", [(60, 40), (30, 59), (60, 60)])
def test_a_picture_no_larger_than_max_side_is_kept_as_it_is(size):
  image = picture(*size)
  assert images_lib.prescale(image, MAX_SIDE) is image
  assert images_lib.prescale(picture(500, 400), 0).size == (500, 400)  # 0: off


def test_the_filter_is_the_one_asked_for_and_checked():
  image = picture(200, 130)
  lanczos = np.asarray(images_lib.prescale(image, MAX_SIDE))
  np.testing.assert_array_equal(lanczos, np.asarray(image.resize((60, 39), Image.LANCZOS)))
  assert not np.array_equal(lanczos, np.asarray(images_lib.prescale(image, MAX_SIDE, "bilinear")))
  with pytest.raises(ValueError, match="prescale_filter must be one of"):
    images_lib.prescale(image, MAX_SIDE, "nearest")


def test_every_door_applies_it_before_the_square_resize(tmp_path):
  image = picture(240, 150)
  path = tmp_path / "p.png"
  image.save(path)
  want = images_lib.resize_square(images_lib.prescale(image, MAX_SIDE), SIZE, "bilinear")
  assert not np.array_equal(want, images_lib.resize_square(image, SIZE, "bilinear"))
  for source in (path, image, np.asarray(image)):
    np.testing.assert_array_equal(
        images_lib.to_pixels(source, SIZE, "image 0", "bilinear", prescale_max_side=MAX_SIDE), want)
  _, ingested, _, error = images_lib.load_image_job(
      ("id", str(tmp_path), "p.png", SIZE, "bilinear", MAX_SIDE, "lanczos"))
  assert error is None
  np.testing.assert_array_equal(ingested, want)


def _data_set(tmp_path, name: str, pictures: dict, **kwargs):
  """A prepared data set of `pictures` (painting -> PIL image, saved as lossless PNG files)."""
  folder = tmp_path / f"{name}_images" / "Style"
  folder.mkdir(parents=True)
  rows = ["art_style,painting,emotion,utterance,repetition"]
  for painting, image in pictures.items():
    image.save(folder / f"{painting}.jpg", "PNG")
    rows += [f"Style,{painting},awe,a {painting} of a picture,2",
             f"Style,{painting},fear,another {painting} here,2"]
  (tmp_path / f"{name}.csv").write_text("\n".join(rows) + "\n")
  out, _ = prepare.prepare_ready(tmp_path / f"{name}.csv", folder.parent, tmp_path / name,
                                 image_size=SIZE, workers=0, text_preprocessing="raw",
                                 split_loads=(1.0, 0.0, 0.0), progress=False,
                                 log=lambda *a: None, resize_filter="bilinear", **kwargs)
  return out, {r["painting"]: r["image"] for r in records.load_split(out, "train")}


def test_originals_prescaled_give_what_a_folder_of_copies_gives(tmp_path):
  originals = {"wide": picture(250, 140, 1), "tall": picture(90, 200, 2), "small": picture(40, 30, 3)}
  copies = {k: images_lib.prescale(v, MAX_SIDE) for k, v in originals.items()}
  made, from_originals = _data_set(tmp_path, "originals", originals, prescale_max_side=MAX_SIDE)
  _, from_copies = _data_set(tmp_path, "copies", copies, prescale_max_side=MAX_SIDE)
  _, copies_as_found = _data_set(tmp_path, "as_found", copies)
  _, direct = _data_set(tmp_path, "direct", originals)
  for painting in originals:
    np.testing.assert_array_equal(from_originals[painting], from_copies[painting])
    np.testing.assert_array_equal(from_originals[painting], copies_as_found[painting])
  assert not np.array_equal(from_originals["wide"], direct["wide"])
  np.testing.assert_array_equal(from_originals["small"], direct["small"])  # never enlarged
  assert json.loads((made / "meta.json").read_text())["prescale"]["max_side"] == MAX_SIDE


def test_a_data_set_made_otherwise_is_a_config_error(tmp_path):
  out, _ = _data_set(tmp_path, "ready", {"a": picture(100, 70)}, prescale_max_side=MAX_SIDE)
  config = load_config("artemis_v1")
  config.data.source, config.data.image_size, config.data.resize_filter = "ready", SIZE, "bilinear"
  config.data.text_preprocessing = "raw"
  config.data.prescale_max_side = MAX_SIDE
  sources.check_prepared(config, str(out))  # as made
  config.data.prescale_max_side = 0
  with pytest.raises(errors.ConfigError, match="prescale_max_side=60 .*set --config.data.prescale_max_side=60"):
    sources.check_prepared(config, str(out))
  config.data.prescale_max_side, config.data.prescale_filter = MAX_SIDE, "bicubic"
  with pytest.raises(errors.ConfigError, match="prescale_filter=lanczos"):
    sources.check_prepared(config, str(out))


def test_a_negative_side_or_an_unknown_filter_is_a_config_error():
  config = load_config("demo")
  config.data.prescale_max_side = -1
  with pytest.raises(errors.ConfigError, match="data.prescale_max_side=-1"):
    sources.check_config(config)
  config.data.prescale_max_side, config.data.prescale_filter = 600, "nearest"
  with pytest.raises(errors.ConfigError, match="data.prescale_filter='nearest'; choose one of"):
    sources.check_config(config)
