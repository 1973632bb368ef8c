"""The frozen tower's patch-feature cache: contents, fingerprint, atomic build, use in training."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax import run as inputs
from sevlm_jax.training import loop as train_lib
from sevlm_jax.data import features
from sevlm_jax.data import records
from sevlm_jax.data import sources
from helpers import Stepper, tiny_config


@pytest.fixture(scope="module")
def frozen(data, make_random_params):
  return Stepper(data[0], make_random_params, **{"optim.train_vision": False})


@pytest.fixture(scope="module")
def ready(data):
  root = data[0]
  return sources.resolve_ready_dir(tiny_config(root), str(root))


@pytest.fixture(scope="module")
def encoder(frozen):
  model = frozen.model
  encode = jax.jit(lambda v, images: model.apply({"params": {"vision": v}}, images,
                                                 method=model.encode_image))
  vision = frozen.params["vision"]
  return vision, lambda images: encode(vision, images)


def build(tmp_path, root, frozen, encoder, **kw):
  vision, encode = encoder
  c = frozen.model.config
  return features.load_or_build(str(tmp_path), root, "train", vision, c.vision, c.image_norm,
                                encode, batch_size=16, **kw)


def test_rows_are_the_towers_patches_in_bf16(tmp_path, ready, frozen, encoder):
  root = ready
  cache = build(tmp_path, root, frozen, encoder)
  split = records.load_split(root, "train")
  assert len(cache) == len(split) and len(split) % 16  # the last batch was padded
  rows = np.asarray([0, 5, len(split) - 1, 5])
  got = cache[rows]
  assert got.dtype == ml_dtypes.bfloat16
  want = np.asarray(encoder[1](np.stack([split[int(i)]["image"] for i in rows])))
  np.testing.assert_array_equal(got, want.astype(ml_dtypes.bfloat16))
  assert os.listdir(tmp_path) == [os.path.basename(cache.path)]  # no temporary left behind


def test_fingerprint_follows_tower_data_and_blanking(ready, frozen):
  root = ready
  c = frozen.model.config
  vision = frozen.params["vision"]
  base = features.fingerprint(vision, c.vision, c.image_norm, root, "train")
  assert base == features.fingerprint(vision, c.vision, c.image_norm, root, "train")
  moved = jax.tree.map(lambda x: x, vision)
  moved["ln_post"]["scale"] = np.asarray(moved["ln_post"]["scale"]) + 1e-3
  others = [features.fingerprint(moved, c.vision, c.image_norm, root, "train"),
            features.fingerprint(vision, c.vision, "imagenet", root, "train"),
            features.fingerprint(vision, c.vision, c.image_norm, root, "val"),
            features.fingerprint(vision, c.vision, c.image_norm, root, "train", blank_images=True)]
  assert len({base, *others}) == 5


def test_interrupted_build_leaves_nothing(tmp_path, ready, frozen, encoder):
  calls = []

  def failing(images):
    calls.append(1)
    if len(calls) == 3:
      raise RuntimeError("device lost")
    return encoder[1](images)

  with pytest.raises(RuntimeError, match="device lost"):
    build(tmp_path, ready, frozen, (encoder[0], failing))
  assert os.listdir(tmp_path) == []


def test_bad_cache_files_and_indices(tmp_path, ready, frozen, encoder):
  np.save(tmp_path / "not_patches.npy", np.zeros((3, 4), np.float32))
  with pytest.raises(ValueError, match="delete it to rebuild"):
    features.PatchCache(str(tmp_path / "not_patches.npy"))
  (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
  with pytest.raises(ValueError, match="delete it to rebuild"):
    features.PatchCache(str(tmp_path / "broken.npy"))
  cache = build(tmp_path / "ok", ready, frozen, encoder)
  with pytest.raises(IndexError, match="out of range"):
    cache[np.asarray([0, len(cache)])]


def test_step_on_cached_patches_equals_step_on_images(data, frozen, encoder):
  """Float32 patches: the same step exactly; the bf16 cache: the same loss to bf16 rounding."""
  _, batch, vad_table = data
  patches = np.asarray(encoder[1](batch["image"]))
  text = {k: v for k, v in batch.items() if k != "image"}
  state_img, m_img = frozen.step(frozen.state, batch, vad_table, jax.random.PRNGKey(1))
  state_f32, m_f32 = frozen.step(frozen.state, {**text, "patches": patches}, vad_table,
                                 jax.random.PRNGKey(1))
  np.testing.assert_allclose(m_f32["loss"], m_img["loss"], rtol=1e-5)
  np.testing.assert_allclose(m_f32["grad_norm"], m_img["grad_norm"], rtol=1e-4)
  # Adam scales rounding noise in near-zero gradients up to steps of the learning rate
  # (2e-3 here), so the parameters are compared at a tenth of it.
  for a, b in zip(jax.tree.leaves(state_f32.params), jax.tree.leaves(state_img.params)):
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-4)
  _, m_bf16 = frozen.step(frozen.state, {**text, "patches": patches.astype(jnp.bfloat16)},
                          vad_table, jax.random.PRNGKey(1))
  np.testing.assert_allclose(m_bf16["loss"], m_img["loss"], rtol=1e-2)


def test_training_uses_the_cache_only_when_the_tower_is_frozen(tmp_path, data,
                                                               make_random_params):
  root = data[0]
  config = tiny_config(root, **{"optim.train_vision": False})
  run = inputs.prepare_run(config, str(tmp_path))
  params = make_random_params(run.model.config)
  cache = train_lib.patch_feature_cache(config, run, params, str(tmp_path))
  assert cache is not None and os.path.dirname(cache.path) == str(tmp_path / "features")
  assert cache.shape[1:] == (run.model.config.vision.num_patches, run.model.config.decoder.width)
  again = train_lib.patch_feature_cache(config, run, params, str(tmp_path))
  assert again.path == cache.path  # reused, not rebuilt
  # The loop's host batch then carries the cached rows of its images, and no images.
  _, batch, _ = data
  loaded = {**batch, "image_index": np.asarray([3, 0, 7, 3])}
  host = train_lib._host_batch(loaded, cache)  # pylint: disable=protected-access
  assert "image" not in host
  np.testing.assert_array_equal(host["patches"], cache[loaded["image_index"]])
  assert "patches" not in train_lib._host_batch(loaded, None)  # pylint: disable=protected-access
  config.train.feature_cache = "off"
  assert train_lib.patch_feature_cache(config, run, params, str(tmp_path)) is None
  config.train.feature_cache = "auto"
  config.optim.train_vision = True
  assert train_lib.patch_feature_cache(config, run, params, str(tmp_path)) is None
  config.train.feature_cache = "sometimes"
  with pytest.raises(errors.ConfigError, match="train.feature_cache"):
    train_lib.patch_feature_cache(config, run, params, str(tmp_path))


def test_a_killed_build_leaves_a_file_the_next_build_removes(tmp_path, ready, frozen, encoder):
  """kill -9 during a build leaves patches_*.npy.tmp<pid>; the next load_or_build deletes it
  (its writer is dead) and builds the cache; a live writer's file is left alone."""
  script = ("import sys, time, numpy as np\n"
            "from sevlm_jax.data import features\n"
            "def encode(images):\n"
            "  time.sleep(0.2)\n"
            "  return np.zeros((len(images), 4, 8), np.float32)\n"
            f"features.build({str(tmp_path / 'patches_train_0123.npy')!r}, {str(ready)!r}, 'train', "
            "encode, batch_size=2, progress=False)\n")
  proc = subprocess.Popen([sys.executable, "-c", script],
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
  try:
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("*.tmp*")) and time.monotonic() < deadline:
      time.sleep(0.1)
  finally:
    proc.kill()
    proc.wait()
  (leftover,) = tmp_path.glob("patches_train_*.npy.tmp*")
  live = tmp_path / f"patches_train_4567.npy.tmp{os.getpid()}"
  live.write_bytes(b"being written")
  cache = build(tmp_path, ready, frozen, encoder)
  assert not leftover.exists() and live.exists()
  assert len(cache) == len(records.load_split(ready, "train"))
