"""The errors a user can fix, each with a message saying what to do (a leaf: anything may import it).

`python -m sevlm_jax.main` prints any UserError as one line and exits with status 2.
"""


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


def check_choice(field: str, value, choices) -> None:
  """ConfigError naming the field and its choices unless value is one of them (the one message
  every config section's check gives for a closed set of choices)."""
  if value not in tuple(choices):
    raise ConfigError(f"{field}={value!r}; choose one of {', '.join(map(str, choices))}")
