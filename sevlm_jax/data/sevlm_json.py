"""The public SEVLM code's JSON: annotation files -> paintings with their valid annotations.

A file is {image_id: {emotions, explanations, image_name, origin_emotion_distribution}}; the
input is one file (split here, like ArtEmis) or one file per split ({split: path}). Its entry in
formats.py detects it by the .json suffix. Entries and annotations it cannot use are counted in
the Report (annotations.py) with file, key and position.

A painting is its NFC-normalised image_name (annotations.painting_key): entries naming one painting,
under two keys or two Unicode normal forms, in one file or in two split files, are merged into the
first one's record (one split: annotations.SPLIT_PRECEDENCE) and reported.
"""

import json

import numpy as np

from sevlm_jax import vocab
from sevlm_jax.data import annotations
from sevlm_jax.data import splits


def is_sevlm_json(paths) -> bool:
  return any(str(p).lower().endswith(".json") for p in paths)


def read_sevlm_json_inputs(inputs, report: annotations.Report) -> dict:
  """image_id -> Painting of a list of JSON files, or of {split: path} (each file's paintings
  then in its split)."""
  items = inputs.items() if isinstance(inputs, dict) else [(None, p) for p in inputs]
  paintings, keys, first_key = {}, set(), {}  # first_key: painting_key -> the key of its Painting
  for split, path in items:
    if split is not None and split not in splits.SPLITS:
      raise ValueError(f"unknown split {split!r} for {path}; expected one of "
                       f"{', '.join(splits.SPLITS)}")
    for key, p in read_sevlm_json(path, report, split).items():
      if key in keys:
        raise ValueError(f"image_id {key!r} appears in more than one SEVLM JSON file (second: {path})")
      keys.add(key)
      identity = annotations.painting_key(p.art_style, p.painting)
      if identity in first_key:
        _merge(paintings[first_key[identity]], p, path, key, report)
      else:
        first_key[identity] = key
        paintings[key] = p
  annotations.report_merged(paintings, report)
  return paintings


def _merge(into: annotations.Painting, p: annotations.Painting, path, key: str,
           report: annotations.Report) -> None:
  """Entry `key` names the painting of `into`: its annotations, histogram and split join it."""
  report.repair("entries_of_one_painting", file=str(path), key=key, merged_into=into.image_id,
                fix="one record for the painting, with the annotations of both entries")
  if into.histogram is not None and p.histogram is not None:  # both given: weighted by entries
    into.histogram = ((into.histogram * into.rows + p.histogram * p.rows)
                      / (into.rows + p.rows)).astype(np.float32)
  else:
    into.histogram = None  # computed from the kept annotations of both
  into.emotions += p.emotions
  into.utterances += p.utterances
  into.rows += p.rows
  for spelling in p.spellings:
    annotations.add_spelling(into, spelling)
  if into.split != p.split and into.split is not None and p.split is not None:
    kept = annotations.merged_split([into.split, p.split])
    report.repair("painting_in_two_splits", image_id=into.image_id, given={into.image_id: into.split,
                  key: p.split}, kept=kept,
                  fix="one split for the painting: " + " > ".join(annotations.SPLIT_PRECEDENCE))
    into.split = kept


def read_sevlm_json(path, report: annotations.Report, split: str | None = None) -> dict:
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
    p = _painting(path, str(key), entry, report, split)
    if p is not None:
      paintings[p.image_id] = p
  return paintings


def _painting(path, key: str, entry, report: annotations.Report, split: str | None):
  """The Painting of one JSON entry, or None for an entry without the needed fields."""
  emotions = entry.get("emotions") if isinstance(entry, dict) else None
  explanations = entry.get("explanations") if isinstance(entry, dict) else None
  image_name = annotations.stripped(entry.get("image_name")) if isinstance(entry, dict) else ""
  n_read = len(emotions) if isinstance(emotions, list) else 1
  report.totals["annotations_read"] += n_read
  if (not isinstance(emotions, list) or not isinstance(explanations, list)
      or len(emotions) != len(explanations) or not image_name):
    report.skip("bad_json_entry", lost_annotations=n_read, file=str(path), key=key,
                problem="needs image_name and equally long emotions / explanations lists")
    return None
  style, name = _style_and_name(image_name)
  p = annotations.Painting(image_id=key, art_style=annotations.nfc(style),
                           painting=annotations.nfc(name), image_rel=image_name,
                           split_key=style + name, rows=len(emotions),
                           split=split, spellings=[f"{style}/{name}"])
  _add_annotations(path, key, p, emotions, explanations, report)
  _set_histogram(path, key, p, entry.get("origin_emotion_distribution"), report)
  return p


def _style_and_name(image_name: str) -> tuple[str, str]:
  parts = image_name.replace("\\", "/").split("/")
  stem = parts[-1].rsplit(".", 1)[0] if "." in parts[-1] else parts[-1]
  return ("/".join(parts[:-1]), stem)


def _add_annotations(path, key: str, p: annotations.Painting, emotions: list, explanations: list,
                     report: annotations.Report) -> None:
  """The entry's (emotion, explanation) pairs with a known emotion (a name or an index) and text."""
  for pos, (emotion, text) in enumerate(zip(emotions, explanations)):
    try:
      index = int(emotion) if isinstance(emotion, (int, np.integer)) else vocab.emotion_index(str(emotion))
      if not 0 <= index < vocab.NUM_EMOTIONS:
        raise ValueError
    except ValueError:
      report.skip("unknown_emotion", file=str(path), key=key, position=pos, value=str(emotion))
      continue
    text = annotations.stripped(text)
    if not text:
      report.skip("empty_utterance", file=str(path), key=key, position=pos)
      continue
    p.emotions.append(index)
    p.utterances.append(text)


def _set_histogram(path, key: str, p: annotations.Painting, dist, report: annotations.Report) -> None:
  """origin_emotion_distribution, normalised, as the painting's histogram when it is one."""
  if dist is None:
    return
  h = np.asarray(dist, np.float64) if isinstance(dist, list) else np.zeros(0)
  if h.shape == (vocab.NUM_EMOTIONS,) and np.all(h >= 0) and h.sum() > 0:
    p.histogram = (h / h.sum()).astype(np.float32)
  else:
    report.repair("bad_origin_emotion_distribution", file=str(path), key=key, value=str(dist)[:200],
                  fix="histogram computed from the entry's emotions")
