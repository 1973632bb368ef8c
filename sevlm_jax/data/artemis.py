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

A painting is its NFC-normalised (art_style, painting) pair (annotations.painting_key): rows naming
it in NFC and in NFD, in one CSV or across v2's CSVs, are one painting, reported as merged. Its
image path and its split key keep the spelling first read, so a CSV written in one form gets
exactly ArtEmis's split. In the preprocessed CSV, a painting whose spellings ArtEmis put in two
splits gets one (annotations.SPLIT_PRECEDENCE), reported as repaired; one spelling in two splits
is an error in the file.

Utterances are kept as written; artemis_text.py then strips them ('raw') or applies ArtEmis's
preprocessing for deep nets ('artemis': spelled tokens, and once the split is known, rows under 5
tokens or over the train split's 95th length percentile dropped).

Nothing is dropped silently: rows with an unknown emotion or an empty utterance, rows without
art_style/painting and rows the length filters drop are counted in the Report with file, line
and value. The whole run (splits, images, the ready data set) is prepare.py's.
"""

import csv

from sevlm_jax import vocab
from sevlm_jax.data import annotations
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
  given_splits = {} if preprocessed else None  # image_id -> {spelling: split} of the split column
  for path in paths:
    try:
      _read_one_csv(path, paintings, report, given_splits)
    except UnicodeDecodeError as e:
      raise _not_utf8(path, e) from None
  if given_splits is not None:
    _settle_given_splits(paintings, given_splits, report)
  annotations.report_merged(paintings, report)
  return paintings


def _read_one_csv(path, paintings: dict, report: Report, given_splits: dict | None) -> None:
  """Add the rows of one ArtEmis CSV to `paintings` (given_splits: collect the split column)."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f, strict=True)
    done = [1]  # the last line of the last row read (the header's at first)
    try:
      _read_rows(path, reader, paintings, report, done, given_splits)
    except csv.Error as e:  # strict parsing: a stray quote is an error, not a swallowed row
      what = ("opens a quoted field that is never closed" if "end of data" in str(e)
              else "is malformed")
      raise InputError(f"{path}: the row at line {done[0] + 1} {what} (csv: {e}); fix the "
                       "quoting there") from None


def _read_rows(path, reader: csv.DictReader, paintings: dict, report: Report, done: list,
               given_splits: dict | None) -> None:
  """The rows of one CSV reader into `paintings`; done[0] follows the last line read."""
  preprocessed = given_splits is not None
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
    p = _painting(paintings, style, name)
    image_id = p.image_id
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
      _given_split(path, line, given_splits.setdefault(image_id, {}), f"{style}/{name}",
                   stripped(row.get("split")))
    p.emotions.append(emotion)
    p.utterances.append(raw)
    p.sources.append((str(path), line))


def _painting(paintings: dict, style: str, name: str) -> Painting:
  """The painting (style, name) names, made on its first row; keyed by its NFC form."""
  image_id = annotations.painting_key(style, name)
  p = paintings.get(image_id)
  if p is None:
    # The image path and the split key keep the spelling read: the image lookup tries both
    # normal forms, and ArtEmis's split sorts the keys as written.
    p = paintings[image_id] = Painting(image_id=image_id, art_style=annotations.nfc(style),
                                       painting=annotations.nfc(name),
                                       image_rel=f"{style}/{name}.jpg", split_key=style + name)
  annotations.add_spelling(p, f"{style}/{name}")
  return p


def _given_split(path, line: int, by_spelling: dict, spelling: str, split: str) -> None:
  """The split column of ArtEmis's preprocessed CSV: one known split per spelling of a painting."""
  if split not in splits.SPLITS:
    raise InputError(f"{path}: line {line} has split {split!r}; ArtEmis's preprocessed CSV uses "
                     f"{', '.join(splits.SPLITS)}")
  earlier = by_spelling.setdefault(spelling, split)
  if earlier != split:
    raise InputError(f"{path}: line {line} puts {spelling} in split {split!r}, an earlier row in "
                     f"{earlier!r}; a painting belongs to one split, fix the split column")


def _settle_given_splits(paintings: dict, given_splits: dict, report: Report) -> None:
  """Each painting's split from the split column; one whose spellings were given different
  splits gets the first in annotations.SPLIT_PRECEDENCE, so no painting sits in two."""
  for image_id, by_spelling in given_splits.items():
    p = paintings[image_id]
    p.split = annotations.merged_split(list(by_spelling.values()))
    if len(set(by_spelling.values())) > 1:
      report.repair("painting_in_two_splits", image_id=image_id, given=by_spelling, kept=p.split,
                    fix="one split for the painting: " + " > ".join(annotations.SPLIT_PRECEDENCE))


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
