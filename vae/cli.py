"""Helpers shared by the thin scripts in ``scripts/``: how a script runs
(:func:`run`), exit statuses, flag parsing, signals.

Exit statuses: 0 done; 1 ``compare.py``: the runs differ; 2 a user error
(bad config value, flag, file or directory...); 3 the loss became
non-finite (``config.on_nan="stop"``); 75 stopped by SIGTERM/SIGINT after
writing a checkpoint (run the same command to resume); 141 standard output
was closed before the script finished writing to it (``| head``: 128 +
SIGPIPE, what a shell reports for a command a closed pipe stopped; ``--help``
into a closed pipe exits 0). The library raises :mod:`vae.errors`
exceptions; only this module turns them into exit statuses.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import re
import signal
import sys
from typing import Callable, Iterator, NoReturn

import ml_collections
from absl import app, flags, logging

from vae import config as config_lib
from vae import errors, inputs

EXIT_DIFFERS = 1  # compare.py: the runs (or run and reference) differ
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later (re-running resumes)
EXIT_PIPE_CLOSED = 128 + signal.SIGPIPE  # 141
# The ends of a run that are not user errors, and their exit statuses.
EXIT_STATUSES = {errors.Interrupted: EXIT_INTERRUPTED,
                 errors.Diverged: EXIT_DIVERGED}
USER_ERRORS = errors.USER_ERRORS
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort")


def run(main: Callable[[list[str]], int | None],
        argv: list[str] | None = None) -> NoReturn:
  """Run a script's ``main`` (``absl.app.run`` with :func:`parse_flags`),
  and exit quietly when standard output is closed early (``| head``).

  A closed pipe raises ``BrokenPipeError`` at the next write or flush,
  wherever that is; here standard output is then pointed at /dev/null (so
  the interpreter's final flush cannot fail again) and the process exits
  with EXIT_PIPE_CLOSED (0 for ``--help``), nothing on stderr. An exit
  status already decided (a user error's 2) is kept.

  Args:
    main: the script's ``main(argv)``; its return value is the exit status.
    argv: the command line (default ``sys.argv``).
  """
  argv = list(sys.argv if argv is None else argv)
  asked_help = any(a in HELP_FLAGS for a in argv[1:])
  parser = functools.partial(parse_flags, main=main)
  status: int | str | None = None
  pipe_closed = False
  try:
    app.run(main, argv=argv, flags_parser=parser)
  except SystemExit as e:
    status = e.code
  except BrokenPipeError:
    pipe_closed = True
  try:
    sys.stdout.flush()
  except BrokenPipeError:
    pipe_closed = True
  if pipe_closed:
    _discard_stdout()
    if status in (None, 0):
      status = 0 if asked_help else EXIT_PIPE_CLOSED
  sys.exit(status)


def _discard_stdout() -> None:
  """Point standard output at /dev/null (its file descriptor, so that what
  is still buffered, and the interpreter's flush at exit, go nowhere)."""
  try:
    fd = sys.stdout.fileno()
  except (AttributeError, OSError, ValueError):  # not a file (a test's buffer)
    return
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, fd)
  os.close(devnull)


def progress_on_terminal(requested: bool) -> bool:
  """Whether to draw a progress bar: asked for, and stderr is a terminal
  (a bar redraws with carriage returns, which a log file keeps)."""
  return bool(requested) and sys.stderr.isatty()


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
  except (*USER_ERRORS, app.UsageError) as e:
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


def parse_flags(argv: list[str], main: Callable | None = None) -> list[str]:
  """absl flags parser for ``app.run`` (:func:`run` passes it): a bad flag
  or ``--config.<field>`` override (unknown field, wrong type), or a config
  file that is missing, not a file, or cannot be loaded, gives one line and
  exit status 2, not a traceback. ``--help`` prints :func:`print_help`
  (``main``: the script's main, whose module has the usage text)."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    print_help(argv, main)
    sys.exit(0)
  try:
    for name in _CONFIG_FLAGS:
      for value in _flag_values(argv, name):
        inputs.existing_file(value.split(":", 1)[0], CONFIG_FILE_EXPECTED,
                             flag=f"--{name}")
    remaining = flags.FLAGS(argv)
  except USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except Exception as e:  # flags.Error, and ml_collections' own errors
    text = _flag_error_text(e)
    if _raised_loading_a_config_file(e) or "earlier failure to load" in str(e):
      _config_load_error(argv, text)
    print(f"error: bad command-line flag: {text}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  for name in _CONFIG_FLAGS:
    # A config file that failed to load is a placeholder that raises on
    # first use: use it here, so the failure is one line.
    if name in flags.FLAGS and flags.FLAGS[name].present:
      try:
        value = flags.FLAGS[name].value
        if not isinstance(value, ml_collections.ConfigDict):
          raise TypeError(f"get_config() returned {type(value).__name__!r}, "
                          "not a ml_collections.ConfigDict")
        value.keys()
      except Exception as e:  # whatever the config file raised
        _config_load_error(argv, _flag_error_text(e), name)
  return remaining


_CONFIG_FLAGS = ("config",)
CONFIG_FILE_EXPECTED = ("an experiment config file: a Python file whose "
                        "get_config() returns a ml_collections.ConfigDict")


def _flag_values(argv: list[str], name: str) -> list[str]:
  """The values given to ``--name`` on the command line (``--name=V`` or
  ``--name V``; ``--name.field=...`` overrides are not values of it)."""
  values = []
  for i, arg in enumerate(argv[1:], start=1):
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        values.append(arg[len(prefix) + 1:])
      elif arg == prefix and i + 1 < len(argv):
        values.append(argv[i + 1])
  return values


def _raised_loading_a_config_file(e: BaseException) -> bool:
  """Whether ``e`` (or the exception it was raised from) came out of
  ml_collections loading a config file (the file, or its get_config()),
  not from parsing a flag's value."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    tb = e.__traceback__
    while tb is not None:
      owner = tb.tb_frame.f_locals.get("self")
      if type(owner).__name__ == "ConfigFileFlagParser":  # ml_collections'
        return True
      tb = tb.tb_next
    e = e.__cause__ or e.__context__
  return False


def _flag_error_text(e: BaseException) -> str:
  """One line of an exception raised while parsing flags: the last line of
  an embedded traceback, without the repr quotes absl and KeyError add
  (``'\\'betta\\'...'``), without the ``vae.errors.X:`` prefix of the
  library's own errors, whitespace collapsed."""
  text = str(e)
  for _ in range(3):  # a repr of a repr...: undo the quoting, not the text
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
      try:
        unquoted = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        break
      if not isinstance(unquoted, str):
        break
      text = unquoted
  if "Traceback" in text:  # a config file raised: keep its last line
    text = text.strip().splitlines()[-1]
  elif "Attempted" in text:  # a config file that cannot be read
    text = text.strip().splitlines()[-1]
  text = text.replace("Configuration is not available because of an earlier "
                      "failure to load: ", "")
  text = re.sub(r"^(?:vae\.)?errors\.\w+: ", "", text.strip())
  return " ".join(text.split())


def _config_load_error(argv: list[str], text: str,
                       name: str = "config") -> NoReturn:
  """One line for a config file that exists but cannot be loaded (a
  syntax error, no get_config(), the wrong type, an error it raised)."""
  given = _flag_values(argv, name)
  where = f"--{name}={given[-1]!r}" if given else f"--{name}"
  if "has no attribute 'get_config'" in text:
    text = f"defines no get_config(); expected {CONFIG_FILE_EXPECTED}"
  elif "get_config() takes 0 positional arguments" in text:
    text = "this config file has no variants (its get_config() takes no "
    text += "argument): drop the ':<variant>'"
  print(f"error: {where} could not be loaded: {text}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def print_help(argv: list[str], main: Callable | None = None) -> None:
  """``--help``: the script's usage, its flags and, for a script with
  ``--config``, every config field with its default (what
  ``--config.<field>=...`` can override); exit status 0."""
  module = sys.modules.get(main.__module__) if main is not None else None
  if module is None or module.__name__ == "__main__":
    import __main__ as module  # the script being run
    flags_module = sys.argv[0]  # absl's key for flags defined in __main__
  else:
    flags_module = module.__name__
  del argv
  print((module.__doc__ or "").strip() + "\n")
  print(flags.FLAGS.module_help(flags_module))
  if not any(name in flags.FLAGS for name in _CONFIG_FLAGS):
    return
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
