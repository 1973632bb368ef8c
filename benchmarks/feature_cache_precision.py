"""The feature cache's storage dtype: what bfloat16 changes against float32, and what float32 costs.

  python benchmarks/feature_cache_precision.py --workdir=RUN [--images=1024]

RUN is a trained run's workdir (the demo's will do). Prints:
1. error: RUN's vision tower encodes a training batch in float32 (as evaluation runs it); the
   patches rounded to bfloat16 against float32 (max |a - b| / max |b|, and the largest
   element-wise relative error), then RUN's train loss and its gradient with each; the same
   patch figures for a randomly initialised ViT-B/16 at 224x224 (the real tower's shapes);
2. size: bytes per image of ViT-B/16 patches (196 x 768) in each dtype, and for ArtEmis v1's
   training split;
3. read speed: a memory-mapped cache of --images rows of 196 x 768 in each dtype, batches of 32
   random rows (the train step's reads), ms per batch with the file in the page cache.
"""

import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from sevlm_jax import checkpoints as ckpt_lib
from sevlm_jax import run as run_lib
from sevlm_jax.config import migrate
from sevlm_jax.data import pipeline
from sevlm_jax.models import SEVLM, ModelConfig, model_config_dict
from sevlm_jax.models.sevlm import init_params
from sevlm_jax.training import step as step_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's workdir.", required=True)
_IMAGES = flags.DEFINE_integer("images", 1024, "Rows of the synthetic cache for the read speed.")
ARTEMIS_V1_TRAIN_IMAGES = 68_000  # about 85% of ArtEmis v1's 80,031 paintings
PATCHES, WIDTH = 196, 768  # ViT-B/16 at 224x224


def rel(a, b) -> tuple[float, float]:
  """(max |a - b| / max |b|, max element-wise |a - b| / |b| over |b| > 1e-3 max |b|)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  big = np.abs(b) > 1e-3 * np.abs(b).max()
  return (float(np.abs(a - b).max() / np.abs(b).max()),
          float((np.abs(a - b)[big] / np.abs(b)[big]).max()))


def to_bf16(x):
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def loss_and_grad(run, config, params, pairs, patches):
  model = run.model

  def loss(p):
    return step_lib.sevlm_loss(model, p, pairs, jnp.asarray(run.vad_table), config.loss,
                               jax.random.PRNGKey(0), patches=patches, deterministic=True,
                               output_ids=run.output_ids, negatives=config.train.negatives)[0]
  return jax.jit(jax.value_and_grad(loss))(params)


def error_on_run():
  config = migrate.load_json(os.path.join(_WORKDIR.value, "config.json"))
  run = run_lib.prepare_run(config, _WORKDIR.value, write_config=False)
  params, _ = ckpt_lib.restore_params(_WORKDIR.value, "best_acc", abstract_params=run.abstract_params)
  loader = pipeline.train_loader(run.ready_dir, run.tokenizer, batch_size=config.train.batch_size,
                                 max_len=config.data.max_len, seed=0, shard_index=0, shard_count=1)
  batch = next(iter(loader))
  pairs = {k: jnp.asarray(batch[k]) for k in ("input_ids", "segment_ids", "token_mask", "labels")}
  with jax.default_matmul_precision("highest"):
    f32 = run.model.apply({"params": params}, jnp.asarray(batch["image"]),
                          method=run.model.encode_image)
    bf16 = jnp.asarray(to_bf16(f32))
    (loss32, grad32), (loss16, grad16) = (loss_and_grad(run, config, params, pairs, p)
                                          for p in (f32, bf16))
  g32 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad32)])
  g16 = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad16)])
  print(f"run's tower, {f32.shape}: patches bf16 vs f32: max|a-b|/max|b| {rel(bf16, f32)[0]:.2e}, "
        f"largest element-wise {rel(bf16, f32)[1]:.2e}")
  print(f"train loss f32 {float(loss32):.6f}, bf16 {float(loss16):.6f} "
        f"(relative {abs(float(loss16) - float(loss32)) / abs(float(loss32)):.2e}); gradient "
        f"|g16 - g32| / |g32| {np.linalg.norm(g16 - g32) / np.linalg.norm(g32):.2e}")


def error_on_vit_b16():
  config = ModelConfig.from_dict(model_config_dict("base"))
  model = SEVLM(config)
  params = jax.jit(lambda r: init_params(config, r))(jax.random.PRNGKey(0))
  images = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
  with jax.default_matmul_precision("highest"):
    f32 = model.apply({"params": params}, images, method=model.encode_image)
  bf16 = to_bf16(f32)
  print(f"random ViT-B/16, {f32.shape}: bf16 vs f32: max|a-b|/max|b| {rel(bf16, f32)[0]:.2e}, "
        f"largest element-wise {rel(bf16, f32)[1]:.2e}")


def size_and_speed():
  for dtype in (np.float32, ml_dtypes.bfloat16):
    per_image = PATCHES * WIDTH * np.dtype(dtype).itemsize
    print(f"{np.dtype(dtype).name:8s} {per_image:,} bytes per image; ArtEmis v1 train "
          f"(about {ARTEMIS_V1_TRAIN_IMAGES:,} images) {per_image * ARTEMIS_V1_TRAIN_IMAGES / 1e9:.1f} GB")
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory() as tmp:
    for dtype, stored in ((np.float32, np.float32), (ml_dtypes.bfloat16, np.uint16)):
      path = os.path.join(tmp, "cache.npy")
      out = np.lib.format.open_memmap(path, mode="w+", dtype=stored, shape=(_IMAGES.value, PATCHES, WIDTH))
      out[:] = rng.standard_normal((1, PATCHES, WIDTH)).astype(dtype).view(stored)
      out.flush()
      del out
      cache = np.load(path, mmap_mode="r")
      np.asarray(cache[np.arange(_IMAGES.value)]).sum()  # into the page cache
      times = []
      for _ in range(50):
        rows = np.sort(rng.choice(_IMAGES.value, 32, replace=False))
        t0 = time.perf_counter()
        np.asarray(cache[rows]).view(dtype).astype(np.float32).sum()
        times.append(1e3 * (time.perf_counter() - t0))
      print(f"{np.dtype(dtype).name:8s} read + to float32 of 32 random rows: "
            f"{statistics.median(times):.2f} ms per batch (median of 50)")
      del cache
      os.remove(path)


def main(argv):
  del argv
  error_on_run()
  error_on_vit_b16()
  size_and_speed()


if __name__ == "__main__":
  app.run(main)
