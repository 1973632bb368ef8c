"""Where a run's data set comes from (the `data` section): the demo, a prepared data set, or raw
ArtEmis files prepared on first use; and the checks of the data section's choices.

The demo data set is generated on first use; real ArtEmis data is prepared from the raw files
when the ready directory does not exist yet, and a missing file gets a message saying exactly
what to download and which flag to set.
"""

import json
import os
import pathlib
import time

from absl import logging
import ml_collections

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.data import artemis_text
from sevlm_jax.data import demo
from sevlm_jax.data import dominant as dominant_lib
from sevlm_jax.data import formats
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import output_vocab
from sevlm_jax.data import pipeline
from sevlm_jax.data import prepare
from sevlm_jax.data import records
from sevlm_jax.data import tfds_source
from sevlm_jax.data import vad_table
from sevlm_jax.errors import ConfigError

ARTEMIS_HELP = (
    "ArtEmis is not downloadable from here: get artemis_dataset_release_v0.csv (v1.0) or the v2.0 "
    "'Combined' CSVs from https://www.artemisdataset.org, and the WikiArt images (folders "
    "{art_style}/{painting}.jpg) from the WikiArt dump the ArtEmis page links to; then pass "
    "--config.data.csv=PATH --config.data.images=DIR (or --config.data.ready_dir=DIR of an already "
    "prepared data set). To try the project without them: --config=configs/sevlm.py:demo")


def default_ready_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.data.ready_dir or os.path.join(workdir, "data")


def resolve_ready_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The prepared data set for this config, preparing it first when needed."""
  data = config.data
  ready_dir = default_ready_dir(config, workdir)
  if data.source == formats.DEMO:
    # For the demo, ready_dir is the root the demo generator owns (raw files + ready data).
    return ensure_demo_dataset(ready_dir, **_demo_kwargs(config))
  if data.source == formats.TFDS:  # a TFDS build: its (newest) version folder is read as it is
    return str(tfds_source.dataset_dir(ready_dir))
  fmt = check_data_source(config, ready_dir)
  if fmt is not None:
    # The split seed stays ArtEmis's own, whatever the training seed.
    prepare.prepare(data.csv, data.images, ready_dir, fmt=fmt, image_size=data.image_size,
                    text_preprocessing=data.text_preprocessing,
                    resize_filter=data.resize_filter,
                    prescale_max_side=data.prescale_max_side, prescale_filter=data.prescale_filter)
  return ready_dir


def check_data_source(config: ml_collections.ConfigDict, ready_dir: str) -> str | None:
  """None when `ready_dir` is a complete prepared data set, else the input format to prepare it
  from, once the raw files are known to exist (a ConfigError saying what to get otherwise)."""
  data = config.data
  if data.source == formats.TFDS:
    tfds_source.dataset_dir(ready_dir)  # a ConfigError saying how to build it, when absent
    return None
  if records.is_complete(ready_dir):
    return None
  if data.source == formats.READY:
    raise ConfigError(f"data.ready_dir={ready_dir!r} holds no complete prepared data set. " + ARTEMIS_HELP)
  if not data.csv or not data.images:
    raise ConfigError("data.csv and data.images are not set and no prepared data set is at "
                      f"{ready_dir}. " + ARTEMIS_HELP)
  fmt = formats.for_config_source(data.source)
  if fmt is None:
    raise ConfigError(f"data.source={data.source!r} is not one of {', '.join(formats.CONFIG_SOURCES)}")
  for field, path, kind in [*(("data.csv", p, "file") for p in data.csv.split(",")),
                            ("data.images", data.images, "folder")]:
    if not io_utils.is_local(path):  # a ready data set may be in a bucket; the raw inputs not
      raise ConfigError(f"{field}: {path}: preparation reads the raw CSV and images from local "
                        "(or mounted) paths; copy them to local disk (gcloud storage cp -r), or "
                        "prepare there and point data.ready_dir at the result (gs:// works)")
    problem = io_utils.path_problem(path, kind)
    if problem:
      raise ConfigError(f"{field}: {path} {problem}. " + ARTEMIS_HELP)
  return _format_read(data, fmt).name


def _format_read(data: ml_collections.ConfigDict, named: formats.Format) -> formats.Format:
  """The format data.csv is read in (formats.for_files), said in the log."""
  paths = data.csv.split(",")
  fmt = named
  if all(os.path.isfile(p) for p in paths):  # other paths are refused when read
    fmt = formats.for_files(named, paths)
  if fmt is named:
    logging.info("data: reading %s as %s (data.source=%s)", data.csv, fmt.name, data.source)
  else:
    logging.warning("data: %s is ArtEmis's preprocessed CSV (utterance_spelled and split columns): "
                    "reading it as %s, its split and text as given, not as data.source=%s's raw "
                    "CSV", data.csv, fmt.name, data.source)
  return fmt


def _read_json(path):
  try:
    return json.loads(pathlib.Path(path).read_text())
  except (OSError, ValueError):
    return None


def ensure_demo_dataset(root, *, seed: int = 0, num_images: int = demo.DEFAULT_NUM_IMAGES, image_size: int = 32,
                        annotators: int = 5, verbose: bool = False, resize_filter: str = "bicubic",
                        prescale_max_side: int = 0, prescale_filter: str = "lanczos"
                        ) -> pathlib.Path:
  """Ready demo data set under root/ready (made on first call, reused when complete and matching)."""
  root = pathlib.Path(root)
  ready, raw = root / "ready", root / "raw"
  raw_params = {"version": demo.DEMO_VERSION, "seed": seed, "num_images": num_images, "annotators": annotators}
  params = dict(raw_params, image_size=image_size)
  if resize_filter != "bicubic":  # only then, so that data sets made before the field still match
    params["resize_filter"] = resize_filter
  if prescale_max_side > 0:  # likewise (the demo's 64-pixel pictures are below any sane side)
    params["prescale"] = [prescale_max_side, prescale_filter]

  def matches():
    return records.is_complete(ready) and (_read_json(ready / "meta.json") or {}).get("extra", {}).get("demo") == params

  if matches():
    return ready
  if num_images < vocab.NUM_EMOTIONS or annotators < 2:
    raise ValueError(f"demo needs num_images >= 9 and annotators >= 2, got {num_images}, {annotators}")
  t0 = time.time()
  if _read_json(raw / "demo.json") != raw_params:
    try:
      demo.write_raw(raw, seed=seed, num_images=num_images, annotators=annotators)
    except OSError:
      if _read_json(raw / "demo.json") != raw_params:  # not another process's identical raw files
        raise
  log = print if verbose else (lambda *a, **k: None)
  try:  # replace only a stale data set, so concurrent first calls never tear down a fresh one
    prepare.prepare_ready(raw / demo.CSV_NAME, raw / "images", ready, fmt="v1", image_size=image_size,
                          text_preprocessing="raw",
                          workers=0, overwrite=ready.exists(), progress=verbose, extra_meta={"demo": params},
                          log=log, resize_filter=resize_filter,
                          prescale_max_side=prescale_max_side, prescale_filter=prescale_filter)
  except OSError:
    if not matches():  # another process may have published the same data set first
      raise
  log(f"demo data set ready in {time.time() - t0:.1f} s: {ready}")
  return ready


def _demo_kwargs(config) -> dict:
  kwargs = {"seed": config.seed, "image_size": config.data.image_size,
            "resize_filter": config.data.resize_filter,
            "prescale_max_side": config.data.prescale_max_side,
            "prescale_filter": config.data.prescale_filter}
  if config.data.demo_num_images:
    kwargs["num_images"] = config.data.demo_num_images
  return kwargs


def check_prepared(config: ml_collections.ConfigDict, ready_dir: str) -> None:
  """An already prepared (non-demo) data set was made the way the config says: its text
  preprocessing, image size and resize filter (a ConfigError saying what to set otherwise)."""
  if config.data.source == formats.TFDS:
    ready_dir = tfds_source.dataset_dir(ready_dir)
  if config.data.source == formats.DEMO or not records.is_complete(ready_dir):
    return
  meta = records.load_meta(ready_dir)
  text = meta.get("text_preprocessing", "raw")  # data sets prepared before the switch: raw
  made_from = meta.get("source", {}).get("format")  # what was read, whatever data.source says
  fmt = formats.FORMATS.get(made_from) or formats.for_config_source(config.data.source)
  if fmt is not None and fmt.preprocesses_text and text != config.data.text_preprocessing:
    raise ConfigError(f"the prepared data set {ready_dir} holds text preprocessed as {text!r}, the "
                      f"config data.text_preprocessing={config.data.text_preprocessing!r}; set "
                      f"--config.data.text_preprocessing={text}, or use another data.ready_dir")
  size = int(meta["image_size"])
  if size != config.data.image_size:
    raise ConfigError(f"the prepared data set {ready_dir} holds {size}x{size} images, the config "
                      f"data.image_size={config.data.image_size}; set --config.data.image_size="
                      f"{size} --config.model.vision.image_size={size}, or use another "
                      "data.ready_dir")
  made_with = meta.get("resize_filter", "bicubic")  # older sets: bicubic
  if made_with != config.data.resize_filter:
    raise ConfigError(f"the prepared data set {ready_dir} was resized with the {made_with} filter, "
                      f"the config says data.resize_filter={config.data.resize_filter}; set "
                      f"--config.data.resize_filter={made_with}, or prepare the data again into "
                      "another data.ready_dir")
  _check_prescale_matches(config, ready_dir, meta.get("prescale", {"max_side": 0}))


def _check_prescale_matches(config: ml_collections.ConfigDict, ready_dir: str, made: dict) -> None:
  """The prepared data set's 600-pixel step (meta.json's prescale; none in older sets) is the
  config's data.prescale_max_side / data.prescale_filter."""
  data = config.data
  want = (data.prescale_max_side, data.prescale_filter if data.prescale_max_side > 0 else None)
  got = (int(made.get("max_side", 0)), made.get("filter"))
  if got != want:
    said = (f"--config.data.prescale_max_side={got[0]}"
            + (f" --config.data.prescale_filter={got[1]}" if got[0] > 0 else ""))
    raise ConfigError(f"the prepared data set {ready_dir} was made with prescale_max_side={got[0]}"
                      + (f" ({got[1]})" if got[0] > 0 else "") + ", the config says "
                      f"data.prescale_max_side={data.prescale_max_side}"
                      + (f" ({data.prescale_filter})" if data.prescale_max_side > 0 else "")
                      + f"; set {said}, or prepare the data again into another data.ready_dir")


def check_config(config: ml_collections.ConfigDict) -> None:
  """The choices the data package owns: the data section, how pairs are drawn
  (train.pair_anchor), the dominant-emotion rules (eval.dominant, eval.ea_dominant,
  eval.ea_histogram) and the output vocabulary."""
  data = config.data
  if data.max_len < 8:
    raise ConfigError(f"data.max_len={data.max_len} is too short for '<bos> the emotion is "
                      "<emotion> because ...'; use at least 8")
  if data.text_preprocessing not in artemis_text.PREPROCESSINGS:
    raise ConfigError(f"data.text_preprocessing={data.text_preprocessing!r}; choose 'artemis' "
                      "(ArtEmis's preprocessing for deep nets) or 'raw' (the utterances as written)")
  errors.check_choice("data.resize_filter", data.resize_filter, images_lib.RESIZE_FILTERS)
  if data.prescale_max_side < 0:
    raise ConfigError(f"data.prescale_max_side={data.prescale_max_side}; use 0 (off) or a longer "
                      "side in pixels (600: ArtEmis's copies of WikiArt)")
  errors.check_choice("data.prescale_filter", data.prescale_filter, images_lib.PRESCALE_FILTERS)
  vad_table.check_config(config)
  errors.check_choice("train.pair_anchor", config.train.pair_anchor, pipeline.PAIR_ANCHORS)
  errors.check_choice("eval.dominant", config.eval.dominant, dominant_lib.RULES)
  errors.check_choice("eval.ea_dominant", config.eval.ea_dominant, dominant_lib.EA_RULES)
  errors.check_choice("eval.ea_histogram", config.eval.ea_histogram, dominant_lib.EA_HISTOGRAMS)
  output_vocab.check_config(config)
