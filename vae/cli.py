"""Helpers shared by the thin scripts in ``scripts/``."""

from __future__ import annotations

import contextlib
import sys


def _user_error_types() -> tuple[type[BaseException], ...]:
  from vae import checkpoint, config, data, runs
  return (config.ConfigError, data.DataError, runs.RunError,
          checkpoint.CheckpointError)


@contextlib.contextmanager
def user_errors():
  """Turn errors caused by what the user typed or passed into a one-line
  message on stderr and exit status 2, without a traceback. Also keeps the
  libraries' INFO chatter (orbax, absl) off the terminal."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  try:
    yield
  except _user_error_types() as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
