"""An exported model directory pushed to the Hugging Face hub: read back first, then uploaded.

  python -m sevlm_jax.main --mode=export --workdir=RUN --out=DIR --push_to_hub=owner/name [--private]
  Predictor.from_pretrained("owner/name")

The folder is read as from_pretrained reads it (model_dir.load_exported: every file against the
manifest's sha256, the parameters against the config's network), so a broken export is never
uploaded; then inference/hub.py creates the repository if needed and uploads it.
"""

import json
import pathlib

from absl import logging

from sevlm_jax import io_utils
from sevlm_jax.errors import ConfigError
from sevlm_jax.inference import hub
from sevlm_jax.inference import model_dir

COMMIT_MESSAGE = "Upload a SEVLM model directory (sevlm_jax export)"

# The files an export may hold. An upload replaces these in the repository, so that one an earlier
# export had and this one lacks (a VAD table now left out) does not stay behind; the repository's
# other files stay.
EXPORT_FILES = (model_dir.PARAMS_FILE, model_dir.CONFIG_FILE, model_dir.VAD_FILE,
                model_dir.OUTPUT_VOCAB_FILE, f"{model_dir.TOKENIZER_DIR}/*", model_dir.CARD_FILE,
                model_dir.MANIFEST)


def push_from_command_line(folder, repo_id: str | None, private: bool, workdir: str | None,
                           lexicon: str | None = None) -> None:
  """--push_to_hub and --private of --mode=export, after the folder is written: the upload, and
  the commit's URL printed. lexicon: the one the export's VAD table was made from, where no run's
  vad_table.json records it (the authors' released model's --config.data.lexicon)."""
  if not repo_id:
    if private:
      raise ConfigError(f"--private applies to --push_to_hub=OWNER/NAME, which was not given (the "
                        f"export {folder} was written; nothing was uploaded)")
    return
  folder = io_utils.local_copy_tree(folder)  # an export in a bucket is uploaded from a local copy
  url = push_export(folder, repo_id, private=private, lexicon=_run_lexicon(folder, workdir, lexicon))
  print(f"pushed {folder} to the Hugging Face hub: {url}")
  print(f"load it with Predictor.from_pretrained({repo_id!r})")


def push_export(folder, repo_id: str, *, private: bool = False, lexicon: str | None = None) -> str:
  """Uploads the model directory `folder` to the hub model repository repo_id and returns the
  URL of the commit (hub.upload: created if missing, private if asked).

  lexicon: the VAD lexicon of an export that left its table out, to check the export against.
  """
  hub.check_repo_id(repo_id)
  exported = model_dir.load_exported(folder, lexicon=lexicon)  # raises on any broken file
  vad = exported.manifest["vad_table"]
  if vad["included"] and not vad["demo_lexicon"]:
    logging.warning("%s", model_dir.NRC_VAD_WARNING.format(what=f"uploaded to {repo_id}",
                                                           lexicon=vad.get("lexicon")))
  url = hub.upload(folder, repo_id, private=private, replace=list(EXPORT_FILES),
                   commit_message=COMMIT_MESSAGE)
  logging.info("pushed %s to %s: %s", folder, repo_id, url)
  return url


def _run_lexicon(folder, workdir: str | None, given: str | None) -> str | None:
  """The lexicon a run's VAD table was made from (its vad_table.json, else `given`), to check an
  export that left the table out; None when the export includes it."""
  manifest = json.loads((pathlib.Path(folder) / model_dir.MANIFEST).read_text("utf-8"))
  if manifest["vad_table"].get("included", True):
    return None
  provenance = io_utils.as_path(workdir or ".") / "vad_table.json"  # the workdir: local or gs://
  lexicon = json.loads(provenance.read_text("utf-8")).get("lexicon") if provenance.is_file() else given
  if not lexicon or not io_utils.as_path(lexicon).is_file():
    raise ConfigError(f"{folder} left its VAD table out, and the lexicon it was made from "
                      f"({lexicon or 'not recorded in ' + str(provenance)}) is not here to check the "
                      "export against before uploading; run the command where that lexicon is")
  return lexicon
