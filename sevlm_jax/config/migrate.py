"""Config versions: a config saved by an older release is brought up to date once, when loaded.

Every run writes its config to <workdir>/config.json, and exports carry one; both outlive the
code that wrote them. Instead of each reader guessing a default for a field it may not find
(`config.eval.get("beam_width", 4)` in several places), `migrate` fills every field a version
added with the value that reproduces how that older run behaved, and stamps the current
version. Code after loading reads fields directly.

Adding a config field: give it its default in configs/sevlm.py, bump CONFIG_VERSION there and
here, and add a step to _STEPS with the value older runs behaved by.
"""

import json
import os
from typing import Any, Callable

import ml_collections

from sevlm_jax import io_utils
from sevlm_jax.errors import ConfigError

CONFIG_VERSION = 2
# `config_version` absent: a config from before versions existed.
_UNVERSIONED = 0


def _fields_from_before_versions(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Fields added before versions existed, with the values the code assumed when they were
  absent (= the behaviour of the runs that lack them)."""
  return {
      "data.text_preprocessing": "raw",  # runs from before ArtEmis's preprocessing
      "data.resize_filter": "bicubic",
      "data.vad_lookup": "word_then_lemma",
      "data.blank_images": False,
      "loss.contrastive_eps": 0.0,
      "optim.adam_eps": 1e-8,
      "optim.adam_form": "optax",
      "pretrained.new_token_init": "mean",
      "pretrained.sevlm": "",
      "train.negatives": "random",
      "train.pad_vocab_to": 128,
      "train.pair_kv_once": True,
      "train.pair_anchor": "cycle",
      "eval.seed": config.seed,  # top_p sampling was seeded by the run's seed
      "eval.stop_on": "eos",
      "eval.explanation_after": "first_because",
      "eval.steps_per_check": 1,
      "eval.beam_width": 4,
      "eval.length_penalty": 1.0,
      "eval.report": True,
      "eval.trace_images": 0,
  }


def _fields_of_version_2(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Fields version 2 added, with the values version-1 runs behaved by."""
  del config
  return {
      "train.writers": "jsonl,tensorboard",
      "data.prescale_max_side": 0,  # the pictures were resized straight to image_size
      "data.prescale_filter": "lanczos",
      "train.drop_last": True,  # each epoch's partial last batch was dropped
      "train.validate_final_step": True,
      "train.eval_bleu_tokenizer": "regex",  # validation BLEU-4 was tokenized by a regex
      "eval.ea_dominant": "acc",  # EA counted the images ACC counts
      "eval.ea_histogram": "acc",
      "judge.source": "trained",  # EA was read by the judge trained in the run's directory
      "judge.artemis_classifier": "",
      "judge.artemis_vocabulary": "",
  }


# version v -> the fields version v + 1 added, with their values for a config of version v.
_STEPS: dict[int, Callable[[ml_collections.ConfigDict], dict[str, Any]]] = {
    _UNVERSIONED: _fields_from_before_versions,
    1: _fields_of_version_2,
}


def version_of(config: ml_collections.ConfigDict) -> int:
  return int(config.get("config_version", _UNVERSIONED))


def migrate(config: ml_collections.ConfigDict, source: str = "the config"
            ) -> ml_collections.ConfigDict:
  """The config at CONFIG_VERSION: the same object when it is current, else an updated copy
  (fields it already has are never changed). source names it in errors."""
  version = version_of(config)
  if version > CONFIG_VERSION:
    raise ConfigError(f"{source} has config_version={version}, newer than this sevlm_jax "
                      f"understands ({CONFIG_VERSION}); upgrade sevlm_jax")
  if version == CONFIG_VERSION:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  while version < CONFIG_VERSION:
    for field, value in _STEPS[version](config).items():
      _fill(config, field, value)
    version += 1
  config.config_version = CONFIG_VERSION
  return config


def _fill(config: ml_collections.ConfigDict, field: str, value: Any) -> None:
  *sections, name = field.split(".")
  node = config
  for section in sections:
    if section not in node:
      node[section] = ml_collections.ConfigDict()
    node = node[section]
  if name not in node:
    node[name] = value


def load_json(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """A config.json written by any release, migrated to the current version."""
  try:
    with io_utils.as_path(path).open(encoding="utf-8") as f:  # a local path or gs://...
      raw = json.load(f)
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); it is not a "
                      "config written by sevlm_jax") from None
  except UnicodeDecodeError as e:
    raise ConfigError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                      f"{e.start}); it is not a config written by sevlm_jax") from None
  if not isinstance(raw, dict):
    raise ConfigError(f"{path} holds {type(raw).__name__}, not a config")
  try:
    return migrate(ml_collections.ConfigDict(raw), source=str(path))
  except ConfigError:
    raise
  except (ValueError, KeyError, AttributeError, TypeError) as e:  # valid JSON, but not a config
    raise ConfigError(f"{path} is not a config written by sevlm_jax ({type(e).__name__}: "
                      f"{e})") from None
