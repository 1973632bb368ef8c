"""The input formats of annotation files, one registry entry each: detection, reading, and what
the format means for preparation.

The config's data.source names a format by its entry's config_source, prepare.py's --format by
its name (recorded as meta.json's source.format); prepare.py asks the entry whether ArtEmis's text
preprocessing applies and what a painting's histogram counts. Adding a format: its reader (in
artemis.py for another ArtEmis CSV, else a module of its own like sevlm_json.py), an entry in
FORMATS, and the data.source comment in configs/sevlm.py.

Two config sources are no input format: 'ready' names an already prepared data set, and 'demo'
the data set demo.py generates (it writes ArtEmis v1 files and prepares them as 'v1').
"""

import dataclasses
import functools
import os
from typing import Callable

from sevlm_jax import io_utils
from sevlm_jax.data import annotations
from sevlm_jax.data import artemis
from sevlm_jax.data import sevlm_json

AUTO = "auto"  # --format: detect the format from the files
READY = "ready"
DEMO = "demo"
TFDS = "tfds"  # a TFDS build of the data set (tfds_artemis.py), read by tfds_source.py


@dataclasses.dataclass(frozen=True)
class Format:
  """One input format of annotation files."""
  name: str  # prepare's --format value; meta.json's source.format
  config_source: str  # the config's data.source value for it
  detect: Callable[[list], bool]  # auto-detection: do these annotation files look like it?
  read: Callable  # (paths, or {split: path} where split_inputs; Report) -> {image_id: Painting}
  preprocesses_text: bool  # data.text_preprocessing applies; otherwise its text is used as given
  split_inputs: bool = False  # also one file per split, each file's paintings then in its split
  histogram: str = "the kept annotations"  # what a painting's histogram counts (meta.json)


# In the order auto-detection asks them, the first to accept the files wins: a .json file is
# never read as a CSV, ArtEmis's preprocessed CSV has v1 or v2 columns too, and v1 takes any CSV.
FORMATS = {f.name: f for f in (
    Format("sevlm_json", "sevlm_json", sevlm_json.is_sevlm_json, sevlm_json.read_sevlm_json_inputs,
           preprocesses_text=False, split_inputs=True,
           histogram="origin_emotion_distribution where given, else the kept annotations"),
    Format("artemis_preprocessed", "artemis_preprocessed", artemis.is_preprocessed_csv,
           functools.partial(artemis.read_artemis_csv, preprocessed=True), preprocesses_text=False),
    Format("v2", "artemis_v2", artemis.is_v2_csv, artemis.read_artemis_csv, preprocesses_text=True),
    Format("v1", "artemis_v1", lambda paths: True, artemis.read_artemis_csv, preprocesses_text=True),
)}
CHOICES = (AUTO, *FORMATS)  # prepare's --format
CONFIG_SOURCES = (*(f.config_source for f in FORMATS.values()), READY, DEMO, TFDS)  # data.source


def for_config_source(source: str) -> Format | None:
  """The format data.source names (None for 'ready', 'demo', 'tfds' or an unknown name)."""
  return next((f for f in FORMATS.values() if f.config_source == source), None)


def for_files(named: Format, paths) -> Format:
  """The format to read `paths` in where the config's data.source names `named`.

  ArtEmis's preprocessed CSV has every column of a raw v1 / v2 CSV, so data.source=artemis_v1
  (the default) or artemis_v2 could read it as raw, throwing away the split and the text ArtEmis
  published and re-splitting it. It is read as what it is instead, as the prepare command's
  --format=auto does: nobody gives the preprocessed file to get another split of it, and a
  refusal would only make the default config fail on ArtEmis's own file."""
  preprocessed = FORMATS["artemis_preprocessed"]
  if named.name in ("v1", "v2") and preprocessed.detect(list(paths)):
    return preprocessed
  return named


def detect_format(inputs) -> str:
  """The name of the first format in FORMATS whose detect accepts the annotation files (a list
  of paths, or {split: path})."""
  paths = _paths(inputs)
  return next(f.name for f in FORMATS.values() if f.detect(paths))


def read_annotations(inputs, fmt: str, report: annotations.Report) -> tuple[dict, Format, list]:
  """(image_id -> Painting, the Format, the input paths) of annotation file(s) in format `fmt`
  ('auto': detected).

  CSV utterances are as written, surrounding space included: artemis_text.preprocess_text
  strips them or applies ArtEmis's preprocessing (prepare.py calls it)."""
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  paths = _paths(inputs)
  if not paths:
    raise ValueError("no annotation file given")
  for p in paths:
    io_utils.check_path(p, "file", "annotation file")
  if fmt == AUTO:
    fmt = detect_format(paths)
  if fmt not in FORMATS:
    raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(CHOICES)}")
  entry = FORMATS[fmt]
  if isinstance(inputs, dict) and not entry.split_inputs:
    per_split = " or ".join(f.name for f in FORMATS.values() if f.split_inputs)
    raise ValueError(f"per-split inputs are only supported for the {per_split} format")
  return entry.read(inputs if entry.split_inputs else paths, report), entry, paths


def _paths(inputs) -> list:
  return list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
