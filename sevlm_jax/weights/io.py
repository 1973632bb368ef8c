"""Finding and reading checkpoints: safetensors and npz (no PyTorch), .pt/.bin if torch is there.

A source is a local file, a local directory (Hugging Face layout:
model.safetensors or a sharded model.safetensors.index.json), or a Hugging
Face hub name ("distilgpt2", "openai/clip-vit-base-patch16") downloaded with
huggingface_hub where the network allows.
"""

import json
import os
import pathlib
import re

import numpy as np

from sevlm_jax import io_utils
from sevlm_jax.errors import CheckpointError

_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def _looks_like_hub_name(source: str) -> bool:
  return bool(_HUB_NAME.match(source)) and not source.endswith(
      (".safetensors", ".npz", ".pt", ".bin", ".pth"))


_SAFETENSORS_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.json")


def download(name: str, allow_patterns=_SAFETENSORS_PATTERNS,
             local_hint: str = "a local directory holding model.safetensors",
             revision: str | None = None) -> pathlib.Path:
  """A hub model repository's files matching allow_patterns (None: all of them) at `revision`
  (None: its main branch), downloaded or found in huggingface_hub's cache: HF_HOME / HF_HUB_CACHE,
  HF_HUB_OFFLINE=1 (the cache only), HF_ENDPOINT and the stored login apply."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  try:
    path = huggingface_hub.snapshot_download(
        repo_id=name, repo_type="model", revision=revision,
        allow_patterns=None if allow_patterns is None else list(allow_patterns))
  except Exception as e:  # network, auth, unknown repo or revision, offline miss: one sentence each
    at = f" (revision {revision})" if revision else ""
    raise CheckpointError(f"'{name}'{at} is not a local file or directory, and "
                          f"{_why_not_downloaded(e, revision)}; or pass {local_hint}") from None
  return pathlib.Path(path)


def _why_not_downloaded(error: Exception, revision: str | None) -> str:
  """What kept a hub download from happening, and what to do, as a clause (no token in it)."""
  # huggingface_hub.utils has held these error types since before our version floor;
  # IncompleteSnapshotError (a partial cached snapshot) is newer.
  from huggingface_hub import constants, utils as errors  # pylint: disable=import-outside-toplevel
  import huggingface_hub.errors  # pylint: disable=import-outside-toplevel
  cache = constants.HF_HUB_CACHE
  status = getattr(getattr(error, "response", None), "status_code", None)
  if isinstance(error, getattr(huggingface_hub.errors, "IncompleteSnapshotError", ())):
    return (f"its copy in the Hugging Face cache ({cache}) is incomplete: download it again with "
            "the network on")
  if constants.HF_HUB_OFFLINE:
    return (f"it is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 is set: download "
            "it once with the network on (HF_HUB_OFFLINE unset)")
  if isinstance(error, errors.RevisionNotFoundError):
    return f"its repository on the Hugging Face hub has no revision '{revision}': name one that exists"
  if isinstance(error, errors.GatedRepoError):
    return ("it is a gated repository on the Hugging Face hub: accept its conditions on its page, "
            "then log in (`hf auth login`) or set HF_TOKEN")
  if isinstance(error, errors.RepositoryNotFoundError) or status in (401, 403):
    return ("the Hugging Face hub has no model repository of that name that this machine may read: "
            "check the name; for a private repository log in (`hf auth login`) or set HF_TOKEN")
  if isinstance(error, errors.LocalEntryNotFoundError):  # the hub unreachable, nothing cached
    cause = error.__cause__ or error
    return (f"the Hugging Face hub could not be reached ({type(cause).__name__}: {_first_line(cause)}) "
            f"and it is not in the cache ({cache}): check the network (and HF_ENDPOINT)")
  return f"downloading it from the Hugging Face hub failed ({type(error).__name__}: {_first_line(error)})"


def _first_line(error: BaseException) -> str:
  return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def looks_like_hub_name(source: str) -> bool:
  return _looks_like_hub_name(source)


def resolve(source: str | os.PathLike) -> list[pathlib.Path]:
  """The checkpoint file(s) a source names (several for a sharded checkpoint)."""
  text = os.fspath(source)
  if not io_utils.is_local(text) and io_utils.as_path(text).exists():
    text = io_utils.local_copy_tree(text)  # gs://...: read from a local copy, downloaded once
  path = pathlib.Path(text).expanduser()
  if not path.exists():
    if isinstance(source, str) and _looks_like_hub_name(text):
      path = download(text)
    else:
      raise CheckpointError(f"checkpoint '{text}' does not exist")
  if path.is_file():
    return [path]
  single = path / "model.safetensors"
  if single.is_file():
    return [single]
  index = path / "model.safetensors.index.json"
  if index.is_file():
    try:
      shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
    files = [path / s for s in shards]
    for f in files:
      if not f.is_file():
        raise CheckpointError(f"{index}: shard '{f.name}' is missing from {path}")
    return files
  found = sorted(p.name for p in path.iterdir() if p.is_file())
  others = sorted(p for p in found if p.endswith(".safetensors"))
  if len(others) == 1:
    return [path / others[0]]
  raise CheckpointError(
      f"directory {path} holds no model.safetensors (found: {', '.join(found) or 'nothing'});"
      " save the model with save_pretrained(..., safe_serialization=True) or pass a file")


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  # bfloat16 tensors come back as ml_dtypes arrays; the key map casts to float32.
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  return load_file(str(path))


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise CheckpointError(
        f"{path}: reading a PyTorch file needs torch, which is not installed; convert it to"
        " .safetensors (or .npz) on a machine that has torch") from None
  try:  # OpenAI's CLIP releases are TorchScript archives.
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
  except Exception:  # pylint: disable=broad-except
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
    state = state["state_dict"]
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
  return {k: v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
          for k, v in state.items()}


def read_tensors(source: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of a checkpoint by key, and a description of where they came from."""
  files = resolve(source)
  tensors: dict[str, np.ndarray] = {}
  for path in files:
    suffix = path.suffix.lower()
    readers = {".safetensors": _read_safetensors, ".npz": _read_npz,
               ".pt": _read_torch, ".pth": _read_torch, ".bin": _read_torch}
    if suffix not in readers:
      raise CheckpointError(f"{path}: unsupported checkpoint format '{suffix}'"
                            " (expected .safetensors, .npz, or .pt/.bin with torch installed)")
    try:
      tensors.update(readers[suffix](path))
    except CheckpointError:
      raise
    except Exception as e:  # corrupt or truncated files raise many different types
      raise CheckpointError(f"{path}: cannot read it as {suffix} ({type(e).__name__}: {e})"
                            ) from None
  where = str(files[0]) if len(files) == 1 else f"{files[0].parent} ({len(files)} shards)"
  return tensors, where
