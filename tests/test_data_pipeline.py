"""grain pipelines: training pairs (determinism, restore, sharding, cycling) and eval batches."""

import collections

import numpy as np
import pytest
from absl import flags

from sevlm_jax import vocab
from sevlm_jax.data import sources
from sevlm_jax.data import pipeline
from sevlm_jax.data import records
from sevlm_jax.data import tokenizer as tokenizer_lib
import oracles

flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

L = 24


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
  return sources.ensure_demo_dataset(tmp_path_factory.mktemp("demo"), num_images=270, image_size=16)


@pytest.fixture(scope="module")
def tok():
  return tokenizer_lib.load_tokenizer()


def _loader(ready, tok, **kw):
  args = dict(batch_size=8, max_len=L, seed=0, shard_index=0, shard_count=1)
  return pipeline.train_loader(ready, tok, **(args | kw))


def _take(it, n):
  return [next(it) for _ in range(n)]


def _equal(a, b):
  return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_layout_and_content(ready, tok):
  train = records.load_split(ready, "train")
  batch = next(iter(_loader(ready, tok)))
  assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
  for key in ("input_ids", "segment_ids", "token_mask", "labels"):
    assert batch[key].shape == (8, 2, L) and batch[key].dtype == np.int32
  assert batch["emotion"].shape == (8, 2) and batch["image_index"].shape == (8,)
  for b in range(8):
    rec = train[int(batch["image_index"][b])]
    np.testing.assert_array_equal(batch["image"][b], rec["image"])
    e0, e1 = batch["emotion"][b]
    assert e0 != e1, "the two annotations of a pair have different emotions"
    for k in range(2):
      a = int(batch["annotation_index"][b, k])
      assert rec["emotions"][a] == batch["emotion"][b, k]
      want = tok.build_sequence(rec["emotions"][a], rec["utterances"][a], L)
      for key in want:
        np.testing.assert_array_equal(batch[key][b, k], want[key])
  assert (batch["input_ids"][:, :, 0] == vocab.BOS_ID).all()


def test_same_seed_same_batches_other_seed_differs(ready, tok):
  a = _take(iter(_loader(ready, tok)), 5)
  b = _take(iter(_loader(ready, tok)), 5)
  c = _take(iter(_loader(ready, tok, seed=1)), 5)
  assert all(_equal(x, y) for x, y in zip(a, b))
  assert not all(_equal(x, y) for x, y in zip(a, c))


def test_restored_iterator_continues_exactly(ready, tok):
  ds = _loader(ready, tok)
  it = iter(ds)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 30)  # crosses an epoch boundary (about 25 batches per epoch)
  restored = iter(ds)
  restored.set_state(state)
  assert all(_equal(x, y) for x, y in zip(expected, _take(restored, 30)))


def test_multiprocess_workers_match_and_restore(ready, tok):
  plain = _take(iter(_loader(ready, tok)), 6)
  ds = _loader(ready, tok, worker_count=2)
  it = iter(ds)
  first = _take(it, 3)
  state = it.get_state()
  rest = _take(it, 3)
  assert all(_equal(x, y) for x, y in zip(plain, first + rest))
  restored = iter(ds)
  restored.set_state(state)
  assert all(_equal(x, y) for x, y in zip(rest, _take(restored, 3)))


def test_epochs_visit_each_image_once_and_cycle_annotations(ready, tok):
  images = pipeline.training_images(ready)
  train = records.load_annotations(ready, "train")
  assert all(len(set(train[i]["emotions"])) >= 2 for i in images)
  assert len(images) < len(train)  # single-emotion images are left out
  epochs = 5
  ds = _loader(ready, tok, batch_size=len(images), num_epochs=epochs)
  batches = list(iter(ds))
  assert len(batches) == epochs
  anchors = collections.defaultdict(list)
  for batch in batches:
    assert sorted(batch["image_index"].tolist()) == sorted(images.tolist())
    for r, a in zip(batch["image_index"], batch["annotation_index"][:, 0]):
      anchors[int(r)].append(int(a))
  orders = [b["image_index"].tolist() for b in batches]
  assert orders[0] != orders[1], "shuffled anew each epoch"
  for r, seq in anchors.items():  # 5 annotations per demo image: each is the anchor once in 5 epochs
    assert sorted(seq) == list(range(len(train[r]["emotions"])))


def test_last_anchor_is_each_images_last_annotation_every_epoch(ready, tok):
  images = pipeline.training_images(ready)
  train = records.load_annotations(ready, "train")
  ds = _loader(ready, tok, batch_size=len(images), num_epochs=3, pair_anchor="last")
  partners = collections.defaultdict(set)
  for batch in iter(ds):
    for r, (a, b) in zip(batch["image_index"], batch["annotation_index"]):
      emotions = train[int(r)]["emotions"]
      assert a == len(emotions) - 1
      assert emotions[b] != emotions[a]
      partners[int(r)].add(int(b))
  # The partner is still drawn afresh each epoch.
  assert any(len(p) > 1 for p in partners.values())


def test_unknown_pair_anchor_is_refused(ready, tok):
  with pytest.raises(ValueError, match="pair_anchor"):
    _loader(ready, tok, pair_anchor="first")


def test_shards_are_disjoint_and_cover_the_epoch(ready, tok):
  images = pipeline.training_images(ready)
  per_shard = len(images) // 2
  shards = []
  for i in range(2):
    ds = _loader(ready, tok, batch_size=per_shard, num_epochs=1, shard_index=i, shard_count=2)
    (batch,) = list(iter(ds))
    shards.append(set(batch["image_index"].tolist()))
  assert not shards[0] & shards[1]
  assert len(shards[0]) == len(shards[1]) == per_shard
  assert len(set(images.tolist()) - shards[0] - shards[1]) == len(images) % 2
  assert pipeline.steps_per_epoch(ready, batch_size=8, shard_count=2) == per_shard // 8


def test_default_shard_is_the_jax_process(ready, tok):
  ds = pipeline.train_loader(ready, tok, batch_size=4, max_len=L, seed=0)
  assert _equal(next(iter(ds)), next(iter(_loader(ready, tok, batch_size=4))))
  with pytest.raises(ValueError, match="shard_index"):
    _loader(ready, tok, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="too few"):
    _loader(ready, tok, batch_size=10_000, num_epochs=1)


def test_eval_batches_cover_the_split_with_padding(ready):
  n = len(records.load_split(ready, "test"))
  batches = list(oracles.eval_batches(ready, "test", batch_size=16))
  assert len(batches) == -(-n // 16)
  for b in batches:
    assert b["image"].shape == (16, 16, 16, 3) and b["valid"].shape == (16,)
  index = np.concatenate([b["image_index"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(index, np.arange(n))
  last = batches[-1]
  assert (last["image_index"][~last["valid"]] == -1).all() and not last["image"][~last["valid"]].any()
  test = records.load_split(ready, "test")
  np.testing.assert_array_equal(batches[0]["image"][3], test[3]["image"])
  sharded = [list(oracles.eval_batches(ready, "test", batch_size=16, shard_index=i, shard_count=2)) for i in range(2)]
  assert len(sharded[0]) == len(sharded[1])
  got = sorted(int(i) for s in sharded for b in s for i in b["image_index"][b["valid"]])
  assert got == list(range(n))


def test_no_image_twice_in_a_batch(ready, tok):
  images = pipeline.training_images(ready)
  batch_size = 9
  assert len(images) % batch_size  # epochs do not divide into batches evenly
  per_epoch = len(images) // batch_size
  batches = _take(iter(_loader(ready, tok, batch_size=batch_size)), 3 * per_epoch)
  for b in batches:
    assert len(set(b["image_index"].tolist())) == batch_size
  for e in range(3):  # each epoch: distinct images, a whole number of batches
    epoch = np.concatenate([b["image_index"] for b in batches[e * per_epoch:(e + 1) * per_epoch]])
    assert len(set(epoch.tolist())) == len(epoch)
  assert pipeline.steps_per_epoch(ready, batch_size=batch_size) == per_epoch
