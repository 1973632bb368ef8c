"""The authors' released SEVLM (hub jing5566/SEVLM), ready to predict with no data set.

  Predictor.from_released("jing5566/SEVLM", lexicon="NRC-VAD-Lexicon.txt").predict(["a.jpg"])
  python -m sevlm_jax.main --mode=predict --config=configs/sevlm.py:official \
      --config.pretrained.sevlm=jing5566/SEVLM --config.data.lexicon=NRC-VAD-Lexicon.txt --images=a.jpg

The authors' files (weights/sevlm.py: nle_model_<name>/ and ckpt_stats_<name>.tar) hold every
part but the vision tower, which comes from pretrained.clip as in training. The VAD table is
built from the user's own copy of the lexicon (NRC-VAD's licence forbids shipping it) with the
config's lookup rule, as a run builds it (data/vad_table.py). The config defaults to
configs/sevlm.py:artemis_v1,official: the public code's behaviour, whose switches in the
sections that shape an answer (INFERENCE_SECTIONS: the network, image and VAD preparation,
decoding) are the authors' inference behaviour. A caller's own config is used as given, and the
log names each of those switches it applies and each it leaves at another value.

Predictor.from_pretrained hands a folder in the authors' layout to Predictor.from_released, and
`--mode=export` with --config.pretrained.sevlm writes the model as an export (inference/export.py,
whose card takes card_section and TRAINING_DATA from here).
"""

import dataclasses
import os
import pathlib
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax.config import migrate
from sevlm_jax.config import presets
from sevlm_jax.data import images as images_lib
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.errors import CheckpointError, ConfigError
from sevlm_jax.weights import io as weights_io
from sevlm_jax.weights import sevlm as sevlm_weights

DEFAULT_VARIANTS = "artemis_v1,official"
HUB_NAME = "jing5566/SEVLM"
CHECKPOINT_KIND = "pretrained.sevlm"  # what evaluation records for the imported weights
# The official switches that change an answer; the others (loss, optim, train, pretrained, and
# TRAINING_ONLY: initial weights, which the authors' weights replace) only change training.
INFERENCE_SECTIONS = ("model.", "data.", "eval.")
TRAINING_ONLY = ("model.vad.init",)
TRAINING_DATA = [
    "The authors trained it on ArtEmis v1.0 (annotations of WikiArt paintings: each annotator chose "
    "one of nine emotions and wrote why) in ArtEmis's preprocessing for deep nets (split 85/5/10 by "
    "painting, seed 2021), starting from distilgpt2 with a frozen CLIP ViT-B/16. No data set was "
    "read to export it."]
LEXICON_HELP = (
    "the authors' released SEVLM needs a VAD lexicon for its token VAD table: pass your copy of "
    "NRC-VAD v1 (the authors'; its licence forbids shipping it: "
    "https://saifmohammad.com/WebPages/nrc-vad.html) as lexicon=PATH in Python or "
    "--config.data.lexicon=PATH on the command line")


@dataclasses.dataclass
class Prepared:
  """All that the authors' model runs with but its weights, which the caller (the predictor, the
  export) loads with weights.pretrained.initial_params: that module sits on the predictor's own
  floor of the import graph, and this one stays below it (tests/test_layout.py)."""
  config: ml_collections.ConfigDict
  vad_table: np.ndarray
  vad_source: dict  # the lexicon the table came from (as export's manifest records it)
  tokenizer: Any


# ----------------------------------------------------------------------------- the switches

def inference_switches() -> dict[str, Any]:
  """The authors' inference behaviour: the official switches of INFERENCE_SECTIONS."""
  return {k: v for k, v in presets.official_switches().items()
          if k.startswith(INFERENCE_SECTIONS) and k not in TRAINING_ONLY}


def _field(config: ml_collections.ConfigDict, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def compare_switches(config: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
  """(applied, differing): 'field=value' for each inference switch the config has at the
  authors' value, and 'field=value (theirs: value)' for each it has at another."""
  applied, differing = [], []
  for field, theirs in inference_switches().items():
    ours = _field(config, field)
    if ours == theirs:
      applied.append(f"{field}={ours}")
    else:
      differing.append(f"{field}={ours} (theirs: {theirs})")
  return applied, differing


def describe_switches(config: ml_collections.ConfigDict) -> str:
  """One sentence for the log and the model card."""
  applied, differing = compare_switches(config)
  text = ("the authors' inference behaviour (configs/sevlm.py:official): "
          + (", ".join(applied) if applied else "none of its switches"))
  if differing:
    text += "; left at other values: " + ", ".join(differing)
  return text


# ----------------------------------------------------------------------------- the config

def holds_released_model(directory) -> bool:
  """Whether a local directory is in the authors' layout: an nle_model_<name>/ itself, or a
  folder holding one (weights.sevlm.locate then finds its ckpt_stats_<name>.tar)."""
  path = pathlib.Path(directory).expanduser()
  if not path.is_dir():
    return False
  if sevlm_weights.MODEL_DIR.match(path.name):
    return True
  return any(p.is_dir() and sevlm_weights.MODEL_DIR.match(p.name) for p in path.iterdir())


def released_config(source: str | None, lexicon: str | None = None,
                    config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """The config to run the authors' model with: `config` (a copy, brought up to date) or
  configs/sevlm.py:artemis_v1,official, with pretrained.sevlm=source and data.lexicon=lexicon
  where given. ConfigError for what cannot run, before any weights are read."""
  if config is None:
    config = presets.get_config(DEFAULT_VARIANTS)
  else:
    config = migrate.migrate(ml_collections.ConfigDict(config.to_dict()))
  if source:
    config.pretrained.sevlm = str(source)
  if lexicon:
    config.data.lexicon = str(lexicon)
  if not config.pretrained.sevlm:
    raise ConfigError("no released model named: pass the directory holding nle_model_<name>/ and "
                      f"ckpt_stats_<name>.tar, or the hub name {HUB_NAME} "
                      "(--config.pretrained.sevlm=... on the command line)")
  if not config.data.lexicon:
    raise ConfigError(LEXICON_HELP)
  if not os.path.isfile(config.data.lexicon):
    raise ConfigError(f"lexicon {config.data.lexicon} is not a file; " + LEXICON_HELP)
  if config.output_vocab != "full":  # a restricted vocabulary is made from a training set
    raise ConfigError(f"output_vocab={config.output_vocab!r}: the authors' model writes from the "
                      "full vocabulary; set output_vocab='full'")
  errors.check_choice("data.lexicon_format", config.data.lexicon_format, vad_lib.FORMATS)
  errors.check_choice("data.vad_lookup", config.data.vad_lookup, vad_lib.LOOKUPS)
  errors.check_choice("data.resize_filter", config.data.resize_filter, images_lib.RESIZE_FILTERS)
  _check_sources(config)
  return config


def _check_sources(config: ml_collections.ConfigDict) -> None:
  """The authors' files and the vision tower's are found (a hub name: downloaded now), before
  the long work; a ConfigError names the field otherwise."""
  for field, find in (("sevlm", sevlm_weights.locate), ("clip", weights_io.resolve)):
    source = config.pretrained[field]
    if source:
      try:
        find(source)
      except CheckpointError as e:
        raise ConfigError(f"pretrained.{field}={source!r}: {e}") from None


# ----------------------------------------------------------------------------- loading

def vad_source(lexicon: str, lexicon_format: str) -> dict:
  """Where a VAD table came from, as an export's manifest records it."""
  sha = io_utils.sha256_file(lexicon)
  return {"lexicon": os.path.basename(lexicon), "lexicon_sha256": sha,
          "lexicon_format": lexicon_format,
          "demo_lexicon": sha == io_utils.sha256_file(vad_lib.DEMO_LEXICON_PATH)}


def prepare(source: str | None, lexicon: str | None = None,
            config: ml_collections.ConfigDict | None = None) -> Prepared:
  """The config (released_config's, its switches logged) and the VAD table of `lexicon`, for
  the authors' weights at `source` (a local directory, an nle_model_<name> directory or a hub
  name, found or downloaded here)."""
  config = released_config(source, lexicon, config)
  logging.info("the authors' released SEVLM %s, with %s", config.pretrained.sevlm,
               describe_switches(config))
  _, differing = compare_switches(config)
  if differing:
    logging.warning("this config differs from the authors' inference behaviour in: %s",
                    ", ".join(differing))
  tokenizer = tokenizer_lib.load_tokenizer()
  fmt = config.data.lexicon_format
  table = vad_lib.token_vad_table(tokenizer, vad_lib.load_lexicon(config.data.lexicon, fmt=fmt),
                                  lookup=config.data.vad_lookup).astype(np.float32)  # as a run's
  return Prepared(config, table, vad_source(config.data.lexicon, fmt), tokenizer)


# ----------------------------------------------------------------------------- the model card

def card_section(config: ml_collections.ConfigDict, kind: str | None) -> list[str]:
  """The export's model card paragraph for the authors' model (none for a trained run)."""
  if kind != CHECKPOINT_KIND:
    return []
  return [
      "## The authors' released model", "",
      f"These are the weights the SEVLM authors released ({config.pretrained.sevlm}; hub "
      f"{HUB_NAME}), imported as they are: the decoder, the VAD encoder and fusion, and the heads "
      f"from their files, the vision tower from {config.pretrained.clip or 'random weights'}. "
      "Nothing was trained here. The model runs with " + describe_switches(config) + ".", "",
      "Metrics: none are measured by exporting. The Evaluation section below lists those of the "
      "run directory given to the export (`--workdir`, after `--mode=evaluate "
      "--config.pretrained.sevlm=...` there), if it held any; the paper's figures are the "
      "authors' own, measured with their code.", ""]
