"""--config for a pip-installed sevlm_jax: `--config=configs/sevlm.py:demo` names the file in the
current directory when there is one (a checkout, or a user's own configs/), else the copy that ships
inside the package (sevlm_jax/_configs, see presets.py). So every command the README gives works
the same from a checkout and from an installed wheel.

Resolved in argv, before ml_collections' config_flags reads the path.
"""

import os

from sevlm_jax.config import presets
from sevlm_jax.errors import ConfigError

PACKAGED_PREFIX = "configs/"  # how --config names a packaged file: configs/<file>[:variants]


def packaged_configs() -> list[str]:
  """The packaged configs as --config names them: configs/<file>.py."""
  directory = presets.configs_dir()
  names = sorted(p.name for p in directory.glob("*.py") if not p.name.startswith("_"))
  return [PACKAGED_PREFIX + n for n in names]


def resolve(value: str) -> str:
  """The --config value with its file resolved: unchanged when the file exists, the packaged
  copy's path for a missing configs/<file>, else a ConfigError listing the packaged configs."""
  path, colon, variants = value.partition(":")
  if os.path.isfile(path):
    return value
  packaged = presets.configs_dir() / path[len(PACKAGED_PREFIX):]
  if path.startswith(PACKAGED_PREFIX) and packaged.is_file():
    return f"{packaged}{colon}{variants}"
  raise ConfigError(f"--config={value}: no file {path} here, and sevlm_jax ships none of that name; "
                    f"the packaged configs: {', '.join(packaged_configs())} (e.g. "
                    f"--config={PACKAGED_PREFIX}{presets.CONFIG_FILE}:demo)")


def resolve_in_argv(argv: list[str], flag: str = "config") -> list[str]:
  """argv with the value of --<flag>=VALUE (or --<flag> VALUE) resolved; the rest unchanged."""
  out = list(argv)
  for i, arg in enumerate(out):
    for dashes in ("--", "-"):
      if arg.startswith(f"{dashes}{flag}="):
        out[i] = f"{dashes}{flag}={resolve(arg.split('=', 1)[1])}"
      elif arg == f"{dashes}{flag}" and i + 1 < len(out):
        out[i + 1] = resolve(out[i + 1])
  return out
