r"""One command from raw ArtEmis files to a ready data set.

  python -m sevlm_jax.data.prepare \
      --csv=artemis_dataset_release_v0.csv --images=wikiart/ --out=data/artemis_v1_224

  ArtEmis v2 (several CSVs are concatenated):
      --csv=artemis_dataset_release_v0.csv,Contrastive.csv --format=v2
  Public SEVLM JSON, one file per split (or one file, split here like ArtEmis):
      --csv=train=train.json,val=val.json,test=test.json --format=sevlm_json

What was skipped and why is printed and written to {out}/report.json; the
data set appears only when complete (see sevlm_jax/data/artemis.py).
"""

from absl import app
from absl import flags

from sevlm_jax.data import artemis

def parse_inputs(spec: str):
  """'a.csv,b.csv' -> [paths]; 'train=a.json,val=b.json' -> {split: path}."""
  items = [s.strip() for s in spec.split(",") if s.strip()]
  if items and all("=" in s for s in items):
    return dict(s.split("=", 1) for s in items)
  if any("=" in s for s in items):
    raise ValueError(f"--csv={spec!r}: give either plain paths or split=path items, not a mix")
  return items


def prepare(csv, images, out, *, fmt: str = "auto", image_size: int = 224, seed: int = artemis.ARTEMIS_SEED,
            split_loads=artemis.ARTEMIS_SPLIT_LOADS, too_high_repetition: int = artemis.ARTEMIS_TOO_HIGH_REPETITION,
            workers: int | None = None, overwrite: bool = False, progress: bool = True):
  """The command as a function. `csv`: a path, a list of paths, {split: path}, or the --csv spec string.

  `seed` is the split seed: keep 2021 to get ArtEmis's own split. Returns the ready folder.
  """
  inputs = parse_inputs(csv) if isinstance(csv, str) else csv
  out, _ = artemis.prepare_ready(inputs, images, out, fmt=fmt, image_size=image_size, seed=seed,
                                 split_loads=split_loads, too_high_repetition=too_high_repetition,
                                 workers=workers, overwrite=overwrite, progress=progress)
  return out


_F = {}


def _define_flags() -> None:
  """Defined only when run as a command, so importing prepare() claims no flag names."""
  _F['csv'] = flags.DEFINE_string("csv", None, "Annotation file(s), comma-separated; for sevlm_json also split=path items.")
  _F['images'] = flags.DEFINE_string("images", None, "Image folder ({art_style}/{painting}.jpg).")
  _F['out'] = flags.DEFINE_string("out", None, "Ready data set folder to create.")
  _F['format'] = flags.DEFINE_enum("format", "auto", list(artemis.FORMATS), "Input format (auto: from the files).")
  _F['image_size'] = flags.DEFINE_integer("image_size", 224, "Stored images are image_size x image_size RGB.")
  _F['seed'] = flags.DEFINE_integer("seed", artemis.ARTEMIS_SEED, "Split seed (2021 reproduces ArtEmis's split).")
  _F['split_loads'] = flags.DEFINE_list("split_loads", [str(x) for x in artemis.ARTEMIS_SPLIT_LOADS],
                                   "train,val,test fractions of paintings.")
  _F['too_high'] = flags.DEFINE_integer("too_high_repetition", artemis.ARTEMIS_TOO_HIGH_REPETITION,
                                   "Paintings with at least this many annotations go to split 'rest' (<= 0: off).")
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
  try:
    prepare(_F['csv'].value, _F['images'].value, _F['out'].value, fmt=_F['format'].value, image_size=_F['image_size'].value,
            seed=_F['seed'].value, split_loads=loads, too_high_repetition=_F['too_high'].value, workers=_F['workers'].value,
            overwrite=_F['overwrite'].value)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    # Input problems get one clear line, not a traceback.
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  _define_flags()
  app.run(main)
