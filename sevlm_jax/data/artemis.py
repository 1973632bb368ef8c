"""ArtEmis ingestion: raw annotations + WikiArt images -> a ready data set (records.py).

Inputs (SEVLM.md section 6):
  v1          ArtEmis v1.0 CSV: art_style, painting, emotion, utterance, repetition;
              images at {images}/{art_style}/{painting}.jpg
  v2          ArtEmis v2.0 "combined" CSV(s): the v1 columns plus anchor_painting / version
              (extra columns are ignored; several CSVs are concatenated)
  sevlm_json  the public SEVLM JSON {image_id: {emotions, explanations, image_name,
              origin_emotion_distribution}}, one file (split here) or one file per split

Splits follow ArtEmis's preprocessing exactly: paintings with repetition >= 41
go to their own split 'rest'; the others, keyed by art_style + painting and
sorted, are split 85/5/10 the way sklearn's train_test_split does it with
random_state=2021 (a RandomState permutation; reimplemented here, so the same
CSV gives ArtEmis's own split). Every painting named in the input takes part
in the split, even one dropped later for a bad image, so one bad file never
moves other paintings between splits.

Per painting: all its annotations, the 9-bin counts and normalised histogram,
and the dominant emotion by two rules (-1 when there is none):
  dominant_half     histogram > 0.5 (the public SEVLM code)
  dominant_artemis  histogram >= 0.5 (ArtEmis's has_emotion_max_dominance); a tie, which
                    can only be two emotions at exactly half, goes to the lower index in
                    EMOTIONS order (ArtEmis leaves it to pandas' value_counts ordering).

Images are decoded once (images.load_image: RGB, the whole picture resized
bicubically to image_size x image_size, no crop, like the public code's
Resize((224, 224)); inference uses the same function), in worker processes,
and streamed to the split files in a bounded window: memory does not grow
with the number of paintings.

Nothing is dropped silently. Rows with an unknown emotion or an empty
utterance, rows without art_style/painting, paintings whose image is missing
or unreadable, and paintings left with no valid annotation are counted and
listed in report.json with file, line and value; a file found only under the
other Unicode normal form (NFC/NFD) of its name is used and listed as repaired.
The output folder appears atomically, complete with a COMPLETE marker.
"""

import collections
import csv
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import sys
import time
import unicodedata

import numpy as np

from sevlm_jax import vocab
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import records
# The reader API, re-exported: artemis.load_split(...) etc.
from sevlm_jax.data.records import SPLITS, load_annotations, load_meta, load_report, load_split  # noqa: F401

FORMATS = ("auto", "v1", "v2", "sevlm_json")
ARTEMIS_SEED = 2021
ARTEMIS_SPLIT_LOADS = (0.85, 0.05, 0.1)
ARTEMIS_TOO_HIGH_REPETITION = 41
_REQUIRED_COLUMNS = ("art_style", "painting", "emotion", "utterance")
_EPS = 1e-6
_SPLIT_STATS = ("images", "annotations", "with_two_emotions", "dominant_half", "dominant_artemis")


# ----------------------------------------------------------------------------- emotion statistics

def histogram_from_counts(counts) -> np.ndarray:
  counts = np.asarray(counts, np.float64)
  total = counts.sum()
  return (counts / total if total > 0 else counts).astype(np.float32)


def dominant_half(histogram) -> int:
  """Emotion holding more than half of the histogram, else -1 (public SEVLM code's rule)."""
  h = np.asarray(histogram, np.float64)
  m = int(np.argmax(h))
  return m if h[m] > 0.5 + _EPS else -1


def dominant_artemis(histogram) -> int:
  """Emotion holding at least half (ArtEmis's rule); a tie goes to the lower EMOTIONS index; else -1."""
  h = np.asarray(histogram, np.float64)
  top = h.max()
  if top < 0.5 - _EPS:
    return -1
  return int(np.flatnonzero(h >= top - _EPS)[0])


# ----------------------------------------------------------------------------- reading a ready data set

def is_ready(ready_dir) -> bool:
  """True when `ready_dir` is a complete ready data set."""
  return records.is_complete(ready_dir)


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


# ----------------------------------------------------------------------------- splits

def artemis_split(keys, loads=ARTEMIS_SPLIT_LOADS, seed: int = ARTEMIS_SEED) -> dict:
  """key -> 'train' | 'val' | 'test', as ArtEmis's make_train_test_val_splits does it.

  ArtEmis calls sklearn's train_test_split twice with random_state=seed:
  first on the sorted unique keys with test_size=val+test (ceil of the
  fraction), then on that remainder with test_size=round(test * n) items.
  Each call takes the first n_test items of RandomState(seed).permutation(n)
  as its test part and the rest as its train part.
  """
  train_load, val_load, test_load = (float(x) for x in loads)
  if abs(train_load + val_load + test_load - 1.0) > 1e-9 or min(train_load, val_load, test_load) < 0:
    raise ValueError(f"split loads {loads} must be three non-negative fractions summing to 1")
  ids = sorted(set(keys))
  n = len(ids)
  if n == 0:
    return {}
  n_rest = min(n, math.ceil((val_load + test_load) * n))
  perm = np.random.RandomState(seed).permutation(n)
  rest = [ids[i] for i in perm[:n_rest]]
  out = {ids[i]: "train" for i in perm[n_rest:]}
  if val_load == 0:
    out.update({k: "test" for k in rest})
    return out
  n_test = min(len(rest), round(test_load * n))
  perm = np.random.RandomState(seed).permutation(len(rest))
  out.update({rest[i]: "test" for i in perm[:n_test]})
  out.update({rest[i]: "val" for i in perm[n_test:]})
  return out


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
  split: str | None = None            # preassigned (SEVLM JSON per split)


def _clean(text) -> str:
  return "" if text is None else str(text).strip()


def detect_format(inputs) -> str:
  """'sevlm_json' for .json inputs, 'v2' for CSVs with version/anchor_painting columns or several CSVs, else 'v1'."""
  paths = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
  if any(str(p).lower().endswith(".json") for p in paths):
    return "sevlm_json"
  if len(paths) > 1:
    return "v2"
  with open(paths[0], newline="", encoding="utf-8-sig") as f:
    header = next(csv.reader(f), [])
  names = {h.strip().lower() for h in header}
  return "v2" if names & {"version", "anchor_painting"} else "v1"


def read_artemis_csv(paths, report: Report) -> dict:
  """image_id -> Painting from ArtEmis v1 / v2 CSV files."""
  paintings = {}
  for path in paths:
    try:
      _read_one_csv(path, paintings, report)
    except UnicodeDecodeError as e:
      raise ValueError(f"{path}: not UTF-8 text ({e}); ArtEmis CSVs are UTF-8, re-save the file as UTF-8") from None
    except csv.Error as e:
      raise ValueError(f"{path}: malformed CSV ({e})") from None
  return paintings


def _read_one_csv(path, paintings: dict, report: Report) -> None:
  """Add the rows of one ArtEmis CSV to `paintings`."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    columns = [c.strip().lower() for c in (reader.fieldnames or [])]
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {reader.fieldnames}. "
                       f"An ArtEmis CSV needs {', '.join(_REQUIRED_COLUMNS)} (and usually repetition)")
    reader.fieldnames = columns
    for row in reader:
      line = reader.line_num
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
      utterance = _clean(row.get("utterance"))
      if not utterance:
        report.skip("empty_utterance", file=str(path), line=line, image_id=image_id)
        continue
      p.emotions.append(emotion)
      p.utterances.append(utterance)


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


# ----------------------------------------------------------------------------- images

def _name_variants(rel: str) -> list[tuple[str, str | None]]:
  """(candidate path, normal form used or None) for a relative image path."""
  out, seen = [], set()
  parts = rel.split("/")
  head, tail = "/".join(parts[:-1]), parts[-1]
  forms = [(rel, None), (unicodedata.normalize("NFC", rel), "NFC"), (unicodedata.normalize("NFD", rel), "NFD")]
  for a in ("NFC", "NFD"):  # folder and file name stored in different forms
    for b in ("NFC", "NFD"):
      if a != b and head:
        forms.append((unicodedata.normalize(a, head) + "/" + unicodedata.normalize(b, tail), f"{a} folder, {b} file"))
  for cand, form in forms:
    if cand not in seen:
      seen.add(cand)
      out.append((cand, form))
  return out


def load_image_job(job):
  """Worker: (image_id, images_dir, image_rel, size) -> (image_id, image|None, form, tried|error)."""
  image_id, images_dir, rel, image_size = job
  variants = _name_variants(rel)
  for cand, form in variants:
    path = os.path.join(images_dir, cand)
    if os.path.isfile(path):
      try:
        return image_id, images_lib.load_image(path, image_size), form, None
      except Exception as e:  # any decoder failure means "unreadable", reported per painting
        return image_id, None, form, f"{type(e).__name__}: {e}"
  return image_id, None, None, None


# ----------------------------------------------------------------------------- the whole run

def _sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _image_results(jobs, workers: int, window: int):
  """Yield load_image_job results in job order, at most `window` images in flight."""
  if workers <= 0:
    for job in jobs:
      yield load_image_job(job)
    return
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    for start in range(0, len(jobs), window):
      yield from pool.imap(load_image_job, jobs[start:start + window], chunksize=8)


def _parse_inputs(inputs, fmt: str, report: Report) -> tuple[dict, str, list]:
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
    paintings = read_artemis_csv(paths, report)
  return paintings, fmt, paths


def assign_splits(paintings: dict, *, seed: int, split_loads, too_high_repetition: int) -> None:
  """Fill Painting.split (kept when preassigned): 'rest' for heavy repetition, else ArtEmis's split."""
  todo = [p for p in paintings.values() if p.split is None]
  normal = []
  for p in todo:
    repetition = p.repetition if p.repetition is not None else p.rows
    if too_high_repetition > 0 and repetition >= too_high_repetition:
      p.split = "rest"
    else:
      normal.append(p)
  by_key = artemis_split([p.split_key for p in normal], split_loads, seed)
  for p in normal:
    p.split = by_key[p.split_key]


def prepare_ready(inputs, images_dir, out, *, fmt: str = "auto", image_size: int = 224,
                  seed: int = ARTEMIS_SEED, split_loads=ARTEMIS_SPLIT_LOADS,
                  too_high_repetition: int = ARTEMIS_TOO_HIGH_REPETITION, workers: int | None = None,
                  window: int | None = None, overwrite: bool = False, progress: bool = True,
                  extra_meta: dict | None = None, log=print) -> tuple[pathlib.Path, dict]:
  """Ingest annotations + images into the ready data set `out`; returns (out, report dict).

  inputs: a path, a list of paths (v2: concatenated), or for sevlm_json a dict {split: path}.
  workers: image-decoding processes (default: all CPUs; 0 decodes in this process).
  too_high_repetition: paintings with at least this many annotations go to 'rest' (<= 0: off).
  """
  t0 = time.time()
  out, images_dir = pathlib.Path(out), pathlib.Path(images_dir)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
  if not images_dir.is_dir():
    raise FileNotFoundError(f"images folder {images_dir} not found (expected {{art_style}}/{{painting}}.jpg inside)")
  if image_size <= 0:
    raise ValueError(f"image_size must be positive, got {image_size}")
  report = Report()
  paintings, fmt, paths = _parse_inputs(inputs, fmt, report)
  report.totals["paintings_read"] = len(paintings)
  assign_splits(paintings, seed=seed, split_loads=split_loads, too_high_repetition=too_high_repetition)

  jobs, by_id = [], {}
  for split in records.SPLITS:
    for p in sorted((p for p in paintings.values() if p.split == split), key=lambda p: p.image_id):
      if not p.emotions:
        report.skip("no_valid_annotations", lost_annotations=0, image_id=p.image_id, rows=p.rows)
        continue
      jobs.append((p.image_id, str(images_dir), p.image_rel, image_size))
      by_id[p.image_id] = p

  workers = (os.cpu_count() or 1) if workers is None else workers
  window = window or max(256, 64 * max(workers, 1))
  tmp = records.temp_dir_beside(out)
  try:
    writers = {s: records.SplitWriter(tmp, s) for s in records.SPLITS}
    stats = {s: collections.Counter() for s in records.SPLITS}
    bar = _progress(len(jobs), progress)
    for image_id, image, form, error in _image_results(jobs, workers, window):
      bar.update(1)
      p = by_id.pop(image_id)
      lost = len(p.emotions)
      if image is None and error is None:
        report.skip("missing_image", lost_annotations=lost, image_id=image_id,
                    tried=[c for c, _ in _name_variants(p.image_rel)])
        continue
      if image is None:
        report.skip("unreadable_image", lost_annotations=lost, image_id=image_id, path=p.image_rel,
                    error=error)
        continue
      if form is not None:
        report.repair("unicode_normal_form", image_id=image_id, found_as=form,
                      fix="image file found under another Unicode normal form of its name")
      counts = np.bincount(p.emotions, minlength=vocab.NUM_EMOTIONS)
      hist = p.histogram if p.histogram is not None else histogram_from_counts(counts)
      rec = {"image_id": image_id, "art_style": p.art_style, "painting": p.painting, "image": image,
             "emotions": list(p.emotions), "utterances": list(p.utterances), "counts": counts,
             "histogram": hist, "dominant_half": dominant_half(hist), "dominant_artemis": dominant_artemis(hist)}
      writers[p.split].write(rec)
      st = stats[p.split]
      st["images"] += 1
      st["annotations"] += lost
      st["with_two_emotions"] += int(np.count_nonzero(counts) >= 2)
      st["dominant_half"] += int(rec["dominant_half"] >= 0)
      st["dominant_artemis"] += int(rec["dominant_artemis"] >= 0)
    bar.close()
    for w in writers.values():
      w.close()
    report.totals["paintings_kept"] = sum(st["images"] for st in stats.values())
    report.totals["annotations_kept"] = sum(st["annotations"] for st in stats.values())
    meta = {
        "format_version": records.FORMAT_VERSION,
        "source": {"format": fmt, "inputs": [{"path": str(p), "sha256": _sha256(p)} for p in paths],
                   "images": str(images_dir)},
        "image_size": image_size,
        "seed": seed,
        "split_loads": list(split_loads),
        "too_high_repetition": too_high_repetition,
        "splits": {s: {k: int(stats[s][k]) for k in _SPLIT_STATS} for s in records.SPLITS},
        "emotions": list(vocab.EMOTIONS),
        "dominant_rules": {"dominant_half": "histogram > 0.5 (public SEVLM code)",
                           "dominant_artemis": "histogram >= 0.5 (ArtEmis); tie -> lower EMOTIONS index"},
        "resize": "whole image, bicubic, to image_size x image_size (no crop)",
        "totals": dict(report.totals),
    }
    if extra_meta:
      meta["extra"] = extra_meta
    records.write_json(tmp / "meta.json", meta)
    records.write_json(tmp / "report.json", report.to_json())
    records.publish(tmp, out, overwrite=overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(report.summary())
  sizes = ", ".join(f"{s}: {stats[s]['images']}" for s in records.SPLITS)
  log(f"wrote {out} ({sizes} images) in {time.time() - t0:.1f} s; details in {out / 'report.json'}")
  return out, report.to_json()


class _NoBar:
  def update(self, n):
    pass

  def close(self):
    pass


def _progress(total: int, enabled: bool):
  if not enabled:
    return _NoBar()
  from tqdm import tqdm
  return tqdm(total=total, unit="img", desc="images", file=sys.stderr, dynamic_ncols=True)
