"""A model directory's folder to and from the Hugging Face hub.

  Predictor.from_pretrained("owner/name", revision="v1")   # downloaded once, then from the cache
  python -m sevlm_jax.main --mode=export --workdir=RUN --out=DIR --push_to_hub=owner/name [--private]

A name that is no local path but looks like a hub repository id is downloaded with
huggingface_hub.snapshot_download (weights/io.py), so huggingface_hub's cache (HF_HOME,
HF_HUB_CACHE), HF_HUB_OFFLINE=1 (the cache only) and HF_ENDPOINT apply; the caller then reads and
checks the folder as a local one (model_dir.load_exported). An upload creates the repository if it
is missing and uploads the folder with HfApi.upload_folder; inference/publish.py reads an export
back before it calls it. The token is huggingface_hub's (HF_TOKEN, or the login `hf auth login`
stored); this module never logs or prints it.

This module knows the hub, not the model directory's format, so that the predictor, which
resolves names here, stays below the format's reader in the import graph.
"""

import os
import pathlib

from sevlm_jax.errors import ConfigError, HubError
from sevlm_jax.weights import io as weights_io

LOCAL_HINT = "a model directory written by --mode=export"
LOGIN_HINT = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


# ----------------------------------------------------------------------------- downloading

def resolve(name_or_path, revision: str | None = None) -> pathlib.Path:
  """The local folder of a model directory: a local path as it is, or a hub repository id
  downloaded into (or found in) huggingface_hub's cache."""
  text = os.fspath(name_or_path)
  if os.path.exists(text) or not isinstance(name_or_path, str) or not weights_io.looks_like_hub_name(text):
    if revision is not None:
      raise ConfigError(f"revision={revision!r} picks a version of a hub repository, and {text} is a "
                        "local path: leave revision out")
    return pathlib.Path(text)
  return download_export(text, revision)


def download_export(repo_id: str, revision: str | None = None) -> pathlib.Path:
  """The snapshot folder of the hub model repository repo_id at revision (a branch, tag or
  commit; None: main). A missing repository or revision, an offline miss or a refused login is a
  CheckpointError naming the repository and what to do."""
  return weights_io.download(repo_id, allow_patterns=None, local_hint=LOCAL_HINT, revision=revision)


# ----------------------------------------------------------------------------- uploading

def check_repo_id(repo_id: str) -> None:
  """ConfigError unless repo_id is OWNER/NAME."""
  if repo_id.count("/") != 1 or not weights_io.looks_like_hub_name(repo_id):
    raise ConfigError(f"--push_to_hub={repo_id!r} is not a hub repository id: give OWNER/NAME (your "
                      "user or organisation, then the model's name: letters, digits, '-', '_', '.')")


def upload(folder, repo_id: str, *, private: bool, replace: list[str], commit_message: str) -> str:
  """Uploads `folder` to the hub model repository repo_id, created if missing (private if asked;
  an existing one keeps its visibility), and returns the URL of the commit. Files of the
  repository matching `replace` that the folder lacks are deleted; its other files stay. No token,
  a rejected token or no network is a HubError saying what to do."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  check_repo_id(repo_id)
  if huggingface_hub.constants.HF_HUB_OFFLINE:
    raise HubError(f"cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set; unset it to upload")
  if not huggingface_hub.get_token():
    raise HubError(f"cannot push to {repo_id}: no Hugging Face token was found; {LOGIN_HINT}")
  api = huggingface_hub.HfApi()
  try:
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                               commit_message=commit_message, delete_patterns=replace)
  except Exception as e:  # refused token, no network, hub errors: one sentence each
    raise HubError(f"pushing {folder} to the Hugging Face hub repository {repo_id} failed: "
                   f"{_why_not_uploaded(e, repo_id)}") from None
  return commit.commit_url


def _why_not_uploaded(error: Exception, repo_id: str) -> str:
  """What kept an upload from happening, and what to do, as a clause (no token in it)."""
  status = getattr(getattr(error, "response", None), "status_code", None)
  if status == 401:
    return f"the hub refused the token (401 Unauthorized); {LOGIN_HINT}"
  if status == 403:
    return (f"the token may not write to {repo_id} (403 Forbidden): use a token with write access "
            "to that user or organisation")
  first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
  if status is not None:
    return f"the hub answered {status} ({first_line})"
  transport = any(word in type(error).__name__.lower() for word in ("connect", "timeout"))
  if isinstance(error, (ConnectionError, TimeoutError)) or transport:  # httpx's are neither
    return (f"the hub could not be reached ({type(error).__name__}: {first_line}); check the network "
            "(and HF_ENDPOINT)")
  return f"{type(error).__name__}: {first_line}"
