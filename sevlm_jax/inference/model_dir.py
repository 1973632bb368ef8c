"""A SEVLM model directory: its files, and reading one back with every file checked.

  python -m sevlm_jax.main --mode=export --workdir=runs/demo --out=exported/demo [--checkpoint=best_acc]
  Predictor.from_pretrained("exported/demo")   # no workdir, data set or lexicon needed

The directory (written whole or not at all):

  model.safetensors   every parameter, float32, one tensor per array; its name is the path in the
                      Flax parameter tree joined with "/", e.g. "decoder/h_0/attn/c_attn/kernel"
                      (Dense kernels are (in, out), as Flax stores them)
  config.json         the run's config (its "model" section is the network; "eval" the decoding)
  vad_table.npy       float32 [50261, 3]: the (valence, arousal, dominance) of every token, the
                      table the model reads; left out with include_vad_table=False (see below)
  output_vocab.npy    int32 token ids the LM softmax ranges over (only for output_vocab=train_tokens)
  tokenizer/          GPT-2's encoder.json and vocab.bpe, and added_tokens.json (SEVLM's 4 tokens)
  README.md           the model card: data, metrics, intended use, licences
  sevlm_export.json   format version, the checkpoint exported, and the sha256 of every file above
  sevlm_jax/          only with --space: the package's own copy, for a Hugging Face Space
  app.py, requirements.txt
                      only with --space: the Space's Gradio app and what it installs (see
                      inference/space.py); free to edit, so the manifest leaves them out

The VAD table is made from the lexicon the run was trained with. For NRC-VAD (whose licence
forbids redistribution) the table carries the lexicon's values of every word that is one token,
so the card and the log warn before such a directory is shared; include_vad_table=False leaves
the table out, and the loader then rebuilds it from the user's own copy of the lexicon
(`lexicon=`), checked against the table's recorded sha256.
"""

import dataclasses
import hashlib
import json
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from sevlm_jax import io_utils
from sevlm_jax import vocab
from sevlm_jax.config import migrate
from sevlm_jax.data import tokenizer as tokenizer_lib
from sevlm_jax.data import vad as vad_lib
from sevlm_jax.errors import CheckpointError, CheckpointNotFoundError, ConfigError
from sevlm_jax.models import sevlm as sevlm_lib

FORMAT = "sevlm_jax export"
FORMAT_VERSION = 1
MANIFEST = "sevlm_export.json"
PARAMS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VAD_FILE = "vad_table.npy"
OUTPUT_VOCAB_FILE = "output_vocab.npy"
TOKENIZER_DIR = "tokenizer"
ADDED_TOKENS_FILE = "added_tokens.json"
CARD_FILE = "README.md"
SEP = "/"  # joins the Flax parameter path into a tensor name

NRC_VAD_WARNING = (
    "the VAD table ({what}) holds per-token values taken from the lexicon {lexicon}, not from the "
    "project's own demo lexicon. NRC-VAD's licence forbids redistributing the lexicon or data derived "
    "from it: do not share this directory beyond what that licence allows, or export again with the "
    "table left out (--export_vad_table=False) and load it with your own copy of the lexicon")


@dataclasses.dataclass
class Exported:
  """What a model directory holds, read and checked."""
  config: ml_collections.ConfigDict
  params: Any
  vad_table: np.ndarray
  output_ids: np.ndarray | None
  tokenizer: Any
  manifest: dict


def table_sha256(table: np.ndarray) -> str:
  """sha256 of a VAD table's float32 bytes (C order): what identifies it however it is stored."""
  return hashlib.sha256(np.ascontiguousarray(table, np.float32).tobytes()).hexdigest()


def flatten_params(params) -> dict[str, np.ndarray]:
  """{"a/b/kernel": float32 array}: the safetensors form of a parameter tree."""
  flat = traverse_util.flatten_dict(jax.device_get(params))
  out = {}
  for path, value in flat.items():
    bad = [p for p in path if SEP in str(p)]
    if bad:
      raise ValueError(f"parameter name {bad[0]!r} contains {SEP!r}; it cannot be exported")
    out[SEP.join(str(p) for p in path)] = np.ascontiguousarray(np.asarray(value, np.float32))
  return out


def unflatten_params(tensors: dict[str, np.ndarray]) -> dict:
  return traverse_util.unflatten_dict({tuple(k.split(SEP)): v for k, v in tensors.items()})


def _corrupt(directory: pathlib.Path, name: str, why: str) -> CheckpointError:
  return CheckpointError(f"{directory / name}: {why}; export the model again "
                         "(python -m sevlm_jax.main --mode=export --workdir=RUN --out=DIR)")


def load_exported(directory, lexicon: str | None = None) -> Exported:
  """Reads and checks a model directory written by export_model.

  Every file is checked against the manifest's sha256, and the parameters against the shapes
  the config's network needs: a missing, truncated or altered file is a CheckpointError naming it.
  lexicon: the VAD lexicon file, needed only when the export left the VAD table out.
  directory: a local folder, or gs://... (read from a local copy, downloaded once).
  """
  directory = pathlib.Path(io_utils.local_copy_tree(directory)).absolute()
  if not (directory / MANIFEST).is_file():
    raise CheckpointNotFoundError(
        f"{directory / MANIFEST} is missing: {directory} is not a SEVLM model directory (write one "
        "with python -m sevlm_jax.main --mode=export --workdir=RUN --out=DIR)")
  try:
    manifest = json.loads((directory / MANIFEST).read_text("utf-8"))
    files = dict(manifest["files"])
  except (ValueError, KeyError, TypeError) as e:
    raise _corrupt(directory, MANIFEST, f"not a readable manifest ({type(e).__name__}: {e})") from None
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise _corrupt(directory, MANIFEST, f"format {manifest.get('format')!r} version "
                   f"{manifest.get('format_version')}; this code reads {FORMAT!r} version {FORMAT_VERSION}")
  for name in (PARAMS_FILE, CONFIG_FILE):
    if name not in files:
      raise _corrupt(directory, MANIFEST, f"lists no {name}")
  for name, want in files.items():
    path = directory / name
    if not path.is_file():
      raise CheckpointNotFoundError(f"{path} is missing from the model directory; copy the whole "
                                    "directory, or export the model again")
    if io_utils.sha256_file(path) != want:
      raise _corrupt(directory, name, "its contents differ from what was exported (sha256 mismatch: "
                     "truncated, altered or from another export)")

  config = migrate.load_json(directory / CONFIG_FILE)
  tokenizer = tokenizer_lib.load_tokenizer(directory / TOKENIZER_DIR)
  params = _read_params(directory, config)
  vad_table = _read_vad_table(directory, manifest, tokenizer, lexicon, config.data.vad_lookup)
  output_ids = np.load(directory / OUTPUT_VOCAB_FILE) if OUTPUT_VOCAB_FILE in files else None
  return Exported(config, params, vad_table, output_ids, tokenizer, manifest)


def _read_params(directory: pathlib.Path, config) -> dict:
  try:
    tensors = safetensors.numpy.load_file(str(directory / PARAMS_FILE))
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise _corrupt(directory, PARAMS_FILE, f"not a readable safetensors file ({e})") from None
  abstract = sevlm_lib.abstract_params(config.model.to_dict())  # the config's network's shapes
  expected = {k: v.shape for k, v in flatten_abstract(abstract).items()}
  missing = sorted(set(expected) - set(tensors))
  extra = sorted(set(tensors) - set(expected))
  wrong = sorted(k for k in expected if k in tensors and tensors[k].shape != expected[k])
  if missing or extra or wrong:
    what = "; ".join(part for part in (
        f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "",
        f"{wrong[0]} has shape {tensors[wrong[0]].shape}, the config's network {expected[wrong[0]]}"
        if wrong else "") if part)
    raise _corrupt(directory, PARAMS_FILE, f"does not fit {CONFIG_FILE}'s network ({what})")
  return jax.tree.map(jax.numpy.asarray, unflatten_params(tensors))


def flatten_abstract(abstract) -> dict:
  return {SEP.join(str(p) for p in path): leaf for path, leaf in traverse_util.flatten_dict(abstract).items()}


def _read_vad_table(directory: pathlib.Path, manifest: dict, tokenizer, lexicon, lookup: str
                    ) -> np.ndarray:
  recorded = manifest.get("vad_table", {})
  if recorded.get("included", True):
    table = np.load(directory / VAD_FILE)
    if table.shape != (vocab.VOCAB_SIZE, 3):
      raise _corrupt(directory, VAD_FILE, f"shape {table.shape}, not ({vocab.VOCAB_SIZE}, 3)")
    return table.astype(np.float32)
  if lexicon is None:
    raise ConfigError(f"{directory} was exported without its VAD table (it came from the lexicon "
                      f"{recorded.get('lexicon')}, which may not be redistributed): pass your copy of that "
                      "lexicon, Predictor.from_pretrained(dir, lexicon=PATH)")
  fmt = recorded.get("lexicon_format") or "auto"
  if lookup == "wordnet_pos":  # its parts of speech came from the training text's sentences
    raise ConfigError(f"{directory} was exported without its VAD table, made with "
                      "data.vad_lookup=wordnet_pos from the training text as well as the lexicon, "
                      "so a lexicon cannot rebuild it: export the run with its table")
  table = vad_lib.token_vad_table(tokenizer, vad_lib.load_lexicon(lexicon, fmt=fmt),
                                lookup=lookup).astype(np.float32)  # the run's lookup rule
  if table_sha256(table) != recorded.get("sha256"):
    raise ConfigError(f"the lexicon {lexicon} (format {fmt}) gives another VAD table than the one this model "
                      f"was trained with (from {recorded.get('lexicon')}, sha256 "
                      f"{recorded.get('lexicon_sha256')}); pass that lexicon file")
  return table
