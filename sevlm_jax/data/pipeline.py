"""grain input pipelines over a ready data set: training pairs and evaluation batches.

Training (the recipe: README.md). The training images are those of the split with
at least two distinct emotions. An epoch visits each of them once, in an
order shuffled per epoch; for each visit it yields a pair of annotations of the
image: the anchor, which cycles through the image's annotations across epochs
(epoch k takes entry k mod n of a fixed per-image shuffle), and a partner
drawn among the annotations whose emotion differs from the anchor's. Every
choice is a pure function of (seed, epoch, image), so the stream is
deterministic, random access, and a restored iterator continues exactly.

Sharding (default: one shard per JAX process, each loading its part of the
global batch): with drop_remainder (the default), global batch k of an epoch
is the k-th run of shard_count * batch_size images of the shuffled order, and
shard i takes its i-th block of batch_size. Concatenated in shard order, the
shards' batches are exactly the batches of one unsharded loader with the
global batch size, so a run does not depend on how many processes load it.
Every shard gets the same number of images per epoch, so processes stay in
lockstep, and shards are disjoint within an epoch. An epoch is a whole number
of batches: no batch spans two epochs or holds an image twice. The few images
left over in an epoch change with each epoch's shuffle.

Without drop_remainder (the public code's DataLoader, drop_last=False), the
epoch's images left over form one more, partial global batch: it is padded to
the full size with copies of real pairs marked valid=False, which come after
all the real rows of the global batch (so a step's real rows are a prefix of
it) and which the train step gives no weight. Every batch then has one shape,
so the step compiles once, and the shards stay in lockstep.

Batches are dicts of numpy arrays (B images = B pairs = 2B sequences):
  image            uint8[B, H, W, 3]
  image_index      int32[B]       index of the record in the split
  input_ids, segment_ids, token_mask, labels   int32[B, 2, L]  (see tokenizer.build_sequence)
  emotion          int32[B, 2]    emotion index of anchor and partner
  annotation_index int32[B, 2]    which of the image's annotations
  valid            bool[B]        False on the padding rows (only without drop_remainder)
"""


import typing

import numpy as np

from sevlm_jax import errors
from sevlm_jax.data import batching
from sevlm_jax.data import records

if typing.TYPE_CHECKING:
  import grain  # imported where first used (train_loader): importing this module needs no grain

_TAG_ORDER, _TAG_CYCLE, _TAG_PARTNER = 0, 1, 2  # keep the three random streams apart
PAIR_ANCHORS = ("cycle", "last")


def training_images(ready_dir, split: str = "train") -> np.ndarray:
  """Indices of the split's records with at least two distinct emotions."""
  annotations = records.load_annotations(ready_dir, split)
  return np.asarray([r["index"] for r in annotations if len(set(r["emotions"])) >= 2], np.int64)


def choose_pair(emotions, *, seed: int, epoch: int, image_index: int, anchor_rule: str = "cycle"
                ) -> tuple[int, int]:
  """(anchor, partner) annotation positions of one image in one epoch; emotions must differ.

  anchor_rule: "cycle" (each annotation in turn over the epochs) or "last" (always the last one,
  as the public code trains).
  """
  n = len(emotions)
  if anchor_rule == "last":
    anchor = n - 1
  elif anchor_rule == "cycle":
    anchor = int(np.random.default_rng([seed, _TAG_CYCLE, image_index]).permutation(n)[epoch % n])
  else:
    raise ValueError(f"anchor_rule must be one of {PAIR_ANCHORS}, got {anchor_rule!r}")
  partners = [k for k in range(n) if emotions[k] != emotions[anchor]]
  if not partners:
    raise ValueError(f"record {image_index} has a single emotion; it cannot form a training pair")
  rng = np.random.default_rng([seed, _TAG_PARTNER, epoch, image_index])
  return anchor, partners[int(rng.integers(len(partners)))]


class PairExample:
  """Global element index -> one training pair (a grain MapWithIndex callable; picklable)."""

  def __init__(self, source, images: np.ndarray, tokenizer, *, max_len: int, seed: int,
               shard_index: int, shard_count: int, multiple_of: int = 1, anchor_rule: str = "cycle",
               pad_last: bool = False):
    self.source, self.images, self.tokenizer = source, np.asarray(images, np.int64), tokenizer
    self.max_len, self.seed, self.anchor_rule = max_len, seed, anchor_rule
    self.shard_index, self.shard_count = shard_index, shard_count
    self.block = multiple_of  # consecutive elements of a shard that are consecutive in the order
    self.pad_last = pad_last  # positions past the images are padding (marked valid=False)
    if pad_last:  # every image once, in global batches of shard_count blocks, the last padded
      self.per_epoch = -(-len(self.images) // (shard_count * multiple_of)) * multiple_of
    else:
      per_shard = len(self.images) // shard_count
      self.per_epoch = per_shard - per_shard % multiple_of  # elements of this shard per epoch
    self._order = (None, None)  # (epoch, permutation), one attribute so threads see a consistent pair

  def __getstate__(self):
    return dict(self.__dict__, _order=(None, None))

  def image_for(self, index: int) -> tuple[int, int]:
    """(epoch, record index) of global element `index` of this shard (a padding element: the
    record of a real one)."""
    epoch, j = divmod(int(index), self.per_epoch)
    cached_epoch, order = self._order
    if cached_epoch != epoch:
      order = np.random.default_rng([self.seed, _TAG_ORDER, epoch]).permutation(len(self.images))
      self._order = (epoch, order)
    position = self.position_of(j)
    return epoch, int(self.images[order[position % len(order)]])

  def position_of(self, j: int) -> int:
    """Place in the epoch's order of this shard's element j of the epoch (>= the number of
    images: padding)."""
    block, offset = divmod(j, self.block)
    return (block * self.shard_count + self.shard_index) * self.block + offset

  def __call__(self, index: int, _=None) -> dict:
    epoch, r = self.image_for(index)
    rec = self.source[r]
    a, b = choose_pair(rec["emotions"], seed=self.seed, epoch=epoch, image_index=r,
                       anchor_rule=self.anchor_rule)
    seqs = [self.tokenizer.build_sequence(rec["emotions"][k], rec["utterances"][k], self.max_len)
            for k in (a, b)]
    out = {k: np.stack([s[k] for s in seqs]) for k in seqs[0]}
    out["image"] = rec["image"]
    out["image_index"] = np.int32(r)
    out["emotion"] = np.asarray([rec["emotions"][a], rec["emotions"][b]], np.int32)
    out["annotation_index"] = np.asarray([a, b], np.int32)
    if self.pad_last:
      out["valid"] = np.bool_(self.position_of(int(index) % self.per_epoch) < len(self.images))
    return out


def _default_shard(shard_index, shard_count) -> tuple[int, int]:
  if shard_index is None or shard_count is None:
    import jax  # only when sharding by process; the rest of the module needs no JAX
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} must lie in [0, shard_count={shard_count})")
  return int(shard_index), int(shard_count)


def train_loader(ready_dir, tokenizer, *, batch_size: int, max_len: int, seed: int, num_epochs: int | None = None,
                 worker_count: int = 0, shard_index: int | None = None, shard_count: int | None = None,
                 drop_remainder: bool = True, split: str = "train", read_threads: int = 4,
                 pair_anchor: str = "cycle") -> "grain.IterDataset":
  """grain IterDataset of training-pair batches; iter() gives a checkpointable iterator.

  batch_size is this shard's part of a step's batch (the global batch / shard_count).
  num_epochs None repeats forever. worker_count > 0 decodes in that many
  processes (absl flags must be parsed: automatic under app.run). The
  iterator's get_state()/set_state() (or grain's Orbax handler) restore it.
  pair_anchor: which annotation anchors each pair ("cycle" or "last"; see the module docstring).
  drop_remainder False: each epoch's last global batch is partial, padded (the 'valid' field).
  """
  if batch_size <= 0 or max_len <= 0:
    raise ValueError(f"batch_size and max_len must be positive, got {batch_size}, {max_len}")
  if pair_anchor not in PAIR_ANCHORS:
    raise ValueError(f"pair_anchor must be one of {PAIR_ANCHORS}, got {pair_anchor!r}")
  grain_lib = errors.optional_import("grain", "training's input pipeline")
  shard_index, shard_count = _default_shard(shard_index, shard_count)
  source = records.load_split(ready_dir, split)
  images = training_images(ready_dir, split)
  # An epoch is a whole number of batches, so no batch spans two epochs and no real image
  # appears twice in a batch (the contrastive loss takes other images as negatives).
  example = PairExample(source, images, tokenizer, max_len=max_len, seed=seed, shard_index=shard_index,
                        shard_count=shard_count, multiple_of=batch_size, anchor_rule=pair_anchor,
                        pad_last=not drop_remainder)
  if example.per_epoch == 0:
    raise ValueError(f"{ready_dir} split {split!r} has {len(images)} images with two distinct emotions "
                     f"({len(images) // shard_count} per shard of {shard_count}), too few for batch_size "
                     f"{batch_size}")
  ds = grain_lib.MapDataset.range(example.per_epoch).repeat(num_epochs)
  ds = ds.map_with_index(example)
  ds = ds.batch(batch_size, drop_remainder=True)  # per_epoch is a multiple of batch_size
  ids = ds.to_iter_dataset(grain_lib.ReadOptions(num_threads=read_threads,
                                                 prefetch_buffer_size=2 * batch_size))
  if worker_count > 0:
    ids = ids.mp_prefetch(grain_lib.MultiprocessingOptions(num_workers=worker_count))
  return ids


def steps_per_epoch(ready_dir, *, batch_size: int, shard_count: int = 1, split: str = "train",
                    drop_remainder: bool = True) -> int:
  """Batches per epoch per shard (an epoch = each training image once): the full ones, or with
  drop_remainder False also the partial last one (ceil), as train_loader gives them."""
  images = len(training_images(ready_dir, split))
  if not drop_remainder:
    return -(-images // (shard_count * batch_size))
  return (images // shard_count) // batch_size


def _read_images(source, image_index: np.ndarray, size: int) -> np.ndarray:
  """uint8[len(image_index), size, size, 3]; rows with index -1 (padding) stay black."""
  image = np.zeros((len(image_index), size, size, 3), np.uint8)
  for k, r in enumerate(image_index):
    if r >= 0:
      image[k] = source[int(r)]["image"]
  return image


def eval_batch_parts(ready_dir, split: str, *, batch_size: int, part_index: int = 0,
                     part_count: int = 1):
  """The images of a split in order, in global batches of batch_size (the last one padded),
  each cut into part_count contiguous parts of which only part part_index's images are read.

  Yields {'image': uint8[batch_size // part_count, H, W, 3] (this part's rows), 'image_index':
  int32[batch_size] (-1 on padding) and 'valid': bool[batch_size] (the whole global batch,
  which every part needs to read the gathered outputs)}. One process per part: together they
  see the batches of part_count=1, whatever their number.
  """
  if batch_size <= 0 or batch_size % part_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of part_count {part_count}")
  if not 0 <= part_index < part_count:
    raise ValueError(f"part_index {part_index} must lie in [0, part_count={part_count})")
  source = records.load_split(ready_dir, split)
  size = int(records.load_meta(ready_dir)["image_size"])
  rows = batch_size // part_count
  for start, stop in batching.batch_bounds(len(source), batch_size):
    image_index = batching.pad_rows(np.arange(start, stop, dtype=np.int32), batch_size, fill=-1)
    part = image_index[part_index * rows:(part_index + 1) * rows]
    yield {"image": _read_images(source, part, size), "image_index": image_index,
           "valid": image_index >= 0}
