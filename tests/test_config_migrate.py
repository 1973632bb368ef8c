"""Configs written by older releases load once, with what they lack filled as those runs behaved."""

import json

import ml_collections
import numpy as np
import pytest

from sevlm_jax import errors
from sevlm_jax.config import migrate
from helpers import load_config


def _older(config: ml_collections.ConfigDict) -> dict:
  """The config as a release before versions wrote it: no version and none of the later fields."""
  raw = config.to_dict()
  del raw["config_version"]
  for field in ("data.resize_filter", "data.vad_lookup", "eval.beam_width", "eval.seed",
                "eval.stop_on", "train.negatives", "optim.adam_form", "pretrained.sevlm"):
    section, name = field.split(".")
    del raw[section][name]
  return raw


def test_the_shipped_configs_are_current():
  for variant in ("artemis_v1", "demo", "official"):
    config = load_config(variant)
    assert migrate.version_of(config) == migrate.CONFIG_VERSION
    assert migrate.migrate(config) is config  # nothing to do, nothing copied


def test_an_older_config_gets_the_values_its_run_behaved_by(tmp_path):
  current = load_config("demo")
  current.seed = 7
  path = tmp_path / "config.json"
  path.write_text(json.dumps(_older(current)))
  loaded = migrate.load_json(path)
  assert loaded.config_version == migrate.CONFIG_VERSION
  assert loaded.data.resize_filter == "bicubic" and loaded.data.vad_lookup == "word_then_lemma"
  assert loaded.eval.beam_width == 4 and loaded.eval.stop_on == "eos"
  assert loaded.eval.seed == 7  # sampling was seeded by the run's seed
  assert loaded.train.negatives == "random" and loaded.optim.adam_form == "optax"
  assert loaded.pretrained.sevlm == ""
  # Fields the older config had keep its values.
  assert loaded.model.to_dict() == current.model.to_dict()
  assert loaded.eval.max_new_tokens == current.eval.max_new_tokens


def test_migration_never_overwrites_a_field_the_config_has():
  raw = _older(load_config("demo"))
  raw["eval"]["stop_on"] = "any_special"
  raw["eval"]["trace_images"] = 5
  migrated = migrate.migrate(ml_collections.ConfigDict(raw))
  assert migrated.eval.stop_on == "any_special" and migrated.eval.trace_images == 5


def test_a_newer_config_or_a_broken_file_is_a_config_error(tmp_path):
  config = load_config("demo")
  config.config_version = migrate.CONFIG_VERSION + 1
  with pytest.raises(errors.ConfigError, match="newer than this sevlm_jax"):
    migrate.migrate(config)
  bad = tmp_path / "config.json"
  bad.write_text("{not json")
  with pytest.raises(errors.ConfigError, match="config.json is not valid JSON"):
    migrate.load_json(bad)


def test_the_run_set_up_refuses_a_config_that_was_not_migrated():
  from sevlm_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(_older(load_config("demo")))
  with pytest.raises(errors.ConfigError, match="config.migrate.migrate"):
    run_lib.check_config(config)
  run_lib.check_config(migrate.migrate(config))


def test_a_predictor_made_from_an_older_config_decodes_as_that_run_did(tiny_run):
  from sevlm_jax.inference import predictor as predictor_lib  # pylint: disable=import-outside-toplevel
  current = predictor_lib.Predictor.from_workdir(str(tiny_run))
  older = ml_collections.ConfigDict(_older(current.config))
  made = predictor_lib.Predictor(older, current.params, current.vad_table,
                                 output_ids=current._output_ids)  # pylint: disable=protected-access
  assert made.config.config_version == migrate.CONFIG_VERSION
  assert made.options.stop_on == "eos" and made.options.beam_width == 4
  image = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
  assert made.predict([image]) == current.predict([image])
