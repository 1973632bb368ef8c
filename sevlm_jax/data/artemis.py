"""ArtEmis ingestion: annotation files -> paintings with their valid annotations, and a report.

Inputs (SEVLM.md section 6):
  v1          ArtEmis v1.0 CSV: art_style, painting, emotion, utterance, repetition;
              images at {images}/{art_style}/{painting}.jpg
  v2          ArtEmis v2.0 "combined" CSV(s): the v1 columns plus anchor_painting / version
              (extra columns are ignored; several CSVs are concatenated)
  sevlm_json  the public SEVLM JSON {image_id: {emotions, explanations, image_name,
              origin_emotion_distribution}}, one file (split here) or one file per split
  artemis_preprocessed
              the artemis_preprocessed.csv that ArtEmis's preprocess_artemis_data.py writes:
              its utterance_spelled text and its split column are used as given (detected by
              those two columns)

Utterances are kept as written; artemis_text.py then strips them ('raw') or applies ArtEmis's
preprocessing for deep nets ('artemis': spelled tokens, and once the split is known, rows under 5
tokens or over the train split's 95th length percentile dropped).

Nothing is dropped silently: rows with an unknown emotion or an empty utterance, rows without
art_style/painting and rows the length filters drop are counted in the Report with file, line
and value. The whole run (splits, images, the ready data set) is prepare.py's.
"""

import collections
import csv
import dataclasses
import json
import os
import pathlib

import numpy as np

from sevlm_jax import vocab
from sevlm_jax.data import records
from sevlm_jax.errors import InputError

FORMATS = ("auto", "v1", "v2", "sevlm_json", "artemis_preprocessed")
_REQUIRED_COLUMNS = ("art_style", "painting", "emotion", "utterance")
# ArtEmis's own preprocessed CSV: its text and its split are used as given.
_PREPROCESSED_COLUMNS = ("art_style", "painting", "emotion", "utterance_spelled", "split")


# ----------------------------------------------------------------------------- report

class Report:
  """What ingestion skipped or repaired, with enough detail to find each case."""

  def __init__(self):
    self.skipped = collections.OrderedDict()
    self.repaired = collections.OrderedDict()
    self.totals = collections.Counter()

  def skip(self, reason: str, lost_annotations: int = 1, **item) -> None:
    entry = self.skipped.setdefault(reason, {"count": 0, "annotations_lost": 0, "items": []})
    entry["count"] += 1
    entry["annotations_lost"] += lost_annotations
    entry["items"].append(item)

  def repair(self, reason: str, **item) -> None:
    entry = self.repaired.setdefault(reason, {"count": 0, "items": []})
    entry["count"] += 1
    entry["items"].append(item)

  def to_json(self) -> dict:
    return {"totals": dict(self.totals), "skipped": self.skipped, "repaired": self.repaired}

  def summary(self, max_examples: int = 3) -> str:
    t = self.totals
    lines = [f"read {t['annotations_read']} annotations of {t['paintings_read']} paintings; kept "
             f"{t['annotations_kept']} annotations of {t['paintings_kept']} paintings"]
    for reason, entry in self.skipped.items():
      lines.append(f"skipped {entry['count']} x {reason} ({entry['annotations_lost']} annotations lost), e.g.:")
      lines += [f"    {json.dumps(item, ensure_ascii=False)}" for item in entry["items"][:max_examples]]
    for reason, entry in self.repaired.items():
      lines.append(f"repaired {entry['count']} x {reason}, e.g.:")
      lines += [f"    {json.dumps(item, ensure_ascii=False)}" for item in entry["items"][:max_examples]]
    if not self.skipped and not self.repaired:
      lines.append("nothing skipped or repaired")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- reading annotations

@dataclasses.dataclass
class Painting:
  """One image and its valid annotations, as read from the input."""
  image_id: str
  art_style: str
  painting: str
  image_rel: str                      # path of the image relative to the images folder
  split_key: str                      # ArtEmis's unique id: art_style + painting
  emotions: list = dataclasses.field(default_factory=list)
  utterances: list = dataclasses.field(default_factory=list)
  rows: int = 0                       # input rows naming it, valid or not
  repetition: int | None = None       # max of the repetition column, when given
  histogram: np.ndarray | None = None  # SEVLM JSON's origin_emotion_distribution
  split: str | None = None            # preassigned (SEVLM JSON per split, ArtEmis's preprocessed CSV)
  sources: list = dataclasses.field(default_factory=list)  # per annotation: (file, line) of a CSV row
  token_counts: list = dataclasses.field(default_factory=list)  # per annotation, after 'artemis' text


def _clean(text) -> str:
  return "" if text is None else str(text).strip()


def detect_format(inputs) -> str:
  """'sevlm_json' for .json inputs, 'artemis_preprocessed' for a CSV with utterance_spelled and split
  columns, 'v2' for CSVs with version/anchor_painting columns or several CSVs, else 'v1'."""
  paths = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
  if any(str(p).lower().endswith(".json") for p in paths):
    return "sevlm_json"
  try:
    with open(paths[0], newline="", encoding="utf-8-sig") as f:
      header = next(csv.reader(f), [])
  except UnicodeDecodeError as e:
    raise InputError(f"{paths[0]}: not UTF-8 text ({e}); ArtEmis CSVs are UTF-8, re-save the file "
                     "as UTF-8") from None
  names = {h.strip().lower() for h in header}
  if {"utterance_spelled", "split"} <= names:
    return "artemis_preprocessed"
  return "v2" if len(paths) > 1 or names & {"version", "anchor_painting"} else "v1"


def read_artemis_csv(paths, report: Report, preprocessed: bool = False) -> dict:
  """image_id -> Painting from ArtEmis v1 / v2 CSV files, or (preprocessed) ArtEmis's own
  artemis_preprocessed.csv, whose utterance_spelled and split columns are taken as given."""
  paintings = {}
  for path in paths:
    try:
      _read_one_csv(path, paintings, report, preprocessed)
    except UnicodeDecodeError as e:
      raise InputError(f"{path}: not UTF-8 text ({e}); ArtEmis CSVs are UTF-8, re-save the file as "
                       "UTF-8") from None
  return paintings


def _read_one_csv(path, paintings: dict, report: Report, preprocessed: bool) -> None:
  """Add the rows of one ArtEmis CSV to `paintings`."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f, strict=True)
    done = [1]  # the last line of the last row read (the header's at first)
    try:
      _read_rows(path, reader, paintings, report, done, preprocessed)
    except csv.Error as e:  # strict parsing: a stray quote is an error, not a swallowed row
      what = ("opens a quoted field that is never closed" if "end of data" in str(e)
              else "is malformed")
      raise InputError(f"{path}: the row at line {done[0] + 1} {what} (csv: {e}); fix the "
                       "quoting there") from None


def _read_rows(path, reader: csv.DictReader, paintings: dict, report: Report, done: list,
               preprocessed: bool) -> None:
  """The rows of one CSV reader into `paintings`; done[0] follows the last line read."""
  columns = [c.strip().lower() for c in (reader.fieldnames or [])]
  required = _PREPROCESSED_COLUMNS if preprocessed else _REQUIRED_COLUMNS
  missing = [c for c in required if c not in columns]
  if missing:
    what = ("ArtEmis's artemis_preprocessed.csv has" if preprocessed
            else "An ArtEmis CSV needs")
    raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}. "
                     f"{what} {', '.join(required)} (and usually repetition)")
  text_column = "utterance_spelled" if preprocessed else "utterance"
  reader.fieldnames = columns
  for row in reader:
    line = _check_row_shape(path, row, reader.line_num, len(columns))
    done[0] = reader.line_num
    report.totals["annotations_read"] += 1
    style, name = _clean(row.get("art_style")), _clean(row.get("painting"))
    if not style or not name:
      report.skip("missing_art_style_or_painting", file=str(path), line=line,
                  art_style=style, painting=name)
      continue
    image_id = f"{style}/{name}"
    p = paintings.get(image_id)
    if p is None:
      p = paintings[image_id] = Painting(image_id=image_id, art_style=style, painting=name,
                                         image_rel=f"{style}/{name}.jpg", split_key=style + name)
    p.rows += 1
    rep = _clean(row.get("repetition"))
    if rep:
      try:
        p.repetition = max(p.repetition or 0, int(float(rep)))
      except ValueError:
        report.repair("bad_repetition_value", file=str(path), line=line, image_id=image_id, value=rep,
                      fix="value ignored; the painting's other rows or its row count decide")
    emotion_text = _clean(row.get("emotion"))
    try:
      emotion = vocab.emotion_index(emotion_text)
    except ValueError:
      report.skip("unknown_emotion", file=str(path), line=line, image_id=image_id, value=emotion_text)
      continue
    raw = row.get(text_column) or ""  # as written: ArtEmis matches its sentence table on it
    if not raw.strip():
      report.skip("empty_utterance", file=str(path), line=line, image_id=image_id)
      continue
    if preprocessed:
      _preassign_split(path, line, p, _clean(row.get("split")))
    p.emotions.append(emotion)
    p.utterances.append(raw)
    p.sources.append((str(path), line))


def _preassign_split(path, line: int, p: Painting, split: str) -> None:
  """The split column of ArtEmis's preprocessed CSV: one known split per painting."""
  if split not in records.SPLITS:
    raise InputError(f"{path}: line {line} has split {split!r}; ArtEmis's preprocessed CSV uses "
                     f"{', '.join(records.SPLITS)}")
  if p.split is not None and p.split != split:
    raise InputError(f"{path}: line {line} puts {p.image_id} in split {split!r}, an earlier row in "
                     f"{p.split!r}; a painting belongs to one split, fix the split column")
  p.split = split


_MAX_FIELD_BREAKS = 2  # an utterance may hold a quoted line break or two; more is a quote left open


def _check_row_shape(path, row: dict, end_line: int, num_columns: int) -> int:
  """Strict CSV: a row has the header's fields, and a quoted field never swallows other rows.

  Returns the row's first line (csv counts the lines it read, so a row with line breaks in a
  quoted field ends at end_line)."""
  breaks = sum(v.count("\n") for v in row.values() if isinstance(v, str))
  start = end_line - breaks
  if breaks > _MAX_FIELD_BREAKS:
    raise InputError(f"{path}: the row at line {start} has a quoted field running over {breaks + 1} "
                     f"lines (to line {end_line}): a double quote there is not closed; fix the quoting")
  if None in row or any(v is None for v in row.values()):
    got = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
    raise InputError(f"{path}: line {start} has {got} fields, the header {num_columns}; fix that "
                     "line (a comma in an unquoted utterance?)")
  return start


def _style_and_name(image_name: str) -> tuple[str, str]:
  parts = image_name.replace("\\", "/").split("/")
  stem = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
  return ("/".join(parts[:-1]), stem)


def read_sevlm_json(path, report: Report, split: str | None = None) -> dict:
  """image_id -> Painting from the public SEVLM JSON (optionally all assigned to `split`)."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object {{image_id: {{emotions, explanations, image_name, "
                     f"origin_emotion_distribution}}}}, got {type(data).__name__}")
  paintings = {}
  for key, entry in data.items():
    emotions = entry.get("emotions") if isinstance(entry, dict) else None
    explanations = entry.get("explanations") if isinstance(entry, dict) else None
    image_name = _clean(entry.get("image_name")) if isinstance(entry, dict) else ""
    n_read = len(emotions) if isinstance(emotions, list) else 1
    report.totals["annotations_read"] += n_read
    if (not isinstance(emotions, list) or not isinstance(explanations, list)
        or len(emotions) != len(explanations) or not image_name):
      report.skip("bad_json_entry", lost_annotations=n_read, file=str(path), key=str(key),
                  problem="needs image_name and equally long emotions / explanations lists")
      continue
    style, name = _style_and_name(image_name)
    p = Painting(image_id=str(key), art_style=style, painting=name, image_rel=image_name,
                 split_key=style + name, rows=len(emotions), split=split)
    for pos, (emotion, text) in enumerate(zip(emotions, explanations)):
      try:
        index = int(emotion) if isinstance(emotion, (int, np.integer)) else vocab.emotion_index(str(emotion))
        if not 0 <= index < vocab.NUM_EMOTIONS:
          raise ValueError
      except ValueError:
        report.skip("unknown_emotion", file=str(path), key=str(key), position=pos, value=str(emotion))
        continue
      text = _clean(text)
      if not text:
        report.skip("empty_utterance", file=str(path), key=str(key), position=pos)
        continue
      p.emotions.append(index)
      p.utterances.append(text)
    dist = entry.get("origin_emotion_distribution")
    if dist is not None:
      h = np.asarray(dist, np.float64) if isinstance(dist, list) else np.zeros(0)
      if h.shape == (vocab.NUM_EMOTIONS,) and np.all(h >= 0) and h.sum() > 0:
        p.histogram = (h / h.sum()).astype(np.float32)
      else:
        report.repair("bad_origin_emotion_distribution", file=str(path), key=str(key), value=str(dist)[:200],
                      fix="histogram computed from the entry's emotions")
    paintings[p.image_id] = p
  return paintings


def read_annotations(inputs, fmt: str, report: Report) -> tuple[dict, str, list]:
  """(image_id -> Painting, the format, the input paths) of annotation file(s) in any FORMAT.

  CSV utterances are as written, surrounding space included: artemis_text.preprocess_text
  strips them or applies ArtEmis's preprocessing (prepare.py calls it)."""
  if isinstance(inputs, (str, os.PathLike)):
    inputs = [inputs]
  paths = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
  if not paths:
    raise ValueError("no annotation file given")
  for p in paths:
    if not pathlib.Path(p).is_file():
      raise FileNotFoundError(f"annotation file {p} not found")
  if fmt == "auto":
    fmt = detect_format(inputs)
  if fmt not in FORMATS:
    raise ValueError(f"unknown input format {fmt!r}; expected one of {', '.join(FORMATS)}")
  paintings = {}
  if fmt == "sevlm_json":
    items = inputs.items() if isinstance(inputs, dict) else [(None, p) for p in paths]
    for split, path in items:
      if split is not None and split not in records.SPLITS:
        raise ValueError(f"unknown split {split!r} for {path}; expected one of {', '.join(records.SPLITS)}")
      for key, p in read_sevlm_json(path, report, split).items():
        if key in paintings:
          raise ValueError(f"image_id {key!r} appears in more than one SEVLM JSON file (second: {path})")
        paintings[key] = p
  else:
    if isinstance(inputs, dict):
      raise ValueError("per-split inputs are only supported for the sevlm_json format")
    paintings = read_artemis_csv(paths, report, preprocessed=fmt == "artemis_preprocessed")
  return paintings, fmt, paths


