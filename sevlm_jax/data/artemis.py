"""ArtEmis CSVs: annotation files -> paintings with their valid annotations, and a report.

The ArtEmis formats (their entries in formats.py, which detects and dispatches every format):
  v1          ArtEmis v1.0 CSV: art_style, painting, emotion, utterance, repetition;
              images at {images}/{art_style}/{painting}.jpg
  v2          ArtEmis v2.0 "combined" CSV(s): the v1 columns plus anchor_painting / version
              (extra columns are ignored; several CSVs are concatenated)
  artemis_preprocessed
              the artemis_preprocessed.csv that ArtEmis's preprocess_artemis_data.py writes:
              its utterance_spelled text and its split column are used as given (detected by
              those two columns)
Every reader gives Paintings and fills a Report (annotations.py); sevlm_json.py reads the public
SEVLM code's JSON.

Utterances are kept as written; artemis_text.py then strips them ('raw') or applies ArtEmis's
preprocessing for deep nets ('artemis': spelled tokens, and once the split is known, rows under 5
tokens or over the train split's 95th length percentile dropped).

Nothing is dropped silently: rows with an unknown emotion or an empty utterance, rows without
art_style/painting and rows the length filters drop are counted in the Report with file, line
and value. The whole run (splits, images, the ready data set) is prepare.py's.
"""

import csv

from sevlm_jax import vocab
from sevlm_jax.data import splits
from sevlm_jax.data.annotations import Painting, Report, stripped
from sevlm_jax.errors import InputError

_REQUIRED_COLUMNS = ("art_style", "painting", "emotion", "utterance")
# ArtEmis's own preprocessed CSV: its text and its split are used as given.
_PREPROCESSED_COLUMNS = ("art_style", "painting", "emotion", "utterance_spelled", "split")


def is_preprocessed_csv(paths) -> bool:
  """ArtEmis's artemis_preprocessed.csv: the first file has utterance_spelled and split columns."""
  return {"utterance_spelled", "split"} <= _header(paths[0])


def is_v2_csv(paths) -> bool:
  """ArtEmis v2.0: several CSVs (v1 + the contrastive ones), or version / anchor_painting columns."""
  return len(paths) > 1 or bool(_header(paths[0]) & {"version", "anchor_painting"})


def _header(path) -> set:
  """The lower-case column names of a CSV file."""
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      header = next(csv.reader(f), [])
  except UnicodeDecodeError as e:
    raise _not_utf8(path, e) from None
  return {h.strip().lower() for h in header}


def _not_utf8(path, error: UnicodeDecodeError) -> InputError:
  return InputError(f"{path}: not UTF-8 text ({error}); ArtEmis CSVs are UTF-8, re-save the file "
                    "as UTF-8")


def read_artemis_csv(paths, report: Report, preprocessed: bool = False) -> dict:
  """image_id -> Painting from ArtEmis v1 / v2 CSV files, or (preprocessed) ArtEmis's own
  artemis_preprocessed.csv, whose utterance_spelled and split columns are taken as given."""
  paintings = {}
  for path in paths:
    try:
      _read_one_csv(path, paintings, report, preprocessed)
    except UnicodeDecodeError as e:
      raise _not_utf8(path, e) from None
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
    style, name = stripped(row.get("art_style")), stripped(row.get("painting"))
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
    rep = stripped(row.get("repetition"))
    if rep:
      try:
        p.repetition = max(p.repetition or 0, int(float(rep)))
      except ValueError:
        report.repair("bad_repetition_value", file=str(path), line=line, image_id=image_id, value=rep,
                      fix="value ignored; the painting's other rows or its row count decide")
    emotion_text = stripped(row.get("emotion"))
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
      _preassign_split(path, line, p, stripped(row.get("split")))
    p.emotions.append(emotion)
    p.utterances.append(raw)
    p.sources.append((str(path), line))


def _preassign_split(path, line: int, p: Painting, split: str) -> None:
  """The split column of ArtEmis's preprocessed CSV: one known split per painting."""
  if split not in splits.SPLITS:
    raise InputError(f"{path}: line {line} has split {split!r}; ArtEmis's preprocessed CSV uses "
                     f"{', '.join(splits.SPLITS)}")
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
