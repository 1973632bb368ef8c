"""A model directory as a Hugging Face Space: the files `--mode=export --space` adds, and what
the Space's Gradio app shows.

  python -m sevlm_jax.main --mode=export --workdir=runs/demo --out=exported/demo --space
  python exported/demo/app.py          # the app on 127.0.0.1:7860; a Space runs the same file

A Space installs requirements.txt and runs app.py from the folder it is given. sevlm_jax is not
on PyPI, so the folder carries its own copy of the package (sevlm_jax/, with its vendored files),
found first on sys.path because app.py lies beside it; requirements.txt pins, at the versions of
the exporting environment, only the distributions that prediction and the app import. The copy
is listed in the manifest with its sha256 like every other file, so a changed or partial copy
fails to load as a changed weight file does. app.py, requirements.txt and README.md are not: they
are the Space's own settings, free to edit (a GPU Space's jax, another layout; the title and
hardware the hub's settings page writes into README.md's front matter), and app.py is what runs
the check anyway. The Space's settings (sdk: gradio, app_file, the Gradio and Python versions)
join the model card's front matter.

The app (assets/space_app.py, copied as app.py) shows serve.prediction_json's answer, the one the
local page shows; this module turns that answer into the app's values without importing gradio.
"""

from importlib import metadata
from importlib import resources
import pathlib
import sys

import numpy as np
from PIL import Image

from sevlm_jax import io_utils
from sevlm_jax.errors import ConfigError

APP_FILE = "app.py"
REQUIREMENTS_FILE = "requirements.txt"
# At the folder's top, outside the manifest: the Space's own settings. The card (README.md) is
# one of them in a Space: its front matter holds the Space's title, hardware and sdk, which the
# hub's settings page edits in place.
UNLISTED_FILES = (APP_FILE, REQUIREMENTS_FILE, "README.md")
PACKAGE = "sevlm_jax"
# The folders setup.cfg's package_dir ships inside the package (sevlm_jax/<name> in a wheel) and
# where a checkout keeps them; tests/test_space.py checks this against setup.cfg.
MAPPED_FOLDERS = {"_gpt2_bpe": "third_party/gpt2_bpe", "_artemis": "third_party/artemis",
                  "_xla_gpu_specs": "third_party/xla_gpu_specs", "_configs": "configs"}
# What app.py imports (the predictor, the page's answer, gradio), as distributions; jaxlib is pinned
# beside jax because jax accepts a range of it. tests/test_space.py checks this against the imports.
REQUIREMENTS = ("absl-py", "flax", "gradio", "jax", "jaxlib", "ml_collections", "ml_dtypes",
                "numpy", "orbax-checkpoint", "pillow", "safetensors", "simplemma", "tokenizers")
TITLE = "SEVLM: emotions in art"
VAD_DIMENSIONS = ("valence", "arousal", "dominance")
ATTENTION_RGB = (214, 39, 40)  # the page's red
ATTENTION_PEAK_OPACITY = 0.75  # as the page draws a map: opacity relative to the map's peak
MAX_SHOWN_SIDE = 768  # pixels: a larger picture is shrunk for the attention view

# ----------------------------------------------------------------------------- what the app shows

def emotion_scores(answer: dict) -> dict[str, float]:
  """{emotion: probability} of the nine emotions (gr.Label's value)."""
  return {name: float(p) for name, p in zip(answer["emotions"], answer["probabilities"])}


def word_choices(answer: dict) -> list[tuple[str, int]]:
  """(label, index) per explanation word; the number tells repeated words apart."""
  return [(f"{k + 1}. {word}", k) for k, word in enumerate(answer["words"])]


def vad_rows(answer: dict) -> dict[str, list]:
  """Columns of a long table, one row per explanation token and VAD dimension (gr.LinePlot's
  data, coloured by dimension): position (1-based), token ("position text", the position padded
  with spaces so that sorting the labels as text keeps their order), dimension, value."""
  columns = {"position": [], "token": [], "dimension": [], "value": []}
  width = len(str(len(answer["tokens"])))
  for t, (token, vad) in enumerate(zip(answer["tokens"], answer["vad"])):
    for name, value in zip(VAD_DIMENSIONS, vad):
      columns["position"].append(t + 1)
      columns["token"].append(f"{t + 1:>{width}} {token.strip()}")
      columns["dimension"].append(name)
      columns["value"].append(float(value))
  return columns


def attention_overlay(picture: Image.Image, attention_GxG, max_side: int = MAX_SHOWN_SIDE
                      ) -> np.ndarray:
  """uint8 [H, W, 3]: the picture (shrunk to at most max_side) under one word's GxG attention map,
  each patch a red square with opacity relative to the map's peak, as the page draws it.

  The model sees the whole picture resized to a square (no crop), so the grid spans the picture
  whatever its aspect ratio; nearest-neighbour upsampling keeps the patches' edges.
  """
  shown = picture.convert("RGB")
  shown.thumbnail((max_side, max_side))
  weights_GxG = np.asarray(attention_GxG, np.float32)
  peak = float(weights_GxG.max()) if weights_GxG.size else 0.0
  opacity_GxG = ATTENTION_PEAK_OPACITY * weights_GxG / (peak if peak > 0 else 1.0)
  opacity_HxW = np.asarray(Image.fromarray(opacity_GxG).resize(shown.size, Image.NEAREST))
  pixels = np.asarray(shown, np.float32)
  blended = (pixels * (1 - opacity_HxW[..., None])
             + np.asarray(ATTENTION_RGB, np.float32) * opacity_HxW[..., None])
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)

# ----------------------------------------------------------------------------- a Space's files

def write_space_files(folder: pathlib.Path) -> None:
  """app.py, requirements.txt and the package's own copy, into `folder` (an export being
  written)."""
  requirements = requirements_txt()  # first: a missing distribution stops before any is written
  app = io_utils.package_text(__package__, "space_app.py")
  (folder / APP_FILE).write_text(app, encoding="utf-8")
  (folder / REQUIREMENTS_FILE).write_text(requirements, encoding="utf-8")
  copy_package(folder / PACKAGE)


def installed_version(distribution: str) -> str:
  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:
    raise ConfigError(f"--space needs {distribution} installed here, to pin the version the Space "
                      "installs: pip install 'sevlm_jax[space]'") from None


def requirements_txt() -> str:
  """REQUIREMENTS pinned at the installed versions: the Space runs what the export was made with."""
  return "".join(f"{name}=={installed_version(name)}\n" for name in REQUIREMENTS)


def space_keys() -> dict[str, str]:
  """The Space's settings for the card's front matter (see huggingface.co/docs/hub/
  spaces-config-reference): Gradio at the version requirements.txt pins, and this Python (the
  pins exist for it)."""
  return {"title": TITLE, "sdk": "gradio", "sdk_version": installed_version("gradio"),
          "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
          "app_file": APP_FILE}


def with_space_keys(card: str) -> str:
  """The model card with the Space's settings added to its front matter (one is made if it has
  none); its other keys and its text stay as they are."""
  import huggingface_hub  # pylint: disable=import-outside-toplevel
  keys = space_keys()
  if not card.startswith("---"):
    return f"---\n{huggingface_hub.SpaceCardData(**keys).to_yaml()}\n---\n{card}"
  parsed = huggingface_hub.RepoCard(card)  # plain CardData: the model card's keys are kept verbatim
  for key, value in keys.items():
    parsed.data[key] = value
  return str(parsed)


def copy_package(destination: pathlib.Path) -> None:
  """The installed sevlm_jax (modules and package data, no bytecode) with its mapped folders:
  what the wheel installs, from a wheel or an editable checkout alike (there the mapped folders
  lie outside the package, in third_party/ and configs/, and importlib does not find them)."""
  package = resources.files(PACKAGE)
  _copy_tree(package, destination)
  for name, in_checkout in MAPPED_FOLDERS.items():
    source = pathlib.Path(str(package)).parent / in_checkout
    if not (package / name).is_dir() and source.is_dir():  # not in the package: a checkout's
      _copy_tree(source, destination / name)


def _copy_tree(source, destination: pathlib.Path) -> None:
  destination.mkdir(parents=True, exist_ok=True)
  for entry in source.iterdir():
    if entry.name == "__pycache__" or entry.name.startswith(".") or entry.name.endswith(".pyc"):
      continue
    if entry.is_dir():
      _copy_tree(entry, destination / entry.name)
    else:
      (destination / entry.name).write_bytes(entry.read_bytes())
