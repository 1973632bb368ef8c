"""On-disk layout of a ready data set, record (de)serialisation, and the reader.

A ready data set is one folder:

  COMPLETE                      marker, written last; readers refuse a folder without it
  meta.json                     counts per split, image_size, source, seed, split rule
  report.json                   everything skipped or repaired during ingestion, and why
  {split}.array_record          one record per image (group_size:1, zstd; random access)
  {split}.annotations.jsonl     the same records without pixels (fast to scan)

for split in SPLITS. A record (msgpack map) holds:

  image_id          str      "{art_style}/{painting}" (or the key of a SEVLM JSON)
  art_style, painting  str
  index             int      position in its split
  image             bytes    uint8 H x W x 3 RGB, with image_shape [H, W, 3]
  emotions          [int]    one per annotation, indices into EMOTIONS
  utterances        [str]    one per annotation (stripped, otherwise as written)
  counts            [int]*9  annotations per emotion: those kept, one per utterance (EA's
                             eval.ea_histogram=kept reads them)
  histogram         [float]*9 normalised emotion histogram (ACC's): meta.json's "histogram" says
                             what it counts (after length filters: every annotation, the
                             dropped ones included; a SEVLM JSON's origin_emotion_distribution)
  dominant_half     int      emotion holding > 0.5 of the histogram, else -1 (public SEVLM code)
  dominant_artemis  int      emotion holding >= half (ArtEmis), ties to the lower index, else -1

`load_split` decodes records to numpy: image uint8[H,W,3], histogram float32[9],
counts int32[9]; the other fields keep their Python types.
"""

import json
import pathlib

import msgpack
import numpy as np

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax.data import record_sequence
from sevlm_jax.data import tfds_source  # a TFDS build (data.source=tfds) is read through it
from sevlm_jax.data.splits import SPLITS  # also read as records.SPLITS

COMPLETE_MARKER = "COMPLETE"
FORMAT_VERSION = 1
WRITER_OPTIONS = "group_size:1,zstd:3"  # group_size 1: each record read on its own (random access)


def _array_record(module: str):
  """array_record's `module`, imported on first use: it has no wheel for Windows, and prediction,
  which reads no data set, runs without it."""
  return errors.optional_import(f"array_record.python.{module}",
                                "the prepared data set of training, data preparation and evaluation")


def encode_record(record: dict) -> bytes:
  """msgpack bytes of a record; `image` may be a uint8[H,W,3] array."""
  rec = dict(record)
  image = np.asarray(rec.pop("image"), np.uint8)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"record {rec.get('image_id')!r}: image must be uint8[H,W,3], got {image.shape}")
  rec["image"] = image.tobytes()
  rec["image_shape"] = list(image.shape)
  rec["histogram"] = [float(x) for x in np.asarray(rec["histogram"], np.float32)]
  rec["counts"] = [int(x) for x in rec["counts"]]
  return msgpack.packb(rec, use_bin_type=True)


def decode_record(data: bytes) -> dict:
  """Inverse of `encode_record`, with numpy arrays for image, histogram and counts."""
  rec = msgpack.unpackb(data, raw=False)
  shape = tuple(rec.pop("image_shape"))
  rec["image"] = np.frombuffer(rec["image"], np.uint8).reshape(shape)
  rec["histogram"] = np.asarray(rec["histogram"], np.float32)
  rec["counts"] = np.asarray(rec["counts"], np.int32)
  return rec


def annotation_view(record: dict) -> dict:
  """JSON-able copy of a record without its pixels."""
  rec = {k: v for k, v in record.items() if k not in ("image", "image_shape")}
  rec["histogram"] = [float(x) for x in np.asarray(rec["histogram"], np.float32)]
  rec["counts"] = [int(x) for x in rec["counts"]]
  return rec


class SplitWriter:
  """Streams records of one split to {split}.array_record and {split}.annotations.jsonl."""

  def __init__(self, folder: pathlib.Path, split: str):
    self.split = split
    self.count = 0
    writer = _array_record("array_record_module").ArrayRecordWriter
    self._writer = writer(str(folder / f"{split}.array_record"), WRITER_OPTIONS)
    self._jsonl = open(folder / f"{split}.annotations.jsonl", "w", encoding="utf-8")

  def write(self, record: dict) -> None:
    record = dict(record, index=self.count)
    self._writer.write(encode_record(record))
    self._jsonl.write(json.dumps(annotation_view(record), ensure_ascii=False) + "\n")
    self.count += 1

  def close(self) -> None:
    self._writer.close()
    self._jsonl.close()


def write_json(path: pathlib.Path, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def mark_complete(tmp: pathlib.Path) -> None:
  """Marks the folder `tmp` a finished ready data set (is_complete), before it is renamed."""
  (tmp / COMPLETE_MARKER).write_text(f"sevlm_jax ready data set, format {FORMAT_VERSION}\n")


def is_complete(ready_dir) -> bool:
  return ((io_utils.as_path(ready_dir) / COMPLETE_MARKER).is_file()
          or tfds_source.is_tfds_dir(ready_dir))


def _check_ready(ready_dir, split=None) -> pathlib.Path:
  ready_dir = io_utils.as_path(ready_dir)  # a local folder, or gs://... (epath)
  if not ready_dir.is_dir():
    raise FileNotFoundError(f"ready data set {ready_dir} does not exist; create it with "
                            "`python -m sevlm_jax.data.prepare` (or sevlm_jax.data.sources.ensure_demo_dataset)")
  if not is_complete(ready_dir):
    raise ValueError(f"{ready_dir} has no {COMPLETE_MARKER} marker: it is not a finished ready data set "
                     "(an interrupted run?). Prepare it again.")
  if split is not None and split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
  return ready_dir


def load_meta(ready_dir) -> dict:
  """meta.json of a ready data set."""
  if tfds_source.is_tfds_dir(ready_dir):
    return tfds_source.load_meta(ready_dir)
  ready_dir = _check_ready(ready_dir)
  return json.loads((ready_dir / "meta.json").read_text(encoding="utf-8"))


def load_report(ready_dir) -> dict:
  """report.json of a ready data set (what was skipped or repaired)."""
  if tfds_source.is_tfds_dir(ready_dir):
    return tfds_source.load_report(ready_dir)
  ready_dir = _check_ready(ready_dir)
  return json.loads((ready_dir / "report.json").read_text(encoding="utf-8"))


def load_annotations(ready_dir, split: str) -> list[dict]:
  """All records of a split without pixels (image_id, emotions, utterances, histogram, ...)."""
  if tfds_source.is_tfds_dir(ready_dir):
    return tfds_source.load_annotations(ready_dir, split)
  ready_dir = _check_ready(ready_dir, split)
  with (ready_dir / f"{split}.annotations.jsonl").open(encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


class ReadySplit(record_sequence.RecordSequence):
  """Random-access sequence of decoded records of one split (also a grain data source)."""

  def __init__(self, ready_dir, split: str):
    ready_dir = _check_ready(ready_dir, split)
    self.ready_dir, self.split = ready_dir, split
    # array_record reads local files only: a data set on an object store is read from a local
    # copy of the split's file (downloaded once, io_utils.local_copy).
    path = io_utils.local_copy(ready_dir / f"{split}.array_record")
    self._source = _array_record("array_record_data_source").ArrayRecordDataSource([str(path)])
    self._len = len(self._source)

  def _decode(self, raw) -> dict:
    return decode_record(raw)


def load_split(ready_dir, split: str) -> ReadySplit:
  """Records of `split` ('train', 'val', 'test' or 'rest') of a ready data set, random access."""
  if tfds_source.is_tfds_dir(ready_dir):
    return tfds_source.TfdsSplit(ready_dir, split)
  return ReadySplit(ready_dir, split)


def split_utterances(ready_dir, split: str, limit: int | None = None, seed: int = 0):
  """(utterances, emotion indices) of every annotation of a split, e.g. to train a text classifier.

  With limit > 0, a random subset of that many annotations (fixed by `seed`), in record order.
  """
  texts, labels = [], []
  for rec in load_annotations(ready_dir, split):
    texts += rec["utterances"]
    labels += rec["emotions"]
  if limit and limit < len(texts):
    keep = np.sort(np.random.default_rng(seed).choice(len(texts), size=limit, replace=False))
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
  return texts, labels
