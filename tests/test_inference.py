"""The Predictor API on a saved tiny run: every kind of input, and clear errors for bad ones."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from sevlm_jax import errors
from sevlm_jax.inference import predictor as inference
from sevlm_jax.data import records
from helpers import demo_root


@pytest.fixture(scope="module")
def predictor(tiny_run):
  return inference.Predictor.from_workdir(str(tiny_run))


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
  """A non-square RGB picture of another size than the model's, saved losslessly."""
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
  path = tmp_path_factory.mktemp("pictures") / "picture.png"
  Image.fromarray(pixels).save(path)
  return path, pixels


def test_paths_pil_images_and_arrays_give_the_same_prediction(predictor, picture):
  path, pixels = picture
  with Image.open(path) as im:
    pil = im.copy()
  forms = [path, str(path), pil, Image.fromarray(pixels).convert("RGBA"), pixels,
           pixels.astype(np.float32) / 255.0]
  arrays = predictor.preprocess(forms)
  assert arrays.shape == (len(forms), 32, 32, 3) and arrays.dtype == np.uint8
  for a in arrays[1:]:
    np.testing.assert_array_equal(a, arrays[0])

  preds = predictor.predict(forms)
  assert len(preds) == len(forms)
  for p in preds:
    assert set(p) == {"emotion", "explanation", "text"}
    assert all(isinstance(v, str) for v in p.values())
    assert p == preds[0]
  assert predictor.predict(path) == preds[:1]  # a single image needs no list
  assert predictor.predict([]) == []


def test_predictions_equal_the_evaluation_of_the_same_checkpoint(predictor, tiny_run, tmp_path_factory):
  """The API generates exactly what `evaluate` wrote for the test images (more than one batch)."""
  evaluated = json.loads((tiny_run / "predictions_test.json").read_text())
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  assert len(test) > predictor.batch_size
  images = [test[i]["image"] for i in range(len(test))]
  preds = predictor.predict(images)
  by_index = {p["image_index"]: p for p in evaluated}
  for i, p in enumerate(preds):
    assert p["text"] == by_index[i]["text"], i
    assert (p["emotion"], p["explanation"]) == (by_index[i]["emotion"], by_index[i]["explanation"])


@pytest.fixture(scope="module")
def varied_predictor(predictor, tiny_run, make_random_params):
  """The run's predictor with large random weights: its outputs differ from image to image."""
  params = make_random_params(predictor.model.config, seed=1, std=0.3)
  return inference.Predictor(predictor.config, params, np.load(tiny_run / "vad_table.npy"),
                             output_ids=np.load(tiny_run / "output_vocab.npy"))


def test_each_image_gets_its_own_prediction_in_any_batch(varied_predictor, tmp_path_factory):
  test = records.load_split(demo_root(tmp_path_factory) / "ready", "test")
  images = [test[i]["image"] for i in range(len(test))]
  assert len(images) > varied_predictor.batch_size  # two batches, the last one padded
  preds = varied_predictor.predict(images)
  assert len({p["text"] for p in preds}) > 1
  assert varied_predictor.predict(images[::-1]) == preds[::-1]
  for k in (0, len(images) - 1):
    assert varied_predictor.predict([images[k]]) == [preds[k]]


def test_missing_image_file_names_it(predictor, tmp_path):
  missing = tmp_path / "no_such_painting.jpg"
  with pytest.raises(errors.InputError, match="no_such_painting.jpg") as e:
    predictor.predict([missing])
  assert "does not exist" in str(e.value)


def test_non_image_file_names_it(predictor, tmp_path, picture):
  notes = tmp_path / "notes.jpg"
  notes.write_text("not a picture")
  with pytest.raises(errors.InputError, match="notes.jpg") as e:
    predictor.predict([picture[0], notes])
  assert "image 1" in str(e.value) and "not a readable image" in str(e.value)


def test_array_of_the_wrong_shape_is_refused(predictor):
  with pytest.raises(errors.InputError, match=r"image 0: expected an RGB array.*\(32, 32\)"):
    predictor.predict([np.zeros((32, 32), np.uint8)])
  with pytest.raises(errors.InputError, match=r"\(32, 32, 4\)"):
    predictor.predict([np.zeros((32, 32, 4), np.uint8)])


def test_workdir_that_is_not_a_run(tmp_path):
  with pytest.raises(errors.CheckpointNotFoundError, match=str(tmp_path / "config.json")):
    inference.Predictor.from_workdir(str(tmp_path))
  with pytest.raises(errors.CheckpointNotFoundError):
    inference.Predictor.from_workdir(str(tmp_path / "does_not_exist"))


def test_run_without_checkpoints_names_the_directory(tiny_run, tmp_path):
  for name in ("config.json", "vad_table.npy"):
    shutil.copy(tiny_run / name, tmp_path / name)
  with pytest.raises(errors.CheckpointNotFoundError, match=str(tmp_path / "checkpoints")):
    inference.Predictor.from_workdir(str(tmp_path))


def test_an_image_blind_run_sees_grey_whatever_the_image(predictor, tiny_run, picture, tmp_path):
  """Predictor goes through the model's one blanking point: a run trained image-blind
  (data.blank_images) predicts for any picture what the same weights predict for mid grey."""
  blind_dir = tmp_path / "blind"
  shutil.copytree(tiny_run, blind_dir, ignore=shutil.ignore_patterns("data", "features", "report*"))
  config = json.loads((blind_dir / "config.json").read_text())
  assert not config["data"]["blank_images"]
  config["data"]["blank_images"] = True
  (blind_dir / "config.json").write_text(json.dumps(config))
  blind = inference.Predictor.from_workdir(str(blind_dir))
  _, pixels = picture
  grey = np.full_like(pixels, 128)
  images = [pixels, np.zeros_like(pixels), pixels[::-1]]
  assert blind.predict(images) == predictor.predict([grey] * 3)
  np.testing.assert_allclose(blind.emotion_distribution(images),
                             predictor.emotion_distribution([grey] * 3), rtol=1e-5, atol=1e-6)


def test_predictor_resizes_with_the_runs_filter(picture, tmp_path_factory):
  """A run trained on bilinearly resized data gets bilinearly resized pictures in prediction."""
  from sevlm_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
  from helpers import tiny_config  # pylint: disable=import-outside-toplevel
  path, _ = picture
  for name in ("bicubic", "bilinear"):
    config = tiny_config(demo_root(tmp_path_factory), **{"data.resize_filter": name})
    predictor = inference.Predictor(config, params=None, vad_table=np.zeros((50261, 3), np.float32))
    np.testing.assert_array_equal(predictor.preprocess([path])[0],
                                  images_lib.load_image(path, config.data.image_size, name))
