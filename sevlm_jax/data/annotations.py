"""What every annotation reader (artemis.py, sevlm_json.py) produces: the paintings with their
valid annotations, and a Report of what was skipped or repaired on the way."""

import collections
import dataclasses
import json

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
  split_key: str                      # ArtEmis's unique id: art_style + painting
  emotions: list = dataclasses.field(default_factory=list)
  utterances: list = dataclasses.field(default_factory=list)
  rows: int = 0                       # input rows naming it, valid or not
  repetition: int | None = None       # max of the repetition column, when given
  histogram: np.ndarray | None = None  # SEVLM JSON's origin_emotion_distribution
  split: str | None = None            # preassigned (SEVLM JSON per split, ArtEmis's preprocessed CSV)
  sources: list = dataclasses.field(default_factory=list)  # per annotation: (file, line) of a CSV row
  token_counts: list = dataclasses.field(default_factory=list)  # per annotation, after 'artemis' text


def stripped(value) -> str:
  """A field's text without surrounding space ('' for a missing field)."""
  return "" if value is None else str(value).strip()
