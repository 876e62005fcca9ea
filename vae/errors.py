"""Every exception the library raises to its users, and the deprecation table.

Each user-facing failure is one of these classes, with a message that names the
bad value and what is accepted (or, for the ends of a run, where it stopped and
how to resume). Exit statuses are not here: :mod:`vae.cli` maps these classes to
them, so library code never decides how a process ends.

Names that moved to another module keep a deprecated alias for one release:
a module lists them in a ``_MOVED`` table and sets
``__getattr__ = errors.moved(__name__, _MOVED)``. The alias is resolved on first
use (PEP 562), so a module never imports a module above its own tier to keep an
old name alive (``tests/test_layers.py`` checks every table resolves).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping


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


def moved(module: str, table: Mapping[str, str]) -> Callable[[str], Any]:
  """A module ``__getattr__`` resolving deprecated names to their new home.

  Args:
    module: the old module's ``__name__`` (for the message).
    table: old name -> ``"new.module"`` or ``"new.module:new_name"``.

  Returns:
    The ``__getattr__`` function; it warns with :class:`DeprecationWarning`
    and returns the object, or raises :class:`AttributeError` for any name
    not in ``table``.
  """

  def __getattr__(name: str) -> Any:
    if name not in table:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    target, _, new_name = table[name].partition(":")
    new_name = new_name or name
    warnings.warn(f"{module}.{name} moved to {target}.{new_name}; the old "
                  "name is kept for one release", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(target), new_name)

  return __getattr__
