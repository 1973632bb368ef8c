"""Cache of the frozen vision tower's patch features, computed once per data set.

With the tower frozen and no image augmentation, every epoch would encode the same
images to the same patches again; the ViT-B/16 forward is then the largest part of a
train step. The cache holds one row of patches per record of a split, in split order
(row i is record i, the `image_index` of a batch), stored as bfloat16 in a .npy file
that is memory-mapped, so a batch reads only its own rows. bfloat16 keeps each value within
2^-8 of the float32 tower's (evaluation's) at half the size of float32, which reads no faster;
benchmarks/feature_cache_precision.py measures both and what the rounding moves in a train step.

The file name carries a fingerprint of everything the features depend on: the
vision tower's parameters and config, the image normalisation, the data set's
identity (meta.json and the record count) and whether images are blanked. A changed
tower or data set gets a new file, never a stale one. Files are written to a
temporary name and renamed when complete, so an interrupted build leaves nothing
that could be mistaken for a cache.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable

import ml_dtypes
import numpy as np

from sevlm_jax import io_utils
from sevlm_jax.data import batching
from sevlm_jax.data import records

STORAGE_DTYPE = ml_dtypes.bfloat16


def fingerprint(vision_params: Any, vision_config: Any, image_norm: str, ready_dir,
                split: str, blank_images: bool = False) -> str:
  """Hex digest identifying the features of one split under one frozen tower."""
  import jax  # pylint: disable=import-outside-toplevel
  h = hashlib.blake2b(digest_size=16)
  for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(vision_params),
                           key=lambda kv: jax.tree_util.keystr(kv[0])):
    a = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str((a.dtype, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  h.update(json.dumps(dataclasses.asdict(vision_config), sort_keys=True).encode())
  h.update(image_norm.encode())
  h.update(json.dumps(records.load_meta(ready_dir), sort_keys=True).encode())
  h.update(f"{split}:{len(records.load_split(ready_dir, split))}:{bool(blank_images)}".encode())
  return h.hexdigest()


def cache_path(cache_dir: str, split: str, digest: str) -> str:
  return os.path.join(cache_dir, f"patches_{split}_{digest}.npy")


def build(path: str, ready_dir, split: str, encode: Callable[[np.ndarray], Any], *,
          batch_size: int = 64, progress: bool = True) -> str:
  """Encodes every image of the split with `encode` (uint8 BxHxWx3 -> BxPxD) into `path`.

  `encode` sees the images as stored (blank them inside it for an image-blind run). The
  last batch is padded to batch_size, so a jitted `encode` compiles once.
  """
  source = records.load_split(ready_dir, split)
  n = len(source)
  if n == 0:
    raise ValueError(f"{ready_dir} split {split!r} has no records to encode")
  io_utils.as_path(os.path.dirname(path) or ".").mkdir(parents=True, exist_ok=True)
  with io_utils.atomic_path(path) as tmp, io_utils.Progress(
      f"patch feature cache ({split})", total=n, unit="img", enabled=progress) as bar:
    out = None
    for start, stop in batching.batch_bounds(n, batch_size):
      images = np.stack([source[i]["image"] for i in range(start, stop)])
      patches = np.asarray(encode(batching.pad_rows(images, batch_size))).astype(STORAGE_DTYPE)
      patches = patches[:stop - start]
      if out is None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16,
                                        shape=(n,) + patches.shape[1:])
      out[start:stop] = patches.view(np.uint16)  # bf16 bits: .npy has no bfloat16 type
      bar.update(stop - start)
    out.flush()
    del out
  return path


class PatchCache:
  """Read-only, memory-mapped cached patches: cache[image_index_B] -> bf16 BxPxD. A cache on an
  object store (gs://...) is memory-mapped from a local copy (io_utils.local_copy)."""

  def __init__(self, path: str):
    try:
      self._bits = np.load(io_utils.local_copy(path), mmap_mode="r")
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read the patch feature cache {path}: {e}; delete it to rebuild"
                       ) from e
    if self._bits.dtype != np.uint16 or self._bits.ndim != 3:
      raise ValueError(f"{path} is not a patch feature cache (dtype {self._bits.dtype}, shape "
                       f"{self._bits.shape}); delete it to rebuild")
    self.path = path

  def __len__(self) -> int:
    return self._bits.shape[0]

  @property
  def shape(self) -> tuple[int, ...]:
    return self._bits.shape

  def __getitem__(self, image_index) -> np.ndarray:
    rows = np.asarray(image_index)
    if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f"image index out of range for the {len(self)} rows of {self.path}")
    return np.asarray(self._bits[rows]).view(STORAGE_DTYPE)


def load_or_build(cache_dir: str, ready_dir, split: str, vision_params: Any, vision_config: Any,
                  image_norm: str, encode: Callable[[np.ndarray], Any], *, batch_size: int = 64,
                  blank_images: bool = False,
                  progress: bool = True) -> PatchCache:
  """The split's cache for this tower, built first if missing.

  blank_images only enters the fingerprint: `encode` does the blanking.
  """
  digest = fingerprint(vision_params, vision_config, image_norm, ready_dir, split, blank_images)
  path = cache_path(cache_dir, split, digest)
  io_utils.remove_stale_temps(cache_dir, f"patches_{split}_")  # a killed build's partial file
  if not io_utils.as_path(path).exists():
    build(path, ready_dir, split, encode, batch_size=batch_size, progress=progress)
  return PatchCache(path)
