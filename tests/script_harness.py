"""Run a script of ``scripts/`` inside the test process, as ``python
scripts/<name> ARGS`` would run it, without starting a Python (and JAX)
per case: about a hundredth of a subprocess's time for a refusal.

The script is loaded as a fresh module and run through :func:`vae.cli.run`
(the script's own entry point), with ``sys.argv`` set (ml_collections reads
``--config.<field>`` overrides from it), stdout and stderr captured, and
its exit status taken from ``SystemExit``. Afterwards the flags it defined
are removed from ``absl.flags.FLAGS`` (every script defines its own
``--workdir``...), the others reset, the config module it loaded forgotten,
and the signal handlers it installed restored.

What stays in the process, unlike a subprocess: JAX has started, so the
scripts' device set-up (``use_cpu_cores_as_devices``) is replaced by a
no-op; the numerics mode is the test session's (``default``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import signal
import sys
from pathlib import Path
from typing import IO, NamedTuple

from absl import flags

from vae import cli
from vae.train import devices

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train.py", "sweep.py", "evaluate.py", "plot.py", "compare.py",
           "bench.py", "soak.py")


class Result(NamedTuple):
  status: int | str | None
  stdout: str
  stderr: str


def run_script(name: str, *args, stdout: IO[str] | None = None) -> Result:
  """``python scripts/<name> *args``, in this process.

  Args:
    name: the script's file name, e.g. ``"compare.py"``.
    args: its command-line arguments (converted with ``str``).
    stdout: a file to write standard output to instead of a buffer (e.g.
      one end of a closed pipe); ``Result.stdout`` is then empty.

  Returns:
    The exit status and what the script wrote to stdout and stderr.
  """
  path = REPO / "scripts" / name
  module_name = f"_script_{path.stem}"
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  defined_before = set(flags.FLAGS)
  handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  argv, use_cpu_cores = sys.argv, devices.use_cpu_cores_as_devices
  out, err = io.StringIO(), io.StringIO()
  status = None
  sys.modules[module_name] = module
  devices.use_cpu_cores_as_devices = lambda count=0: count
  try:
    with contextlib.redirect_stdout(stdout or out), \
        contextlib.redirect_stderr(err):
      spec.loader.exec_module(module)
      sys.argv = [str(path), *map(str, args)]
      try:
        cli.run(module.main, sys.argv)
      except SystemExit as e:
        status = 0 if e.code is None else e.code  # sys.exit(None): 0
  finally:
    sys.argv, devices.use_cpu_cores_as_devices = argv, use_cpu_cores
    for flag_name in set(flags.FLAGS) - defined_before:
      delattr(flags.FLAGS, flag_name)
      # ml_collections loads a config file as module "<flag>_config"; a
      # later load of another file would reuse it (and its get_config).
      sys.modules.pop(f"{flag_name}_config", None)
    flags.FLAGS.unparse_flags()
    del sys.modules[module_name]
    for s, handler in handlers.items():
      signal.signal(s, handler)
  return Result(status, out.getvalue(), err.getvalue())
