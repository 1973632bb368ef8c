"""A TFDS build of the data set (tfds_artemis.py) read as a ready data set: data.source=tfds.

The builder writes the records `prepare` makes into TFDS's array_record files, with prepare's
meta.json and report.json in the data set's metadata.json. This module reads them back into the
records records.py's readers give (same fields, types and order), so training, evaluation and
the report run unchanged on either; records.py hands a TFDS directory to it.

data.ready_dir names the folder TFDS wrote: {data_dir}/artemis/{config}/{version}, or
{data_dir}/artemis/{config} for its newest version. Reading needs tensorflow-datasets (the
[tfds] extra), never TensorFlow.
"""

import functools
import json
import pathlib

import numpy as np

from sevlm_jax import errors
from sevlm_jax.data import record_sequence
from sevlm_jax.data.splits import SPLITS
from sevlm_jax.errors import ConfigError

_TFDS_FILES = ("dataset_info.json", "features.json")  # what every finished TFDS build holds
METADATA = "metadata.json"  # TFDS's file for the builder's metadata: {"meta": ..., "report": ...}
_TEXT = ("image_id", "art_style", "painting")
_INTS = ("index", "dominant_half", "dominant_artemis")


def _tfds():
  return errors.optional_import("tensorflow_datasets", "data.source=tfds", extra="tfds")


def is_tfds_dir(path) -> bool:
  """Whether `path` is one finished TFDS build (a version folder holding its info files)."""
  return all((pathlib.Path(path) / f).is_file() for f in _TFDS_FILES)


def _version_key(name: str) -> tuple:
  return tuple(int(x) if x.isdigit() else -1 for x in name.split("."))


def dataset_dir(path) -> pathlib.Path:
  """The TFDS build `path` names: the build itself, or the newest version folder inside it."""
  path = pathlib.Path(path).expanduser()
  if is_tfds_dir(path):
    return path
  versions = sorted((p for p in path.iterdir() if is_tfds_dir(p)), key=lambda p: _version_key(p.name)
                    ) if path.is_dir() else []
  if not versions:
    raise ConfigError(f"data.ready_dir={str(path)!r} holds no TFDS build of ArtEmis (no "
                      f"{_TFDS_FILES[0]} there or in a version folder inside); build one with "
                      "`python -m sevlm_jax.data.tfds_artemis --manual_dir=DIR --data_dir=DIR` "
                      "and pass its {data_dir}/artemis/{config} folder")
  return versions[-1]


def _metadata(path) -> dict:
  file = pathlib.Path(path) / METADATA
  if not file.is_file():
    raise ValueError(f"{path} is a TFDS data set without {METADATA}: not built by "
                     "sevlm_jax.data.tfds_artemis; build it with that module")
  return json.loads(file.read_text(encoding="utf-8"))


def load_meta(path) -> dict:
  """prepare's meta.json of the build."""
  return _metadata(path)["meta"]


def load_report(path) -> dict:
  """prepare's report.json of the build (what was skipped or repaired)."""
  return _metadata(path)["report"]


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def to_record(example: dict) -> dict:
  """A TFDS example (numpy) -> the record records.decode_record gives (no image if skipped)."""
  rec = {k: _text(example[k]) for k in _TEXT}
  rec.update({k: int(example[k]) for k in _INTS})
  rec["emotions"] = [int(e) for e in example["emotions"]]
  rec["utterances"] = [_text(u) for u in example["utterances"]]
  rec["counts"] = np.asarray(example["counts"], np.int32)
  rec["histogram"] = np.asarray(example["histogram"], np.float32)
  if isinstance(example.get("image"), np.ndarray):
    rec["image"] = np.asarray(example["image"], np.uint8)
  return rec


def _data_source(path, split: str, decoders=None):
  """TFDS's random-access source of a split, or an empty list for a split the build lacks (TFDS
  writes no empty split; meta.json counts it as 0)."""
  builder = _tfds().builder_from_directory(str(path))
  if split not in builder.info.splits:
    return []
  return builder.as_data_source(split, decoders=decoders)


class TfdsSplit(record_sequence.RecordSequence):
  """Random-access sequence of decoded records of one split of a TFDS build (a grain source).

  Picklable for grain's worker processes: each opens the files again."""

  def __init__(self, path, split: str):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    self.ready_dir, self.split = pathlib.Path(path), split
    self._source = _data_source(path, split)
    self._len = len(self._source)

  def __getstate__(self):
    return {"ready_dir": self.ready_dir, "split": self.split}

  def __setstate__(self, state):
    self.__init__(state["ready_dir"], state["split"])

  def _decode(self, raw) -> dict:
    return to_record(raw)


@functools.lru_cache(maxsize=16)
def _annotations(path: str, split: str, _built_ns: int) -> tuple:
  # Cached: several callers scan a split's text per run, and each scan parses every record;
  # _built_ns (the build's info file's mtime) keeps a rebuilt data set from being served stale.
  skip = {"image": _tfds().decode.SkipDecoding()}
  source = _data_source(path, split, decoders=skip)
  return tuple(to_record(source[i]) for i in range(len(source)))


def load_annotations(path, split: str) -> list[dict]:
  """All records of a split without pixels, as records.load_annotations gives them."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
  path = pathlib.Path(path).resolve()
  return [dict(r, counts=[int(x) for x in r["counts"]],
               histogram=[float(x) for x in r["histogram"]], emotions=list(r["emotions"]),
               utterances=list(r["utterances"]))
          for r in _annotations(str(path), split, (path / _TFDS_FILES[0]).stat().st_mtime_ns)]
