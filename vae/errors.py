"""Every exception the library raises to its users.

Each user-facing failure is one of these classes, with a message that names the
bad value and what is accepted (or, for the ends of a run, where it stopped and
how to resume). Exit statuses are not here: :mod:`vae.cli` maps these classes to
them, so library code never decides how a process ends.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config field holds a value that is not accepted."""


class DataError(ValueError):
  """A dataset name, directory, file or array that cannot be used."""


class RunError(RuntimeError):
  """The workdir cannot be used as asked (message says why and what to do)."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be saved or restored; the message names the path."""


class CheckpointWarning(UserWarning):
  """A checkpoint was found corrupt and skipped (the message names its path)."""


class Interrupted(BaseException):
  """Training stopped on request (SIGTERM/SIGINT): after a checkpoint, or
  at once on a second signal. A BaseException, like KeyboardInterrupt: the
  second signal can arrive inside any code (a checkpoint write, orbax), and
  no ``except Exception`` there may turn it into another error."""


class Diverged(Exception):
  """A run's loss became non-finite (``config.on_nan="stop"``)."""


# Errors caused by what the user typed or passed (one line, no traceback).
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, RunError, CheckpointError)

