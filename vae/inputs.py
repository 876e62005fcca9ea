"""Files and directories a user names: the one path that checks them.

Every file or directory the scripts are given (experiment configs, run and
sweep directories, the JSON files inside them, reference files, ``--data``
arrays, checkpoint directories, the files ``--write_reference`` writes) is
checked here before anything reads it as what it should be. A failure is
one exception whose message is one line: the path (or the flag and its
value), what is wrong with it, and what was expected::

  ref.json is empty; expected a reference file: ...
  runs/a/config.json is not complete JSON (truncated or damaged: ...); expected ...
  ref.json holds a JSON list, not an object; expected ...
  ref.json lacks the keys 'epoch', 'metrics'; expected ...
  --config='experiments' is a directory; expected an experiment config file ...

Sizes a user asks for are checked here too (:func:`check_memory`): a
computation whose estimated memory exceeds what the host has available is
refused before anything is compiled, naming the estimate.

The exception class of a path check is the caller's (``error``): :class:`~vae.errors.RunError`
for run and sweep directories and the files in them (the default),
:class:`~vae.errors.DataError` for data files. Nothing here writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NoReturn

from vae.errors import ConfigError, RunError

PathLike = str | os.PathLike
# JSON types by the name a message gives them.
_JSON_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a JSON string",
               bool: "a JSON boolean", int: "a JSON number",
               float: "a JSON number", type(None): "JSON null"}


def _where(path: PathLike, flag: str | None) -> str:
  return f"{flag}={str(path)!r}" if flag else str(path)


def _fail(error: type[Exception], path: PathLike, flag: str | None,
          problem: str, expected: str) -> NoReturn:
  raise error(f"{_where(path, flag)} {problem}; expected {expected}")


def existing_file(path: PathLike, expected: str, *, flag: str | None = None,
                  error: type[Exception] = RunError) -> Path:
  """``path`` as a Path, if it names a file that exists.

  Args:
    path: the file.
    expected: what it should be, for the message ("a reference file ...").
    flag: the flag it came from (``"--config"``): the message then names
      ``--config='<path>'`` instead of the bare path.
    error: the exception class raised.

  Raises:
    error: it does not exist, or it is a directory or not a regular file.
  """
  path = Path(path)
  if path.is_dir():
    _fail(error, path, flag, "is a directory", expected)
  if not path.exists():
    _fail(error, path, flag, "does not exist", expected)
  if not path.is_file():
    _fail(error, path, flag, "is not a regular file", expected)
  return path


def existing_dir(path: PathLike, expected: str, *, flag: str | None = None,
                 error: type[Exception] = RunError) -> Path:
  """``path`` as a Path, if it names a directory that exists.

  Raises:
    error: it does not exist, or it is a file (arguments as
      :func:`existing_file`).
  """
  path = Path(path)
  if not path.exists():
    _fail(error, path, flag, "does not exist", expected)
  if not path.is_dir():
    _fail(error, path, flag, "is a file, not a directory", expected)
  return path


def dir_or_absent(path: PathLike, expected: str, *, flag: str | None = None,
                  error: type[Exception] = RunError) -> Path:
  """``path`` as a Path, if it is a directory or nothing yet (a directory a
  script creates when missing).

  Raises:
    error: it exists and is not a directory.
  """
  path = Path(path)
  if path.exists() and not path.is_dir():
    _fail(error, path, flag, "is a file, not a directory", expected)
  return path


def output_file(path: PathLike, expected: str, *, flag: str | None = None,
                error: type[Exception] = RunError) -> Path:
  """``path`` as a Path, if a file can be written there: it is not a
  directory and its parent directory exists.

  Raises:
    error: it is a directory, or its parent is missing or a file.
  """
  path = Path(path)
  if path.is_dir():
    _fail(error, path, flag, "is a directory", expected)
  parent = path.parent
  if not parent.is_dir():
    _fail(error, path, flag, f"cannot be written: its directory {parent} "
          f"{'is a file' if parent.exists() else 'does not exist'}", expected)
  return path


def _kind(value: Any) -> str:
  return _JSON_KINDS.get(type(value), type(value).__name__)


def json_object(value: Any, where: str, expected: str,
                keys: Mapping[str, type | tuple[type, ...]] | None = None, *,
                error: type[Exception] = RunError) -> dict[str, Any]:
  """``value`` (parsed JSON) if it is an object holding ``keys``, each of
  its type (``int`` accepts no boolean; ``float`` accepts an int).

  Args:
    value: the parsed JSON.
    where: what the message names (a path, or ``"ref.json (member 'a')"``).
    expected: what it should be.
    keys: key -> accepted type(s); other keys are allowed.
    error: the exception class raised.

  Raises:
    error: not an object, a key missing, or a value of another type.
  """
  if not isinstance(value, dict):
    raise error(f"{where} holds {_kind(value)}, not an object; expected "
                f"{expected}")
  keys = keys or {}
  missing = [k for k in keys if k not in value]
  if missing:
    raise error(f"{where} lacks the key{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(k) for k in missing)}; expected {expected}")
  for key, accepted in keys.items():
    accepted = accepted if isinstance(accepted, tuple) else (accepted,)
    if float in accepted:
      accepted = accepted + (int,)
    item = value[key]
    if (isinstance(item, bool) and bool not in accepted) or not isinstance(
        item, accepted):
      raise error(f"{where} has {key!r} = {_short(item)} ({_kind(item)}); "
                  f"expected {expected}")
  return value


def _short(value: Any) -> str:
  text = json.dumps(value)
  return text if len(text) <= 40 else text[:37] + "..."


def read_json(path: PathLike, expected: str, *, flag: str | None = None,
              error: type[Exception] = RunError) -> Any:
  """The JSON value in the file ``path``.

  Raises:
    error: missing, a directory, unreadable, empty, or not complete JSON
      (a file cut short or damaged); arguments as :func:`existing_file`.
  """
  path = existing_file(path, expected, flag=flag, error=error)
  try:
    text = path.read_text()
  except (OSError, UnicodeDecodeError) as e:
    _fail(error, path, flag, f"cannot be read ({e})", expected)
  if not text.strip():
    _fail(error, path, flag, "is empty", expected)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    _fail(error, path, flag, f"is not complete JSON (truncated or damaged: "
          f"{e})", expected)


def read_json_object(path: PathLike, expected: str,
                     keys: Mapping[str, type | tuple[type, ...]] | None = None,
                     *, flag: str | None = None,
                     error: type[Exception] = RunError) -> dict[str, Any]:
  """The JSON object in the file ``path``, holding ``keys`` (key -> type).

  Raises:
    error: any failure of :func:`read_json` or :func:`json_object`.
  """
  value = read_json(path, expected, flag=flag, error=error)
  return json_object(value, _where(path, flag), expected, keys, error=error)


def available_memory_bytes() -> int | None:
  """Bytes of host memory available to a new allocation now: ``MemAvailable``
  of ``/proc/meminfo`` (Linux), else ``os.sysconf``'s available pages times
  the page size; None where neither is known."""
  try:
    for line in Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        return int(line.split()[1]) * 1024  # the file's unit is kB
  except (OSError, ValueError, IndexError):
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def check_memory(needed_bytes: int, what: str, advice: str,
                 available: int | None = None) -> None:
  """Refuse a computation whose estimated memory exceeds what the host has
  available, before anything is compiled (XLA would abort the process).

  Args:
    needed_bytes: the estimate.
    what: what needs it and how it was estimated, for the message.
    advice: what to lower.
    available: bytes available (default: :func:`available_memory_bytes`;
      unknown: nothing is refused).

  Raises:
    ConfigError: ``needed_bytes > available``; the message names both in GiB.
  """
  available = available_memory_bytes() if available is None else available
  if available is not None and needed_bytes > available:
    raise ConfigError(
        f"{what} needs about {needed_bytes / 2**30:.1f} GiB, more than the "
        f"{available / 2**30:.1f} GiB of memory available; {advice}")
