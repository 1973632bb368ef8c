"""The errors a user can fix, each with a message saying what to do (a leaf: anything may import it).

The commands (`python -m sevlm_jax.main`, `python -m sevlm_jax.data.prepare`) print any UserError,
bad flag or usage error as one line and exit with status 2 (one_line_errors, parse_flags).
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


def missing_dependency_message(package: str, needed_for: str, reason: str, platform: str,
                               extra: str | None = None) -> str:
  """What `needed_for` lacks, why, and what to do: where the package has no wheel, that prediction
  works here and where the rest runs; elsewhere, how to install it (extra: the sevlm_jax extra
  that brings it, for a package only an optional feature needs)."""
  without, name = NOT_INSTALLED_ON.get(package, (None, None))
  if extra:
    advice = f"install it with `pip install 'sevlm_jax[{extra}]'`"
  elif platform == without:
    advice = (f"it has no wheel for {name}, so pip does not install it there; prediction, export "
              "and serving work here; train, prepare and evaluate on Linux, macOS or WSL")
  else:
    advice = (f"install it (`pip install {package}`, a dependency of sevlm_jax); prediction, "
              "export and serving work without it")
  return f"{needed_for} needs {package}, which cannot be imported here ({reason}): {advice}"


def optional_import(module: str, needed_for: str, extra: str | None = None):
  """The module `module` (e.g. "array_record.python.array_record_module"), or a
  MissingDependencyError saying that `needed_for` (e.g. "training") needs its package (and, with
  `extra`, which sevlm_jax extra installs it).

  For the packages prediction does without: they are imported where first used, through this."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    # The package that is missing: the one asked for, or one it imports (grain's array_record).
    package = (e.name or module).split(".")[0]
    message = missing_dependency_message(package, needed_for, str(e), sys.platform, extra)
    raise MissingDependencyError(message) from e


def check_choice(field: str, value, choices) -> None:
  """ConfigError naming the field and its choices unless value is one of them (the one message
  every config section's check gives for a closed set of choices)."""
  if value not in tuple(choices):
    raise ConfigError(f"{field}={value!r}; choose one of {', '.join(map(str, choices))}")


# ----------------------------------------------------------------------------- the commands

def one_line(message) -> str:
  """The message with its line breaks and runs of space collapsed into single spaces."""
  return " ".join(str(message).split())


def exit_with_error(message) -> None:
  """Ends a command the way every command reports what the user can fix: `error: MESSAGE` on one
  line of stderr, exit status 2."""
  print(f"error: {one_line(message)}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parser for app.run(flags_parser=...): a bad flag or flag value is one line and
  exit status 2, not absl's two-line FATAL message with status 1."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with_error(f"{str(e).strip().splitlines()[-1]} (--helpshort lists the flags)")


def one_line_errors(main, also: tuple[type[Exception], ...] = ()):
  """main(argv) for absl's app.run, with what the user can fix (a UserError, an OSError, a
  UsageError, and the exception types `also`) reported by exit_with_error instead of a traceback
  or absl's usage dump. -v 1 (--verbosity=1) shows the traceback of all but UsageError."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel

  def run(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      exit_with_error(e)
    except (UserError, OSError, *also) as e:
      if logging.level_debug():
        raise
      exit_with_error(e)

  return run
