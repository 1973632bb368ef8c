"""The errors a user can fix, each with a message saying what to do (a leaf: anything may import it).

`python -m sevlm_jax.main` prints any UserError as one line and exits with status 2.
"""

import importlib
import sys


class UserError(Exception):
  """A problem with the user's input, config or files, not a bug: its message is the whole story."""


class ConfigError(UserError, ValueError):
  """A config that cannot run, with a message saying which field to set."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """A workdir without the checkpoint (or run files) that evaluation, prediction or serving need."""


class CheckpointError(UserError, ValueError):
  """A pretrained checkpoint that does not fit the model: a missing, unexpected or mis-shaped key."""


class InputError(UserError, ValueError):
  """An image (or other input) that cannot be used, with the reason."""


class HubError(UserError):
  """The Hugging Face hub refused an upload or could not be reached: no token, a rejected token,
  no network; the message says which and what to do (never the token)."""


class MissingDependencyError(UserError, ImportError):
  """A package that only training, data preparation or evaluation needs is not installed here."""


# Dependencies that setup.cfg's environment markers leave out on some platforms, because they have
# no wheel there: {package: (sys.platform, the platform's name)}.
NOT_INSTALLED_ON = {"array_record": ("win32", "Windows")}


def missing_dependency_message(package: str, needed_for: str, reason: str, platform: str) -> str:
  """What `needed_for` lacks, why, and what to do: where the package has no wheel, that prediction
  works here and where the rest runs; elsewhere, how to install it."""
  without, name = NOT_INSTALLED_ON.get(package, (None, None))
  if platform == without:
    advice = (f"it has no wheel for {name}, so pip does not install it there; prediction, export "
              "and serving work here; train, prepare and evaluate on Linux, macOS or WSL")
  else:
    advice = (f"install it (`pip install {package}`, a dependency of sevlm_jax); prediction, "
              "export and serving work without it")
  return f"{needed_for} needs {package}, which cannot be imported here ({reason}): {advice}"


def optional_import(module: str, needed_for: str):
  """The module `module` (e.g. "array_record.python.array_record_module"), or a
  MissingDependencyError saying that `needed_for` (e.g. "training") needs its package.

  For the packages prediction does without: they are imported where first used, through this."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    # The package that is missing: the one asked for, or one it imports (grain's array_record).
    package = (e.name or module).split(".")[0]
    message = missing_dependency_message(package, needed_for, str(e), sys.platform)
    raise MissingDependencyError(message) from e


def check_choice(field: str, value, choices) -> None:
  """ConfigError naming the field and its choices unless value is one of them (the one message
  every config section's check gives for a closed set of choices)."""
  if value not in tuple(choices):
    raise ConfigError(f"{field}={value!r}; choose one of {', '.join(map(str, choices))}")
