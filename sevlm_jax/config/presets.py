"""The repository's configs (configs/sevlm.py and the file it loads beside it) for code with no
checkout: the wheel ships configs/ as sevlm_jax/_configs (setup.cfg), and a checkout reads its
own configs/; the two are the same files.

  presets.get_config("artemis_v1,official")   # what --config=configs/sevlm.py:artemis_v1,official gives
  presets.official_switches()                 # configs/sevlm.py's OFFICIAL: field -> the public code's value
"""

import functools
import importlib.util
import pathlib
from types import ModuleType

import ml_collections

from sevlm_jax.errors import ConfigError

CONFIG_FILE = "sevlm.py"


def configs_dir() -> pathlib.Path:
  """The installed copy (sevlm_jax/_configs/), else the configs/ folder of this checkout."""
  package = pathlib.Path(__file__).resolve().parents[1]
  installed = package / "_configs"
  return installed if installed.is_dir() else package.parent / "configs"


@functools.cache
def _load(directory: pathlib.Path) -> ModuleType:
  """configs/sevlm.py of `directory`, loaded by path (it finds emotion_classifier.py beside it)."""
  path = directory / CONFIG_FILE
  if not path.is_file():
    raise ConfigError(f"{path} is missing: sevlm_jax is installed without its configs; reinstall "
                      "it, or pass a config of your own")
  spec = importlib.util.spec_from_file_location("sevlm_jax_preset_configs", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variants: str = "artemis_v1", directory=None) -> ml_collections.ConfigDict:
  """configs/sevlm.py's config for a comma-separated list of its variants (its VARIANTS)."""
  module = _load(pathlib.Path(directory or configs_dir()).resolve())
  try:
    return module.get_config(variants)
  except ValueError as e:  # an unknown variant: the file's own message names the choices
    raise ConfigError(str(e)) from None


def official_switches(directory=None) -> dict:
  """The `official` variant's switches: dotted field -> the public code's value."""
  return dict(_load(pathlib.Path(directory or configs_dir()).resolve()).OFFICIAL)
