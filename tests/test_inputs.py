"""A run's saved inputs: the VAD table keeps to its lexicon; evaluation keeps the training config."""

import json

import pytest

from sevlm_jax import errors
from sevlm_jax import run as inputs
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.data import vad_table
from helpers import demo_root, tiny_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return demo_root(tmp_path_factory)


def test_vad_table_records_its_lexicon_and_refuses_another(tmp_path, root):
  tokenizer = tokenizer_lib.load_tokenizer()
  config = tiny_config(root)
  table = vad_table.load_vad_table(config, tokenizer, str(tmp_path))
  recorded = json.loads((tmp_path / "vad_table.json").read_text())
  assert recorded["lexicon"] == str(vad_lib.DEMO_LEXICON_PATH.resolve())
  assert (vad_table.load_vad_table(config, tokenizer, str(tmp_path)) == table).all()  # reused

  other = tmp_path / "other_lexicon.txt"
  lines = open(vad_lib.DEMO_LEXICON_PATH, encoding="utf-8").read().splitlines()
  other.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")  # one word fewer
  config.data.lexicon = str(other)
  with pytest.raises(errors.ConfigError, match="use a new --workdir"):
    vad_table.load_vad_table(config, tokenizer, str(tmp_path))
  (tmp_path / "vad_table.npy").unlink()  # the way out the message names
  assert vad_table.load_vad_table(config, tokenizer, str(tmp_path)).shape == table.shape


def test_evaluation_keeps_the_training_config(tmp_path, root):
  config = tiny_config(root)
  inputs.prepare_run(config, str(tmp_path))
  config.eval.max_new_tokens = 3
  inputs.prepare_run(config, str(tmp_path), write_config=False)
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["eval"]["max_new_tokens"] == tiny_config(root).eval.max_new_tokens
  inputs.prepare_run(config, str(tmp_path))
  assert json.loads((tmp_path / "config.json").read_text())["eval"]["max_new_tokens"] == 3


def test_prepared_data_of_another_resize_filter_is_refused(tmp_path, root):
  config = tiny_config(root)
  config.data.source, config.data.ready_dir = "ready", str(root / "ready")
  config.data.text_preprocessing = "raw"  # the demo's text, as its meta.json records
  config.data.lexicon = str(vad_lib.DEMO_LEXICON_PATH)
  inputs.check_inputs_before_preparation(config, str(tmp_path))  # made bicubic, as configured
  config.data.resize_filter = "bilinear"
  with pytest.raises(errors.ConfigError, match="resized with the bicubic filter.*"
                     "data.resize_filter=bilinear"):
    inputs.check_inputs_before_preparation(config, str(tmp_path))


def test_vad_table_records_its_lookup_rule_and_refuses_another(tmp_path, root):
  tokenizer = tokenizer_lib.load_tokenizer()
  config = tiny_config(root)
  config.data.vad_lookup = "lemma_only"
  vad_table.load_vad_table(config, tokenizer, str(tmp_path))
  assert json.loads((tmp_path / "vad_table.json").read_text())["vad_lookup"] == "lemma_only"
  config.data.vad_lookup = "word_then_lemma"
  with pytest.raises(errors.ConfigError, match="data.vad_lookup=word_then_lemma differs"):
    vad_table.load_vad_table(config, tokenizer, str(tmp_path))
