"""Helpers shared by the thin scripts in ``scripts/``: exit statuses, flag
parsing, signals.

Exit statuses: 0 done; 2 a user error (bad config value, data file, path...);
3 the loss became non-finite (``config.on_nan="stop"``); 75 stopped by
SIGTERM/SIGINT after writing a checkpoint (run the same command to resume).
The library raises :mod:`vae.errors` exceptions; only this module turns them
into exit statuses.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from typing import Callable, Iterator

from absl import flags, logging

from vae import config as config_lib
from vae import errors

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later (re-running resumes)
# The ends of a run that are not user errors, and their exit statuses.
EXIT_STATUSES = {errors.Interrupted: EXIT_INTERRUPTED,
                 errors.Diverged: EXIT_DIVERGED}
USER_ERRORS = errors.USER_ERRORS


@contextlib.contextmanager
def user_errors():
  """Turn errors caused by what the user typed or passed, and the ends of
  interrupted or diverged runs, into a one-line message on stderr and a
  distinct exit status, without a traceback. Also keeps the libraries'
  INFO chatter (orbax, absl) off the terminal."""
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_logger().addFilter(_drop_orbax_thread_errors)
  try:
    yield
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except tuple(EXIT_STATUSES) as e:
    print(f"{type(e).__name__.lower()}: {e}", file=sys.stderr)
    sys.exit(EXIT_STATUSES[type(e)])


def _drop_orbax_thread_errors(record) -> bool:
  """Orbax logs each failure of its background save threads at ERROR, with
  tracebacks, before re-raising it to the caller, where vae.store.checkpoint turns
  it into a one-line ``CheckpointError``/``RunError``: drop those logs."""
  return not ("orbax" in record.pathname and record.levelno >= 40)  # ERROR


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags parser for ``app.run(main, flags_parser=cli.parse_flags)``:
  a bad flag or ``--config.<field>`` override (unknown field, wrong type)
  gives one line and exit status 2, not a traceback."""
  if any(a in ("-h", "--help", "-help", "--helpshort") for a in argv[1:]):
    print_help(argv)
    sys.exit(0)
  try:
    remaining = flags.FLAGS(argv)
    for name in _CONFIG_FLAGS:
      # A config file that failed to load is a placeholder that raises on
      # first use: use it here, so the failure is one line.
      if name in flags.FLAGS and flags.FLAGS[name].present:
        flags.FLAGS[name].value.keys()
    return remaining
  except Exception as e:  # flags.Error, and ml_collections' own errors
    text = str(e).replace("\\n", "\n").replace("\\'", "'")
    if "Attempted" in text:  # a config file that cannot be read
      message = f"--config: {text.strip().splitlines()[-1].strip()}"
    else:
      if "Traceback" in text:  # a config file raised: keep its last line
        text = text.strip().splitlines()[-1]
      message = " ".join(text.strip("'\"").split())
    print(f"error: bad command-line flag: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


_CONFIG_FLAGS = ("config",)


def print_help(argv: list[str]) -> None:
  """``--help``: the script's usage, its flags, and every config field with
  its default (what ``--config.<field>=...`` can override); exit status 0."""
  import __main__  # the script being run
  print((__main__.__doc__ or "").strip() + "\n")
  print(flags.FLAGS.main_module_help())
  defaults = config_lib.default_config()
  print("\nConfig fields (override any with --config.<field>=<value>; an "
        "experiment file sets its own values for some):")
  for field in sorted(defaults.keys()):
    print(f"  --config.{field}  (default: {defaults[field]!r})")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Callable[[], str | None]]:
  """While active, SIGTERM and SIGINT ask training to stop at the next epoch
  boundary (after a checkpoint) instead of killing it; a second signal
  stops at once. Yields the ``should_stop`` callable for
  :func:`vae.train.loop.fit` (``Hooks.should_stop``)."""
  received: list[str] = []

  def handler(signum, frame):
    del frame
    if received:
      raise errors.Interrupted(
          f"stopped at once by a second {signal.Signals(signum).name}; the "
          "last checkpoint is kept. Run the same command again to resume.")
    received.append(signal.Signals(signum).name)
    print(f"\n{received[0]} received: stopping after this epoch's checkpoint "
          "(send it again to stop at once).", file=sys.stderr, flush=True)

  previous = {s: signal.signal(s, handler)
              for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield lambda: received[0] if received else None
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
