r"""ArtEmis as a TensorFlow Datasets (TFDS) data set, built and read without TensorFlow.

  python -m sevlm_jax.data.tfds_artemis --manual_dir=DIR --data_dir=~/tensorflow_datasets
  (--config=v2 for ArtEmis v2.0; `tfds build` needs TensorFlow, this command does not)

  DIR holds the manual download: the ArtEmis CSV(s) (artemis_dataset_release_v0.csv for v1.0;
  v2.0 adds Contrastive.csv) and the WikiArt folder wikiart/{art_style}/{painting}.jpg. A
  custom ArtemisConfig may give other names or absolute paths.

Then anyone reads it by name, TensorFlow or not:
  tfds.data_source("artemis/v1", data_dir="~/tensorflow_datasets")["train"][0]
and this project trains from it with --config.data.source=tfds
--config.data.ready_dir=~/tensorflow_datasets/artemis/v1 (tfds_source.py).

The records are the project's own preparation's, not a second implementation: the builder runs
prepare.prepare_ready (the same reading, splits, text preprocessing, length filters, image
decoding and report) into a staging folder under TFDS's download folder, copies its records in
their order into TFDS's array_record files (disable_shuffling keeps each record's index), stores
prepare's meta.json and report.json in the build's metadata.json, and removes the staging folder.
The staging copy costs disk space while the build runs, in exchange for one code path. Images are
stored as PNG (lossless: the pixels prepare made), given to TFDS as PIL images, since without
TensorFlow tfds.features.Image cannot encode numpy arrays. Splits with no record (often 'rest')
are not written: TFDS refuses empty splits; meta's counts still list them as 0.
"""

import dataclasses
import os
import pathlib
import shutil
import tempfile

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from sevlm_jax import errors
from sevlm_jax import vocab
from sevlm_jax.data import prepare
from sevlm_jax.data import records

tfds = errors.optional_import("tensorflow_datasets", "the TFDS builder of ArtEmis", extra="tfds")

VERSION = "1.0.0"
FILE_FORMAT = "array_record"  # random access (tfds.data_source, grain); needs no TensorFlow


@dataclasses.dataclass(eq=False)
class ArtemisConfig(tfds.core.BuilderConfig):
  """What to build: the inputs (relative to the manual folder, or absolute) and prepare's options."""
  csv: tuple = ("artemis_dataset_release_v0.csv",)  # several: v2's CSVs, concatenated
  images: str = "wikiart"  # {art_style}/{painting}.jpg inside
  fmt: str = "v1"  # prepare's --format (formats.py)
  image_size: int = 224
  text_preprocessing: str = "artemis"  # or 'raw' (prepare's --text_preprocessing)
  resize_filter: str = "bicubic"  # or 'bilinear' (the public code's)
  prescale_max_side: int = 0  # > 0: prepare's first resize to this longer side (0: off)
  prescale_filter: str = "lanczos"


BUILDER_CONFIGS = [
    ArtemisConfig(name="v1", description="ArtEmis v1.0, 224x224 bicubic, ArtEmis's text "
                  "preprocessing and split"),
    ArtemisConfig(name="v2", csv=("artemis_dataset_release_v0.csv", "Contrastive.csv"), fmt="v2",
                  description="ArtEmis v2.0 (Combined: v1.0 + contrastive CSVs), 224x224 bicubic"),
]


def features(image_size: int) -> tfds.features.FeaturesDict:
  """A record of records.py as TFDS features (emotions as class labels: names travel along)."""
  label = tfds.features.ClassLabel(names=list(vocab.EMOTIONS))
  return tfds.features.FeaturesDict({
      "image_id": tfds.features.Text(),
      "art_style": tfds.features.Text(),
      "painting": tfds.features.Text(),
      "index": np.int64,  # position in its split
      "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="png"),
      "emotions": tfds.features.Sequence(label),
      "utterances": tfds.features.Sequence(tfds.features.Text()),
      "counts": tfds.features.Tensor(shape=(vocab.NUM_EMOTIONS,), dtype=np.int32),
      "histogram": tfds.features.Tensor(shape=(vocab.NUM_EMOTIONS,), dtype=np.float32),
      "dominant_half": np.int32,  # -1: none
      "dominant_artemis": np.int32,  # -1: none
  })


def to_example(rec: dict) -> dict:
  """A record of records.load_split -> the TFDS example of `features`."""
  example = {k: rec[k] for k in ("image_id", "art_style", "painting", "index", "emotions",
                                 "utterances", "dominant_half", "dominant_artemis")}
  example["image"] = Image.fromarray(np.asarray(rec["image"], np.uint8))
  example["counts"] = np.asarray(rec["counts"], np.int32)
  example["histogram"] = np.asarray(rec["histogram"], np.float32)
  return example


class Artemis(tfds.core.GeneratorBasedBuilder):
  """ArtEmis (affective captions of WikiArt paintings), as sevlm_jax's `prepare` makes it."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "The records of sevlm_jax's prepare, format 1."}
  BUILDER_CONFIGS = BUILDER_CONFIGS
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "ArtEmis cannot be downloaded automatically. Get artemis_dataset_release_v0.csv (v1.0; v2.0 "
      "also Contrastive.csv) from https://www.artemisdataset.org and the WikiArt images from the "
      "dump that page links to; put the CSV(s) and the folder wikiart/{art_style}/{painting}.jpg "
      "in the manual folder (default {data_dir}/downloads/manual).")

  def __init__(self, *, workers: int | None = None, verbose: bool = True, **kwargs):
    # How to build, not what: image-decoding processes (prepare's --workers) and its log.
    self._workers, self._verbose = workers, verbose
    self._staging = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo itself, not dataset_info_from_configs: that reads files beside the builder's
    # module (TFDS's own package layout), which this module does not have.
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__, features=features(self.builder_config.image_size),
        homepage="https://www.artemisdataset.org", metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)  # the records keep prepare's order: each one's index

  def _inputs(self, dl_manager) -> tuple[list, pathlib.Path]:
    """The config's CSV paths and images folder; relative ones inside the manual folder."""
    cfg = self.builder_config

    def resolve(name):
      path = pathlib.Path(name).expanduser()
      if path.is_absolute():
        return path
      try:
        return pathlib.Path(dl_manager.manual_dir) / path
      except AssertionError as e:  # TFDS's way of saying the manual folder is missing or empty
        raise FileNotFoundError(" ".join(str(e).split())) from None
    return [resolve(c) for c in cfg.csv], resolve(cfg.images)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    csvs, images = self._inputs(dl_manager)
    pathlib.Path(dl_manager.download_dir).mkdir(parents=True, exist_ok=True)
    self._staging = pathlib.Path(tempfile.mkdtemp(prefix="artemis_prepare_",
                                                  dir=dl_manager.download_dir))
    staged = self._staging / "ready"

    def log(message):  # prepare's log, without the staging folder it names (deleted at the end)
      if self._verbose:
        print(message.replace(str(staged / "report.json"), "the build's metadata.json")
              .replace(str(staged), "the staging folder"))
    ready, _ = prepare.prepare_ready(
        csvs, images, staged, fmt=cfg.fmt, image_size=cfg.image_size,
        text_preprocessing=cfg.text_preprocessing, resize_filter=cfg.resize_filter,
        prescale_max_side=cfg.prescale_max_side, prescale_filter=cfg.prescale_filter,
        workers=self._workers, progress=self._verbose, log=log)
    meta = records.load_meta(ready)
    self.info.metadata.update(meta=meta, report=records.load_report(ready))
    return {split: self._generate_examples(ready, split) for split in records.SPLITS
            if meta["splits"][split]["images"]}

  def _generate_examples(self, ready, split: str):
    for rec in records.load_split(ready, split):
      yield rec["index"], to_example(rec)

  def _download_and_prepare(self, *args, **kwargs):
    try:
      return super()._download_and_prepare(*args, **kwargs)
    finally:  # the staging copy goes, built or not
      if self._staging is not None:
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None


def build(data_dir, config="v1", *, manual_dir=None, workers: int | None = None,
          verbose: bool = True) -> pathlib.Path:
  """Build ArtEmis (`config`: a BUILDER_CONFIGS name or an ArtemisConfig) as array_record under
  data_dir; returns the build's folder ({data_dir}/artemis/{config}/{version})."""
  builder = Artemis(config=config, data_dir=os.path.expanduser(str(data_dir)),
                    file_format=FILE_FORMAT, workers=workers, verbose=verbose)
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.path.expanduser(str(manual_dir)))
  builder.download_and_prepare(download_config=download_config)
  return pathlib.Path(builder.data_dir)


_F = {}


def _define_flags() -> None:
  """Defined only when run as a command, so importing this module claims no flag names."""
  _F["data_dir"] = flags.DEFINE_string("data_dir", None, "TFDS data_dir to build into.")
  _F["manual_dir"] = flags.DEFINE_string("manual_dir", None, "Folder holding the ArtEmis CSV(s) and "
                                         "wikiart/ (default: {data_dir}/downloads/manual).")
  _F["config"] = flags.DEFINE_enum("config", "v1", [c.name for c in BUILDER_CONFIGS],
                                   "Which build: v1 (ArtEmis v1.0) or v2 (v2.0 Combined).")
  _F["workers"] = flags.DEFINE_integer("workers", None, "Image-decoding processes (default: all "
                                       "CPUs; 0: none).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _F["data_dir"].value:
    raise app.UsageError("--data_dir is required")
  out = build(_F["data_dir"].value, _F["config"].value, manual_dir=_F["manual_dir"].value,
              workers=_F["workers"].value)
  print(f"built {out}; train from it with --config.data.source=tfds "
        f"--config.data.ready_dir={out.parent}")


if __name__ == "__main__":
  _define_flags()
  app.run(errors.one_line_errors(main, also=(ValueError,)), flags_parser=errors.parse_flags)
