"""What every annotation reader (artemis.py, sevlm_json.py) produces: the paintings with their
valid annotations, and a Report of what was skipped or repaired on the way.

A painting's identity is its (art style, painting) pair in Unicode normal form NFC (painting_key):
the same name written in NFC and in NFD (decomposed accents) is one painting, so it gets one
record and one split, never two. Readers merge such spellings and report them (report_merged).
"""

import collections
import dataclasses
import json
import unicodedata

import numpy as np


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

@dataclasses.dataclass
class Painting:
  """One image and its valid annotations, as read from the input."""
  image_id: str
  art_style: str
  painting: str
  image_rel: str                      # path of the image relative to the images folder
  split_key: str                      # ArtEmis's unique id: art_style + painting, as first written
  emotions: list = dataclasses.field(default_factory=list)
  utterances: list = dataclasses.field(default_factory=list)
  rows: int = 0                       # input rows naming it, valid or not
  repetition: int | None = None       # max of the repetition column, when given
  histogram: np.ndarray | None = None  # SEVLM JSON's origin_emotion_distribution
  split: str | None = None            # preassigned (SEVLM JSON per split, ArtEmis's preprocessed CSV)
  sources: list = dataclasses.field(default_factory=list)  # per annotation: (file, line) of a CSV row
  token_counts: list = dataclasses.field(default_factory=list)  # per annotation, after 'artemis' text
  spellings: list = dataclasses.field(default_factory=list)  # the distinct "style/name" forms read


# Where one painting was given two splits (its spellings in different splits of ArtEmis's
# preprocessed CSV, or in two per-split SEVLM JSON files), the first of these wins: a painting
# anyone evaluates on stays there, and training never sees it.
SPLIT_PRECEDENCE = ("test", "val", "rest", "train")


def nfc(text: str) -> str:
  return unicodedata.normalize("NFC", text)


def painting_key(art_style: str, painting: str) -> str:
  """A painting's identity: "art_style/painting" in Unicode normal form NFC."""
  return f"{nfc(art_style)}/{nfc(painting)}"


def add_spelling(p: Painting, spelling: str) -> None:
  if spelling not in p.spellings:
    p.spellings.append(spelling)


def merged_split(given: list) -> str:
  """The one split of a painting given the splits in `given` (SPLIT_PRECEDENCE decides)."""
  return min(given, key=SPLIT_PRECEDENCE.index)


def report_merged(paintings: dict, report: Report) -> None:
  """Count the paintings read under more than one Unicode spelling (totals.paintings_merged)."""
  merged = [p for p in paintings.values() if len(p.spellings) > 1]
  report.totals["paintings_merged"] = len(merged)
  for p in merged:
    report.repair("unicode_names_merged", image_id=p.image_id, spellings=list(p.spellings),
                  fix="one painting: the rows of every Unicode normal form of its name are merged")


def stripped(value) -> str:
  """A field's text without surrounding space ('' for a missing field)."""
  return "" if value is None else str(value).strip()


def check_disjoint(split_records: dict) -> None:
  """Every painting (by its NFC key) is in one record of one split of {split: records}; a painting
  twice would put evaluation images in training, and means a bug in preparation."""
  seen = {}
  for split, recs in split_records.items():
    for rec in recs:
      key = painting_key(rec["art_style"], rec["painting"])
      if key in seen:
        raise RuntimeError(f"painting {key} is in two records of the prepared data set ({seen[key]}, "
                           f"{split} {rec['image_id']!r}): the readers must merge it")
      seen[key] = f"{split} {rec['image_id']!r}"
