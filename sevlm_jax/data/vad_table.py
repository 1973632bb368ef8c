"""A run's (vocab x 3) token VAD table: made once from the lexicon, then kept in the workdir, so
that inference needs no lexicon and a resumed run keeps the table it started with."""

import json
import os
import time

from absl import logging
import ml_collections
import numpy as np

from sevlm_jax import errors
from sevlm_jax import io_utils
from sevlm_jax.data import formats
from sevlm_jax.data import records
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.data import vad_wordnet
from sevlm_jax.errors import ConfigError

LEXICON_HELP = (
    "the NRC-VAD lexicon cannot be shipped (its licence forbids redistribution): download it from "
    "https://saifmohammad.com/WebPages/nrc-vad.html and pass --config.data.lexicon=PATH to "
    "NRC-VAD-Lexicon.txt (v1, either scale) or NRC-VAD-Lexicon-v2.1.txt; Warriner-style CSV norms "
    "also work (--config.data.lexicon_format=warriner)")
TABLE_FILE = "vad_table.npy"
PROVENANCE_FILE = "vad_table.json"


def check_config(config: ml_collections.ConfigDict) -> None:
  errors.check_choice("data.lexicon_format", config.data.lexicon_format, vad_lib.FORMATS)
  errors.check_choice("data.vad_lookup", config.data.vad_lookup, vad_lib.LOOKUPS)


def lexicon_path(config: ml_collections.ConfigDict) -> str:
  if config.data.lexicon:
    problem = io_utils.path_problem(config.data.lexicon, "file")
    if problem:
      raise ConfigError(f"data.lexicon: {config.data.lexicon} {problem}; " + LEXICON_HELP)
    return config.data.lexicon
  if config.data.source == formats.DEMO:
    return vad_lib.DEMO_LEXICON_PATH
  raise ConfigError("data.lexicon is not set; " + LEXICON_HELP)


def lexicon_if_needed(config: ml_collections.ConfigDict, workdir: str
                      ) -> vad_lib.VadLexicon | None:
  """The config's lexicon, parsed (errors name the file), unless the workdir already has its
  table (then None: no lexicon is read)."""
  if io_utils.as_path(workdir, TABLE_FILE).exists():
    return None
  if config.data.vad_lookup == "wordnet_pos":
    vad_wordnet.load_nltk()  # NLTK and its data are there: one line now, not after preparation
  return vad_lib.load_lexicon(lexicon_path(config), fmt=config.data.lexicon_format)


def load_vad_table(config: ml_collections.ConfigDict, tokenizer, workdir: str,
                   lexicon: vad_lib.VadLexicon | None = None, ready_dir: str | None = None
                   ) -> np.ndarray:
  """The (vocab x 3) token VAD table; saved in the workdir so inference needs no lexicon.

  A run keeps the table it started with. vad_table.json records the lexicon it came from, so
  that pointing the same workdir at another lexicon is an error rather than silently ignored.
  lexicon: the config's lexicon, already parsed (read from data.lexicon otherwise).
  ready_dir: the prepared data set, whose training sequences give data.vad_lookup=wordnet_pos
  its parts of speech (vad_wordnet.py; each token tagged alone without it).
  """
  path = os.path.join(workdir, TABLE_FILE)
  provenance_path = os.path.join(workdir, PROVENANCE_FILE)
  if io_utils.as_path(path).exists():
    _check_same_lexicon(config, provenance_path)
    return io_utils.load_npy(path)
  lexicon_file = lexicon_path(config)
  lexicon = lexicon or vad_lib.load_lexicon(lexicon_file, fmt=config.data.lexicon_format)
  lookup = config.data.vad_lookup
  provenance = {"lexicon": io_utils.absolute(lexicon_file),
                "lexicon_sha256": io_utils.sha256_file(lexicon_file),
                "lexicon_format": config.data.lexicon_format, "vad_lookup": lookup}
  if lookup == "wordnet_pos":
    start = time.time()  # about 1 ms per training sequence on a CPU core: minutes for ArtEmis
    table, stats = vad_wordnet.token_vad_table(
        tokenizer, lexicon, _train_sequences(tokenizer, ready_dir, config.data.max_len))
    provenance["wordnet_pos"] = stats.to_json()
    logging.info("data.vad_lookup=wordnet_pos: %d training sequences tagged in %.0f s; the table "
                 "gives %d of their %d token positions the VAD of their own sentence",
                 stats.sequences, time.time() - start, stats.same_vad, stats.positions)
  else:
    table = vad_lib.token_vad_table(tokenizer, lexicon, lookup=lookup)
  table = table.astype(np.float32)
  io_utils.save_npy_atomic(path, table)
  io_utils.write_json_atomic(provenance_path, provenance)
  return table


def _train_sequences(tokenizer, ready_dir: str | None, max_len: int):
  """The input ids of every training annotation's sequence, as training builds them (none
  without a data set)."""
  if not ready_dir:
    return
  for rec in records.load_annotations(ready_dir, "train"):
    for emotion, utterance in zip(rec["emotions"], rec["utterances"]):
      yield tokenizer.build_sequence(emotion, utterance, max_len)["input_ids"]


def _check_same_lexicon(config: ml_collections.ConfigDict, provenance_path: str) -> None:
  """Raises if the config names a lexicon or a lookup rule other than the ones the workdir's
  table came from."""
  if not io_utils.as_path(provenance_path).exists():  # a run from before the record existed
    return
  with io_utils.as_path(provenance_path).open(encoding="utf-8") as f:
    recorded = json.load(f)
  made_with = recorded.get("vad_lookup", "word_then_lemma")  # tables from before the switch
  table_path = os.path.join(os.path.dirname(provenance_path), TABLE_FILE)
  if made_with != config.data.vad_lookup:
    raise ConfigError(
        f"data.vad_lookup={config.data.vad_lookup} differs from the rule this workdir's VAD table "
        f"was built with ({made_with}); use a new --workdir, or delete {table_path} to rebuild "
        "the table")
  try:
    lexicon = lexicon_path(config)
  except ConfigError:  # no lexicon given (e.g. evaluating elsewhere): the saved table is the truth
    return
  if io_utils.sha256_file(lexicon) != recorded["lexicon_sha256"]:
    raise ConfigError(
        f"data.lexicon={lexicon} differs from the lexicon this workdir's VAD table was built from "
        f"({recorded['lexicon']}); use a new --workdir, or delete {table_path} to rebuild the "
        "table (a run resumed with another table is no longer the same run)")
