r"""One command from raw ArtEmis files to a ready data set.

  python -m sevlm_jax.data.prepare \
      --csv=artemis_dataset_release_v0.csv --images=wikiart/ --out=data/artemis_v1_224

  ArtEmis v2 (several CSVs are concatenated):
      --csv=artemis_dataset_release_v0.csv,Contrastive.csv --format=v2
  Public SEVLM JSON, one file per split (or one file, split here like ArtEmis):
      --csv=train=train.json,val=val.json,test=test.json --format=sevlm_json
  ArtEmis's own preprocessed CSV (its text and split as given; detected by its columns):
      --csv=artemis_preprocessed.csv --format=artemis_preprocessed
  The utterances exactly as written instead of ArtEmis's preprocessing: --text_preprocessing=raw

Steps: read the annotations (in any input format of formats.py; by default with ArtEmis's text
preprocessing for deep nets, artemis_text.py), split the paintings as ArtEmis does (splits.py),
drop the utterances ArtEmis's length filters drop (too short, too long for the train split's 95th
percentile), decode every image once (images.py: RGB, the whole picture resized to image_size x
image_size, no crop, like the public code's Resize((224, 224)), with the bicubic or bilinear
filter, which meta.json records; inference uses the same function; with --prescale_max_side=600,
through the 600-pixel copy the public code reads) in worker processes, streamed
to the split files in a bounded window so memory does not grow with the number of paintings, with
the dominant emotions by both rules (dominant.py).

Nothing is dropped silently: paintings whose image is missing or unreadable, and paintings left
with no valid annotation, are counted and listed in {out}/report.json beside the rows the readers
skipped; a file found only under the other Unicode normal form (NFC/NFD) of its name is used
and listed as repaired, and rows naming a painting in both forms are one painting (one record, one
split; counted as paintings_merged), which a check of the written splits confirms. The output folder appears atomically, complete with a COMPLETE marker.
"""

from absl import app
from absl import flags

import collections
import os
import pathlib
import shutil
import time

import numpy as np

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import annotations
from sevlm_jax.data import artemis_text
from sevlm_jax.data import dominant
from sevlm_jax.data import formats
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import records
from sevlm_jax.data import splits
from sevlm_jax.errors import InputError

_SPLIT_STATS = ("images", "annotations", "with_two_emotions", "dominant_half", "dominant_artemis")


def parse_inputs(spec: str):
  """'a.csv,b.csv' -> [paths]; 'train=a.json,val=b.json' -> {split: path}."""
  items = [s.strip() for s in spec.split(",") if s.strip()]
  if items and all("=" in s for s in items):
    return dict(s.split("=", 1) for s in items)
  if any("=" in s for s in items):
    raise ValueError(f"--csv={spec!r}: give either plain paths or split=path items, not a mix")
  return items


def prepare(csv, images, out, *, fmt: str = "auto", image_size: int = 224, seed: int = splits.ARTEMIS_SEED,
            split_loads=splits.ARTEMIS_SPLIT_LOADS, resize_filter: str = "bicubic",
            too_high_repetition: int = splits.ARTEMIS_TOO_HIGH_REPETITION,
            text_preprocessing: str = "artemis",
            workers: int | None = None, overwrite: bool = False, progress: bool = True,
            prescale_max_side: int = 0, prescale_filter: str = "lanczos"):
  """The command as a function. `csv`: a path, a list of paths, {split: path}, or the --csv spec string.

  `seed` is the split seed: keep 2021 to get ArtEmis's own split. Returns the ready folder.
  """
  inputs = parse_inputs(csv) if isinstance(csv, str) else csv
  out, _ = prepare_ready(inputs, images, out, fmt=fmt, image_size=image_size, seed=seed,
                         resize_filter=resize_filter, split_loads=split_loads,
                         too_high_repetition=too_high_repetition,
                         text_preprocessing=text_preprocessing, workers=workers,
                         overwrite=overwrite, progress=progress,
                         prescale_max_side=prescale_max_side, prescale_filter=prescale_filter)
  return out


def prepare_ready(inputs, images_dir, out, *, fmt: str = "auto", image_size: int = 224,
                  seed: int = splits.ARTEMIS_SEED, split_loads=splits.ARTEMIS_SPLIT_LOADS,
                  too_high_repetition: int = splits.ARTEMIS_TOO_HIGH_REPETITION,
                  text_preprocessing: str = "artemis", workers: int | None = None,
                  window: int | None = None, overwrite: bool = False, progress: bool = True,
                  extra_meta: dict | None = None, log=print, resize_filter: str = "bicubic",
                  prescale_max_side: int = 0, prescale_filter: str = "lanczos"
                  ) -> tuple[pathlib.Path, dict]:
  """Ingest annotations + images into the ready data set `out`; returns (out, report dict).

  inputs: a path, a list of paths (v2: concatenated), or for sevlm_json a dict {split: path}.
  fmt: a name in formats.CHOICES ('auto': detected from the files).
  workers: image-decoding processes (default: all CPUs; 0 decodes in this process).
  too_high_repetition: paintings with at least this many annotations go to 'rest' (<= 0: off).
  text_preprocessing: 'artemis' (ArtEmis's spelled text and length filters) or 'raw' (the
  utterances as written), for the formats whose entry in formats.py preprocesses_text; the other
  formats' text is used as given.
  resize_filter: bicubic | bilinear (images.RESIZE_FILTERS), recorded in meta.json.
  prescale_max_side: > 0 first makes each picture's copy with that longer side, as ArtEmis's
  600-pixel copies of WikiArt (images.prescale, with prescale_filter; pictures no larger are kept
  as they are, so a folder of such copies passes unchanged); recorded in meta.json.
  """
  t0 = time.time()
  out, images_dir = io_utils.as_path(out), pathlib.Path(images_dir)  # out: local or gs://...
  _check_arguments(out, images_dir, image_size, resize_filter, overwrite)
  _check_prescale(prescale_max_side, prescale_filter)
  report = annotations.Report()
  paintings, input_format, paths, text = _read(inputs, fmt, text_preprocessing, report, progress)
  splits.assign_splits(paintings, seed=seed, split_loads=split_loads,
                       too_high_repetition=too_high_repetition)
  _count_set_aside(paintings, report)
  length_filter = artemis_text.drop_by_length(paintings, report) if text == "artemis" else None
  jobs, by_id = _image_jobs(paintings, report, images_dir, image_size, resize_filter,
                            (prescale_max_side, prescale_filter))

  workers = (os.cpu_count() or 1) if workers is None else workers
  window = window or max(256, 64 * max(workers, 1))
  tmp = io_utils.temp_dir_beside(out)
  try:
    stats = _write_splits(tmp, jobs, by_id, report, workers, window, progress)
    meta = _meta(input_format, paths, images_dir, text, length_filter, stats, report,
                 image_size=image_size, seed=seed, split_loads=split_loads,
                 too_high_repetition=too_high_repetition, resize_filter=resize_filter)
    meta["prescale"] = prescale_meta(prescale_max_side, prescale_filter)
    if extra_meta:
      meta["extra"] = extra_meta
    records.write_json(tmp / "meta.json", meta)
    records.write_json(tmp / "report.json", report.to_json())
    records.mark_complete(tmp)
    annotations.check_disjoint({s: records.load_annotations(tmp, s) for s in records.SPLITS})
    _refuse_existing(out, overwrite)  # again: another run may have written it meanwhile
    io_utils.replace_dir(tmp, out, marker=records.COMPLETE_MARKER)  # object store: marker last
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(report.summary())
  sizes = ", ".join(f"{s}: {stats[s]['images']}" for s in records.SPLITS)
  log(f"wrote {out} ({sizes} images) in {time.time() - t0:.1f} s; details in {out / 'report.json'}")
  return out, report.to_json()


def _check_arguments(out: pathlib.Path, images_dir: pathlib.Path, image_size: int,
                     resize_filter: str, overwrite: bool) -> None:
  _refuse_existing(out, overwrite)
  io_utils.check_can_create(out)  # now, not after hours of reading and decoding
  io_utils.check_path(images_dir, "folder", "images folder",
                      " (expected {art_style}/{painting}.jpg inside)")
  if image_size <= 0:
    raise ValueError(f"image_size must be positive, got {image_size}")
  if resize_filter not in images_lib.RESIZE_FILTERS:
    raise ValueError(f"resize_filter must be one of {tuple(images_lib.RESIZE_FILTERS)}, got {resize_filter!r}")


def _check_prescale(max_side: int, prescale_filter: str) -> None:
  if max_side < 0:
    raise ValueError(f"prescale_max_side must be 0 (off) or positive, got {max_side}")
  if prescale_filter not in images_lib.PRESCALE_FILTERS:
    raise ValueError(f"prescale_filter must be one of {tuple(images_lib.PRESCALE_FILTERS)}, "
                     f"got {prescale_filter!r}")


def prescale_meta(max_side: int, prescale_filter: str) -> dict:
  """meta.json's record of the 600-pixel step (max_side 0: none; data sets without the record
  had none)."""
  if max_side <= 0:
    return {"max_side": 0, "how": "none: the pictures as found in the images folder"}
  return {"max_side": max_side, "filter": prescale_filter,
          "how": (f"pictures with a side over {max_side} pixels first resized ({prescale_filter}) "
                  f"to longer side {max_side}, same aspect ratio; smaller ones as found")}


def _read(inputs, fmt: str, text_preprocessing: str, report: annotations.Report, progress: bool):
  """(paintings, their Format, the input paths, the text as meta.json records it) of the
  annotation files, their text prepared: `text_preprocessing` where the format allows it, else
  as given (surrounding space stripped)."""
  paintings, input_format, paths = formats.read_annotations(inputs, fmt, report)
  preprocess = input_format.preprocesses_text
  text = text_preprocessing if preprocess else f"as given ({input_format.name})"
  artemis_text.preprocess_text(paintings, text_preprocessing if preprocess else "raw", progress)
  report.totals["paintings_read"] = len(paintings)
  if not any(p.emotions for p in paintings.values()):  # an empty data set is an error, not a result
    skipped = ", ".join(f"{e['count']} {reason}" for reason, e in report.skipped.items())
    raise InputError(f"no usable annotation in {', '.join(map(str, paths))}: "
                     f"{report.totals['annotations_read']} rows read"
                     + (f", skipped: {skipped}" if skipped else ""))
  return paintings, input_format, paths, text


def _count_set_aside(paintings: dict, report: annotations.Report) -> None:
  # Set aside, not dropped: heavily annotated paintings are written to the split 'rest'.
  set_aside = [p for p in paintings.values() if p.split == "rest"]
  report.totals["paintings_set_aside"] = len(set_aside)
  report.totals["annotations_set_aside"] = sum(len(p.emotions) for p in set_aside)


def _image_jobs(paintings: dict, report: annotations.Report, images_dir: pathlib.Path,
                image_size: int, resize_filter: str, prescaled: tuple = (0, "lanczos")
                ) -> tuple[list, dict]:
  """(images_lib.load_all's jobs, image_id -> Painting) of the paintings with an annotation left,
  split by split in image_id order; the others are reported."""
  jobs, by_id = [], {}
  for split in records.SPLITS:
    for p in sorted((p for p in paintings.values() if p.split == split), key=lambda p: p.image_id):
      if not p.emotions:
        report.skip("no_valid_annotations", lost_annotations=0, image_id=p.image_id, rows=p.rows)
        continue
      jobs.append((p.image_id, str(images_dir), p.image_rel, image_size, resize_filter, *prescaled))
      by_id[p.image_id] = p
  return jobs, by_id


def _write_splits(tmp: pathlib.Path, jobs: list, by_id: dict, report: annotations.Report,
                  workers: int, window: int, progress: bool) -> dict:
  """Decode the images (in worker processes, `window` at a time) and write each painting's record
  to its split file under `tmp`; returns split -> counts of what was written."""
  writers = {s: records.SplitWriter(tmp, s) for s in records.SPLITS}
  stats = {s: collections.Counter() for s in records.SPLITS}
  bar = io_utils.Progress("images", total=len(jobs), unit="img", enabled=progress)
  for image_id, image, form, error in images_lib.load_all(jobs, workers, window):
    bar.update(1)
    p = by_id.pop(image_id)
    if not _image_found(p, image, form, error, report):
      continue
    rec = _record(p, image)
    writers[p.split].write(rec)
    _count(stats[p.split], rec)
  bar.close()
  for w in writers.values():
    w.close()
  report.totals["paintings_kept"] = sum(st["images"] for st in stats.values())
  report.totals["annotations_kept"] = sum(st["annotations"] for st in stats.values())
  return stats


def _image_found(p, image, form, error, report: annotations.Report) -> bool:
  """Whether the painting's image was read; a missing or unreadable one is reported, as is one
  found under the other Unicode normal form of its name."""
  if image is None and error is None:
    report.skip("missing_image", lost_annotations=len(p.emotions), image_id=p.image_id,
                tried=[c for c, _ in images_lib.name_variants(p.image_rel)])
    return False
  if image is None:
    report.skip("unreadable_image", lost_annotations=len(p.emotions), image_id=p.image_id,
                path=p.image_rel, error=error)
    return False
  if form is not None:
    report.repair("unicode_normal_form", image_id=p.image_id, found_as=form,
                  fix="image file found under another Unicode normal form of its name")
  return True


def _record(p, image: np.ndarray) -> dict:
  """A painting's record in the ready data set, with its dominant emotions by both rules."""
  counts = np.bincount(p.emotions, minlength=vocab.NUM_EMOTIONS)
  hist = p.histogram if p.histogram is not None else dominant.histogram_from_counts(counts)
  return {"image_id": p.image_id, "art_style": p.art_style, "painting": p.painting, "image": image,
          "emotions": list(p.emotions), "utterances": list(p.utterances), "counts": counts,
          "histogram": hist, "dominant_half": dominant.dominant_half(hist),
          "dominant_artemis": dominant.dominant_artemis(hist)}


def _count(st: collections.Counter, rec: dict) -> None:
  st["images"] += 1
  st["annotations"] += len(rec["emotions"])
  st["with_two_emotions"] += int(np.count_nonzero(rec["counts"]) >= 2)
  st["dominant_half"] += int(rec["dominant_half"] >= 0)
  st["dominant_artemis"] += int(rec["dominant_artemis"] >= 0)


def _meta(input_format: formats.Format, paths: list, images_dir: pathlib.Path, text: str,
          length_filter: dict | None, stats: dict, report: annotations.Report, *, image_size: int,
          seed: int, split_loads, too_high_repetition: int, resize_filter: str) -> dict:
  """meta.json: how the ready data set was made, and what it holds."""
  return {
      "format_version": records.FORMAT_VERSION,
      "source": {"format": input_format.name,
                 "inputs": [{"path": str(p), "sha256": io_utils.sha256_file(p)} for p in paths],
                 "images": str(images_dir)},
      "image_size": image_size,
      "seed": seed,
      "split_loads": list(split_loads),
      "too_high_repetition": too_high_repetition,
      "text_preprocessing": text,
      "length_filter": length_filter,
      "splits": {s: {k: int(stats[s][k]) for k in _SPLIT_STATS} for s in records.SPLITS},
      "emotions": list(vocab.EMOTIONS),
      "dominant_rules": {"dominant_half": "histogram > 0.5 (public SEVLM code)",
                         "dominant_artemis": "histogram >= 0.5 (ArtEmis); tie -> lower EMOTIONS index"},
      "histogram": ("every annotation with a known emotion, those the length filters dropped "
                    "included (as ArtEmis's image-emotion-histogram.csv)" if length_filter
                    else input_format.histogram),
      "resize": f"whole image, {resize_filter}, to image_size x image_size (no crop)",
      "resize_filter": resize_filter,
      "totals": dict(report.totals),
  }


def _refuse_existing(out: pathlib.Path, overwrite: bool) -> None:
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")


_F = {}


def _define_flags() -> None:
  """Defined only when run as a command, so importing prepare() claims no flag names."""
  _F['csv'] = flags.DEFINE_string("csv", None, "Annotation file(s), comma-separated; for sevlm_json also split=path items.")
  _F['images'] = flags.DEFINE_string("images", None, "Image folder ({art_style}/{painting}.jpg).")
  _F['out'] = flags.DEFINE_string("out", None, "Ready data set folder to create.")
  _F['format'] = flags.DEFINE_enum("format", formats.AUTO, list(formats.CHOICES),
                                   "Input format (auto: from the files).")
  _F['image_size'] = flags.DEFINE_integer("image_size", 224, "Stored images are image_size x image_size RGB.")
  _F['resize_filter'] = flags.DEFINE_enum("resize_filter", "bicubic", ["bicubic", "bilinear"],
                                          "Resize filter (bilinear: the public code's).")
  _F['prescale'] = flags.DEFINE_integer("prescale_max_side", 0,
                                        "> 0: first resize each picture to this longer side, same "
                                        "aspect ratio (600: ArtEmis's copies of WikiArt, which the "
                                        "public code reads); smaller pictures kept as found.")
  _F['prescale_filter'] = flags.DEFINE_enum("prescale_filter", "lanczos", ["lanczos", "bicubic", "bilinear"],
                                            "Filter of the --prescale_max_side step.")
  _F['seed'] = flags.DEFINE_integer("seed", splits.ARTEMIS_SEED, "Split seed (2021 reproduces ArtEmis's split).")
  _F['split_loads'] = flags.DEFINE_list("split_loads", [str(x) for x in splits.ARTEMIS_SPLIT_LOADS],
                                   "train,val,test fractions of paintings.")
  _F['too_high'] = flags.DEFINE_integer("too_high_repetition", splits.ARTEMIS_TOO_HIGH_REPETITION,
                                   "Paintings with at least this many annotations go to split 'rest' (<= 0: off).")
  with_text = "/".join(f.name for f in formats.FORMATS.values() if f.preprocesses_text)
  _F['text'] = flags.DEFINE_enum("text_preprocessing", "artemis", ["artemis", "raw"],
                                 f"{with_text} text: ArtEmis's preprocessing for deep nets (spelled "
                                 "tokens, rows under 5 tokens or over the train split's 95th percentile "
                                 "dropped) or the utterances as written.")
  _F['workers'] = flags.DEFINE_integer("workers", None, "Image-decoding processes (default: all CPUs; 0: none).")
  _F['overwrite'] = flags.DEFINE_bool("overwrite", False, "Replace an existing --out folder.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  for flag in (_F['csv'], _F['images'], _F['out']):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  try:
    loads = tuple(float(x) for x in _F['split_loads'].value)
  except ValueError:
    raise app.UsageError(f"--split_loads={_F['split_loads'].value}: expected three numbers") from None
  if len(loads) != 3:
    raise app.UsageError(f"--split_loads needs train,val,test fractions, got {_F['split_loads'].value}")
  prepare(_F['csv'].value, _F['images'].value, _F['out'].value, fmt=_F['format'].value, image_size=_F['image_size'].value,
          seed=_F['seed'].value, split_loads=loads, too_high_repetition=_F['too_high'].value,
          text_preprocessing=_F['text'].value, workers=_F['workers'].value,
          overwrite=_F['overwrite'].value,
          resize_filter=_F['resize_filter'].value,
          prescale_max_side=_F['prescale'].value, prescale_filter=_F['prescale_filter'].value)


if __name__ == "__main__":
  _define_flags()
  # Input problems (a UserError, an OSError, a ValueError of the readers, a bad flag or a usage
  # error; a dependency missing on this platform) are one line and exit status 2, as in
  # sevlm_jax.main.
  app.run(errors.one_line_errors(main, also=(ValueError,)), flags_parser=errors.parse_flags)
